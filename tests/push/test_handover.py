"""The rebalancer's handover as a node that no longer holds a user: what it copied, and
only that, is dropped.

Found by a chaos run with pauses: a message that reached the old holder while its copy
to the new holders was under way was dropped with the mailbox, so no node delivered it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import trio

from node.mailbox import Stored
from node.ring import HashRing
from node.slices import SLICE
from node.store import Store
from tests.node.helpers import delivery_of


class SlowLinks:
    """Peer links whose replicate requests take a while and succeed; meanwhile a new
    message lands in the old holder's mailbox (as a late replica from an owner with an
    older ring would put it)."""

    def __init__(self) -> None:
        self.copied: list[Any] = []
        self.during: Any = None

    async def request(self, node: str, frame: dict[str, Any]) -> dict[str, Any]:
        self.copied.append((node, [m["seq"] for m in frame["msgs"]]))
        if self.during is not None:
            self.during()
            self.during = None
        await trio.lowlevel.checkpoint()
        return {"ok": True}

    def send(self, node: str, frame: dict[str, Any]) -> None:
        pass


class Turns:
    """Counts the turns another task of the node gets."""

    def __init__(self) -> None:
        self.count = 0

    async def take(self) -> None:
        while True:
            self.count += 1
            await trio.lowlevel.checkpoint()


async def test_a_message_that_arrives_during_the_handover_is_not_dropped_with_it() -> None:
    ring = HashRing(nodes={"old": 1.0})
    user = "user1"
    links = SlowLinks()
    delivery = delivery_of("old", ring, links, Store(None))
    async with trio.open_nursery() as nursery:
        await delivery.store.open()
        await nursery.start(delivery.store.run)
        now = time.time()
        first = delivery.mailboxes.new(user, "first", "b", now, None)
        delivery.mailboxes.put(first)
        late = Stored(user, first.seq + 10, "late", "b", now, now + 60)
        links.during = lambda: delivery.mailboxes.put(late)
        ring.update({"new-a": 1.0, "new-b": 1.0})  # "old" left the ring: hand over
        assert not await delivery.handover.once()  # the late one still waits here
        assert [s.id for s in delivery.mailboxes.pending(user)] == ["late"]
        assert await delivery.handover.once()  # the next round copies and drops it
        assert delivery.mailboxes.pending(user) == []
        copied = {seq for _node, seqs in links.copied for seq in seqs}
        assert copied == {first.seq, late.seq}
        nursery.cancel_scope.cancel()


async def test_a_round_over_many_users_lets_the_nodes_other_tasks_run(
        caplog: pytest.LogCaptureFixture) -> None:
    """A handover round looks at every mailbox: with many users that is seconds, and a
    node whose gossip goes unanswered that long is suspected (the ring changes again).
    The round gives the other tasks a turn every SLICE users, and logs one line for all
    the mailboxes it handed over, not one each."""
    ring = HashRing(nodes={"old": 1.0})
    links = SlowLinks()
    delivery = delivery_of("old", ring, links, Store(None))
    turns = Turns()
    at_first_copy: list[int] = []
    async with trio.open_nursery() as nursery:
        await delivery.store.open()
        await nursery.start(delivery.store.run)
        now = time.time()
        for n in range(5 * SLICE):
            delivery.mailboxes.put(delivery.mailboxes.new(f"user{n}", f"m{n}", "b", now, None))
        links.during = lambda: at_first_copy.append(turns.count)
        nursery.start_soon(turns.take)
        ring.update({"new-a": 1.0, "new-b": 1.0})
        with caplog.at_level(logging.INFO, logger="node.handover"):
            assert await delivery.handover.once()
        assert at_first_copy and at_first_copy[0] >= 3  # turns between slices of users
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert lines == [f"mailboxes_handed_over users={5 * SLICE} messages={5 * SLICE} "
                         "complete=true"]
        assert delivery.mailboxes.pending_count() == 0  # and every mailbox went over
        nursery.cancel_scope.cancel()


async def test_users_with_the_same_holders_share_one_set_of_them() -> None:
    """The handover remembers, for every user, which nodes have its mailbox: a million
    users share a few sets of holders, not a million objects for the collector."""
    ring = HashRing(nodes={"a": 1.0, "b": 1.0, "c": 1.0})
    delivery = delivery_of("a", ring, SlowLinks(), Store(None))
    async with trio.open_nursery() as nursery:
        await delivery.store.open()
        await nursery.start(delivery.store.run)
        now = time.time()
        for n in range(3000):
            delivery.mailboxes.put(delivery.mailboxes.new(f"user{n}", f"m{n}", "b", now, None))
        assert await delivery.handover.once()
        kept = delivery.handover._copied
        assert len(kept) > 1000  # the users whose replica sets hold "a"
        assert len({id(holders) for holders in kept.values()}) == len(set(kept.values()))
        nursery.cancel_scope.cancel()
