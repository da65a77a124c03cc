"""The Swim machine, driven by hand: every input a test chooses, every output inspected."""

from __future__ import annotations

import itertools
import random

import pytest

from gossip.codec import Envelope, decode_packet, encode, encode_packet
from gossip.wire import Ack, Alive, Dead, IndirectPing, Nack, Ping, Suspect
from membership.config import MembershipConfig
from membership.member import EventKind, MemberState
from membership.swim import SendPacket, Swim, SwimMisuse

from .harness import Wires

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def _packets(swim: Swim) -> list[tuple[tuple[str, int], tuple]]:
    out = []
    for action in swim.drain_outbox():
        assert isinstance(action, SendPacket)
        out.append((action.dst, decode_packet(action.data, Envelope()).messages))
    return out


def test_join_by_push_pull_makes_everyone_known() -> None:
    wires = Wires(3)
    wires.join_all()
    for observer in range(3):
        assert {m.name for m in wires.swims[observer].members()} == {"n0", "n1", "n2"}, observer
    assert all(s.joined for s in wires.swims)


def test_ping_is_answered_with_ack_to_the_source_address() -> None:
    swim = Wires(1).swims[0]
    ping = Ping(7, "n0", b"\x0a\x00\x00\x09", 9000, "other")
    swim.receive_packet(1.0, ("10.0.0.5", 7946), encode(ping))
    [(dst, messages)] = _packets(swim)
    assert dst == ("10.0.0.9", 9000)
    assert messages[0] == Ack(7)


def test_ping_for_another_node_is_not_answered() -> None:
    swim = Wires(1).swims[0]
    swim.receive_packet(1.0, ("10.0.0.5", 7946), encode(Ping(7, "someone-else")))
    assert _packets(swim) == []
    assert swim.statistics().counters["pings_for_another_node"] == 1


def test_a_silent_member_is_probed_indirectly_then_suspected() -> None:
    wires = Wires(3)
    wires.join_all()
    wires.cut.add(wires.swims[2].address)
    wires.advance(wires.now + 6.0)
    prober = wires.swims[0]
    assert wires.state(0, "n2") in (S, D)
    counters = prober.statistics().counters
    assert counters["indirect_probes"] >= 1 and counters["probes_failed"] >= 1
    assert counters.get("streams_failed_tcp_ping", 0) >= 1  # TCP fallback was tried


def test_indirect_probe_relay_acks_for_the_requester() -> None:
    wires = Wires(3)
    wires.join_all()
    relay, target = wires.swims[1], wires.swims[2]
    request = IndirectPing(
        41, b"\x0a\x00\x00\x03", 7946, "n2", True, b"\x0a\x00\x00\x01", 7946, "n0"
    )
    relay.receive_packet(wires.now, wires.swims[0].address, encode(request))
    [(dst, messages)] = _packets(relay)
    assert dst == target.address and isinstance(messages[0], Ping)
    target.receive_packet(wires.now, relay.address, encode(messages[0]))
    [(_dst, replies)] = _packets(target)
    relay.receive_packet(wires.now, target.address, encode(replies[0]))
    [(back, acked)] = _packets(relay)
    assert back == wires.swims[0].address and acked[0] == Ack(41)


def test_indirect_probe_relay_nacks_when_the_target_stays_silent() -> None:
    wires = Wires(2)
    relay = wires.swims[1]
    request = IndirectPing(9, b"\x0a\x00\x00\x07", 7946, "ghost", True, b"\x0a\x00\x00\x01", 7946)
    relay.receive_packet(0.0, ("10.0.0.1", 7946), encode(request))
    relay.drain_outbox()
    relay.tick(relay.config.probe_timeout + 0.01)
    nacks = [m for _dst, ms in _packets(relay) for m in ms if isinstance(m, Nack)]
    assert nacks == [Nack(9)]


def test_suspicion_about_myself_is_refuted_with_a_higher_incarnation() -> None:
    swim = Wires(1).swims[0]
    swim.receive_packet(1.0, ("10.0.0.5", 7946), encode(Suspect(4, "n0", "accuser")))
    assert swim.local_member.incarnation == 5
    assert swim.local_member.state is A
    assert swim.awareness.score == 1
    gossip = [m for _dst, ms in _packets_after_gossip(swim) for m in ms]
    assert any(isinstance(m, Alive) and m.node == "n0" and m.incarnation == 5 for m in gossip)


def _packets_after_gossip(swim: Swim):
    # a peer so the gossip has somewhere to go
    peer = Alive(1, "peer", b"\x0a\x00\x00\x05", 7946, b"", bytes((1, 5, 2, 2, 5, 5)))
    swim.receive_packet(1.0, ("10.0.0.5", 7946), encode(peer))
    swim.tick(swim.timers.when("gossip") or 2.0)
    return _packets(swim)


