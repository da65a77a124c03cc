"""Mailboxes of QoS 1 messages: sequence numbers, acks, redelivery, expiry. Pure.

The owner of a user and its replicas hold the same mailbox (``routing.py`` says who
they are); only the owner delivers from it. A message stays until the user acks it, its
TTL runs out, or ``max_attempts`` connections ended after it was written on them and
before their client acked it (dead-lettered, counted and logged: a message that makes
every client fail must not loop forever).

**An attempt is a write.** Sending a message to the nodes that hold its user's
connections is not an attempt: a connection whose queue is full drops it, and one that
carries it already does not write it again. Only the node that holds the connection
knows what it wrote, and when the connection ends it tells the owner which messages it
wrote that its client did not ack (``tried``). A slow or stuck reader therefore never
uses up a message's attempts: what it was not given is not counted, and what it was
given counts once, when its connection ends. A connection that dropped messages at its
full queue asks for them again once it has room (``resend``), and meanwhile the owner
**holds** its retries to that connection's node (``hold``), so that a connection that
does not drain is not offered the same messages every ``ack_timeout``; the user's other
nodes get their retries as before.

**Sequence numbers** are per user and increase: a new message gets
``max(last_seq + 1, now in microseconds)``. Tying them to the clock keeps them
increasing when ownership moves to another node that has not yet heard of the last one
(clocks of a cluster agree to far better than the time between a handover and a send).

**Every device gets every message.** A user's devices are named by their clients (the
hello's ``device``; one unnamed device per user otherwise). The mailbox knows the
devices it has seen (for ``default_ttl`` after they were last seen, ``MAX_DEVICES`` at
most: the least recently seen goes when one more comes) and keeps a message until
*each* of them has acked it. Acks name exact messages: a client's cumulative ack
is turned into the list of messages written *on that same connection* before the acked
one, by the node that holds the connection (``ClientSession.acked_through``). Frames
take many paths to a client (a peer link that broke after a write, a new owner, a full
queue, a resumed session on another node), so a sequence number alone never proves that
a lower one arrived; the order of one connection does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .frames import MAX_SEQ
from .names import is_user

#: who asked an owner to hold its retries: a node holding a connection of the user, and
#: that connection's session (``Mailboxes.hold``)
Holder = tuple[str, str]


class Stored(NamedTuple):
    """One QoS 1 message as it is kept on disk and sent between nodes. Immutable, and a
    tuple: a frozen dataclass cost four times as much to make (three are made per message
    on its way through the cluster)."""

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
        if not all(isinstance(raw.get(k), int | float) and not isinstance(raw.get(k), bool)
                   for k in ("ts", "expires")):
            raise ValueError("a stored message's ts and expires are numbers")
        try:
            stored = cls(raw["user"], raw["seq"], raw["id"], raw["body"], float(raw["ts"]),
                         float(raw["expires"]), raw.get("from"), int(raw.get("attempts", 0)))
        except (KeyError, TypeError, ValueError, OverflowError):  # int(inf) overflows
            raise ValueError("a stored message lacks a field or has a wrong type") from None
        if not (is_user(stored.user) and type(stored.seq) is int
                and type(raw.get("attempts", 0)) is int
                and isinstance(stored.id, str) and isinstance(stored.body, str)
                and (stored.sender is None or isinstance(stored.sender, str))):
            raise ValueError("a stored message has a field of the wrong type")
        if not (0 < stored.seq <= MAX_SEQ and 0 <= stored.attempts <= MAX_SEQ
                and math.isfinite(stored.ts) and math.isfinite(stored.expires)):
            raise ValueError("a stored message has a seq, attempts or time out of range")
        return stored


#: messages (and devices) a sweep looks at per tick, in the mailboxes of users without
#: sessions: 5-10 ms of the event loop; everything is looked at every (messages / SWEEP)
#: ticks, and nothing is ever sent after its TTL meanwhile (``to_send``)
SWEEP = 10_000
#: a device's record is stored again when it was last stored this long before: the time
#: it was last seen only decides when it is forgotten (``default_ttl``, days)
DEVICE_REWRITE = 3600.0
#: devices a user has at most (those most recently seen). Every replicate request and
#: handover carries its users' devices: without a bound, one client naming thousands of
#: devices in its hellos made those frames larger than a link carries. One more device
#: evicts the least recently seen rather than being refused: only the owner knows the
#: count, not the node answering the hello, and a refusal would lock a user who lost
#: old devices out for ``default_ttl``. An evicted device that comes back is a new one
#: (like one forgotten after ``default_ttl``): messages acked by all the others while it
#: was gone are not kept for it.
MAX_DEVICES = 64


#: a mailbox keeps its messages as plain tuples of ``Stored``'s fields, and gives them
#: out as ``Stored``: the garbage collector stops tracking a plain tuple of strings and
#: numbers once it has looked at it (and, at a full collection, a dict of nothing but
#: those), whereas it walks every named tuple at every full collection — one object per
#: waiting message, about a second's pause with a million of them
_Plain = tuple[str, int, str, str, float, float, "str | None", int]
_EXPIRES = Stored._fields.index("expires")
_ATTEMPTS = Stored._fields.index("attempts")


def _plain(stored: Stored) -> _Plain:
    return tuple(stored)  # type: ignore[return-value]


def as_stored(plain: _Plain) -> Stored:
    """A message kept as a plain tuple (``Mailboxes.kept``) as a ``Stored``."""
    return tuple.__new__(Stored, plain)


@dataclass(slots=True)
class _Box:
    last_seq: int = 0
    #: seq -> message (``_Plain``), in seq order once ``ordered()`` is called: messages
    #: almost always come in order (an owner numbers them so), and a dict takes and gives
    #: them back five times cheaper than a sorted one; one that comes early (a handover,
    #: a reload) only marks the box for sorting before it is next read in order
    pending: dict[int, _Plain] = field(default_factory=dict)
    shuffled: bool = False
    #: seq -> devices that acked it
    acked: dict[int, set[str]] = field(default_factory=dict)
    #: seq -> when to send again, for those sent at least once from this process (a
    #: dict of numbers, which the garbage collector need not walk, unlike a set)
    retry_at: dict[int, float] = field(default_factory=dict)
    #: devices of the user -> when last seen
    devices: dict[str, float] = field(default_factory=dict)
    #: devices of the user -> when last seen as the store last got it
    written: dict[str, float] = field(default_factory=dict)

    def add(self, stored: Stored) -> None:
        if stored.seq < self.last_seq:  # not after every one before
            self.shuffled = True
        else:
            self.last_seq = stored.seq
        self.pending[stored.seq] = _plain(stored)

    def ordered(self) -> dict[int, _Plain]:
        if self.shuffled:
            self.pending = dict(sorted(self.pending.items()))
            self.shuffled = False
        return self.pending

    def listed(self) -> list[Stored]:
        """The messages waiting, in seq order."""
        return [as_stored(plain) for plain in self.ordered().values()]

    def forget(self, seq: int) -> Stored:
        self.acked.pop(seq, None)
        self.retry_at.pop(seq, None)
        return as_stored(self.pending.pop(seq))


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
        self._unswept: list[str] = []  # users the sweep has yet to look at this round
        self._pending = 0  # messages in all mailboxes
        #: user -> holder -> until when its retries to the holder's node are held; only
        #: users with a hold (checked on every push: empty, it costs one lookup)
        self._holds: dict[str, dict[Holder, float]] = {}
        self.counters: Counter[str] = Counter()

    # ---- reading --------------------------------------------------------------------------

    def users(self) -> list[str]:
        return [user for user, box in self._boxes.items() if box.pending]

    def known_users(self) -> list[str]:
        """Users with a message waiting or a device known here."""
        return [user for user, box in self._boxes.items() if box.pending or box.devices]

    def pending(self, user: str) -> list[Stored]:
        box = self._boxes.get(user)
        return box.listed() if box else []

    def kept(self, user: str) -> tuple[_Plain, ...]:
        """``pending(user)`` as a tuple of plain tuples (``as_stored`` makes each a
        ``Stored``): for a copy kept a while, which the collector then need not walk."""
        box = self._boxes.get(user)
        return tuple(box.ordered().values()) if box else ()

    def pending_count(self, user: str | None = None) -> int:
        if user is not None:
            box = self._boxes.get(user)
            return len(box.pending) if box else 0
        return self._pending  # kept as they come and go: status and metrics ask often

    def last_seq(self, user: str) -> int:
        box = self._boxes.get(user)
        return box.last_seq if box else 0

    # ---- writing --------------------------------------------------------------------------

    def _box(self, user: str) -> _Box:
        box = self._boxes.get(user)
        if box is None:  # not setdefault: a box is five containers to build for nothing
            box = self._boxes[user] = _Box()
        return box

    def new(self, user: str, message_id: str, body: str, now: float, ttl: float | None,
            *, sender: str | None = None) -> Stored:
        """A new message at the owner: the next sequence number, not yet stored."""
        box = self._box(user)
        if len(box.pending) >= self.limits.max_pending_per_user:
            raise OverflowError(
                f"{user} has {len(box.pending)} messages waiting; the limit is "
                f"{self.limits.max_pending_per_user}"
            )
        seq = max(box.last_seq + 1, int(now * 1_000_000))
        if seq > MAX_SEQ:
            raise OverflowError(f"{user} has used up its sequence numbers")
        box.last_seq = seq
        expires = now + (ttl if ttl is not None else self.limits.default_ttl)
        return Stored(user, seq, message_id, body, round(now, 3), expires, sender=sender)

    def put(self, stored: Stored) -> bool:
        """Keep ``stored`` (a new message, a replica, a handover, a reload); False if known."""
        box = self._box(stored.user)
        if stored.seq in box.pending:
            box.last_seq = max(box.last_seq, stored.seq)
            return False
        box.add(stored)
        self._pending += 1
        return True

    def note_seq(self, user: str, seq: int) -> None:
        """Remember that ``seq`` was used for ``user`` (from disk or a peer)."""
        box = self._box(user)
        box.last_seq = max(box.last_seq, seq)

    def see_device(self, user: str, device: str, now: float) -> bool:
        """``device`` of ``user`` is connected (or was at ``now``). True if its record is
        to be stored: new here, or stored ``DEVICE_REWRITE`` before ``now`` (every
        replicate request brings its users' devices: writing them each time was a row
        per user in every commit of a replica)."""
        box = self._box(user)
        if not self._note_device(box, device, max(now, box.devices.get(device, now))):
            return False
        if now - box.written.get(device, -math.inf) < DEVICE_REWRITE:
            return False
        box.written[device] = now
        return True

    def _note_device(self, box: _Box, device: str, seen: float) -> bool:
        """``device`` was seen at ``seen``; False if it is not kept (``MAX_DEVICES`` seen
        more recently). One beyond ``MAX_DEVICES`` evicts the least recently seen."""
        box.devices[device] = seen
        if len(box.devices) > MAX_DEVICES:
            oldest = min(box.devices, key=box.devices.__getitem__)
            del box.devices[oldest]
            box.written.pop(oldest, None)
            self.counters["devices_evicted"] += 1
            return oldest != device
        return True

    def devices(self, user: str) -> dict[str, float]:
        box = self._boxes.get(user)
        return dict(box.devices) if box else {}

    def acked_by(self, user: str, seq: int) -> set[str]:
        box = self._boxes.get(user)
        return set(box.acked.get(seq, ())) if box else set()

    def ack(self, user: str, seqs: Iterable[int], device: str, now: float) -> list[Stored]:
        """``device`` has these messages: those every known device has now acked are
        removed and returned."""
        box = self._boxes.get(user)
        if box is None:
            return []
        self._note_device(box, device, now)
        removed = []
        for number in seqs:
            if number not in box.pending:
                continue
            acked = box.acked.setdefault(number, set())
            acked.add(device)
            if acked.issuperset(box.devices):
                removed.append(box.forget(number))
        self.counters["acked"] += len(removed)
        self._pending -= len(removed)
        return removed

    def remove(self, user: str, seqs: list[int]) -> list[Stored]:
        """Remove exactly these (a replica, told by the owner)."""
        box = self._boxes.get(user)
        if box is None:
            return []
        removed = [box.forget(s) for s in seqs if s in box.pending]
        self._pending -= len(removed)
        return removed

    # ---- delivering (the owner) -----------------------------------------------------------

    def to_send(self, user: str, now: float, *, reconnect: bool = False,
                held: bool = False) -> list[Stored]:
        """What to send ``user`` now: those never sent and due retries, or (on a new
        session) all pending; never a message whose TTL is up. ``held``: for a node whose
        retries are held (``hold``), only those never sent (unless ``reconnect``)."""
        box = self._boxes.get(user)
        if box is None:
            return []
        if held and not reconnect:
            retry_at = box.retry_at  # every message sent once is in it (forget pops it)
            if len(retry_at) >= len(box.pending):
                return []  # all sent once: nothing new (a held user's tick, every second)
            return [as_stored(plain) for seq, plain in box.ordered().items()
                    if seq not in retry_at and plain[_EXPIRES] > now]
        out = []
        for seq, plain in box.ordered().items():
            if plain[_EXPIRES] <= now:  # gone at the next sweep: never sent late
                continue
            if reconnect or box.retry_at.get(seq, 0.0) <= now:  # never sent: 0.0
                out.append(as_stored(plain))
        return out

    def sent(self, stored: Stored, now: float) -> None:
        """``stored`` was sent to the nodes holding its user's connections: it is due again
        after ``ack_timeout`` unless acked. Not an attempt (``tried`` counts those)."""
        box = self._box(stored.user)
        if stored.seq in box.retry_at:
            self.counters["redelivered"] += 1
        box.retry_at[stored.seq] = now + self.limits.ack_timeout
        self.counters["sent"] += 1

    def resend(self, user: str, seqs: Iterable[int], now: float) -> list[Stored]:
        """Of ``seqs``, those still waiting and not expired, to send again to a connection
        that missed them (``sent``, but not counted as redelivered)."""
        out = []
        for box, seq, plain in self._waiting(user, seqs):
            if plain[_EXPIRES] > now:
                box.retry_at[seq] = now + self.limits.ack_timeout
                out.append(as_stored(plain))
        self.counters["resent"] += len(out)
        return out

    def tried(self, user: str, seqs: Iterable[int]) -> list[Stored]:
        """A connection ended after writing these and before its client acked them: one
        attempt more each (those still waiting, with their new counts)."""
        out = []
        for box, seq, plain in self._waiting(user, seqs):
            updated = as_stored(plain)._replace(attempts=plain[_ATTEMPTS] + 1)
            box.pending[seq] = _plain(updated)
            out.append(updated)
        self.counters["attempts"] += len(out)
        return out

    def _waiting(self, user: str, seqs: Iterable[int]) -> Iterator[tuple[_Box, int, _Plain]]:
        """The mailbox, seq and plain tuple of each of ``seqs`` still waiting for ``user``
        (a connection names what it missed or was written: some may be gone since)."""
        box = self._boxes.get(user)
        if box is None:
            return
        for seq in seqs:
            plain = box.pending.get(seq)
            if plain is not None:
                yield box, seq, plain

    def hold(self, user: str, holder: Holder, until: float) -> None:
        """No retries of ``user``'s messages to ``holder``'s node before ``until`` (0:
        release): that connection missed messages at its full queue and will ask for them
        (``resend``). Per connection: each is released on its own (its node's retries
        resume once none of its connections holds them), and other nodes are not held."""
        holds = self._holds.get(user)
        if until <= 0.0:
            if holds is not None:
                holds.pop(holder, None)
                if not holds:
                    del self._holds[user]
        elif user in self._boxes:  # nothing waits for a user without a mailbox
            if holds is None:
                holds = self._holds[user] = {}
            holds[holder] = until

    def held(self, user: str, now: float) -> tuple[Holder, ...]:
        """Who holds ``user``'s retries at ``now`` (holds past their time are forgotten)."""
        holds = self._holds.get(user)
        if not holds:
            return ()
        for holder in [h for h, until in holds.items() if until <= now]:
            del holds[holder]
        if not holds:
            del self._holds[user]
        return tuple(holds)

    def expire_holds(self, now: float) -> None:
        """Forget holds past their time (a holder's word that never came): memory stays
        bounded by the connections that hold, each for at most the time it asked."""
        for user in [u for u, holds in self._holds.items()
                     if min(holds.values()) <= now]:
            self.held(user, now)

    def expire(self, now: float, users: Iterable[str] | None = None) -> list[Stored]:
        """Remove expired and dead-lettered (too many attempts) messages, and forget
        devices not seen for ``default_ttl``: in the mailboxes of ``users``, or all."""
        if users is None:
            boxes: Iterable[_Box] = list(self._boxes.values())
        else:  # only those with messages: the sweep looks at every device in turn
            boxes = [box for user in users if (box := self._boxes.get(user)) and box.pending]
        removed: list[Stored] = []
        for box in boxes:
            self._expire_box(box, now, removed)
        return removed

    def sweep(self, now: float, budget: int = SWEEP) -> list[Stored]:
        """``expire`` the next mailboxes, about ``budget`` messages and devices' worth,
        from where the last sweep stopped: a tick costs the same however many users
        wait offline with messages, and every mailbox is looked at every
        (messages / budget) ticks. Those of users with sessions are looked at every
        tick anyway (``expire(now, users)``)."""
        removed: list[Stored] = []
        looked = visited = 0
        while looked < budget and visited < len(self._boxes):
            if not self._unswept:
                self._unswept = list(self._boxes)
            box = self._boxes.get(self._unswept.pop())
            visited += 1
            if box is not None:
                looked += 1 + len(box.pending) + len(box.devices)
                self._expire_box(box, now, removed)
        return removed

    def _expire_box(self, box: _Box, now: float, removed: list[Stored]) -> None:
        forgotten = now - self.limits.default_ttl
        if box.devices and min(box.devices.values()) <= forgotten:
            for device in [d for d, seen in box.devices.items() if seen <= forgotten]:
                del box.devices[device]
                box.written.pop(device, None)
        most = self.limits.max_attempts
        for seq, tried_out in [
                (seq, tried_out) for seq, plain in box.pending.items()
                if (tried_out := plain[_ATTEMPTS] >= most) or plain[_EXPIRES] <= now]:
            removed.append(box.forget(seq))
            self._pending -= 1
            self.counters["dead_lettered" if tried_out else "expired"] += 1

    def retry_users(self, now: float, users: Iterable[str]) -> list[str]:
        """Of ``users`` (those with sessions), those with a message whose ack is overdue,
        or that was never sent from here (a handover or a replica's copy, for a node
        that owns the user now). Held retries are due too: a holder not held gets them,
        a held one only what was never sent (``to_send(held=True)``)."""
        due = []
        for user in users:
            box = self._boxes.get(user)
            if box is not None and box.pending and (
                    len(box.retry_at) < len(box.pending)
                    or any(when <= now for when in box.retry_at.values())):
                due.append(user)
        return due

    def drop_user(self, user: str) -> list[Stored]:
        """Forget ``user``'s mailbox here (it was handed over); returns what was in it."""
        self._holds.pop(user, None)
        box = self._boxes.pop(user, None)
        if box is None:
            return []
        self._pending -= len(box.pending)
        return box.listed()
