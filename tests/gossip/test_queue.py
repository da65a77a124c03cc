"""The transmit-limited broadcast queue (memberlist queue.go semantics)."""

from __future__ import annotations

import pytest

from gossip.queue import BroadcastQueue, retransmit_limit


@pytest.mark.parametrize(("mult", "n", "limit"), [
    (4, 1, 4), (4, 3, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (2, 20, 4),
    (3, 1000, 12),
])
def test_retransmit_limit_table(mult: int, n: int, limit: int) -> None:
    assert retransmit_limit(mult, n) == limit


def test_newer_news_about_a_node_replaces_the_older() -> None:
    queue = BroadcastQueue()
    queue.queue("a", b"alive-a-1")
    queue.queue("b", b"alive-b-1")
    queue.queue("a", b"suspect-a")
    assert len(queue) == 2
    assert sorted(queue.take(2, 1000, limit=4)) == [b"alive-b-1", b"suspect-a"]


def test_fewest_transmits_first_then_larger_first() -> None:
    queue = BroadcastQueue()
    queue.queue("old", b"o" * 10)
    assert queue.take(0, 1000, limit=10) == [b"o" * 10]
    queue.queue("small", b"s" * 5)
    queue.queue("big", b"b" * 20)
    assert queue.take(0, 1000, limit=10) == [b"b" * 20, b"s" * 5, b"o" * 10]


def test_budget_is_respected_and_skips_to_what_fits() -> None:
    queue = BroadcastQueue()
    queue.queue("big", b"b" * 100)
    queue.queue("small", b"s" * 10)
    assert queue.take(2, 50, limit=4) == [b"s" * 10]
    assert queue.take(2, 11, limit=4) == []


def test_messages_leave_after_the_limit_and_notify() -> None:
    queue = BroadcastQueue()
    token = object()
    queue.queue("me", b"goodbye", notify=token)
    for _ in range(3):
        assert queue.take(0, 100, limit=3) == [b"goodbye"]
        assert queue.pending("me") == (_ < 2)
    assert queue.take(0, 100, limit=3) == []
    assert queue.drain_finished() == [token]


def test_priority_entries_go_first_even_when_sent_more() -> None:
    queue = BroadcastQueue()
    queue.queue("me", b"leave", priority=True)
    queue.take(0, 5, limit=10)
    queue.queue("x", b"x" * 40)
    assert queue.take(0, 100, limit=10)[0] == b"leave"


def test_replacing_a_notified_entry_reports_it_finished() -> None:
    queue = BroadcastQueue()
    token = object()
    queue.queue("me", b"v1", notify=token)
    queue.queue("me", b"v2")
    assert queue.drain_finished() == [token]


def test_prune_keeps_the_least_sent() -> None:
    queue = BroadcastQueue()
    for name in "abc":
        queue.queue(name, name.encode() * 3)
    queue.take(0, 4, limit=10)  # one of them has been sent once
    assert queue.prune(2) == 1 and len(queue) == 2


def test_max_count_caps_the_parts() -> None:
    queue = BroadcastQueue()
    for index in range(300):
        queue.queue(f"n{index}", b"x")
    assert len(queue.take(0, 100000, limit=4, max_count=255)) == 255
