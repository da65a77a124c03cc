"""A heap of named deadlines with lazy cancellation (trio ``_run.py`` ``Deadlines``)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable


class Deadlines:
    """At most one deadline per key; rescheduling a key replaces its deadline.

    Entries are ``(when, seq, key)``; ``seq`` is a counter (never ``id()``), so equal
    deadlines fire in the order they were set, the same on every run.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def schedule(self, key: Hashable, when: float) -> None:
        self._seq += 1
        self._live[key] = (when, self._seq)
        heapq.heappush(self._heap, (when, self._seq, key))

    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def when(self, key: Hashable) -> float | None:
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def next_deadline(self) -> float:
        self._drop_stale()
        return self._heap[0][0] if self._heap else math.inf

    def pop_expired(self, now: float) -> tuple[Hashable, float] | None:
        """The earliest key whose deadline is ``<= now`` (and its deadline), or None."""
        self._drop_stale()
        if not self._heap or self._heap[0][0] > now:
            return None
        when, _seq, key = heapq.heappop(self._heap)
        del self._live[key]
        return key, when

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            when, seq, key = heap[0]
            if self._live.get(key) == (when, seq):
                return
            heapq.heappop(heap)
