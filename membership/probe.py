"""Probing: one direct probe per interval, then indirect probes and a TCP fallback.

A probe is a record, not a blocking call (memberlist's ``probeNode`` waits on a
``select``; here each phase is a deadline the owner's ``tick`` fires):

1. ``start``: ping the next member round-robin; if it is suspect, piggyback a suspect
   about it so it can refute. Deadlines: ``probe_timeout`` and the scaled interval end.
2. no ack by ``probe_timeout``: ask ``indirect_checks`` alive peers to ping it for us
   (asking for nacks from peers that speak protocol >= 4), and try TCP if it speaks >= 3.
3. interval end: an ack (direct or relayed) or a TCP ack saves it; otherwise it is
   suspected. Lifeguard: the local health score goes down after a success, up after a
   failure by the number of nacks that did not come (a missing nack means the problem
   may be ours).

Beyond memberlist: if the interval-end deadline fires more than ``probe_timeout`` late,
this node was stalled (CPU starvation, SIGSTOP) and cannot tell a dead peer from its
own deafness, so the probe counts as inconclusive: no suspicion, health score up.

Also here: relaying other members' indirect probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gossip.codec import encode, ip_from_bytes, ip_to_bytes
from gossip.wire import Ack, IndirectPing, Nack, Ping, Suspect

from .awareness import Awareness
from .config import MembershipConfig
from .member import Address, Member, MemberEvent, MemberState
from .table import MemberTable
from .timers import Deadlines

PROBE = "probe"
PROBE_TIMEOUT = "probe_timeout"
PROBE_END = "probe_end"
RELAY = "relay"


class ProbeHost(Protocol):
    """What the prober needs from the machine that owns it."""

    config: MembershipConfig
    table: MemberTable
    timers: Deadlines
    awareness: Awareness

    #: (SourceAddr, SourcePort, SourceNode) for the pings we send
    source_fields: tuple[bytes, int, str]

    def next_seq(self) -> int: ...
    def send_messages(self, dst: Address, parts: list[bytes], to: Member | None) -> None: ...
    def start_tcp_ping(self, now: float, target: Member, seq: int, deadline: float) -> None: ...
    def suspect(self, now: float, target: Member) -> None: ...
    def count(self, name: str, n: int = 1) -> None: ...
    def reaped(self, event: MemberEvent) -> None: ...


@dataclass(slots=True)
class _Probe:
    seq: int
    target: Member
    end: float
    expected_nacks: int = 0
    nacks: int = 0
    tcp_ok: bool = False


@dataclass(frozen=True, slots=True)
class _Relay:
    reply_to: Address
    seq: int
    nack: bool


class Prober:
    def __init__(self, host: ProbeHost) -> None:
        self._host = host
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}

    @property
    def target(self) -> Member | None:
        return None if self._probe is None else self._probe.target

    # ---- the probe cycle ------------------------------------------------------------

    def start(self, now: float) -> None:
        host = self._host
        config = host.config
        interval = host.awareness.scale(config.probe_interval)
        host.timers.schedule(PROBE, now + interval)
        if self._probe is not None:
            # the previous probe ends exactly when this one starts: settle it first
            end_key = (PROBE_END, self._probe.seq)
            end = host.timers.when(end_key)
            if end is not None and end <= now:
                host.timers.cancel(end_key)
                self._finish(now, self._probe.seq, now - end)
        self._abandon()
        target, reaped = host.table.next_probe_target(now, config.gossip_to_the_dead_time)
        for event in reaped:
            host.reaped(event)
        if target is None:
            return
        seq = host.next_seq()
        parts = [encode(Ping(seq, target.name, *host.source_fields))]
        if target.state is not MemberState.ALIVE:
            parts.append(encode(Suspect(target.incarnation, target.name, host.table.me)))
        self._probe = _Probe(seq, target, now + interval)
        host.timers.schedule((PROBE_TIMEOUT, seq), now + config.probe_timeout)
        host.timers.schedule((PROBE_END, seq), now + interval)
        host.count("probes")
        host.send_messages(target.address, parts, target)

    def _abandon(self) -> None:
        if self._probe is not None:
            self._host.timers.cancel((PROBE_TIMEOUT, self._probe.seq))
            self._host.timers.cancel((PROBE_END, self._probe.seq))
            self._probe = None

    def _indirect(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq:
            return
        host = self._host
        target = probe.target
        peers = host.table.random_members(
            host.config.indirect_checks,
            lambda m: m.state is MemberState.ALIVE and m.name != target.name,
        )
        for peer in peers:
            nack = peer.pmax >= 4
            probe.expected_nacks += nack
            request = IndirectPing(
                seq, ip_to_bytes(target.address[0]), target.address[1], target.name, nack,
                *host.source_fields,
            )
            host.send_messages(peer.address, [encode(request)], peer)
        host.count("indirect_probes", len(peers))
        if not host.config.disable_tcp_pings and target.pmax >= 3:
            host.start_tcp_ping(now, target, seq, probe.end)

    def _finish(self, now: float, seq: int, late: float) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq:
            return
        self._probe = None
        host = self._host
        host.timers.cancel((PROBE_TIMEOUT, seq))
        if probe.tcp_ok:
            host.count("probes_saved_by_tcp")
            host.awareness.apply_delta(-1)
            return
        if late > host.config.probe_timeout:
            host.count("probes_stalled")
            host.awareness.apply_delta(1)
            return
        if probe.expected_nacks > 0:
            host.awareness.apply_delta(max(probe.expected_nacks - probe.nacks, 0))
        else:
            host.awareness.apply_delta(1)
        host.count("probes_failed")
        host.suspect(now, probe.target)

    # ---- inputs ---------------------------------------------------------------------

    def on_ack(self, now: float, ack: Ack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == ack.seq_no:
            self._probe = None
            self._host.timers.cancel((PROBE_TIMEOUT, probe.seq))
            self._host.timers.cancel((PROBE_END, probe.seq))
            self._host.awareness.apply_delta(-1)
            return
        relay = self._relays.pop(ack.seq_no, None)
        if relay is not None:
            self._host.timers.cancel((RELAY, ack.seq_no))
            self._host.send_messages(relay.reply_to, [encode(Ack(relay.seq))], None)
            return
        self._host.count("acks_unexpected")

    def on_tcp_ack(self, seq: int) -> None:
        if self._probe is not None and self._probe.seq == seq:
            self._probe.tcp_ok = True

    def on_nack(self, nack: Nack) -> None:
        if self._probe is not None and self._probe.seq == nack.seq_no:
            self._probe.nacks += 1

    def on_indirect_ping(self, now: float, src: Address, request: IndirectPing) -> None:
        host = self._host
        target = (ip_from_bytes(request.target), request.port)
        reply_to = reply_address(src, request.source_addr, request.source_port)
        seq = host.next_seq()
        ping = encode(Ping(seq, request.node, *host.source_fields))
        if request.port == 0 or len(ping) > host.config.udp_buffer_size // 2:
            # nobody can be pinged at port 0; a name that fills half a datagram is no
            # member's (ours are at most 128 characters): never send what we cannot
            host.count("indirect_pings_malformed")
            return
        self._relays[seq] = _Relay(reply_to, request.seq_no, request.nack)
        host.timers.schedule((RELAY, seq), now + host.config.probe_timeout)
        host.count("relayed_probes")
        host.send_messages(target, [ping], host.table.get(request.node))

    def fire(self, now: float, key: tuple[str, int], when: float) -> None:
        kind, seq = key
        if kind == PROBE_TIMEOUT:
            self._indirect(now, seq)
        elif kind == PROBE_END:
            self._finish(now, seq, now - when)
        elif kind == RELAY:
            relay = self._relays.pop(seq, None)
            if relay is not None and relay.nack:
                self._host.send_messages(relay.reply_to, [encode(Nack(relay.seq))], None)


def reply_address(src: Address, source_addr: bytes, source_port: int) -> Address:
    """Replies go to SourceAddr:SourcePort when both are given, else to the sender."""
    if source_addr and source_port:
        return (ip_from_bytes(source_addr), source_port)
    return src
