"""Incarnations at their bounds, on the simulator: forged news cannot exclude a member,
and a member can always refute (``docs/membership.md``, "Incarnations at their bounds").

Every assertion message carries ``seed=`` and ``t=``; replay one with
``pytest tests/sim --sim-seed=N``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from gossip.codec import encode, ip_to_bytes
from gossip.wire import Alive, Dead, PushNodeState, PushPull, Suspect
from membership.member import EventKind, MemberState
from membership.merge import INCARNATION_SLACK, MAX_INCARNATION
from membership.sim import SimCluster, SimNode
from membership.swim import Swim

A, S, D = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
ATTACKER = ("10.66.0.1", 7946)
VICTIM = "node-2"
#: longer than any suspicion in a 5-node lan cluster (14.4 s at most) plus its gossip
SETTLE = 30.0


def where(cluster: SimCluster) -> str:
    return f"seed={cluster.seed} t={cluster.now:.3f}"


def converged_cluster(seed: int, n: int = 5) -> SimCluster:
    cluster = SimCluster(n, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    cluster.run_until(cluster.now + 2)
    return cluster


def incarnations_of(cluster: SimCluster, name: str) -> dict[str, int]:
    """The incarnation each live node holds for ``name``."""
    out = {}
    for node in cluster.live():
        member = {m.name: m for m in node.swim.members()}.get(name)
        if member is not None:
            out[node.name] = member.incarnation
    return out


def bad_events(cluster: SimCluster, name: str, since: float) -> list[str]:
    kinds = (EventKind.SUSPECTED, EventKind.FAILED, EventKind.LEFT)
    return [
        f"{o.observer} saw {o.event.kind.value} at t={o.t:.2f}"
        for o in cluster.events_about(name, kinds) if o.t >= since
    ]


def counter(cluster: SimCluster, name: str) -> int:
    return sum(n.swim.statistics().counters.get(name, 0) for n in cluster.nodes)


def victim_of(cluster: SimCluster) -> SimNode:
    return next(n for n in cluster.nodes if n.name == VICTIM)


def forged(kind: str, incarnation: int) -> bytes:
    if kind == "suspect":
        return encode(Suspect(incarnation, VICTIM, "node-0"))
    return encode(Dead(incarnation, VICTIM, "node-0"))


@pytest.mark.parametrize("targets", ["others", "everyone"])
@pytest.mark.parametrize("incarnation", ["top", "half", "known+huge"])
@pytest.mark.parametrize("kind", ["suspect", "dead"])
def test_a_forged_accusation_far_above_the_member_is_not_believed(
    kind: str, incarnation: str, targets: str, seed: int
) -> None:
    cluster = converged_cluster(seed)
    victim = victim_of(cluster)
    before = victim.swim.local_member.incarnation
    value = {"top": MAX_INCARNATION, "half": 2**31, "known+huge": before + 1000}[incarnation]
    start = cluster.now
    for node in cluster.nodes:
        if node is not victim or targets == "everyone":
            cluster.deliver(node.index, ATTACKER, forged(kind, value))
    cluster.run_until(start + SETTLE)
    assert cluster.everyone_sees(VICTIM, [A]), f"{cluster.view(cluster.nodes[0])} {where(cluster)}"
    assert bad_events(cluster, VICTIM, start) == [], where(cluster)
    mine = victim.swim.local_member.incarnation
    assert mine <= min(before + INCARNATION_SLACK + 1, MAX_INCARNATION), where(cluster)
    held = incarnations_of(cluster, VICTIM)
    assert max(held.values()) <= before + INCARNATION_SLACK + 1, f"{held} ({where(cluster)})"
    assert counter(cluster, "implausible_accusations") >= 1, where(cluster)


def test_a_forged_alive_far_above_the_member_cannot_move_it(seed: int) -> None:
    """An alive at the top claiming the victim moved to the attacker's address."""
    cluster = converged_cluster(seed)
    victim = victim_of(cluster)
    me = victim.swim.local_member
    hijack = Alive(
        MAX_INCARNATION, VICTIM, ip_to_bytes(ATTACKER[0]), ATTACKER[1], me.meta, bytes(me.vsn)
    )
    start = cluster.now
    for node in cluster.nodes:
        if node is not victim:
            cluster.deliver(node.index, ATTACKER, encode(hijack))
    cluster.run_until(start + SETTLE)
    assert cluster.everyone_sees(VICTIM, [A]), where(cluster)
    assert bad_events(cluster, VICTIM, start) == [], where(cluster)
    for node in cluster.live():
        member = {m.name: m for m in node.swim.members()}[VICTIM]
        assert member.address == victim.address, f"{node.name}: {member} ({where(cluster)})"
        assert member.incarnation <= me.incarnation + INCARNATION_SLACK + 1, where(cluster)
    assert counter(cluster, "implausible_alives") >= 1, where(cluster)
    assert counter(cluster, "implausible_checks") >= 1, where(cluster)  # asked the victim


