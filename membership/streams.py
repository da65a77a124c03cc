"""TCP streams of the machine: join, push-pull anti-entropy, reconnect and TCP pings.

Every outgoing stream is a :class:`SendStream` the shell dials; it reports back with the
reply (``reply``) or a failure (``failed``) under the stream's token. Joins retry with
backoff until a seed answers. Beyond memberlist (``docs/membership.md``): early
anti-entropy after a join, and a reconnect loop to failed members and absent seeds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from gossip.codec import Envelope, encode, ip_to_bytes
from gossip.stream import encode_push_pull, encode_stream
from gossip.wire import Ack, Ping, PushNodeState, PushPull

from .config import MembershipConfig
from .member import Address, Member, MemberState, NodeName
from .table import MemberTable
from .timers import Deadlines

PUSH_PULL, RECONNECT, JOIN_RETRY = "push_pull", "reconnect", "join_retry"


@dataclass(frozen=True, slots=True)
class SendStream:
    """Open TCP to ``dst``, write ``data``, read one reply if ``expect_reply``.

    The shell reports back with ``receive_stream_reply(token, ...)`` or
    ``stream_failed(token)``; it gives up at ``deadline``.
    """

    dst: Address
    data: bytes
    token: int
    expect_reply: bool
    deadline: float
    #: what the stream is for (a :class:`StreamPurpose` value): the shell's logs say it
    purpose: str = ""


class StreamPurpose(Enum):
    JOIN = "join"
    PUSH_PULL = "push_pull"
    RECONNECT = "reconnect"
    TCP_PING = "tcp_ping"


@dataclass(frozen=True, slots=True)
class _Stream:
    purpose: StreamPurpose
    dst: Address
    seq: int = 0


class StreamHost(Protocol):
    config: MembershipConfig
    table: MemberTable
    timers: Deadlines
    envelope: Envelope
    source_fields: tuple[bytes, int, str]

    def emit_stream(self, stream: SendStream) -> None: ...
    def merge(
        self, now: float, states: Sequence[PushNodeState], source: Address | None
    ) -> bool: ...
    def tcp_ping_answered(self, seq: int) -> None: ...
    def count(self, name: str, n: int = 1) -> None: ...


class Streams:
    def __init__(self, host: StreamHost, rng: random.Random) -> None:
        self._host = host
        self._rng = rng
        self._open: dict[int, _Stream] = {}
        self._token = 0
        self._seeds: tuple[Address, ...] = ()
        self._join_tokens: set[int] = set()
        self._join_backoff = host.config.join_retry_interval
        self._early_sync: float | None = None
        self._failed: dict[NodeName, tuple[Address, float]] = {}
        #: False only while a join is under way and no seed has answered yet
        self.joined = True

    # ---- starting streams -----------------------------------------------------------

    def join(self, now: float, seeds: Iterable[Address], me: Address) -> None:
        unique: list[Address] = []
        for seed in seeds:
            if seed != me and seed not in unique:
                unique.append(seed)
        self._seeds = tuple(unique)
        self._join_backoff = self._host.config.join_retry_interval
        if self._seeds:
            self.joined = False
            self._join_round(now)

    def _join_round(self, now: float) -> None:
        for seed in self._seeds:
            token = self._open_stream(
                _Stream(StreamPurpose.JOIN, seed), self.push_pull_bytes(True), now
            )
            self._join_tokens.add(token)

    def tcp_ping(self, now: float, target: Member, seq: int, deadline: float) -> None:
        ping = encode(Ping(seq, target.name, *self._host.source_fields))
        self._open_stream(
            _Stream(StreamPurpose.TCP_PING, target.address, seq),
            encode_stream(ping, self._host.envelope), now, deadline,
        )

    def push_pull_bytes(self, join: bool) -> bytes:
        states = tuple(
            PushNodeState(
                m.name, ip_to_bytes(m.address[0]), m.address[1], m.meta, m.incarnation,
                int(m.state), bytes(m.vsn),
            )
            for m in self._host.table
        )
        return encode_stream(encode_push_pull(PushPull(join, states)), self._host.envelope)

    def _open_stream(
        self, stream: _Stream, data: bytes, now: float, deadline: float | None = None
    ) -> int:
        self._token += 1
        self._open[self._token] = stream
        if deadline is None:
            deadline = now + self._host.config.tcp_timeout
        self._host.emit_stream(
            SendStream(stream.dst, data, self._token, True, deadline, stream.purpose.value)
        )
        return self._token

    # ---- timers ---------------------------------------------------------------------

    def start_timers(self, now: float) -> None:
        config = self._host.config
        self._host.timers.schedule(PUSH_PULL, now + self._rng.random() * config.push_pull_interval)
        self._host.timers.schedule(RECONNECT, now + self._rng.random() * config.reconnect_interval)

    def fire(self, now: float, key: str, when: float) -> None:
        if key == PUSH_PULL:
            if self._early_sync is not None:
                self._early_sync *= 2
                if self._early_sync >= self._push_pull_interval():
                    self._early_sync = None
            self._reschedule(key, now, when, self._early_sync or self._push_pull_interval())
            peers = self._host.table.random_members(1, lambda m: m.state is MemberState.ALIVE)
            if peers:
                self._open_stream(
                    _Stream(StreamPurpose.PUSH_PULL, peers[0].address),
                    self.push_pull_bytes(False), now,
                )
        elif key == RECONNECT:
            self._reschedule(key, now, when, self._host.config.reconnect_interval)
            self._reconnect(now)
        elif key == JOIN_RETRY:
            self._join_round(now)

    def _reschedule(self, key: str, now: float, when: float, interval: float) -> None:
        following = when + interval
        self._host.timers.schedule(key, following if following > now else now + interval)

    def _push_pull_interval(self) -> float:
        n = len(self._host.table)
        interval = self._host.config.push_pull_interval
        return interval if n <= 32 else interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def _reconnect(self, now: float) -> None:
        horizon = now - self._host.config.reconnect_timeout
        for name, (_address, since) in list(self._failed.items()):
            if since < horizon:
                del self._failed[name]
        alive = {m.address for m in self._host.table if m.state is MemberState.ALIVE}
        candidates = sorted(
            {address for address, _since in self._failed.values()} | set(self._seeds)
        )
        candidates = [address for address in candidates if address not in alive]
        if candidates:
            self._host.count("reconnect_attempts")
            self._open_stream(
                _Stream(StreamPurpose.RECONNECT, self._rng.choice(candidates)),
                self.push_pull_bytes(True), now,
            )

    def check(self, now: float, address: Address) -> None:
        """A push-pull with the member at ``address``, to hear its own word (news.News._check)."""
        self._open_stream(
            _Stream(StreamPurpose.PUSH_PULL, address), self.push_pull_bytes(False), now
        )

    def member_failed(self, member: Member, now: float) -> None:
        self._failed[member.name] = (member.address, now)

    def member_back(self, member: Member) -> None:
        self._failed.pop(member.name, None)

    # ---- outcomes -------------------------------------------------------------------

    def knows(self, token: int) -> bool:
        return token in self._open

    def reply(self, now: float, token: int, message: object) -> None:
        stream = self._open.pop(token)
        if stream.purpose is StreamPurpose.TCP_PING:
            if isinstance(message, Ack) and message.seq_no == stream.seq:
                self._host.tcp_ping_answered(stream.seq)
            return
        ok = isinstance(message, PushPull) and self._host.merge(now, message.states, stream.dst)
        self._done(now, token, stream, ok)

    def failed(self, now: float, token: int) -> None:
        stream = self._open.pop(token)
        self._host.count(f"streams_failed_{stream.purpose.value}")
        self._done(now, token, stream, ok=False)

    def _done(self, now: float, token: int, stream: _Stream, ok: bool) -> None:
        if stream.purpose is StreamPurpose.RECONNECT and ok:
            self._host.count("reconnects")
        if stream.purpose is not StreamPurpose.JOIN or token not in self._join_tokens:
            return
        self._join_tokens.discard(token)
        timers = self._host.timers
        if ok:
            if not self.joined:
                # early anti-entropy (+1, +2, +4 ... probe intervals) catches members
                # whose alive rumour was spent before they knew us
                self._early_sync = self._host.config.probe_interval
                timers.schedule(PUSH_PULL, now + self._early_sync)
            self.joined = True
            timers.cancel(JOIN_RETRY)
            self._join_tokens.clear()
        elif not self._join_tokens and not self.joined:
            self._host.count("join_retries")
            timers.schedule(JOIN_RETRY, now + self._join_backoff)
            self._join_backoff = min(
                self._join_backoff * 2, self._host.config.join_retry_max_interval
            )
