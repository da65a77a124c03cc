"""A disk that cannot take a write (full, failing): the real error is logged once per
cause, and a message whose sender was refused is never delivered (so a retry cannot make
a duplicate), whether the owner's disk or a replica's failed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from node.mailbox import Stored
from node.node import Node
from node.store import Store
from tests.node.helpers import http, wait_until
from tests.push.test_push_nodes import cluster, device, next_message, owner_of


@contextmanager
def full(store: Store) -> Iterator[None]:
    """The store's database may not grow by a page (SQLite answers "database or disk is
    full", as a full file system does); as it was again afterwards."""
    db = store._db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")
    try:
        yield
    finally:
        db.execute("PRAGMA max_page_count=4294967294")


def stored(seq: int, body: str = "x" * 3000) -> Stored:
    return Stored("bob", seq, f"i{seq}", body, 1.0, 2e9)


async def test_a_full_disk_is_logged_with_its_cause_once_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    store = Store(None)
    caplog.set_level(logging.ERROR, "node.store")
    async with trio.open_nursery() as nursery:
        await store.open()
        await nursery.start(store.run)
        await store.write([stored(1)])
        with full(store):
            for seq in range(2, 12):
                with pytest.raises(Exception, match="database or disk is full"):
                    await store.write([stored(seq)])
        await store.write([stored(20)])  # room again: writes go through
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "store_write_failed" in r.getMessage()]
    assert len(lines) == 1 and "database or disk is full" in lines[0], lines
    assert store.counters["store_write_failures"] == 10
    assert store.writes == 2


def test_two_causes_taking_turns_are_logged_once_each_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    """A disk failing with two errors in turn (full, then an I/O error, and again) logs
    each cause once per interval, not every commit; every failed write is counted."""
    store = Store(None)
    caplog.set_level(logging.ERROR, "node.store")
    for _ in range(20):
        store._failed("database or disk is full", 3)
        store._failed("disk I/O error", 1)
    lines = [r.getMessage() for r in caplog.records if "store_write_failed" in r.getMessage()]
    assert len(lines) == 2, lines
    assert store.counters["store_write_failures"] == 80


async def send_all(node: Node, user: str, count: int, tag: str) -> list[int]:
    statuses = []
    for i in range(count):
        status, answer = await http(node.api_address, "POST", "/v1/send",
                                    {"to": user, "body": f"{tag}{i} " + "x" * 5000, "qos": 1})
        statuses.append(status)
        assert status in (202, 503), answer
    return statuses


@pytest.mark.parametrize("failing", ["owner", "replica"])
async def test_messages_refused_for_a_full_disk_are_never_delivered(failing: str) -> None:
    async with cluster(["a", "b"]) as nodes:
        owner = owner_of(nodes, "dora")
        replica = next(n for n in nodes if n is not owner)
        broken = owner if failing == "owner" else replica
        with full(broken.delivery.store):
            refused = await send_all(replica, "dora", 20, "refused")
            if failing == "owner":  # the sender is told why
                status, answer = await http(replica.api_address, "POST", "/v1/send",
                                            {"to": "dora", "body": "y" * 5000, "qos": 1})
                assert status == 503 and "database or disk is full" in answer["error"]
        assert refused == [503] * 20
        assert await send_all(replica, "dora", 1, "kept") == [202]
        with trio.fail_after(5):
            await wait_until(nodes, lambda: replica.delivery.mailboxes.pending_count("dora") == 1)
        assert owner.delivery.mailboxes.pending_count("dora") == 1
        async with device(owner, "dora") as dora:
            first = await next_message(dora)
            assert first["body"].startswith("kept0 ")
            await dora.send_message(json.dumps({"t": "ping", "ref": "p"}))
            with trio.fail_after(5):  # nothing else comes before the pong
                while True:
                    frame = await dora.get_message()
                    objects = json.loads(frame)
                    objects = objects if isinstance(objects, list) else [objects]
                    assert all(o["t"] != "msg" for o in objects), objects
                    if any(o["t"] == "pong" for o in objects):
                        break