def forged_push_pull(cluster: SimCluster, state: MemberState) -> Callable[[Swim, float], None]:
    """A push-pull stream (as an attacker could open) claiming the victim at the top."""
    member = {m.name: m for m in cluster.nodes[0].swim.members()}[VICTIM]
    entry = PushNodeState(
        VICTIM, ip_to_bytes(member.address[0]), member.address[1], member.meta,
        MAX_INCARNATION, int(state), bytes(member.vsn),
    )

    def receive(swim: Swim, now: float) -> None:
        swim.receive_stream(now, ATTACKER, PushPull(False, (entry,)))

    return receive


def provoke_suspicion(cluster: SimCluster, victim: SimNode) -> None:
    """Cut the victim off until someone suspects it, then heal."""
    others = [n.address for n in cluster.nodes if n is not victim]
    cluster.network.partition([victim.address], others)
    suspected = cluster.run_until_true(
        lambda: any(cluster.view(n).get(VICTIM) is S for n in cluster.live()), 20, 0.01
    )
    assert suspected is not None, f"never suspected ({where(cluster)})"
    cluster.network.heal()


@pytest.mark.parametrize("state", [S, D], ids=["suspect", "dead"])
def test_a_forged_push_pull_is_not_believed_about_another_member(
    state: MemberState, seed: int
) -> None:
    cluster = converged_cluster(seed)
    victim = victim_of(cluster)
    before = victim.swim.local_member.incarnation
    start = cluster.now
    for node in cluster.nodes:
        if node is not victim:
            cluster.call(node.index, forged_push_pull(cluster, state))
    cluster.run_until(start + SETTLE)
    assert cluster.everyone_sees(VICTIM, [A]), where(cluster)
    assert bad_events(cluster, VICTIM, start) == [], where(cluster)
    assert max(incarnations_of(cluster, VICTIM).values()) <= before + INCARNATION_SLACK + 1
    assert counter(cluster, "implausible_accusations") >= 1, where(cluster)


@pytest.mark.parametrize("state", [S, D], ids=["suspect", "dead"])
def test_a_member_pushed_to_the_top_still_refutes_every_suspicion(
    state: MemberState, seed: int
) -> None:
    """A push-pull about the victim sent to the victim itself is the cluster's view, which
    it must answer: it refutes at the top (not one above), and its own word wins there."""
    cluster = converged_cluster(seed)
    victim = victim_of(cluster)
    cluster.call(victim.index, forged_push_pull(cluster, state))
    cluster.run_until(cluster.now + 5)
    assert victim.swim.local_member.incarnation == MAX_INCARNATION, where(cluster)
    assert cluster.everyone_sees(VICTIM, [A]), where(cluster)
    for _ in range(2):
        provoke_suspicion(cluster, victim)
        cluster.run_until(cluster.now + SETTLE)
        assert cluster.converged(), f"{incarnations_of(cluster, VICTIM)} ({where(cluster)})"
        assert victim.swim.local_member.incarnation == MAX_INCARNATION, where(cluster)
    assert not cluster.events_about(VICTIM, [EventKind.FAILED]), where(cluster)
    assert victim.swim.statistics().counters["refutations_at_max_incarnation"] >= 2


def test_a_member_legitimately_near_the_top_can_still_refute(seed: int) -> None:
    """The victim starts three below the top, so each refutation takes it one closer
    until it can go no higher; every suspicion is still refuted."""
    cluster = SimCluster(5, seed)
    victim = victim_of(cluster)
    me = victim.swim.local_member
    victim.swim.table.apply(replace(me, incarnation=MAX_INCARNATION - 3))
    victim.swim.update_tags(0.0, dict(victim.swim.config.tags))  # announces MAX - 2
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    assert set(incarnations_of(cluster, VICTIM).values()) == {MAX_INCARNATION - 2}
    for _ in range(4):
        provoke_suspicion(cluster, victim)
        cluster.run_until(cluster.now + SETTLE)
        assert cluster.converged(), f"{incarnations_of(cluster, VICTIM)} ({where(cluster)})"
        assert victim.swim.local_member.incarnation <= MAX_INCARNATION, where(cluster)
    assert victim.swim.local_member.incarnation == MAX_INCARNATION, where(cluster)
    assert set(incarnations_of(cluster, VICTIM).values()) == {MAX_INCARNATION}, where(cluster)
    assert not cluster.events_about(VICTIM, [EventKind.FAILED]), where(cluster)
    dropped = {
        f"{node.name}:{name}": value for node in cluster.nodes
        for name, value in node.swim.statistics().counters.items() if name.startswith("dropped")
    }
    assert dropped == {}, f"everything sent must decode: {dropped} ({where(cluster)})"
