"""Every integer and length on the gossip wire at its bounds, as the machine meets it."""

from __future__ import annotations

import random

from gossip.codec import META_MAX_SIZE, Envelope, decode_packet, encode, ip_to_bytes
from gossip.wire import (
    Ack, Alive, Dead, IndirectPing, Nack, Ping, PushNodeState, PushPull, Suspect,
)
from membership.member import MemberState
from membership.merge import MAX_INCARNATION
from membership.swim import Swim

from .harness import Wires

VSN = bytes((1, 5, 2, 2, 5, 5))
PEER = ("10.0.0.7", 7946)


def _counters(swim: Swim) -> dict[str, int]:
    return dict(swim.statistics().counters)


def _alive(name: str, port: int = 7946, meta: bytes = b"") -> Alive:
    return Alive(1, name, ip_to_bytes(PEER[0]), port, meta, VSN)


def test_an_alive_at_port_zero_or_with_meta_above_memberlists_limit_is_not_taken() -> None:
    swim = Wires(1).swims[0]
    swim.receive_packet(1.0, PEER, encode(_alive("port-zero", port=0)))
    swim.receive_packet(1.0, PEER, encode(_alive("fat", meta=b"m" * (META_MAX_SIZE + 1))))
    swim.receive_packet(1.0, PEER, encode(_alive("at-limit", meta=b"m" * META_MAX_SIZE)))
    assert {m.name for m in swim.members()} == {"n0", "at-limit"}
    assert _counters(swim)["alives_malformed"] == 2


def test_an_indirect_ping_to_port_zero_or_a_giant_name_is_not_relayed() -> None:
    swim = Wires(1).swims[0]
    target = ip_to_bytes("10.0.0.8")
    swim.receive_packet(1.0, PEER, encode(IndirectPing(9, target, 0, "target", True)))
    giant = "t" * 60_000  # fits the 64 KiB datagram it came in, not one of ours
    swim.receive_packet(1.0, PEER, encode(IndirectPing(9, target, 7946, giant, True)))
    assert swim.drain_outbox() == []
    assert _counters(swim)["indirect_pings_malformed"] == 2


def test_news_too_large_for_our_datagrams_is_not_queued() -> None:
    wires = Wires(2)
    wires.join_all()
    observer = wires.swims[0]
    depth = observer.statistics().queue_depth
    accuser = "x" * observer.config.udp_buffer_size
    observer.receive_packet(wires.now, PEER, encode(Suspect(1, "n1", accuser)))
    assert wires.state(0, "n1") is MemberState.SUSPECT  # believed, but not re-gossiped
    assert observer.statistics().queue_depth == depth
    assert _counters(observer)["broadcasts_too_large"] == 1


def test_a_push_pull_state_outside_memberlists_states_is_counted() -> None:
    swim = Wires(1).swims[0]
    state = PushNodeState("odd", ip_to_bytes(PEER[0]), PEER[1], b"", 1, 7, VSN)
    swim.receive_stream(1.0, PEER, PushPull(False, (state,)))
    assert "odd" not in {m.name for m in swim.members()}
    assert _counters(swim)["push_pull_unknown_states"] == 1


# ---- a seeded fuzz of the gossip fields at their bounds ------------------------------

U32S = (0, 1, 2, 3, 16, 17, 18, 19, 1000, 2**31, MAX_INCARNATION - 1, MAX_INCARNATION)
PORTS = (0, 1, 7946, 65535)
NAMES = ("n0", "n1", "n2", "ghost", "g" * 300)
ADDRESSES = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03",
             b"\x0a\x09\x09\x09", bytes(16), b"\x0a\x00")
METAS = (b"", b"\xff\x80", b"m" * META_MAX_SIZE, b"m" * (META_MAX_SIZE + 1))
VSNS = (VSN, b"", bytes((0, 5, 2, 2, 5, 5)), bytes((1, 5, 2)), bytes((1, 255, 255, 2, 5, 5)))
SOURCES = (PEER, ("10.0.0.1", 7946), ("10.0.0.2", 7946), ("10.0.0.3", 7946))


def _draw(rng: random.Random) -> object:
    c = rng.choice
    kind = rng.randrange(8)
    if kind == 0:
        return Alive(c(U32S), c(NAMES), c(ADDRESSES), c(PORTS), c(METAS), c(VSNS))
    if kind == 1:
        return Suspect(c(U32S), c(NAMES), c(NAMES))
    if kind == 2:
        return Dead(c(U32S), c(NAMES), c(NAMES))
    if kind == 3:
        return Ping(c(U32S), c(NAMES), c(ADDRESSES), c(PORTS), c(NAMES))
    if kind == 4:
        return IndirectPing(c(U32S), c(ADDRESSES), c(PORTS), c(NAMES), c((True, False)))
    if kind == 5:
        return Ack(c(U32S))
    if kind == 6:
        return Nack(c(U32S))
    states = tuple(
        PushNodeState(c(NAMES), c(ADDRESSES), c(PORTS), c(METAS), c(U32S), c((0, 1, 2, 3, 9)),
                      c(VSNS))
        for _ in range(rng.randrange(1, 4))
    )
    return PushPull(c((True, False)), states)


def test_gossip_at_every_bound_leaves_all_we_send_decodable_and_nobody_excluded(
    seed: int,
) -> None:
    """600 messages with each field at its edges, by UDP and push-pull, to every node;
    meanwhile every datagram we send must decode whole and no incarnation leave the u32;
    after the noise stops, the three real nodes must see each other alive again."""
    rng = random.Random(seed)
    wires = Wires(3)
    wires.join_all()
    for step in range(600):
        target = rng.choice(wires.swims)
        message = _draw(rng)
        if isinstance(message, PushPull):
            target.receive_stream(wires.now, rng.choice(SOURCES), message)
        else:
            target.receive_packet(wires.now, rng.choice(SOURCES), encode(message))
        wires.deliver()
        if step % 20 == 0:
            wires.advance(wires.now + 0.5)
    for swim in wires.swims:
        assert swim.local_member.incarnation <= MAX_INCARNATION
    for _src, _dst, data in wires.sent:
        decoded = decode_packet(data, Envelope())
        assert decoded.dropped == 0, decoded
    wires.advance(wires.now + 120.0)
    for observer in range(3):
        views = {name: wires.state(observer, name) for name in ("n0", "n1", "n2")}
        assert set(views.values()) == {MemberState.ALIVE}, (seed, observer, views)
