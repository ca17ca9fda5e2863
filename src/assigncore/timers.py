"""One deadline heap for every engine timer, with O(1) lazy cancellation.

A timer is a typed value: what it is for (`TimerKind`), when it is due and what it is
about. The engine maps each kind to one handler; models hold their pending timers as
`Timer` values, so cancelling one is `timers.cancel(rep.idle_timer)`."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from typing import Any


class TimerKind(Enum):
    OFFER_DEADLINE = "offer_deadline"  # payload: offer id
    WAITING_RULE = "waiting_rule"  # payload: (session id, queue entry number)
    IDLE = "idle"  # payload: rep id
    WRAP_UP_END = "wrap_up_end"  # payload: rep id
    RECONNECT_GRACE = "reconnect_grace"  # payload: rep id
    FORGET_SESSION = "forget_session"  # payload: session id
    KEY_EXPIRY = "key_expiry"  # payload: session key
    STEP_EXPIRY = "step_expiry"  # payload: a step FIFO's key (queue, duration)


@dataclass(slots=True, eq=False)
class Timer:
    deadline: float
    seq: int  # ties on the deadline fire in scheduling order
    kind: TimerKind
    payload: Any
    alive: bool = True


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self.live = 0

    def schedule(self, deadline: float, kind: TimerKind, payload: Any) -> Timer:
        self._seq += 1
        timer = Timer(deadline, self._seq, kind, payload)
        heapq.heappush(self._heap, (deadline, self._seq, timer))
        self.live += 1
        return timer

    def cancel(self, timer: Timer | None) -> None:
        if timer is not None and timer.alive:
            timer.alive = False
            self.live -= 1

    def _drop_dead(self) -> None:
        heap = self._heap
        while heap and not heap[0][2].alive:
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        self._drop_dead()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Timer | None:
        """The earliest live timer due at or before `now` (ties: scheduling order)."""
        self._drop_dead()
        if self._heap and self._heap[0][0] <= now:
            timer = heapq.heappop(self._heap)[2]
            timer.alive = False
            self.live -= 1
            return timer
        return None

    def pending(self) -> list[tuple[float, str, Any]]:
        return sorted((t.deadline, t.kind.value, t.payload) for _, _, t in self._heap if t.alive)
