"""Cluster properties on the deterministic simulator (virtual clock, seeded faults).

Every assertion message carries ``seed=`` and ``t=``; replay one with
``pytest tests/sim --sim-seed=N``.
"""

from __future__ import annotations

import math

import pytest

from gossip.queue import retransmit_limit
from gossip.simnet import LinkProfile
from membership.config import MembershipConfig
from membership.member import EventKind, MemberState
from membership.sim import SimCluster
from membership.suspicion import suspicion_timeout
from tests.conftest import seeds

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def where(cluster: SimCluster) -> str:
    return f"seed={cluster.seed} t={cluster.now:.3f}"


def convergence_bound(config: MembershipConfig, n: int) -> float:
    """Join convergence: two early anti-entropy rounds plus a full epidemic of gossip."""
    return 3 * config.probe_interval + config.gossip_interval * retransmit_limit(
        config.retransmit_mult, n
    ) * 2


def detection_bound(config: MembershipConfig, n: int) -> float:
    """A crash is noticed within a few probe rounds and the confirmed suspicion timeout."""
    minimum = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    return 4 * config.probe_interval + minimum + convergence_bound(config, n)


def failed_names(cluster: SimCluster) -> set[str]:
    return {o.event.member.name for o in cluster.observed if o.event.kind is EventKind.FAILED}


@pytest.mark.parametrize("profile", ["lan", "local", "wan"])
def test_fifty_nodes_converge_after_join(profile: str, seed: int) -> None:
    factory = lambda name: MembershipConfig.for_profile(profile, name)  # noqa: E731
    cluster = SimCluster(50, seed, config=factory)
    bound = convergence_bound(factory("x"), 50)
    took = cluster.run_until_true(cluster.converged, bound, check_every=0.05)
    assert took is not None, f"not converged within {bound:.1f} s ({where(cluster)})"


