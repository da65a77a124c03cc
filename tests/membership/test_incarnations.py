"""Incarnations at their bounds: the rule of ``docs/membership.md`` case by case."""

from __future__ import annotations

import pytest

from gossip.codec import Envelope, decode_packet, encode, ip_to_bytes
from gossip.wire import Alive, Dead, PushNodeState, PushPull, Suspect
from membership.member import Member, MemberState, NodeName
from membership.merge import (
    INCARNATION_SLACK, MAX_INCARNATION, AliveVerdict, judge_alive, plausible_about_me,
    plausible_accusation, plausible_alive, refutation,
)
from membership.swim import SendPacket, SendStream, Swim

from .harness import Wires

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
VSN = bytes((1, 5, 2, 2, 5, 5))
N1 = ("10.0.0.2", 7946)
N2 = ("10.0.0.3", 7946)
OUTSIDER = ("10.9.9.9", 7946)


@pytest.mark.parametrize(("current", "accused", "expected"), [
    (1, 0, 2), (1, 1, 2), (5, 9, 10), (MAX_INCARNATION - 2, 3, MAX_INCARNATION - 1),
    (MAX_INCARNATION - 1, MAX_INCARNATION - 1, MAX_INCARNATION),
    (MAX_INCARNATION, MAX_INCARNATION, MAX_INCARNATION), (1, MAX_INCARNATION, MAX_INCARNATION),
])
def test_a_refutation_never_leaves_the_u32(current: int, accused: int, expected: int) -> None:
    assert refutation(current, accused) == expected


def test_plausibility_bounds() -> None:
    assert plausible_accusation(7 + INCARNATION_SLACK, 7)
    assert not plausible_accusation(8 + INCARNATION_SLACK, 7)
    assert plausible_alive(8 + INCARNATION_SLACK, 7)  # the refutation of the above
    assert not plausible_alive(9 + INCARNATION_SLACK, 7)
    assert not plausible_accusation(MAX_INCARNATION, 1) and not plausible_alive(2**31, 1)
    # about us: a peer may hold an alive we missed (7 + 17) and believe 17 above it
    assert plausible_about_me(7 + 2 * (INCARNATION_SLACK + 1), 7)
    assert not plausible_about_me(8 + 2 * (INCARNATION_SLACK + 1), 7)


def _member(state: MemberState = A, incarnation: int = 3) -> Member:
    return Member(NodeName("x"), N1, incarnation, state, b"\xff\x80", tuple(VSN), 0.0)


def _alive(incarnation: int, meta: bytes = b"\xff\x80") -> Alive:
    return Alive(incarnation, "x", ip_to_bytes(N1[0]), N1[1], meta, VSN)


TOP = MAX_INCARNATION
FAR = 3 + INCARNATION_SLACK + 2


@pytest.mark.parametrize(("known", "alive", "flags", "verdict"), [
    (_member(), _alive(FAR - 1), {}, AliveVerdict.ACCEPT),
    (_member(), _alive(FAR), {}, AliveVerdict.IMPLAUSIBLE),
    (_member(), _alive(TOP), {}, AliveVerdict.IMPLAUSIBLE),
    (_member(), _alive(TOP), {"direct": True}, AliveVerdict.ACCEPT),
    (_member(), _alive(TOP), {"synced": True}, AliveVerdict.IMPLAUSIBLE),
    (_member(D), _alive(FAR), {}, AliveVerdict.IMPLAUSIBLE),
    (_member(D, 10), _alive(FAR), {"announced": 3}, AliveVerdict.IMPLAUSIBLE),
    # at the top: the member's own word wins, others' relay does not decide
    (_member(S, TOP), _alive(TOP), {"direct": True}, AliveVerdict.ACCEPT),
    (_member(D, TOP), _alive(TOP), {"direct": True}, AliveVerdict.ACCEPT),
    (_member(A, TOP), _alive(TOP, b"\xff\x81"), {"direct": True}, AliveVerdict.ACCEPT),
    (_member(A, TOP), _alive(TOP), {"direct": True}, AliveVerdict.IGNORE),
    (_member(S, TOP), _alive(TOP), {}, AliveVerdict.UNPROVEN),
    (_member(S, TOP - 1), _alive(TOP - 1), {"direct": True}, AliveVerdict.IGNORE),
])
def test_judge_alive_about_others(known, alive, flags, verdict) -> None:
    assert judge_alive(
        known, alive, N1, is_me=False, now=1.0, reclaim_time=0.0, local_meta=b"",
        local_vsn=VSN, **flags,
    ) is verdict


