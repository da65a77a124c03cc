"""Case tables for the pure maths and rules (like memberlist's suspicion_test.go)."""

from __future__ import annotations

import pytest

from gossip.wire import Alive, PushNodeState
from membership.awareness import Awareness
from membership.member import Member, MemberState, NodeName, supersedes
from membership.merge import AliveVerdict, compatible, judge_alive
from membership.suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout
from membership.timers import Deadlines

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


@pytest.mark.parametrize(("n", "k", "elapsed", "expected"), [
    (0, 3, 0.0, 30.0), (1, 3, 2.0, 14.0), (2, 3, 3.0, 4.81), (3, 3, 4.0, -2.0),
    (4, 3, 5.0, -3.0), (5, 3, 10.0, -8.0),
])
def test_remaining_suspicion_time(n: int, k: int, elapsed: float, expected: float) -> None:
    assert remaining_suspicion_time(n, k, elapsed, 2.0, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "expected"), [
    (5, 1.0), (10, 1.0), (50, 1.698), (100, 2.0), (500, 2.698), (1000, 3.0),
])
def test_suspicion_timeout(n: int, expected: float) -> None:
    assert suspicion_timeout(3, n, 1.0) / 3 == pytest.approx(expected)


def test_suspicion_confirmations_shrink_the_deadline_once_each() -> None:
    suspicion = Suspicion("accuser", k=3, minimum=2.0, maximum=30.0, start=100.0)
    assert suspicion.deadline == 130.0
    assert not suspicion.confirm("accuser", 101.0)  # the accuser is not a confirmation
    assert suspicion.confirm("b", 102.0)
    assert suspicion.deadline == pytest.approx(116.0)
    assert not suspicion.confirm("b", 102.5)
    assert suspicion.confirm("c", 103.0)
    assert suspicion.confirm("d", 104.0)
    assert suspicion.deadline == pytest.approx(104.0)  # reached the minimum (elapsed 4 > 2)
    assert not suspicion.confirm("e", 104.0)  # k reached


def test_without_expected_confirmations_the_minimum_applies() -> None:
    assert Suspicion("a", k=0, minimum=4.0, maximum=24.0, start=10.0).deadline == 14.0


@pytest.mark.parametrize(("new", "old", "wins"), [
    ((2, A), (1, A), True), ((1, A), (1, A), False), ((1, S), (1, A), True),
    ((1, A), (1, S), False), ((1, D), (1, S), True), ((1, L), (1, A), True),
    ((1, S), (2, A), False), ((3, A), (2, D), True), ((1, D), (1, L), False),
])
def test_supersedes(new: tuple[int, MemberState], old: tuple[int, MemberState], wins: bool):
    assert supersedes(new, old) is wins


def test_awareness_is_bounded_and_scales() -> None:
    awareness = Awareness(8)
    assert awareness.apply_delta(-1) == 0
    for _ in range(20):
        awareness.apply_delta(1)
    assert awareness.score == 7
    assert awareness.scale(1.0) == 8.0


VSN = bytes((1, 5, 2, 2, 5, 5))
HERE = ("10.0.0.1", 7946)
THERE = ("10.0.0.2", 7946)


def _member(state: MemberState = A, incarnation: int = 3, address=HERE, change=0.0) -> Member:
    return Member(NodeName("x"), address, incarnation, state, b"\xff\x80", tuple(VSN), change)


def _alive(incarnation: int, vsn: bytes = VSN) -> Alive:
    return Alive(incarnation, "x", b"\x0a\x00\x00\x01", 7946, b"\xff\x80", vsn)


@pytest.mark.parametrize(("known", "alive", "address", "is_me", "verdict"), [
    (None, _alive(1), HERE, False, AliveVerdict.ACCEPT),
    (_member(), _alive(4), HERE, False, AliveVerdict.ACCEPT),
    (_member(), _alive(3), HERE, False, AliveVerdict.IGNORE),
    (_member(D), _alive(3), HERE, False, AliveVerdict.IGNORE),
    (_member(D), _alive(4), HERE, False, AliveVerdict.ACCEPT),
    (_member(), _alive(3), THERE, False, AliveVerdict.CONFLICT),
    (_member(), _alive(4), THERE, False, AliveVerdict.ACCEPT),  # restarted elsewhere
    (_member(L), _alive(1), THERE, False, AliveVerdict.ACCEPT),  # left: may come back
    (_member(), _alive(4, bytes((0, 5, 2, 2, 5, 5))), HERE, False, AliveVerdict.BAD_VERSION),
    (_member(), _alive(4, bytes((5, 1, 2, 2, 5, 5))), HERE, False, AliveVerdict.BAD_VERSION),
    (_member(), _alive(2), HERE, True, AliveVerdict.IGNORE),
    (_member(), _alive(3), HERE, True, AliveVerdict.IGNORE),
    (_member(), _alive(3), THERE, True, AliveVerdict.REFUTE),  # our old self elsewhere
    (_member(), _alive(5), HERE, True, AliveVerdict.REFUTE),
])
def test_judge_alive(known, alive, address, is_me, verdict) -> None:
    assert judge_alive(
        known, alive, address, is_me=is_me, now=100.0, reclaim_time=0.0,
        local_meta=b"\xff\x80", local_vsn=VSN,
    ) is verdict


def test_dead_node_reclaim_time_lets_a_new_address_in() -> None:
    dead = _member(D, change=10.0)
    args = dict(is_me=False, now=100.0, local_meta=b"", local_vsn=VSN)
    assert judge_alive(dead, _alive(1), THERE, reclaim_time=0.0, **args) is AliveVerdict.CONFLICT
    assert judge_alive(dead, _alive(1), THERE, reclaim_time=50.0, **args) is AliveVerdict.ACCEPT


def _state(vsn: bytes, state: int = 0) -> PushNodeState:
    return PushNodeState("r", b"\x0a\x00\x00\x02", 7946, b"", 1, state, vsn)


@pytest.mark.parametrize(("remote_vsn", "ok"), [
    (VSN, True),
    (bytes((1, 5, 5, 2, 5, 5)), True),
    (bytes((1, 5, 2, 0, 0, 0)), False),   # delegate 0/0/0 breaks a serf cluster
    (bytes((3, 5, 3, 2, 5, 5)), False),   # our pcur 2 is below their pmin 3
    (bytes((1, 5, 2)), False),            # a short Vsn would crash Go peers
    (b"", False),                         # zeros: pcur 0 is out of range
])
def test_version_check(remote_vsn: bytes, ok: bool) -> None:
    local = [_member()]
    assert compatible([_state(remote_vsn)], local) is ok


def test_deadlines_fire_in_order_and_cancel_lazily() -> None:
    timers = Deadlines()
    timers.schedule("a", 5.0)
    timers.schedule("b", 3.0)
    timers.schedule("c", 3.0)
    timers.schedule("a", 1.0)  # rescheduled earlier
    timers.cancel("c")
    assert timers.next_deadline() == 1.0
    assert timers.pop_expired(4.0) == ("a", 1.0)
    assert timers.pop_expired(4.0) == ("b", 3.0)
    assert timers.pop_expired(4.0) is None
    assert timers.next_deadline() == float("inf")