def test_a_crashed_node_is_dead_everywhere_within_the_bound(seed: int) -> None:
    cluster = SimCluster(50, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    cluster.run_until(cluster.now + 3)
    crashed_at = cluster.now
    cluster.crash(17)
    bound = detection_bound(MembershipConfig.lan("x"), 50)
    took = cluster.run_until_true(lambda: cluster.everyone_sees("node-17", [D]), bound)
    assert took is not None, f"node-17 alive somewhere after {bound:.1f} s ({where(cluster)})"
    assert failed_names(cluster) == {"node-17"}, where(cluster)
    assert took - crashed_at < bound


def test_a_false_suspicion_is_refuted(seed: int) -> None:
    cluster = SimCluster(20, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    victim = cluster.nodes[7]
    others = [n.address for n in cluster.nodes if n is not victim]
    cluster.network.partition([victim.address], others)
    suspected = cluster.run_until_true(
        lambda: any(cluster.view(n).get("node-7") is S for n in cluster.live()), 10, 0.01
    )
    assert suspected is not None, f"node-7 never suspected ({where(cluster)})"
    cluster.network.heal()
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    assert "node-7" not in failed_names(cluster), where(cluster)
    assert victim.swim.local_member.incarnation > 1, where(cluster)
    assert victim.swim.statistics().counters["refuted_suspicions"] >= 1


@seeds(1)
def test_no_healthy_node_is_declared_dead_under_ten_percent_loss(seed: int) -> None:
    cluster = SimCluster(50, seed, link=LinkProfile(loss=0.10))
    assert cluster.run_until_true(cluster.converged, 20) is not None, where(cluster)
    cluster.run_until(cluster.now + 60)
    assert failed_names(cluster) == set(), f"false deaths ({where(cluster)})"
    assert cluster.converged(), where(cluster)


@seeds(1)
def test_lifeguard_keeps_a_starved_node_from_being_declared_dead(seed: int) -> None:
    """One node runs only 100 ms in every 500 ms (paused 400 ms each time) for 60 s."""
    cluster = SimCluster(30, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    start = cluster.now
    for step in range(120):
        cluster.at(start + step * 0.5, lambda: cluster.pause(5, 0.4))
    cluster.run_until(start + 60)
    assert failed_names(cluster) == set(), f"declared dead ({where(cluster)})"
    starved = cluster.nodes[5].swim.statistics()
    assert starved.counters.get("probes_failed", 0) == 0, (
        f"the starved node accused others {starved.counters} ({where(cluster)})"
    )
    cluster.run_until(cluster.now + 5)
    assert cluster.converged(), where(cluster)


@seeds(1, 2)
def test_the_cluster_reconverges_after_a_partition_heals(seed: int) -> None:
    config = MembershipConfig.lan("x")
    cluster = SimCluster(20, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    left = [n.address for n in cluster.nodes[:10]]
    cluster.network.partition(left)
    names = {n.name for n in cluster.nodes}
    half = {n.name for n in cluster.nodes[:10]}

    def split_apart() -> bool:
        for node in cluster.live():
            alive = {name for name, state in cluster.view(node).items() if state is A}
            if alive != (half if node.name in half else names - half):
                return False
        return True

    split = cluster.run_until_true(split_apart, 60)
    assert split is not None, f"the halves never gave each other up ({where(cluster)})"
    cluster.network.heal()
    bound = 2 * config.reconnect_interval + convergence_bound(config, 20)
    took = cluster.run_until_true(cluster.converged, bound, 0.1)
    assert took is not None, f"not reconverged {bound:.0f} s after heal ({where(cluster)})"


def test_same_seed_gives_the_same_trace() -> None:
    def digest(seed: int) -> str:
        cluster = SimCluster(12, seed, link=LinkProfile(loss=0.05, duplicate=0.02))
        cluster.run_until(5)
        cluster.crash(3)
        cluster.run_until(15)
        return cluster.trace_digest()

    assert digest(11) == digest(11)
    assert digest(11) != digest(12)


def test_encrypted_cluster_converges_and_detects(seed: int) -> None:
    cluster = SimCluster(10, seed, keys=[b"k" * 32])
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    cluster.crash(4)
    bound = detection_bound(MembershipConfig.lan("x"), 10)
    took = cluster.run_until_true(lambda: cluster.everyone_sees("node-4", [D]), bound)
    assert took is not None, where(cluster)


def test_a_node_restarted_at_a_new_address_is_accepted_at_once(seed: int) -> None:
    cluster = SimCluster(10, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    cluster.crash(6)
    new_address = ("10.9.9.9", 7946)
    cluster.restart(6, address=new_address)
    def moved() -> bool:
        return all(
            {m.name: m.address for m in n.swim.members()}.get("node-6") == new_address
            for n in cluster.live()
        ) and cluster.converged()
    took = cluster.run_until_true(moved, convergence_bound(MembershipConfig.lan("x"), 10))
    assert took is not None, f"the new address did not win ({where(cluster)})"
    assert "node-6" not in failed_names(cluster), where(cluster)


def test_a_graceful_leave_reaches_everyone_before_the_process_exits(seed: int) -> None:
    cluster = SimCluster(30, seed)
    assert cluster.run_until_true(cluster.converged, 10) is not None, where(cluster)
    leaver = cluster.nodes[12]
    leaver.swim.leave(cluster.now)
    cluster.run_until(cluster.now)
    done = cluster.run_until_true(lambda: leaver.swim.leave_complete, 10, 0.01)
    assert done is not None, where(cluster)
    cluster.crash(12)  # the process exits the moment its leave is complete
    everyone = cluster.run_until_true(lambda: cluster.everyone_sees("node-12", [L]), 0.1, 0.01)
    assert everyone is not None, f"some node missed the leave ({where(cluster)})"
    cluster.run_until(cluster.now + 30)
    assert "node-12" not in failed_names(cluster), where(cluster)


@pytest.mark.slow
def test_five_hundred_nodes_converge_and_detect() -> None:
    cluster = SimCluster(500, 1, start_spread=2.0)
    config = MembershipConfig.lan("x")
    took = cluster.run_until_true(cluster.converged, 2 + convergence_bound(config, 500), 0.5)
    assert took is not None, where(cluster)
    cluster.crash(250)
    bound = detection_bound(config, 500)
    assert cluster.run_until_true(lambda: cluster.everyone_sees("node-250", [D]), bound, 0.5)
    assert failed_names(cluster) == {"node-250"}
    assert math.isfinite(took)