@pytest.mark.parametrize(("alive", "synced", "verdict"), [
    (_alive(3 + 2 * (INCARNATION_SLACK + 1)), False, AliveVerdict.REFUTE),  # believable
    (_alive(4 + 2 * (INCARNATION_SLACK + 1)), False, AliveVerdict.IMPLAUSIBLE),
    (_alive(TOP), False, AliveVerdict.IMPLAUSIBLE),
    (_alive(TOP), True, AliveVerdict.REFUTE),  # the cluster's view: answered
])
def test_judge_alive_about_myself(alive: Alive, synced: bool, verdict: AliveVerdict) -> None:
    assert judge_alive(
        _member(), alive, N1, is_me=True, now=1.0, reclaim_time=0.0, local_meta=b"",
        local_vsn=VSN, synced=synced,
    ) is verdict


def _counters(swim: Swim) -> dict[str, int]:
    return dict(swim.statistics().counters)


def _observer() -> tuple[Wires, Swim]:
    wires = Wires(3)
    wires.join_all()
    return wires, wires.swims[0]


def test_an_accusation_up_to_the_slack_is_believed_and_beyond_it_is_not() -> None:
    wires, observer = _observer()
    observer.receive_packet(wires.now, N2, encode(Suspect(2 + INCARNATION_SLACK, "n1", "n2")))
    assert wires.state(0, "n1") is A
    assert _counters(observer)["implausible_accusations"] == 1
    observer.receive_packet(wires.now, N2, encode(Dead(2 + INCARNATION_SLACK, "n1", "n2")))
    assert wires.state(0, "n1") is A
    observer.receive_packet(wires.now, N2, encode(Suspect(1 + INCARNATION_SLACK, "n1", "n2")))
    assert wires.state(0, "n1") is S
    # the bound is what n1 itself announced, not what the accusation we believed said
    observer.receive_packet(wires.now, N2, encode(Dead(1 + 2 * INCARNATION_SLACK, "n1", "n2")))
    assert wires.state(0, "n1") is S
    assert _counters(observer)["implausible_accusations"] == 3


def test_a_forged_leave_far_above_is_not_believed() -> None:
    wires, observer = _observer()
    observer.receive_packet(wires.now, OUTSIDER, encode(Dead(MAX_INCARNATION, "n1", "n1")))
    assert wires.state(0, "n1") is A


def test_a_relayed_alive_far_above_is_not_believed_and_the_member_is_asked() -> None:
    wires, observer = _observer()
    me1 = wires.swims[1].local_member
    far = Alive(MAX_INCARNATION, "n1", ip_to_bytes(N1[0]), N1[1], b"\xff\x81", VSN)
    observer.receive_packet(wires.now, N2, encode(far))
    member = observer.table.get("n1")
    assert member.incarnation == me1.incarnation and member.meta == me1.meta
    asks = [a for a in observer.drain_outbox() if isinstance(a, SendStream)]
    assert [a.dst for a in asks] == [N1]
    observer.receive_packet(wires.now, N2, encode(far))  # asked once per interval
    assert not [a for a in observer.drain_outbox() if isinstance(a, SendStream)]
    assert _counters(observer)["implausible_alives"] == 2
    assert _counters(observer)["implausible_checks"] == 1
    observer.receive_packet(wires.now, N1, encode(far))  # n1's own word
    assert observer.table.get("n1").incarnation == MAX_INCARNATION


def test_an_alive_claiming_its_senders_address_is_no_evidence() -> None:
    wires, observer = _observer()
    hijack = Alive(MAX_INCARNATION, "n1", ip_to_bytes(OUTSIDER[0]), OUTSIDER[1], b"", VSN)
    observer.receive_packet(wires.now, OUTSIDER, encode(hijack))
    assert observer.table.get("n1").address == N1


def test_gossip_about_myself_far_above_me_is_not_chased() -> None:
    swim = Wires(1).swims[0]
    for message in (
        Suspect(MAX_INCARNATION, "n0", "x"), Dead(MAX_INCARNATION, "n0", "x"),
        Alive(MAX_INCARNATION, "n0", ip_to_bytes("10.0.0.1"), 7946, b"", VSN),
    ):
        swim.receive_packet(1.0, OUTSIDER, encode(message))
    assert swim.local_member.incarnation == 1 and swim.local_member.state is A
    assert _counters(swim)["implausible_accusations"] == 2
    assert _counters(swim)["implausible_alives"] == 1


