"""Desk time that stands still while the server is stalled.

A stall (the process stopped with SIGSTOP, a VM paused, the loop starved of CPU) is not
the reps' fault, no more than a restart is: an offer whose deadline passed while the
server could not read the rep's answer must not become a timed-out decline. So the
engine does not read the wall clock directly but this clock, which subtracts the time
the loop spent stalled.

How the loop knows it stalled: a heartbeat on the loop every `tick` seconds. Whenever
the clock is read (by a command, the timer task or the heartbeat itself, whichever runs
first after the stall), a heartbeat overdue by more than `bound` means the loop did not
run for that long: the gap, less one tick, is added to the offset. Desk time then goes
on from where it stood, so every deadline (offers, waiting rules, idle, wrap-up, grace)
moves by the stall. Time in the journal is desk time, so a replay is unchanged.

What this costs: statistics do not count the stall as waiting, and desk time runs
behind the wall clock by the sum of the stalls since the start (a restart starts it
again from the wall clock; the restart's own rules then apply).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("assigncore.server")

TICK = 0.1  # seconds between heartbeats
BOUND = 1.0  # a heartbeat overdue by more than this is a stall


class StallClock:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        tick: float = TICK,
        bound: float = BOUND,
    ) -> None:
        self.wall, self.monotonic = wall, monotonic
        self.tick, self.bound = tick, bound
        self.offset = 0.0  # seconds of stall subtracted so far
        self.stalls = 0
        self._beat: float | None = None  # when the loop last ran; None: not watching
        self._handle: asyncio.TimerHandle | None = None

    def __call__(self) -> float:
        self._observe()
        return self.wall() - self.offset

    def _observe(self) -> None:
        if self._beat is None:
            return
        now = self.monotonic()
        gap = now - self._beat
        if gap > self.bound:
            stalled = gap - self.tick
            self.offset += stalled
            self.stalls += 1
            log.warning(
                "the server was stalled for %.1f s (no heartbeat): desk time stood still, "
                "no deadline fell due in it",
                stalled,
            )
        self._beat = now

    def start(self) -> None:
        """Begins watching (on the running loop)."""
        self._beat = self.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self.tick, self._heartbeat)

    def _heartbeat(self) -> None:
        self._observe()
        self._handle = asyncio.get_running_loop().call_later(self.tick, self._heartbeat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._beat = None
