"""Deterministic cluster simulation: many :class:`Swim` machines on a virtual clock.

One heap of ``(t, seq, kind, node, payload)`` drives everything; the clock is the ``t``
of the popped event. Each step delivers a datagram (``receive_packet``), a stream
request or reply, or fires a node's deadline (``tick``), then drains that node's outbox
into the :class:`SimNetwork` and pushes its new ``next_deadline``. Every byte goes
through the real codec (and keyring, if one is given), so packet-size overruns show up.

No trio here: trio's scheduler is randomized, so the same seed would not give the same
run. Per-node randomness is ``random.Random(f"{seed}:{i}")``; the trace digest is a
blake2b over every datagram sent, and the same seed must give the same digest.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gossip.errors import DecodeError
from gossip.keyring import Keyring
from gossip.simnet import LinkProfile, SimNetwork

from .config import MembershipConfig
from .member import Address, EventKind, MemberEvent, MemberState
from .swim import SendPacket, SendStream, Swim

_PACKET, _TICK, _STREAM, _REPLY, _FAILED, _CALL = range(6)


@dataclass(slots=True)
class SimNode:
    index: int
    name: str
    address: Address
    swim: Swim
    up: bool = True
    generation: int = 0
    tick_at: float = math.inf
    seeds: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class Observed:
    """A member event as one node saw it, at virtual time ``t``."""

    t: float
    observer: str
    event: MemberEvent


@dataclass(slots=True)
class _Event:
    t: float
    seq: int
    kind: int
    node: int
    generation: int
    payload: object = field(compare=False)

    def __lt__(self, other: _Event) -> bool:
        return (self.t, self.seq) < (other.t, other.seq)


class SimCluster:
    def __init__(
        self,
        n: int,
        seed: int,
        *,
        config: Callable[[str], MembershipConfig] = MembershipConfig.lan,
        link: LinkProfile | None = None,
        keys: Iterable[bytes] = (),
        join: bool = True,
        start_spread: float = 0.0,
    ) -> None:
        self.seed = seed
        self.now = 0.0
        self.network = SimNetwork(random.Random(f"{seed}:net"), link)
        self._config = config
        self._keys = tuple(keys)
        self._heap: list[_Event] = []
        self._seq = 0
        self._digest = hashlib.blake2b(digest_size=16)
        self.nodes: list[SimNode] = []
        self._by_address: dict[Address, SimNode] = {}
        self.observed: list[Observed] = []
        self.packets = 0
        self.bytes = 0
        for index in range(n):
            self.add_node(join=join and index > 0, at=index * start_spread / max(n, 1))

    # ---- building and breaking ------------------------------------------------------

    @staticmethod
    def address_of(index: int) -> Address:
        return (f"10.{index // 62500}.{index // 250 % 250}.{index % 250 + 1}", 7946)

    def _make_swim(self, index: int, name: str, address: Address, now: float) -> Swim:
        keyring = None
        if self._keys:
            nonce_rng = random.Random(f"{self.seed}:{index}:nonce:{now}")
            keyring = Keyring(self._keys, nonce_rng.randbytes)
        rng = random.Random(f"{self.seed}:{index}:{now}")
        return Swim(self._config(name), address, keyring, rng, now)

    def add_node(self, *, join: bool = True, at: float | None = None) -> SimNode:
        index = len(self.nodes)
        name = f"node-{index}"
        address = self.address_of(index)
        start = self.now if at is None else at
        node = SimNode(index, name, address, self._make_swim(index, name, address, start))
        node.seeds = (self.nodes[0].address,) if join and self.nodes else ()
        self.nodes.append(node)
        self._by_address[address] = node
        self._push(start, _CALL, node, lambda: self._start(node))
        return node

    def _start(self, node: SimNode) -> None:
        if node.seeds:
            node.swim.join(self.now, node.seeds)
        self._after(node)

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        node.up = False
        node.generation += 1
        self.network.crash(node.address)

    def restart(self, index: int, *, address: Address | None = None) -> None:
        """Start a fresh process with the same name (incarnation 1 again) and rejoin."""
        node = self.nodes[index]
        self.network.restart(node.address)
        if address is not None:
            del self._by_address[node.address]
            node.address = address
            self._by_address[address] = node
        node.up = True
        node.generation += 1
        node.tick_at = math.inf
        node.swim = self._make_swim(index, node.name, node.address, self.now)
        seeds = [n.address for n in self.nodes if n.up and n is not node][:3]
        node.seeds = tuple(seeds)
        self._start(node)

    def pause(self, index: int, seconds: float) -> None:
        self.network.pause(self.nodes[index].address, self.now + seconds)

    def deliver(self, index: int, src: Address, data: bytes) -> None:
        """A datagram from outside the cluster (a forgery, a fuzz input) reaches node
        ``index`` now, through the same path as any other."""
        self._push(self.now, _PACKET, self.nodes[index], (src, data))

    def call(self, index: int, action: Callable[[Swim, float], None]) -> None:
        """Run ``action(swim, now)`` on node ``index`` now, as the shell runs a command."""
        node = self.nodes[index]
        self._push(self.now, _CALL, node, lambda: action(node.swim, self.now))

    def at(self, t: float, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``t`` (a fault, a leave, a check)."""
        self._seq += 1
        heapq.heappush(self._heap, _Event(t, self._seq, _CALL, -1, 0, action))

    # ---- running --------------------------------------------------------------------

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0].t <= t:
            self._step(heapq.heappop(self._heap))
        self.now = max(self.now, t)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, check_every: float = 0.05
    ) -> float | None:
        """Run until ``predicate()`` holds (checked every ``check_every``); its time or None."""
        deadline = self.now + timeout
        while self.now < deadline:
            self.run_until(min(self.now + check_every, deadline))
            if predicate():
                return self.now
        return None

    def trace_digest(self) -> str:
        return self._digest.hexdigest()

    # ---- views ----------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [node for node in self.nodes if node.up and not node.swim.leaving]

    def view(self, node: SimNode) -> dict[str, MemberState]:
        return {m.name: m.state for m in node.swim.members()}

    def converged(self, expected: Iterable[str] | None = None) -> bool:
        """Every live node sees exactly ``expected`` (default: the live nodes) alive."""
        want = set(expected) if expected is not None else {n.name for n in self.live()}
        for node in self.live():
            alive = {m.name for m in node.swim.members() if m.state is MemberState.ALIVE}
            if alive != want:
                return False
        return True

    def everyone_sees(self, name: str, states: Iterable[MemberState]) -> bool:
        wanted = set(states)
        return all(
            self.view(node).get(name, MemberState.DEAD) in wanted
            for node in self.live() if node.name != name
        )

    def events_about(self, name: str, kinds: Iterable[EventKind]) -> list[Observed]:
        wanted = set(kinds)
        return [o for o in self.observed if o.event.member.name == name and o.event.kind in wanted]

    # ---- machinery ------------------------------------------------------------------

    def _push(self, t: float, kind: int, node: SimNode, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Event(t, self._seq, kind, node.index, node.generation, payload))

    def _step(self, event: _Event) -> None:
        self.now = max(self.now, event.t)
        if event.kind == _CALL and event.node < 0:
            event.payload()  # type: ignore[operator]
            return
        node = self.nodes[event.node]
        if event.generation != node.generation or not node.up:
            if event.kind == _STREAM:
                self._refuse(event.payload)
            return
        paused = self.network.paused_until(node.address, event.t)
        if paused is not None:
            if event.kind == _STREAM and paused > event.payload[2].deadline:  # type: ignore[index]
                self._refuse(event.payload, at_deadline=True)
                return
            self._seq += 1
            event.t, event.seq = paused, self._seq
            heapq.heappush(self._heap, event)
            return
        swim = node.swim
        if event.kind == _PACKET:
            src, data = event.payload  # type: ignore[misc]
            swim.receive_packet(self.now, src, data)
        elif event.kind == _TICK:
            if event.t != node.tick_at:
                return
            node.tick_at = math.inf
            swim.tick(self.now)
        elif event.kind == _STREAM:
            self._serve_stream(node, event.payload)
        elif event.kind == _REPLY:
            token, data = event.payload  # type: ignore[misc]
            reader = swim.stream_reader()
            try:
                message = reader.feed(data)
                reader.eof()
            except DecodeError:
                swim.stream_failed(self.now, token)
            else:
                assert message is not None
                swim.receive_stream_reply(self.now, token, message)
        elif event.kind == _FAILED:
            swim.stream_failed(self.now, event.payload)  # type: ignore[arg-type]
        elif event.kind == _CALL:
            event.payload()  # type: ignore[operator]
        self._after(node)

    def _serve_stream(self, node: SimNode, payload: object) -> None:
        initiator, src, request = payload  # type: ignore[misc]
        reader = node.swim.stream_reader()
        try:
            message = reader.feed(request.data)
            reader.eof()
        except DecodeError:
            message = None
        reply = None if message is None else node.swim.receive_stream(self.now, src, message)
        if not request.expect_reply:
            return
        delay = self.network.stream_delay(node.address, src)
        if reply is None or delay is None:
            self._push(request.deadline, _FAILED, initiator, request.token)
        else:
            self._push(self.now + delay, _REPLY, initiator, (request.token, reply))

    def _refuse(self, payload: object, at_deadline: bool = False) -> None:
        """A stream whose target is gone (refused) or frozen past the initiator's deadline."""
        initiator, _src, request = payload  # type: ignore[misc]
        if initiator.up:
            when = request.deadline if at_deadline else self.now + 0.001
            self._push(when, _FAILED, initiator, request.token)

    def _after(self, node: SimNode) -> None:
        swim = node.swim
        for action in swim.drain_outbox():
            if isinstance(action, SendPacket):
                self._send_packet(node, action)
            else:
                self._send_stream(node, action)
        for member_event in swim.drain_events():
            self.observed.append(Observed(self.now, node.name, member_event))
        deadline = swim.next_deadline()
        if deadline < node.tick_at:
            node.tick_at = max(deadline, self.now)
            self._push(node.tick_at, _TICK, node, None)

    def _target(self, address: Address) -> SimNode | None:
        node = self._by_address.get(address)
        return node if node is not None and node.up else None

    def _send_packet(self, node: SimNode, packet: SendPacket) -> None:
        self.packets += 1
        self.bytes += len(packet.data)
        record = repr((round(self.now, 9), node.address, packet.dst)).encode()
        self._digest.update(record + packet.data)
        target = self._target(packet.dst)
        if target is None:
            return
        for delay in self.network.datagram_delays(node.address, packet.dst):
            self._push(self.now + delay, _PACKET, target, (node.address, packet.data))

    def _send_stream(self, node: SimNode, stream: SendStream) -> None:
        target = self._target(stream.dst)
        delay = self.network.stream_delay(node.address, stream.dst)
        if delay is None:
            self._push(stream.deadline, _FAILED, node, stream.token)
        elif target is None:
            self._push(self.now + 2 * delay, _FAILED, node, stream.token)  # refused
        else:
            self._push(self.now + delay, _STREAM, target, (node, node.address, stream))
