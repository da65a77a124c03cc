"""Mailboxes of QoS 1 messages: sequence numbers, acks, redelivery, expiry. Pure.

The owner of a user and its replicas hold the same mailbox (``routing.py`` says who
they are); only the owner delivers from it. A message stays until the user acks it, its
TTL runs out, or it has been sent ``max_attempts`` times without an ack (dead-lettered,
counted and logged: a message that makes every client fail must not loop forever).

**Sequence numbers** are per user and increase: a new message gets
``max(last_seq + 1, now in microseconds)``. Tying them to the clock keeps them
increasing when ownership moves to another node that has not yet heard of the last one
(clocks of a cluster agree to far better than the time between a handover and a send).

**Acks are cumulative but safe:** ``ack(user, N)`` removes the messages up to ``N`` that
have been *sent* to the user. A message that reached this mailbox later with a lower
number (a handover racing a send) was never sent, so it survives the ack and is
delivered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from sortedcontainers import SortedDict


@dataclass(frozen=True, slots=True)
class Stored:
    """One QoS 1 message as it is kept on disk and sent between nodes."""

    user: str
    seq: int
    id: str
    body: str
    ts: float
    expires: float
    sender: str | None = None
    attempts: int = 0

    def to_client(self) -> dict[str, Any]:
        message: dict[str, Any] = {"t": "msg", "id": self.id, "seq": self.seq, "qos": 1,
                                   "body": self.body, "ts": self.ts}
        if self.sender is not None:
            message["from"] = self.sender
        return message

    def to_wire(self) -> dict[str, Any]:
        return {"user": self.user, "seq": self.seq, "id": self.id, "body": self.body,
                "ts": self.ts, "expires": self.expires, "from": self.sender,
                "attempts": self.attempts}

    @classmethod
    def from_wire(cls, raw: object) -> Stored:
        """A message from a peer; ValueError if it is not one."""
        if not isinstance(raw, dict):
            raise ValueError("a stored message is a map")
        try:
            stored = cls(raw["user"], raw["seq"], raw["id"], raw["body"], float(raw["ts"]),
                         float(raw["expires"]), raw.get("from"), int(raw.get("attempts", 0)))
        except (KeyError, TypeError, ValueError):
            raise ValueError("a stored message lacks a field or has a wrong type") from None
        if not (isinstance(stored.user, str) and isinstance(stored.seq, int)
                and isinstance(stored.id, str) and isinstance(stored.body, str)
                and (stored.sender is None or isinstance(stored.sender, str))):
            raise ValueError("a stored message has a field of the wrong type")
        return stored


@dataclass(slots=True)
class _Box:
    last_seq: int = 0
    pending: SortedDict = field(default_factory=SortedDict)  # seq -> Stored
    #: seqs sent at least once in this process (acks apply to these only)
    sent: set[int] = field(default_factory=set)
    #: seq -> when to send again
    retry_at: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    ack_timeout: float = 10.0
    max_attempts: int = 10
    default_ttl: float = 3 * 24 * 3600.0
    max_pending_per_user: int = 10_000


class Mailboxes:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._boxes: dict[str, _Box] = {}
        self.counters: Counter[str] = Counter()

    # ---- reading --------------------------------------------------------------------------

    def users(self) -> list[str]:
        return [user for user, box in self._boxes.items() if box.pending]

    def pending(self, user: str) -> list[Stored]:
        box = self._boxes.get(user)
        return list(box.pending.values()) if box else []

    def pending_count(self, user: str | None = None) -> int:
        if user is not None:
            box = self._boxes.get(user)
            return len(box.pending) if box else 0
        return sum(len(box.pending) for box in self._boxes.values())

    def last_seq(self, user: str) -> int:
        box = self._boxes.get(user)
        return box.last_seq if box else 0

    # ---- writing --------------------------------------------------------------------------

    def new(self, user: str, message_id: str, body: str, now: float, ttl: float | None,
            *, sender: str | None = None) -> Stored:
        """A new message at the owner: the next sequence number, not yet stored."""
        box = self._boxes.setdefault(user, _Box())
        if len(box.pending) >= self.limits.max_pending_per_user:
            raise OverflowError(
                f"{user} has {len(box.pending)} messages waiting; the limit is "
                f"{self.limits.max_pending_per_user}"
            )
        seq = max(box.last_seq + 1, int(now * 1_000_000))
        box.last_seq = seq
        expires = now + (ttl if ttl is not None else self.limits.default_ttl)
        return Stored(user, seq, message_id, body, round(now, 3), expires, sender=sender)

    def put(self, stored: Stored) -> bool:
        """Keep ``stored`` (a new message, a replica, a handover, a reload); False if known."""
        box = self._boxes.setdefault(stored.user, _Box())
        box.last_seq = max(box.last_seq, stored.seq)
        if stored.seq in box.pending:
            return False
        box.pending[stored.seq] = stored
        return True

    def note_seq(self, user: str, seq: int) -> None:
        """Remember that ``seq`` was used for ``user`` (from disk or a peer)."""
        box = self._boxes.setdefault(user, _Box())
        box.last_seq = max(box.last_seq, seq)

    def ack(self, user: str, seq: int, *, sent_only: bool = True) -> list[Stored]:
        """Remove what ``user`` acknowledged up to ``seq``; returns the removed messages.

        ``sent_only`` (at the owner) spares messages never sent; replicas, told by the
        owner what was removed, pass False with the exact numbers instead.
        """
        box = self._boxes.get(user)
        if box is None:
            return []
        removed = []
        for number in list(box.pending.irange(maximum=seq)):
            if sent_only and number not in box.sent:
                continue
            removed.append(box.pending.pop(number))
            box.sent.discard(number)
            box.retry_at.pop(number, None)
        self.counters["acked"] += len(removed)
        return removed

    def remove(self, user: str, seqs: list[int]) -> list[Stored]:
        box = self._boxes.get(user)
        if box is None:
            return []
        removed = [box.pending.pop(s) for s in seqs if s in box.pending]
        for stored in removed:
            box.sent.discard(stored.seq)
            box.retry_at.pop(stored.seq, None)
        return removed

    # ---- delivering (the owner) -----------------------------------------------------------

    def to_send(self, user: str, now: float, *, reconnect: bool = False) -> list[Stored]:
        """What to send ``user`` now: due retries, or (on a new session) all pending."""
        box = self._boxes.get(user)
        if box is None:
            return []
        out = []
        for seq, stored in box.pending.items():
            due = box.retry_at.get(seq, 0.0)
            if reconnect or seq not in box.sent or due <= now:
                out.append(stored)
        return out

    def sent(self, stored: Stored, now: float) -> Stored:
        """Record one more attempt; returns the message with its new attempt count."""
        box = self._boxes.setdefault(stored.user, _Box())
        current = box.pending.get(stored.seq, stored)
        updated = replace(current, attempts=current.attempts + 1)
        if stored.seq in box.pending:
            box.pending[stored.seq] = updated
        box.sent.add(stored.seq)
        box.retry_at[stored.seq] = now + self.limits.ack_timeout
        self.counters["sent"] += 1
        if updated.attempts > 1:
            self.counters["redelivered"] += 1
        return updated

    def expire(self, now: float) -> list[Stored]:
        """Remove expired and dead-lettered (too many attempts) messages."""
        removed = []
        for box in self._boxes.values():
            for seq, stored in list(box.pending.items()):
                tried_out = stored.attempts >= self.limits.max_attempts and (
                    box.retry_at.get(seq, 0.0) <= now
                )
                if stored.expires <= now or tried_out:
                    del box.pending[seq]
                    box.sent.discard(seq)
                    box.retry_at.pop(seq, None)
                    removed.append(stored)
                    self.counters["dead_lettered" if tried_out else "expired"] += 1
        return removed

    def retry_users(self, now: float) -> list[str]:
        """Users with a message whose ack is overdue."""
        return [user for user, box in self._boxes.items()
                if any(when <= now for when in box.retry_at.values())]

    def drop_user(self, user: str) -> list[Stored]:
        """Forget ``user``'s mailbox here (it was handed over); returns what was in it."""
        box = self._boxes.pop(user, None)
        return list(box.pending.values()) if box else []
