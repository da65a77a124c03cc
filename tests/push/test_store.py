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
from node.store import SCHEMA, SOON_DELAY, Store


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


async def test_a_users_last_seq_outlives_its_messages(tmp_path: Path) -> None:
    """The sequences table is written when messages go, not when they come: a reopened
    store still knows the last number of a user whose messages were all acked."""
    path = tmp_path / "m.sqlite3"
    async with running(path) as store:
        await store.write([message(4), message(5), Stored("v", 9, "v9", "b", 1.0, 2e9)])
        await store.write(deletes=[("u", 4), ("u", 5)])
    store = Store(str(path))
    messages, seqs, _devices = await store.open()
    assert [(m.user, m.seq) for m in messages] == [("v", 9)]
    assert seqs == {"u": 5}  # v's number is its message's


#: the tables as a data dir written before 2026-11-30 has them: messages keyed by user first
OLD_SCHEMA = SCHEMA.replace("PRIMARY KEY (seq, user)", "PRIMARY KEY (user, seq)")


def key_columns(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("PRAGMA table_info(messages)").fetchall()
    finally:
        db.close()
    return [name for _, name, _, _, _, pk in sorted(rows, key=lambda r: r[5]) if pk]


async def test_a_data_dir_keyed_by_user_is_rekeyed_by_seq_and_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    rows = [("u", 2, "a", "x", 1.0, 2e9, None, 0), ("t", 7, "b", "y", 1.0, 2e9, "s", 3),
            ("u", 1, "c", "z", 1.0, 2e9, None, 1)]
    db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO sequences VALUES ('w', 40)")
    db.execute("INSERT INTO devices VALUES ('u', 'phone', 5.0)")
    db.commit()
    db.close()
    assert key_columns(path) == ["user", "seq"]
    with caplog.at_level("INFO", logger="node.store"):
        messages, devices = await reopened(path)
    assert sorted(messages) == sorted(Stored(*row) for row in rows)
    assert devices == [("u", "phone", 5.0)]
    assert key_columns(path) == ["seq", "user"]
    assert "store_relaid messages=3" in caplog.text
    caplog.clear()
    async with running(path) as store:  # and it is written to as any other
        await store.write([message(3)], deletes=[("u", 1)])
    store = Store(str(path))
    messages, seqs, _ = await store.open()
    assert sorted((m.user, m.seq) for m in messages) == [("t", 7), ("u", 2), ("u", 3)]
    assert seqs == {"w": 40, "u": 1}
    assert "store_relaid" not in caplog.text  # once
