"""Every integer and length on the gossip wire at its bounds, as the machine meets it."""

from __future__ import annotations

from gossip.codec import META_MAX_SIZE, encode, ip_to_bytes
from gossip.wire import Alive, IndirectPing, PushNodeState, PushPull, Suspect
from membership.member import MemberState
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
