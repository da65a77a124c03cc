"""Transmit-limited dissemination queue (memberlist ``queue.go``, ``broadcast.go``).

Every piece of news (an alive, suspect or dead message) is queued under its *subject*,
the name of the node it is about; newer news about a node replaces the older, so a
queue never holds two contradicting rumours. Messages are handed out fewest-sent first,
larger first within a tier, newest first among equals, and leave the queue after
``retransmit_limit(mult, n)`` transmissions in total.

Beyond memberlist: *priority* entries (a graceful leave) always go first, so that a
node's goodbye reaches everyone before its process exits.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from sortedcontainers import SortedList


def retransmit_limit(mult: int, n: int) -> int:
    """memberlist ``retransmitLimit``: ``mult * ceil(log10(n + 1))``."""
    return mult * math.ceil(math.log10(n + 1))


@dataclass(slots=True)
class _Entry:
    subject: str
    message: bytes
    transmits: int
    seq: int
    priority: bool
    notify: object | None

    def key(self) -> tuple[int, int, int, int, _Entry]:
        """Sort key; ``seq`` is unique, so the entry itself is never compared."""
        return (0 if self.priority else 1, self.transmits, -len(self.message), -self.seq, self)


class BroadcastQueue:
    """Pending broadcasts, one per subject. Pure; not thread-safe (one owner)."""

    def __init__(self) -> None:
        self._entries: SortedList = SortedList()  # of _Entry.key() tuples
        self._by_subject: dict[str, tuple[int, int, int, int, _Entry]] = {}
        self._seq = 0
        self._finished: list[object] = []
        self._lengths: Counter[int] = Counter()  # to stop scanning once nothing can fit

    def __len__(self) -> int:
        return len(self._entries)

    def queue(
        self, subject: str, message: bytes, *, priority: bool = False, notify: object = None
    ) -> None:
        """Queue ``message`` about ``subject``, replacing older news about the same subject."""
        old = self._by_subject.pop(subject, None)
        if old is not None:
            self._forget(old)
            if old[-1].notify is not None:
                self._finished.append(old[-1].notify)
        self._seq += 1
        key = _Entry(subject, message, 0, self._seq, priority, notify).key()
        self._entries.add(key)
        self._by_subject[subject] = key
        self._lengths[len(message)] += 1

    def _forget(self, key: tuple[int, int, int, int, _Entry]) -> None:
        self._entries.remove(key)
        length = len(key[-1].message)
        self._lengths[length] -= 1
        if not self._lengths[length]:
            del self._lengths[length]

    def take(self, overhead: int, budget: int, limit: int, max_count: int = 255) -> list[bytes]:
        """Messages that fit ``budget`` bytes, each costing ``len + overhead``.

        Each one handed out counts as one transmission; it leaves the queue once it has
        been sent ``limit`` times.
        """
        chosen: list[tuple[int, int, int, int, _Entry]] = []
        remaining = budget
        smallest = overhead + min(self._lengths, default=0)
        for key in self._entries:
            if remaining < smallest or len(chosen) >= max_count:
                break
            cost = len(key[-1].message) + overhead
            if cost <= remaining:
                chosen.append(key)
                remaining -= cost
        for key in chosen:
            entry = key[-1]
            entry.transmits += 1
            if entry.transmits >= limit:
                self._forget(key)
                del self._by_subject[entry.subject]
                if entry.notify is not None:
                    self._finished.append(entry.notify)
            else:
                self._entries.remove(key)
                new_key = entry.key()
                self._entries.add(new_key)
                self._by_subject[entry.subject] = new_key
        return [key[-1].message for key in chosen]

    def pending(self, subject: str) -> bool:
        return subject in self._by_subject

    def drain_finished(self) -> list[object]:
        """Notify tokens of entries sent ``limit`` times or replaced, oldest first."""
        finished, self._finished = self._finished, []
        return finished

    def prune(self, max_entries: int) -> int:
        """Drop the most-sent entries until at most ``max_entries`` remain; return dropped."""
        dropped = 0
        while len(self._entries) > max_entries:
            key = self._entries[-1]
            self._forget(key)
            del self._by_subject[key[-1].subject]
            dropped += 1
        return dropped
