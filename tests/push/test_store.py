"""The durable store (node/store.py): group commit, held writes, reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import math
import sqlite3
from pathlib import Path

import pytest
import trio

from node.mailbox import Stored
from node.store import SOON_DELAY, Store


def message(seq: int) -> Stored:
    return Stored("u", seq, f"id{seq}", f"body {seq}", 1.0, 2e9)


async def reopened(path: Path) -> tuple[list[Stored], list]:
    store = Store(str(path))
    messages, _seqs, devices = await store.open()
    return messages, devices


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[Store]:
    store = Store(str(path))
    await store.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store
        nursery.cancel_scope.cancel()


async def test_held_writes_ride_along_with_the_next_durable_write(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    async with running(path) as store:
        await store.write([message(1), message(2)])
        assert store.commits == 1
        store.write_soon(deletes=[("u", 1)], devices=[("u", "phone", 5.0)])
        await store.write([message(3)])  # one commit for both
        assert store.commits == 2 and store.writes == 3
    messages, devices = await reopened(path)
    assert [m.seq for m in messages] == [2, 3] and devices == [("u", "phone", 5.0)]


async def test_held_writes_alone_commit_after_the_delay(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    async with running(path) as store:
        await store.write([message(1)])
        start = trio.current_time()
        store.write_soon(deletes=[("u", 1)])
        store.write_soon(deletes=[("u", 9)])  # one commit for both, at the first's time
        with trio.fail_after(5):
            await store.wait_commits(2)
        assert trio.current_time() - start >= SOON_DELAY  # held, not committed at once
        assert store.commits == 2
        store.write_soon(deletes=[("u", 2)])
        await store.flush()  # at once, without waiting for the delay
        assert store.commits == 3
    assert await reopened(path) == ([], [])



async def test_a_write_that_cannot_be_stored_fails_alone_not_those_it_was_batched_with(
        tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    async with running(path) as store:
        await store.write([message(1)])
        store.write_soon(devices=[("u", "phone", 5.0)])  # held: goes with the next write
        with pytest.raises(OverflowError):  # not an SQLite integer
            await store.write([Stored("u", 2**63, "big", "x", 1.0, 2e9)])
        store.write_soon(deletes=[("u", 1)])
        with pytest.raises(sqlite3.IntegrityError):  # NaN is stored as NULL
            await store.write([Stored("u", 3, "nan", "x", 1.0, math.nan)])
        await store.write([message(2)])  # and the store goes on
    messages, devices = await reopened(path)
    assert [m.seq for m in messages] == [2] and devices == [("u", "phone", 5.0)]
