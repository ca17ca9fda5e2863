"""One deadline heap for every engine timer, with O(1) lazy cancellation."""

from __future__ import annotations

import heapq
from typing import Any

# Entry layout: [deadline, seq, kind, payload, alive]. Lists so cancel() can flip alive.
_ALIVE = 4


class Timers:
    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._seq = 0
        self.live = 0

    def schedule(self, deadline: float, kind: str, payload: Any) -> list[Any]:
        self._seq += 1
        entry = [deadline, self._seq, kind, payload, True]
        heapq.heappush(self._heap, entry)
        self.live += 1
        return entry

    def cancel(self, entry: list[Any] | None) -> None:
        if entry is not None and entry[_ALIVE]:
            entry[_ALIVE] = False
            self.live -= 1

    def _drop_dead(self) -> None:
        heap = self._heap
        while heap and not heap[0][_ALIVE]:
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        self._drop_dead()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Any] | None:
        """The earliest live entry due at or before `now` (ties: scheduling order)."""
        self._drop_dead()
        if self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            entry[_ALIVE] = False
            self.live -= 1
            return entry
        return None

    def pending(self) -> list[tuple[float, str, Any]]:
        return sorted((e[0], e[2], e[3]) for e in self._heap if e[_ALIVE])
