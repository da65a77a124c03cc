"""The consistent-hash ring: same owners everywhere, about 1/N of the keys move."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.codec import encode_tags
from membership.member import Member, MemberState, NodeName
from node import ring as ring_module
from node.config import parse_weight
from node.ring import HashRing, ring_members

KEYS = [f"user-{i}" for i in range(4000)]
names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=1,
                 max_size=12, unique=True)


def owners(ring: HashRing) -> dict[str, str | None]:
    return {key: ring.owner(key) for key in KEYS}


@settings(max_examples=40, deadline=None)
@given(names, st.randoms(use_true_random=False))
def test_every_order_of_building_gives_the_same_owners(
    nodes: list[str], rnd: random.Random
) -> None:
    first = HashRing(16, dict.fromkeys(nodes, 1.0))
    shuffled = nodes[:]
    rnd.shuffle(shuffled)
    second = HashRing(16)
    for count in range(1, len(shuffled) + 1):  # grown one node at a time
        second.update(dict.fromkeys(shuffled[:count], 1.0))
    assert owners(first) == owners(second)


@settings(max_examples=40, deadline=None)
@given(names, st.integers(1, 5))
def test_replicas_are_distinct_and_start_with_the_owner(nodes: list[str], r: int) -> None:
    ring = HashRing(8, dict.fromkeys(nodes, 1.0))
    for key in KEYS[:200]:
        replicas = ring.replicas(key, r)
        assert replicas[0] == ring.owner(key)
        assert len(replicas) == len(set(replicas)) == min(r, len(nodes))


def test_a_join_moves_about_one_nth_of_the_keys_and_only_to_the_newcomer() -> None:
    ten = {f"node-{i}": 1.0 for i in range(10)}
    ring = HashRing(128, ten)
    before = owners(ring)
    ring.update({**ten, "node-10": 1.0})
    after = owners(ring)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "node-10" for key in moved)
    assert 0.5 / 11 < len(moved) / len(KEYS) < 1.6 / 11


def test_a_death_moves_only_the_dead_nodes_keys() -> None:
    ten = {f"node-{i}": 1.0 for i in range(10)}
    ring = HashRing(128, ten)
    before = owners(ring)
    del ten["node-3"]
    assert ring.update(ten)
    after = owners(ring)
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == "node-3"}
    assert not ring.update(ten)  # nothing changed the second time


def test_weight_scales_a_nodes_share() -> None:
    ring = HashRing(128, {"small": 1.0, "big": 3.0, "other": 1.0})
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert 2.0 < shares["big"] / shares["small"] < 4.5
    assert ring.points == 128 * 5


def test_weights_are_checked() -> None:
    assert parse_weight(None) == parse_weight("") == 1.0
    assert parse_weight("2.5") == 2.5
    for bad in ("0", "-1", "101", "heavy", "nan"):
        with pytest.raises(ValueError):
            parse_weight(bad)


def test_collisions_are_resolved_alike_whatever_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # a coarse hash makes points collide all the time
    monkeypatch.setattr(ring_module, "hash64", lambda text: ring_module.blake2b(
        text.encode(), digest_size=1).digest()[0])
    nodes = [f"n{i}" for i in range(12)]
    rnd = random.Random(3)
    for _ in range(20):
        subset = rnd.sample(nodes, rnd.randrange(1, len(nodes)))
        grown = HashRing(8)
        for count in range(1, len(nodes) + 1):
            grown.update(dict.fromkeys(nodes[:count], 1.0))
        assert grown.points < 8 * len(nodes)  # the coarse hash did make collisions
        grown.update(dict.fromkeys(subset, 1.0))  # shrink back to the subset
        fresh = HashRing(8, dict.fromkeys(reversed(subset), 1.0))
        assert owners(grown) == owners(fresh)
        assert grown.points == fresh.points


def member(name: str, state: MemberState, **tags: str) -> Member:
    return Member(NodeName(name), ("127.0.0.1", 1), 1, state, encode_tags(tags))


def test_only_live_grapevine_members_own_keys() -> None:
    members = [
        member("alive", MemberState.ALIVE, role="grapevine"),
        member("suspect", MemberState.SUSPECT, role="grapevine", weight="2"),
        member("dead", MemberState.DEAD, role="grapevine"),
        member("left", MemberState.LEFT, role="grapevine"),
        member("serf-agent", MemberState.ALIVE),
        member("bad-weight", MemberState.ALIVE, role="grapevine", weight="lots"),
        Member(NodeName("legacy"), ("127.0.0.1", 2), 1, MemberState.ALIVE, b"web"),
    ]
    assert ring_members(members) == {"alive": 1.0, "suspect": 2.0, "bad-weight": 1.0}


def test_an_empty_ring_owns_nothing() -> None:
    ring = HashRing()
    assert ring.owner("u") is None and ring.replicas("u", 2) == [] and ring.shares() == {}
    with pytest.raises(ValueError):
        HashRing(0)


@settings(max_examples=30, deadline=None)
@given(names, st.randoms(use_true_random=False))
def test_lookups_between_changes_answer_like_a_fresh_ring(
    nodes: list[str], rnd: random.Random
) -> None:
    """The ring remembers what it looked up: nothing remembered may outlive a change."""
    ring = HashRing(16)
    present: list[str] = []
    for _ in range(2 * len(nodes)):
        name = rnd.choice(nodes)
        present = [n for n in present if n != name] if name in present else [*present, name]
        ring.update(dict.fromkeys(present, 1.0))
        fresh = HashRing(16, dict.fromkeys(present, 1.0))
        for key in KEYS[:300]:
            r = rnd.randint(1, 5)
            assert ring.replicas(key, r) == fresh.replicas(key, r)
            assert ring.owner(key) == fresh.owner(key)
