"""The client sessions connected to this node: by id, by user and by topic.

What the routing layer delivers into. Each :class:`ClientSession` has a bounded queue
that the client server drains into its socket (``client_server.py``), told by
``notify`` when a first object waits; :meth:`ClientSession.offer` never blocks: a full
queue drops the object and counts it, so a slow client never slows the node.

A QoS 1 message dropped that way is not lost: the session notes its number
(:class:`Missed`), tells the owner once (``on_full``: the owner then holds its retries
for the user instead of offering a connection that does not drain the same messages
again and again) and, each time its queue has emptied into the socket, asks the owner
for the next half queue of them (``on_room``), until it has asked for all. A reader
that stops reading costs the owner one offer per message, not one per retry, and gets
everything when it reads again.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import InitVar, dataclass, field
from typing import Any

Object = dict[str, Any]
#: what a session's queue holds: objects, or QoS 0 messages still packed (bytes) as the
#: node that took them packed them (routing.py)
Queued = Object | bytes
CLIENT_QUEUE = 1024
WRITTEN_KEPT = 10_000  # unacked on one connection: more wait for their owner to send again
READ_KEPT = 64  # read messages a connection remembers (Written says why few are enough)
#: QoS 1 messages a connection remembers having missed (an owner keeps at most
#: ``max_pending`` per user, 10,000 by default); beyond, the owner's retries bring them
MISSED_KEPT = 10_000
#: a connection that keeps dropping tells the owner to hold its retries again after this
#: (seconds; the owner holds them for ``redelivery.HOLD``)
HOLD_RENEW = 60.0
#: a connection asks for more of what it missed before the last it asked for came, once
#: this long has passed (one that is no longer waiting never comes)
RESEND_WAIT = 1.0


def take_through(written: list[int], seq: int) -> list[int]:
    """The seqs of ``written`` up to ``seq`` (a parked connection's list); [] if absent."""
    return written[:written.index(seq) + 1] if seq in written else []


class Written:
    """What one connection's client has of its QoS 1 messages: the sequence numbers
    written on it and not yet acked, in order, and those it is known to have read (acked
    here, or named by its hello as the last it read before).

    Where a message stands in the written list says what the client had read when it
    names it: in an ack, or in a resume's ``last_seq`` after the connection broke. A
    second copy would make that ambiguous. Written again while unacked, the ack of the
    first copy would seem to cover what came between the copies; written again after it
    was acked (a retry whose ack went astray, a stale copy from an owner that came back),
    a resume naming it — the last thing the client read — would cover what came before
    the second copy, unread: lost for that device. So a message the client has read is
    not written again here; it is acked again instead (``wrote``). Only the last one the
    client named can be named by a resume (it read everything acked before it, and what
    it read since is still unacked here), so remembering the last ``READ_KEPT`` is safe;
    they also spare the client most duplicates.

    The last ``unsent`` of the list are noted but not on the socket yet: their frame has
    not left the node's buffer whole (``ClientSession.on_socket``). A connection that
    ends counts an attempt only for the others (``tried``): its client cannot have
    failed at a message it was never given."""

    __slots__ = ("_members", "_order", "_read", "_read_order", "unsent")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._members: set[int] = set()
        self._read_order: deque[int] = deque()
        self._read: set[int] = set()
        self.unsent = 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def full(self) -> bool:
        return len(self._order) >= WRITTEN_KEPT

    def add(self, seq: int) -> bool:
        """Note ``seq`` as written; False if the connection carries it already."""
        if seq in self._members:
            return False
        self._order.append(seq)
        self._members.add(seq)
        self.unsent += 1
        return True

    def on_socket(self, waiting: int) -> None:
        """All but the last ``waiting`` noted are on the socket."""
        self.unsent = min(waiting, len(self._order))

    def tried(self) -> list[int]:
        """The unacked ones that went to the socket, in order."""
        order = list(self._order)
        return order[:len(order) - self.unsent]

    def has_read(self, seq: int) -> bool:
        return seq in self._read

    def carries(self, seq: int) -> bool:
        """Whether ``seq`` was written here (acked or not, as far as remembered)."""
        return seq in self._members or seq in self._read

    def reads(self) -> list[int]:
        """The remembered reads, the last read last."""
        return list(self._read_order)

    def read(self, seqs: Iterable[int]) -> None:
        """The client has these, the last of them read last (only the last ``READ_KEPT``
        are remembered)."""
        for seq in seqs:
            if seq not in self._read:
                if len(self._read_order) >= READ_KEPT:
                    self._read.discard(self._read_order.popleft())
                self._read_order.append(seq)
                self._read.add(seq)

    def take_through(self, seq: int) -> list[int]:
        """The client acked ``seq``: everything written up to it, taken off (and noted as
        read); [] if the connection never wrote it (or it was acked already)."""
        if seq not in self._members:
            return []
        taken = []
        while True:
            first = self._order.popleft()
            self._members.discard(first)
            taken.append(first)
            if first == seq:
                self.read(taken)
                self.unsent = min(self.unsent, len(self._order))  # if it acked unseen ones
                return taken


class Missed:
    """The QoS 1 messages a connection could not take (its queue was full, or it had
    ``WRITTEN_KEPT`` unacked), by sequence number, to ask their owner for again once it
    has room, oldest first."""

    __slots__ = ("asked", "asked_at", "held_at", "seqs")

    def __init__(self) -> None:
        self.seqs: dict[int, None] = {}  # in the order missed
        self.asked: set[int] = set()  # asked for last, not come yet
        self.asked_at = -math.inf
        self.held_at = -math.inf  # when the owner was last told to hold its retries

    def add(self, seq: int) -> bool:
        """Note ``seq``; False if there is no room (the owner's retries bring it)."""
        self.asked.discard(seq)
        if len(self.seqs) < MISSED_KEPT or seq in self.seqs:
            self.seqs[seq] = None
            return True
        return False

    def arrived(self, seq: int) -> None:
        self.seqs.pop(seq, None)
        self.asked.discard(seq)

    def ask(self, now: float, most: int) -> list[int] | None:
        """The next ``most`` to ask for; None while the last asked for are still on their
        way (for up to ``RESEND_WAIT``)."""
        if self.asked and now - self.asked_at < RESEND_WAIT:
            return None
        seqs = list(itertools.islice(self.seqs, most))
        for seq in seqs:
            del self.seqs[seq]
        self.asked = set(seqs)
        self.asked_at = now
        return seqs


@dataclass(eq=False)
class ClientSession:
    """One authenticated connection, as the rest of the node sees it."""

    session: str
    user: str
    device: str
    remote: str
    subscriptions: set[str]
    #: called with the session when an object starts waiting in an empty ``queue``, and
    #: when a kick comes
    notify: Callable[[ClientSession], None] = lambda _session: None
    limit: int = CLIENT_QUEUE
    connected_at: float = field(default_factory=time.time)
    dropped: int = 0
    #: why the connection ended (set just before the session is detached)
    closed_reason: str = ""
    closed: bool = False
    #: what waits to be written to the client, oldest first
    queue: deque[Queued] = field(default_factory=deque)
    #: a ``kick`` object to end the connection with: it never waits in (or is dropped
    #: at) the queue; the output writes it after the queue, or at once if the client
    #: does not read what it has (``client_out.py``)
    kick: Object | None = None
    #: QoS 1 messages written on this connection and not yet acked, and those its client
    #: has read (made on the first: most connections of a push service only ever idle)
    written: Written | None = None
    #: QoS 1 messages not written again because this connection carries them already
    rewrites_skipped: int = 0
    #: called with the session and the QoS 1 messages not written to it because its client
    #: has them (acked on this connection, or named by its hello): they are acked again
    on_read: Callable[[ClientSession, list[int]], None] = lambda _session, _seqs: None
    #: QoS 1 messages dropped here, to ask their owner for once there is room (made on
    #: the first: a connection that keeps up never misses one)
    missed: Missed | None = None
    #: of those, how many were beyond ``MISSED_KEPT`` (left to the owner's retries)
    missed_over: int = 0
    #: called with the session when it starts dropping QoS 1 messages (and again every
    #: ``HOLD_RENEW`` while it does): their owner is to hold its retries
    on_full: Callable[[ClientSession], None] = lambda _session: None
    #: called with the session, the QoS 1 messages it missed that it now has room for,
    #: and whether more are to come: their owner is to send them again
    on_room: Callable[[ClientSession, list[int], bool], None] = (
        lambda _session, _seqs, _more: None)
    #: read before this connection, so not to be written on it: what a resumed session's
    #: client read, and the hello's ``last_seq`` (last)
    read_before: InitVar[list[int | None]] = ()  # type: ignore[assignment]

    def __post_init__(self, read_before: list[int | None]) -> None:
        read = [seq for seq in read_before if seq is not None]
        if read:
            self.written = Written()
            self.written.read(read)

    def wrote(self, batch: list[Queued]) -> list[Queued]:
        """Note the QoS 1 messages of ``batch`` as written (call it just before the
        write; they count as on the socket once ``on_socket`` says so); returns what to
        write: ``batch`` without those already on the way."""
        out = []
        read = []
        for obj in batch:
            if type(obj) is bytes:  # a QoS 0 message, packed (nothing to note)
                out.append(obj)
                continue
            seq = obj.get("seq")
            if obj.get("qos") == 1 and isinstance(seq, int):
                if self.written is None:
                    self.written = Written()
                written = self.written
                if written.has_read(seq):
                    read.append(seq)
                    continue
                if written.full():  # as from a full queue: asked for again later
                    self.dropped += 1
                    self._miss(seq)
                    continue
                if not written.add(seq):
                    self.rewrites_skipped += 1
                    continue
            out.append(obj)
        if read:
            self.on_read(self, read)
        return out

    def on_socket(self, waiting: int) -> None:
        """Every QoS 1 message noted by ``wrote`` but the last ``waiting`` has left the
        node for the socket (its frame went whole)."""
        if self.written is not None:
            self.written.on_socket(waiting)

    def tried(self) -> list[int]:
        """The QoS 1 messages of this connection that reached its socket and were not
        acked, in the order written: what counts one attempt each when it ends."""
        return self.written.tried() if self.written is not None else []

    def acked_through(self, seq: int) -> list[int]:
        """The client acked ``seq``: what this connection wrote up to it (it was read in
        order, so the client has all of it), taken off the list."""
        if self.written is None:
            return []
        taken = self.written.take_through(seq)
        if self.missed is not None:  # room on the connection's list, perhaps
            self._room()
        return taken

    def offer(self, obj: Queued) -> bool:
        """Queue ``obj`` for the client; False (and counted) when its queue is full (a
        QoS 1 message is then asked for again once there is room). A kick does not
        queue (``kick``): it ends the connection however full its queue is."""
        if type(obj) is dict and obj.get("t") == "kick":
            if self.closed:
                return False
            if self.kick is None:
                self.kick = obj
            self.notify(self)
            return True
        if self.closed or len(self.queue) >= self.limit:
            self.dropped += 1
            if not self.closed and type(obj) is dict and obj.get("qos") == 1:
                seq = obj.get("seq")  # a retry of one written here already is no loss
                if isinstance(seq, int) and not (self.written is not None
                                                  and self.written.carries(seq)):
                    self._miss(seq)
            return False
        self.queue.append(obj)
        if self.missed is not None and type(obj) is dict and obj.get("qos") == 1:
            self.missed.arrived(obj.get("seq"))  # type: ignore[arg-type]
        if len(self.queue) == 1:
            self.notify(self)
        return True

    def take(self, most: int) -> list[Queued]:
        """Up to ``most`` queued objects, oldest first, off the queue (the client server
        takes only when the socket has taken all it was given before)."""
        queue = self.queue
        if len(queue) <= most:
            batch = list(queue)
            queue.clear()
            if self.missed is not None:  # the queue has room: ask for what it missed
                self._room()
            return batch
        return [queue.popleft() for _ in range(most)]

    def _miss(self, seq: int) -> None:
        """A QoS 1 message dropped here: noted, and its owner told to hold its retries
        (once, and again every ``HOLD_RENEW`` while the drops go on)."""
        missed = self.missed
        if missed is None:
            missed = self.missed = Missed()
        if not missed.add(seq):
            self.missed_over += 1
        now = time.monotonic()
        if now - missed.held_at >= HOLD_RENEW:
            missed.held_at = now
            self.on_full(self)

    def _room(self) -> None:
        """The queue is empty: ask the owner for the next half queue of what was missed
        (not while the connection's list of unacked messages is full, which would drop
        them again); once all were asked for, the owner may retry as before."""
        missed = self.missed
        if (missed is None or self.closed or self.queue
                or (self.written is not None and self.written.full())):
            return
        seqs = missed.ask(time.monotonic(), max(1, self.limit // 2))
        if seqs is None:
            return
        more = bool(missed.seqs)
        if not more:
            self.missed = None  # a drop from now on starts anew (and holds again)
        self.on_room(self, seqs, more)


class LocalClients:
    """The sessions connected to this node, by user and by id."""

    def __init__(self, on_open: Callable[[ClientSession], None] | None = None,
                 on_close: Callable[[ClientSession], None] | None = None,
                 on_read: Callable[[ClientSession, list[int]], None] | None = None,
                 on_full: Callable[[ClientSession], None] | None = None,
                 on_room: Callable[[ClientSession, list[int], bool], None] | None = None
                 ) -> None:
        self._on_open = on_open
        self._on_close = on_close
        self._on_read = on_read
        self._on_full = on_full
        self._on_room = on_room
        self._by_user: dict[str, dict[str, ClientSession]] = {}
        self._by_id: dict[str, ClientSession] = {}
        self._by_topic: dict[str, set[ClientSession]] = {}
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_id)

    def users(self) -> int:
        return len(self._by_user)

    def sessions_of(self, user: str) -> list[ClientSession]:
        return list(self._by_user.get(user, {}).values())

    def attach(self, session: ClientSession) -> None:
        self.subscribe(session, tuple(session.subscriptions))  # restored by a resume
        self._by_user.setdefault(session.user, {})[session.session] = session
        self._by_id[session.session] = session
        self.counters["sessions_opened"] += 1
        if self._on_read is not None:
            session.on_read = self._on_read
        if self._on_full is not None:
            session.on_full = self._on_full
        if self._on_room is not None:
            session.on_room = self._on_room
        if self._on_open is not None:
            self._on_open(session)

    def sessions(self) -> list[ClientSession]:
        return list(self._by_id.values())

    def topics(self) -> int:
        return len(self._by_topic)

    def subscribe(self, session: ClientSession, topics: tuple[str, ...]) -> None:
        for topic in topics:
            self._by_topic.setdefault(topic, set()).add(session)

    def unsubscribe(self, session: ClientSession, topics: tuple[str, ...] | set[str]) -> None:
        for topic in topics:
            members = self._by_topic.get(topic)
            if members is not None:
                members.discard(session)
                if not members:
                    del self._by_topic[topic]

    def detach(self, session: ClientSession) -> None:
        self.unsubscribe(session, set(session.subscriptions))
        self._by_id.pop(session.session, None)
        devices = self._by_user.get(session.user, {})
        devices.pop(session.session, None)
        if not devices:
            self._by_user.pop(session.user, None)
        self.counters["sessions_closed"] += 1
        if session.missed_over:  # rare (MISSED_KEPT is the default --max-pending)
            self.counters["client_missed_over_limit"] += session.missed_over
        if self._on_close is not None:
            self._on_close(session)

    def deliver(self, user: str, obj: Queued) -> int:
        """Queue ``obj`` for every device of ``user`` here; how many took it."""
        sessions = self._by_user.get(user)  # offering neither adds nor removes sessions
        return self._offer(sessions.values(), obj) if sessions else 0

    def publish(self, topic: str, obj: Queued) -> int:
        """Queue ``obj`` for every session here subscribed to ``topic``."""
        return self._offer(list(self._by_topic.get(topic, ())), obj)

    def _offer(self, sessions: Iterable[ClientSession], obj: Queued) -> int:
        taken = 0
        for session in sessions:
            if session.offer(obj):
                taken += 1
            else:
                self.counters["client_queue_full_drops"] += 1
        return taken