def _push_pull_about(swim: Swim, incarnation: int, state: MemberState) -> PushPull:
    me = swim.local_member
    return PushPull(False, (PushNodeState(
        me.name, ip_to_bytes(me.address[0]), me.address[1], me.meta, incarnation, int(state),
        VSN,
    ),))


@pytest.mark.parametrize("state", [S, D, A])
def test_a_push_pull_about_myself_is_answered_but_never_above_the_top(
    state: MemberState,
) -> None:
    swim = Wires(1).swims[0]
    swim.receive_stream(1.0, OUTSIDER, _push_pull_about(swim, MAX_INCARNATION, state))
    assert swim.local_member.incarnation == MAX_INCARNATION
    assert swim.local_member.state is A
    # and again at the top: the refutation still encodes and goes out
    swim.receive_stream(2.0, OUTSIDER, _push_pull_about(swim, MAX_INCARNATION, D))
    assert swim.local_member.incarnation == MAX_INCARNATION
    assert _counters(swim)["refutations_at_max_incarnation"] >= 1


def test_at_the_top_a_refutation_reaches_everyone_directly_and_wins() -> None:
    wires, observer = _observer()
    top = wires.swims[1]
    top.receive_stream(wires.now, OUTSIDER, _push_pull_about(top, MAX_INCARNATION, D))
    wires.deliver()
    for index in (0, 2):
        assert wires.swims[index].table.get("n1").incarnation == MAX_INCARNATION
    # an honest suspicion at the top, relayed to n1 by the suspecter
    observer.receive_packet(wires.now, N2, encode(Suspect(MAX_INCARNATION, "n1", "n2")))
    assert wires.state(0, "n1") is S
    # others relaying n1's alive at the top decide nothing: n0 asks n1 itself
    relayed = Alive(MAX_INCARNATION, "n1", ip_to_bytes(N1[0]), N1[1], top.local_member.meta, VSN)
    observer.receive_packet(wires.now, N2, encode(relayed))
    assert wires.state(0, "n1") is S
    assert _counters(observer)["alives_at_max_incarnation_unproven"] == 1
    observer.drain_outbox()
    top.receive_packet(wires.now, ("10.0.0.1", 7946), encode(Suspect(MAX_INCARNATION, "n1", "n0")))
    sent = [a for a in top.drain_outbox() if isinstance(a, SendPacket)]
    direct = {a.dst for a in sent if any(
        isinstance(m, Alive) and m.node == "n1" for m in decode_packet(a.data, Envelope()).messages
    )}
    assert direct == {("10.0.0.1", 7946), N2}
    for packet in sent:
        wires.by_address[packet.dst].receive_packet(wires.now, N1, packet.data)
    assert wires.state(0, "n1") is A and wires.state(2, "n1") is A
    assert top.local_member.incarnation == MAX_INCARNATION


def test_update_tags_at_the_top_keeps_the_incarnation_and_is_taken() -> None:
    wires, _observer_swim = _observer()
    top = wires.swims[1]
    top.receive_stream(wires.now, OUTSIDER, _push_pull_about(top, MAX_INCARNATION, D))
    wires.deliver()
    top.update_tags(wires.now, {"zone": "z9"})
    assert top.local_member.incarnation == MAX_INCARNATION
    wires.advance(wires.now + 2.0)
    from gossip.codec import decode_tags
    assert decode_tags(wires.swims[0].table.get("n1").meta) == {"zone": "z9"}


def test_an_accusation_resting_on_an_alive_about_us_we_missed_is_refuted() -> None:
    """Peers took a forged alive about n1 (plausible to them) that n1 never heard; an
    honest suspicion at that incarnation must still be refuted by n1."""
    wires, observer = _observer()
    n1 = wires.swims[1]
    forged = 1 + INCARNATION_SLACK + 1
    meta = n1.local_member.meta
    wires.cut.add(N1)
    for index in (0, 2):
        wires.swims[index].receive_packet(wires.now, OUTSIDER, encode(
            Alive(forged, "n1", ip_to_bytes(N1[0]), N1[1], meta, VSN)
        ))
    wires.deliver()
    wires.cut.clear()
    assert observer.table.get("n1").incarnation == forged and n1.local_member.incarnation == 1
    n1.receive_packet(wires.now, ("10.0.0.1", 7946), encode(Suspect(forged, "n1", "n0")))
    assert n1.local_member.incarnation == forged + 1
    wires.advance(wires.now + 1.0)
    assert observer.table.get("n1").incarnation == forged + 1
