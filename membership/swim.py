"""The SWIM machine: memberlist's protocol (v5, Lifeguard) as a sans-IO state machine.

Inputs are bytes and events with a ``now``; outputs are addressed bytes and member
events the owner drains (``drain_outbox``, ``drain_events``), in the manner of h11 and
wsproto. The machine never reads a clock, never touches a socket and takes randomness
only from the ``rng`` it is given, so a simulator can run hundreds of them
deterministically and a trio shell can run one for real.

The merge rules (alive / suspect / dead, refutation, push-pull merge and its version
check) follow ``docs/gossip-wire.md`` §7. Our additions are marked "beyond memberlist"
and described in ``docs/membership.md``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from gossip.codec import (
    COMPOUND_HEADER, COMPOUND_PART_OVERHEAD, CRC_OVERHEAD, MAX_PACKET_INFLATE, Envelope,
    decode_packet, encode, encode_packet, encode_tags, ip_to_bytes,
)
from gossip.stream import StreamMessage, StreamReader, encode_stream

from gossip.errors import DecodeError
from gossip.keyring import Keyring
from gossip.queue import BroadcastQueue, retransmit_limit
from gossip.wire import (
    Ack, Alive, Dead, Err, IndirectPing, Nack, Ping, PushNodeState, PushPull, Suspect, User,
)

from .awareness import Awareness
from .config import MembershipConfig
from .member import Address, EventKind, Member, MemberEvent, MemberState, NodeName
from .merge import MAX_INCARNATION
from .news import SUSPICION, News
from .probe import PROBE, PROBE_END, PROBE_TIMEOUT, RELAY, Prober, reply_address
from .streams import JOIN_RETRY, PUSH_PULL, RECONNECT, SendStream, Streams
from .table import MemberTable
from .timers import Deadlines


class SwimMisuse(RuntimeError):
    """The machine was called in a way that is a bug in the caller (not remote input)."""


@dataclass(frozen=True, slots=True)
class SendPacket:
    dst: Address
    data: bytes


Action = SendPacket | SendStream


@dataclass(frozen=True, slots=True)
class SwimStatistics:
    name: str
    incarnation: int
    health_score: int
    members: int
    alive: int
    suspect: int
    dead: int
    left: int
    queue_depth: int
    joined: bool
    leaving: bool
    counters: Mapping[str, int]


_LEAVE = object()
GOSSIP, LEAVE_TIMEOUT = "gossip", "leave_timeout"


class Swim:
    """One node's membership. See the module docstring for the contract."""

    def __init__(
        self,
        config: MembershipConfig,
        address: Address,
        keyring: Keyring | None,
        rng: random.Random,
        now: float,
    ) -> None:
        self.config = config
        self.name = NodeName(config.name)
        self.address = address
        self._rng = rng
        self.envelope = Envelope(
            keyring, config.label, config.gossip_verify_incoming, config.gossip_verify_outgoing,
            compress=config.enable_compression,
            max_inflate=max(MAX_PACKET_INFLATE, config.udp_buffer_size),
        )
        self._meta = encode_tags(dict(config.tags))
        self.source_fields = (ip_to_bytes(address[0]), address[1], config.name)
        me = Member(self.name, address, 1, MemberState.ALIVE, self._meta, config.vsn, now)
        self.table = MemberTable(me, rng)
        self.timers = Deadlines()
        self.awareness = Awareness(config.awareness_max_multiplier)
        self._queue = BroadcastQueue()
        self._prober = Prober(self)
        self._news = News(self)
        self._streams = Streams(self, rng)
        self._outbox: list[Action] = []
        self._events: list[MemberEvent] = [MemberEvent(EventKind.JOINED, me, None)]
        self._counters: Counter[str] = Counter()
        self._seq = 0
        self.leaving = False
        self._left = False
        self._last_gossip = -math.inf
        self._queue.queue(me.name, self.alive_bytes(me))
        for key, interval in ((PROBE, config.probe_interval), (GOSSIP, config.gossip_interval)):
            self.timers.schedule(key, now + rng.random() * interval)
        self._streams.start_timers(now)

    # ---- public API -----------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """False only while a join is under way and no seed has answered yet."""
        return self._streams.joined

    @property
    def local_member(self) -> Member:
        return self.table.local

    @property
    def leave_complete(self) -> bool:
        """True once our leave has been gossiped enough (or timed out): safe to exit."""
        return self._left

    def members(self) -> tuple[Member, ...]:
        return self.table.snapshot()

    def stream_reader(self) -> StreamReader:
        """A reader for one incoming TCP stream (label and keyring as ours)."""
        return StreamReader(self.envelope)

    def receive_packet(self, now: float, src: Address, data: bytes) -> str | None:
        """One UDP datagram. Bad bytes are counted and dropped, never raised; returns why
        the whole datagram was dropped (``key``, ``label``, ...), or None."""
        self.count("packets_received")
        self.count("bytes_received", len(data))
        try:
            decoded = decode_packet(data, self.envelope)
        except DecodeError as exc:
            self.count(f"dropped_{exc.reason}")
            return exc.reason
        if decoded.dropped:
            self.count(f"dropped_{decoded.reason}", decoded.dropped)
        for message in decoded.messages:
            try:
                self._dispatch(now, src, message)
            except (DecodeError, ValueError):
                self.count("dropped_malformed")
        return None

    def receive_stream(self, now: float, src: Address, message: StreamMessage) -> bytes | None:
        """A complete request read from an incoming stream; returns the framed reply."""
        if isinstance(message, Ping):
            if message.node and message.node != self.name:
                self.count("pings_for_another_node")
                return None
            return encode_stream(encode(Ack(message.seq_no)), self.envelope)
        if isinstance(message, PushPull):
            self.count("push_pulls_received")
            reply = self._streams.push_pull_bytes(message.join)
            self._news.merge(now, message.states, None)
            return reply
        if isinstance(message, User):
            self.count("user_messages_ignored")
            return None
        self.count("streams_unexpected")
        return encode_stream(encode(Err("unexpected stream message")), self.envelope)

    def receive_stream_reply(self, now: float, token: int, message: StreamMessage) -> None:
        if not self._streams.knows(token):
            raise SwimMisuse(f"no stream with token {token}")
        self._streams.reply(now, token, message)

    def stream_failed(self, now: float, token: int) -> None:
        """The shell could not dial, write or read the stream ``token`` in time."""
        if not self._streams.knows(token):
            raise SwimMisuse(f"no stream with token {token}")
        self._streams.failed(now, token)

    def tick(self, now: float) -> None:
        """Fire every deadline that is due."""
        while (expired := self.timers.pop_expired(now)) is not None:
            key, when = expired
            self._fire(now, key, when)
        self._check_leave()

    def next_deadline(self) -> float:
        return self.timers.next_deadline()

    def join(self, now: float, seeds: Iterable[Address]) -> None:
        """Push-pull with every seed (retried with backoff until one answers)."""
        self._streams.join(now, seeds, self.address)

    def leave(self, now: float) -> None:
        """Say goodbye: a dead-from-self broadcast that goes before anything else."""
        if self.leaving:
            return
        self.leaving = True
        me = self.table.local
        goodbye = encode(Dead(me.incarnation, me.name, me.name))
        self.broadcast(now, me.name, goodbye, priority=True, notify=_LEAVE)
        self.store(now, replace(me, state=MemberState.LEFT, state_change=now))
        # beyond memberlist: tell every live member directly, not only by epidemic
        others = [m for m in self.table if m.name != self.name and m.state is MemberState.ALIVE]
        for member in others:
            self.send_messages(member.address, [goodbye], member)
        if not others:
            self._left = True
        self.timers.schedule(LEAVE_TIMEOUT, now + self.config.leave_timeout)

    def update_tags(self, now: float, tags: Mapping[str, str]) -> None:
        """Change our metadata; gossiped as an alive with the next incarnation."""
        me = self.table.local
        self._meta = encode_tags(dict(tags))
        # at the top the incarnation stays: peers take our own word there (merge.judge_alive)
        updated = replace(me, incarnation=min(me.incarnation + 1, MAX_INCARNATION), meta=self._meta)
        self.store(now, updated)
        self.queue_alive(now, updated)

    def drain_outbox(self) -> list[Action]:
        self._check_leave()
        out, self._outbox = self._outbox, []
        return out

    def drain_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def statistics(self) -> SwimStatistics:
        counts = Counter(m.state for m in self.table)
        return SwimStatistics(
            name=self.name, incarnation=self.table.local.incarnation,
            health_score=self.awareness.score, members=len(self.table),
            alive=counts[MemberState.ALIVE], suspect=counts[MemberState.SUSPECT],
            dead=counts[MemberState.DEAD], left=counts[MemberState.LEFT],
            queue_depth=len(self._queue), joined=self.joined, leaving=self.leaving,
            counters=MappingProxyType(dict(self._counters)),
        )

    # ---- used by the prober ---------------------------------------------------------

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) % 2**32
        return self._seq

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    def send_messages(self, dst: Address, parts: list[bytes], to: Member | None) -> None:
        """Send ``parts`` in one datagram, filling the rest with queued broadcasts."""
        crc = to is not None and to.pmax >= 5
        used = sum(len(part) + COMPOUND_PART_OVERHEAD for part in parts) + COMPOUND_HEADER
        budget = self.config.udp_buffer_size - self.envelope.overhead - used
        budget -= CRC_OVERHEAD if crc else 0
        parts = parts + self._queue.take(
            COMPOUND_PART_OVERHEAD, budget, self._retransmit_limit(), 255 - len(parts)
        )
        self._emit(dst, encode_packet(parts, self.envelope, crc))

    def start_tcp_ping(self, now: float, target: Member, seq: int, deadline: float) -> None:
        self._streams.tcp_ping(now, target, seq, deadline)

    def tcp_ping_answered(self, seq: int) -> None:
        self._prober.on_tcp_ack(seq)

    def emit_stream(self, stream: SendStream) -> None:
        self._outbox.append(stream)

    def suspect(self, now: float, target: Member) -> None:
        self._news.on_suspect(now, Suspect(target.incarnation, target.name, self.name))

    def reaped(self, event: MemberEvent) -> None:
        self.count("members_reaped")
        self._news.forget(event.member.name)
        self._events.append(event)

    # ---- dispatch -------------------------------------------------------------------

    def _dispatch(self, now: float, src: Address, message: object) -> None:
        if isinstance(message, Ping):
            if message.node and message.node != self.name:
                self.count("pings_for_another_node")
                return
            reply_to = reply_address(src, message.source_addr, message.source_port)
            self.send_messages(reply_to, [encode(Ack(message.seq_no))], None)
        elif isinstance(message, Ack):
            self._prober.on_ack(now, message)
        elif isinstance(message, Nack):
            self._prober.on_nack(message)
        elif isinstance(message, IndirectPing):
            self._prober.on_indirect_ping(now, src, message)
        elif isinstance(message, Alive):
            self._news.on_alive(now, message, src)
        elif isinstance(message, Suspect):
            self._news.on_suspect(now, message, gossip=True)
        elif isinstance(message, Dead):
            self._news.on_dead(now, message, gossip=True)
        elif isinstance(message, User):
            self.count("user_messages_ignored")
        else:
            self.count("packets_unexpected")

    def _fire(self, now: float, key: object, when: float) -> None:
        if key == PROBE:
            self._prober.start(now)
        elif key == GOSSIP:
            self._last_gossip = now
            self._gossip(now)
            if self._queue:  # with nothing to say, no tick until ``broadcast`` queues news
                self.timers.schedule(GOSSIP, now + self.config.gossip_interval)
        elif key in (PUSH_PULL, RECONNECT, JOIN_RETRY):
            self._streams.fire(now, key, when)  # type: ignore[arg-type]
        elif key == LEAVE_TIMEOUT:
            self._left = True
        elif isinstance(key, tuple) and key[0] in (PROBE_TIMEOUT, PROBE_END, RELAY):
            self._prober.fire(now, key, when)  # type: ignore[arg-type]
        elif isinstance(key, tuple) and key[0] == SUSPICION:
            self._news.suspicion_expired(now, key[1])

    # ---- used by the rules (news.py) -----------------------------------------------

    @property
    def local_meta(self) -> bytes:
        return self._meta

    def merge(
        self, now: float, states: Sequence[PushNodeState], source: Address | None
    ) -> bool:
        """Merge a remote member table (push-pull reply from ``source``, the address we
        dialed); False if memberlist's version check refuses it."""
        return self._news.merge(now, states, source)

    def check_with(self, now: float, address: Address) -> None:
        """A push-pull with the member at ``address``, to hear its own word."""
        self._streams.check(now, address)

    def store(self, now: float, member: Member, accuser: str | None = None) -> None:
        event = self.table.apply(member, accuser)
        if event is None:
            return
        if event.kind is EventKind.FAILED:
            self._streams.member_failed(member, now)
        elif event.kind in (EventKind.JOINED, EventKind.RECOVERED, EventKind.LEFT):
            self._streams.member_back(member)
        self._events.append(event)

    def queue_alive(self, now: float, member: Member) -> None:
        self.broadcast(now, member.name, self.alive_bytes(member))

    @staticmethod
    def alive_bytes(member: Member) -> bytes:
        return encode(Alive(
            member.incarnation, member.name, ip_to_bytes(member.address[0]),
            member.address[1], member.meta, bytes(member.vsn),
        ))

    def broadcast(
        self, now: float, subject: str, message: bytes, *, priority: bool = False,
        notify: object = None,
    ) -> None:
        """Queue news and, beyond memberlist, gossip it now rather than at the next tick.

        News waits for no gossip tick (memberlist waits up to ``gossip_interval`` per hop);
        an extra round comes at most every quarter interval, and the retransmit limit
        still bounds how often each message is sent.
        """
        if len(message) > self._largest_part:
            # it could never leave in a datagram of ours: queued, it would only sit there
            self.count("broadcasts_too_large")
            return
        self._queue.queue(subject, message, priority=priority, notify=notify)
        eager = max(now, self._last_gossip + self.config.gossip_interval / 4)
        scheduled = self.timers.when(GOSSIP)
        if scheduled is None or eager < scheduled:
            self.timers.schedule(GOSSIP, eager)

    # ---- gossip, push-pull, join, reconnect -----------------------------------------

    @property
    def _largest_part(self) -> int:
        """The largest message a datagram of ours can carry beside the compound framing."""
        return (
            self.config.udp_buffer_size - self.envelope.overhead - COMPOUND_HEADER
            - COMPOUND_PART_OVERHEAD - CRC_OVERHEAD
        )

    def _retransmit_limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, len(self.table))

    def _emit(self, dst: Address, data: bytes) -> None:
        self.count("packets_sent")
        self.count("bytes_sent", len(data))
        self._outbox.append(SendPacket(dst, data))

    def _gossip(self, now: float) -> None:
        def reachable(member: Member) -> bool:
            if member.state in (MemberState.ALIVE, MemberState.SUSPECT):
                return True
            recently = now - member.state_change <= self.config.gossip_to_the_dead_time
            return member.state is MemberState.DEAD and recently

        for target in self.table.random_members(self.config.gossip_nodes, reachable):
            crc = target.pmax >= 5
            budget = self.config.udp_buffer_size - self.envelope.overhead - COMPOUND_HEADER
            budget -= CRC_OVERHEAD if crc else 0
            parts = self._queue.take(COMPOUND_PART_OVERHEAD, budget, self._retransmit_limit())
            if not parts:
                return
            self._emit(target.address, encode_packet(parts, self.envelope, crc))

    def _check_leave(self) -> None:
        if _LEAVE in self._queue.drain_finished():
            self._left = True