def test_dead_about_myself_is_refuted_unless_leaving() -> None:
    swim = Wires(1).swims[0]
    swim.receive_packet(1.0, ("10.0.0.5", 7946), encode(Dead(1, "n0", "accuser")))
    assert swim.local_member.incarnation == 2 and swim.local_member.state is A
    swim.leave(2.0)
    swim.receive_packet(2.0, ("10.0.0.5", 7946), encode(Dead(2, "n0", "accuser")))
    assert swim.local_member.state is L


def test_suspect_then_timeout_declares_dead_and_a_refutation_saves() -> None:
    wires = Wires(3)
    wires.join_all()
    observer = wires.swims[0]
    observer.receive_packet(wires.now, ("10.0.0.2", 7946), encode(Suspect(1, "n2", "n1")))
    assert wires.state(0, "n2") is S
    # refutation arrives in time: alive again
    observer.receive_packet(wires.now, ("10.0.0.3", 7946), encode(
        Alive(2, "n2", b"\x0a\x00\x00\x03", 7946, b"\xff\x80", bytes((1, 5, 2, 2, 5, 5)))
    ))
    assert wires.state(0, "n2") is A
    observer.receive_packet(wires.now, ("10.0.0.2", 7946), encode(Suspect(2, "n2", "n1")))
    assert wires.state(0, "n2") is S
    observer.drain_outbox()
    observer.tick(wires.now + 60.0)
    assert wires.state(0, "n2") is D
    kinds = [e.kind for e in observer.drain_events() if e.member.name == "n2"]
    assert kinds[-4:] == [EventKind.SUSPECTED, EventKind.RECOVERED, EventKind.SUSPECTED,
                          EventKind.FAILED]


def test_stale_news_is_ignored() -> None:
    wires = Wires(2)
    wires.join_all()
    observer = wires.swims[0]
    observer.receive_packet(1.0, ("10.0.0.2", 7946), encode(Alive(
        5, "n1", b"\x0a\x00\x00\x02", 7946, b"\xff\x80", bytes((1, 5, 2, 2, 5, 5)))))
    observer.receive_packet(1.0, ("10.0.0.2", 7946), encode(Suspect(4, "n1", "x")))
    observer.receive_packet(1.0, ("10.0.0.2", 7946), encode(Dead(4, "n1", "x")))
    assert observer.table.get("n1").state is A
    assert observer.table.get("n1").incarnation == 5


def test_graceful_leave_goes_first_and_directly_to_everyone() -> None:
    wires = Wires(4)
    wires.join_all()
    leaver = wires.swims[3]
    leaver.drain_outbox()
    leaver.leave(wires.now)
    sent = _packets(leaver)
    assert {dst for dst, _ in sent} == {s.address for s in wires.swims[:3]}
    for _dst, messages in sent:
        assert messages[0] == Dead(1, "n3", "n3")
    for dst, _ in sent:
        for index, swim in enumerate(wires.swims[:3]):
            if swim.address == dst:
                swim.receive_packet(wires.now, leaver.address, encode_packet(
                    [encode(Dead(1, "n3", "n3"))], Envelope()))
                assert wires.state(index, "n3") is L
    assert not leaver.leave_complete
    leaver.tick(wires.now + leaver.config.leave_timeout)
    assert leaver.leave_complete


def test_leave_completes_once_the_goodbye_is_fully_gossiped() -> None:
    wires = Wires(3)
    wires.join_all()
    leaver = wires.swims[2]
    leaver.leave(wires.now)
    wires.deliver()
    wires.advance(wires.now + 3.0)  # well under leave_timeout (5 s)
    assert leaver.leave_complete
    assert wires.state(0, "n2") is L and wires.state(1, "n2") is L


def test_incompatible_push_pull_is_refused_and_counted() -> None:
    from gossip.stream import encode_push_pull, encode_stream
    from gossip.wire import PushNodeState, PushPull

    swim = Wires(1).swims[0]
    bad = PushNodeState("old", b"\x0a\x00\x00\x09", 7946, b"", 1, 0, bytes((1, 5, 2, 0, 0, 0)))
    data = encode_stream(encode_push_pull(PushPull(False, (bad,))), Envelope())
    message = swim.stream_reader().feed(data)
    reply = swim.receive_stream(1.0, ("10.0.0.9", 7946), message)
    assert reply is not None  # we still answer, as memberlist does
    assert swim.table.get("old") is None
    assert swim.statistics().counters["push_pulls_incompatible"] == 1


