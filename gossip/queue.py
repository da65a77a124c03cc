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

    def key(self) -> tuple[int, int, int, int]:
        return (0 if self.priority else 1, self.transmits, -len(self.message), -self.seq)


class BroadcastQueue:
    """Pending broadcasts, one per subject. Pure; not thread-safe (one owner)."""

    def __init__(self) -> None:
        self._entries: SortedList = SortedList(key=_Entry.key)
        self._by_subject: dict[str, _Entry] = {}
        self._seq = 0
        self._finished: list[object] = []

    def __len__(self) -> int:
        return len(self._entries)

    def queue(
        self, subject: str, message: bytes, *, priority: bool = False, notify: object = None
    ) -> None:
        """Queue ``message`` about ``subject``, replacing older news about the same subject."""
        old = self._by_subject.pop(subject, None)
        if old is not None:
            self._entries.remove(old)
            if old.notify is not None:
                self._finished.append(old.notify)
        self._seq += 1
        entry = _Entry(subject, message, 0, self._seq, priority, notify)
        self._entries.add(entry)
        self._by_subject[subject] = entry

    def take(self, overhead: int, budget: int, limit: int, max_count: int = 255) -> list[bytes]:
        """Messages that fit ``budget`` bytes, each costing ``len + overhead``.

        Each one handed out counts as one transmission; it leaves the queue once it has
        been sent ``limit`` times.
        """
        chosen: list[_Entry] = []
        remaining = budget
        for entry in self._entries:
            if remaining < overhead + 1 or len(chosen) >= max_count:
                break
            cost = len(entry.message) + overhead
            if cost <= remaining:
                chosen.append(entry)
                remaining -= cost
        for entry in chosen:
            self._entries.remove(entry)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._by_subject[entry.subject]
                if entry.notify is not None:
                    self._finished.append(entry.notify)
            else:
                self._entries.add(entry)
        return [entry.message for entry in chosen]

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
            entry = self._entries.pop(-1)
            del self._by_subject[entry.subject]
            dropped += 1
        return dropped