def test_join_retries_with_backoff_until_a_seed_answers() -> None:
    wires = Wires(2, config=lambda name: MembershipConfig.lan(name, join_retry_interval=1.0))
    joiner, seed = wires.swims[1], wires.swims[0]
    wires.cut.add(seed.address)
    joiner.join(wires.now, [seed.address])
    wires.deliver()
    assert not joiner.joined
    wires.advance(wires.now + 1.5)
    wires.advance(wires.now + 2.5)
    assert joiner.statistics().counters["join_retries"] >= 2
    wires.cut.clear()
    wires.advance(wires.now + 4.5)
    assert joiner.joined
    assert seed.table.get("n1") is not None


def test_a_stalled_probe_is_inconclusive() -> None:
    wires = Wires(2)
    wires.join_all()
    prober = wires.swims[0]
    wires.cut.add(wires.swims[1].address)
    start = prober.timers.when("probe")
    prober.tick(start)
    prober.drain_outbox()
    # the process was frozen for 5 s: every probe deadline fires late at once
    prober.tick(start + 5.0)
    counters = prober.statistics().counters
    assert counters["probes_stalled"] == 1
    assert counters.get("probes_failed", 0) == 0
    assert wires.state(0, "n1") is A


def test_stream_reply_for_an_unknown_token_is_misuse() -> None:
    swim = Wires(1).swims[0]
    with pytest.raises(SwimMisuse):
        swim.stream_failed(0.0, 999)


def test_update_tags_gossips_a_new_incarnation() -> None:
    wires = Wires(2)
    wires.join_all()
    wires.swims[1].update_tags(wires.now, {"zone": "b"})
    wires.advance(wires.now + 1.0)
    member = wires.swims[0].table.get("n1")
    assert member.incarnation == 2
    from gossip.codec import decode_tags
    assert decode_tags(member.meta) == {"zone": "b"}


def test_same_seed_same_outputs() -> None:
    def run() -> list[bytes]:
        swim = Swim(MembershipConfig.lan("n0"), ("10.0.0.1", 7946), None, random.Random(5), 0.0)
        swim.receive_packet(0.0, ("10.0.0.2", 7946), encode(
            Alive(1, "n1", b"\x0a\x00\x00\x02", 7946, b"", bytes((1, 5, 2, 2, 5, 5)))))
        out = []
        for step in range(50):
            swim.tick(step * 0.1)
            out.extend(a.data for a in swim.drain_outbox())
        return out

    assert run() == run()


def test_news_is_gossiped_at_once_but_extra_rounds_are_rate_bounded() -> None:
    wires = Wires(4)
    wires.join_all()
    swim = wires.swims[0]
    swim.drain_outbox()
    interval = swim.config.gossip_interval
    assert swim.timers.when("gossip") is None  # nothing to say: no gossip tick wakes it
    now = wires.now + interval / 2  # the last round was at least half an interval ago
    swim.receive_packet(now, ("10.0.0.2", 7946), encode(Suspect(1, "n3", "n1")))
    assert swim.timers.when("gossip") == now  # news: gossip right away
    swim.tick(now)
    assert any(
        isinstance(m, Suspect) for _dst, ms in _packets(swim) for m in ms
    ), "the suspicion was not gossiped at once"
    swim.receive_packet(now, ("10.0.0.2", 7946), encode(Suspect(1, "n2", "n1")))
    assert swim.timers.when("gossip") == pytest.approx(now + interval / 4)


def test_gossip_ticks_while_there_is_news_and_stops_once_it_is_spent() -> None:
    """memberlist gossips every interval and sends nothing when its queue is empty; an
    idle node here does not wake for those empty rounds, and news is sent at the same
    moments as with them (at once, then every interval until retransmitted enough)."""
    wires = Wires(4)
    wires.join_all()
    swim = wires.swims[0]
    swim.drain_outbox()
    interval = swim.config.gossip_interval
    now = wires.now + interval
    swim.receive_packet(now, ("10.0.0.2", 7946), encode(Suspect(1, "n3", "n1")))
    rounds = []
    while (due := swim.timers.when("gossip")) is not None and len(rounds) < 100:
        swim.tick(due)
        rounds.append(due)
        assert any(isinstance(m, Suspect) for _dst, ms in _packets(swim) for m in ms)
    assert 1 < len(rounds) < 100  # news goes out more than once, then the ticks stop
    assert rounds[0] == now
    assert [b - a for a, b in itertools.pairwise(rounds)] == pytest.approx(
        [interval] * (len(rounds) - 1))


def test_events_name_the_accuser() -> None:
    wires = Wires(3)
    wires.join_all()
    observer = wires.swims[0]
    observer.drain_events()
    observer.receive_packet(wires.now, ("10.0.0.2", 7946), encode(Suspect(1, "n2", "n1")))
    observer.receive_packet(wires.now, ("10.0.0.2", 7946), encode(Dead(1, "n2", "n1")))
    events = [(e.kind, e.accuser) for e in observer.drain_events() if e.member.name == "n2"]
    assert events == [(EventKind.SUSPECTED, "n1"), (EventKind.FAILED, "n1")]
