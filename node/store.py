"""Durable mailboxes: embedded SQLite in WAL mode, group-committed.

Every write goes to the store's own thread: it takes whatever writes are queued, applies
them in **one** transaction (``synchronous=FULL``: the commit is on disk when it
returns), then wakes every caller with one callback into trio. Under load many sends
share one fsync; alone, a send pays one. ``await store.write(puts, deletes)`` returns
once the change is durable; that is what lets the owner acknowledge a QoS 1 message.

What nobody waits for (``write_soon``: acks, expiry, device records) is held for up to
``SOON_DELAY`` and rides along with the next durable write, or commits alone when that
time is up: a lost one costs at most a redelivery after a crash, and a commit each
would double the fsyncs of a busy node. The thread is long-lived and takes its work
straight from a queue: handing each commit to a fresh worker (``trio.to_thread``) cost
more CPU than the commit itself, and a trio task between the callers and the thread
(as before 2026-11-30) cost the event loop ~115 µs per commit.

Without a data dir the store lives in memory (tests, throwaway nodes); the node logs
that QoS 1 messages are then not durable.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from .latency import Histogram
from .mailbox import Stored

logger = logging.getLogger(__name__)

#: A message's key is (seq, user), not (user, seq): seqs follow the clock
#: (``mailbox.py``), so a commit's new rows land together on the last page of the table,
#: and the acks a moment later delete from that page too; keyed by user first, every row
#: went to its own user's page among those of offline users (with 200,000 messages
#: waiting, a commit took 20-30 % more CPU: ``scripts/bench_store.py``).
MESSAGES = """(
    user TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    ts REAL NOT NULL, expires REAL NOT NULL, sender TEXT, attempts INTEGER NOT NULL,
    PRIMARY KEY (seq, user)
) WITHOUT ROWID"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages {MESSAGES};
CREATE TABLE IF NOT EXISTS sequences (user TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    user TEXT NOT NULL, device TEXT NOT NULL, seen REAL NOT NULL, PRIMARY KEY (user, device)
) WITHOUT ROWID;
"""
#: a data dir from before 2026-11-30 keys messages by (user, seq): moved over on open
RELAYOUT = f"""
CREATE TABLE messages_by_seq {MESSAGES};
INSERT INTO messages_by_seq SELECT user, seq, id, body, ts, expires, sender, attempts
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_by_seq RENAME TO messages;
"""
Device = tuple[str, str, float]  # user, device, last seen
#: how long a write nobody waits for may wait for company
SOON_DELAY = 0.1
#: ... unless this many are held
SOON_LIMIT = 4096
#: a failing disk is logged once per cause and then at most once per this many seconds,
#: with the writes that failed meanwhile (every commit fails while the disk is full)
FAILURE_LOG_INTERVAL = 60.0
#: causes remembered for that (SQLite's error texts: a handful in practice)
FAILURE_CAUSES = 16


class StoreUnreadable(OSError):
    """The data dir's mailbox database cannot be opened or read: the node cannot start
    (an OSError, like a port in use: the command line prints it in one line)."""


@dataclass(slots=True)
class _Write:
    puts: list[Stored]
    deletes: list[tuple[str, int]]
    devices: list[Device] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None

    def empty(self) -> bool:
        return not (self.puts or self.deletes or self.devices)


class Store:
    def __init__(self, path: str | None) -> None:
        self.path = path or ":memory:"
        self.durable = path is not None
        self._db: sqlite3.Connection | None = None
        self.commits = 0
        self.writes = 0
        self.commit_seconds = Histogram(time.monotonic)  # each commit, its fsync included
        #: ``store_write_failures``: writes that could not be committed (status, metrics)
        self.counters: dict[str, int] = {"store_write_failures": 0}
        #: when each cause of a failed write was last logged, and the writes not logged
        #: since (a few causes at most: SQLite's errors)
        self._failure_logged: dict[str, tuple[float, int]] = {}
        self._committed = trio.Event()  # set (and replaced) after every commit
        self._soon: list[_Write] = []
        self._soon_at = math.inf  # when held writes must go
        self._waiting: trio.CancelScope | None = None  # run()'s wait for held writes' time
        #: for the thread: lists of writes (one list is never split between commits)
        self._jobs: queue.SimpleQueue[list[_Write] | None] = queue.SimpleQueue()

    @classmethod
    def in_dir(cls, data_dir: str | None) -> Store:
        if data_dir is None:
            return cls(None)
        os.makedirs(data_dir, exist_ok=True)
        return cls(os.path.join(data_dir, "mailboxes.sqlite3"))

    async def open(self) -> tuple[list[Stored], dict[str, int], list[Device]]:
        """Open (creating it if need be) and load everything: messages, last seqs, devices."""
        def _open() -> tuple[list[Stored], dict[str, int], list[Device]]:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            _relayout(db)
            self._db = db
            rows = db.execute(
                "SELECT user, seq, id, body, ts, expires, sender, attempts FROM messages "
                "ORDER BY user, seq"
            ).fetchall()
            seqs = dict(db.execute("SELECT user, last_seq FROM sequences").fetchall())
            devices = db.execute("SELECT user, device, seen FROM devices").fetchall()
            return [Stored(*row) for row in rows], seqs, devices
        try:
            return await trio.to_thread.run_sync(_open)
        except sqlite3.Error as exc:
            raise StoreUnreadable(
                f"cannot open the mailboxes in {self.path}: {exc} (a damaged file can be "
                "moved aside: the node then starts empty, and with --replicas 2 or more "
                "the copies other nodes hold come back to it)") from None

    async def write(self, puts: Iterable[Stored] = (), deletes: Iterable[tuple[str, int]] = (),
                    devices: Iterable[Device] = ()) -> None:
        """Make ``puts``, ``deletes`` and ``devices`` durable (group-committed with others)."""
        request = _Write(list(puts), list(deletes), list(devices))
        if request.empty():
            return
        await self._wait(request)
        if request.error is not None:
            raise request.error

    async def flush(self) -> None:
        """Return once everything queued so far, held writes included, is on disk."""
        await self._wait(_Write([], []))

    async def _wait(self, request: _Write) -> None:
        """Queue ``request``, with the held writes (they go along), and wait for its commit."""
        self._soon.append(request)
        self._release_soon()
        await request.done.wait()

    async def wait_commits(self, count: int) -> None:
        """Wait until ``commits`` reaches ``count`` (tests and tools)."""
        while self.commits < count:
            await self._committed.wait()

    def write_soon(self, puts: Iterable[Stored] = (),
                   deletes: Iterable[tuple[str, int]] = (), devices: Iterable[Device] = ()
                   ) -> None:
        """Queue a write nobody waits for (acks, expiry): it commits within
        ``SOON_DELAY``, with the next durable write if one comes first."""
        request = _Write(list(puts), list(deletes), list(devices))
        if request.empty():
            return
        self._soon.append(request)
        if len(self._soon) >= SOON_LIMIT:
            self._release_soon()
        elif self._soon_at == math.inf:
            self._soon_at = trio.current_time() + SOON_DELAY
            if self._waiting is not None:
                self._waiting.deadline = self._soon_at

    def _release_soon(self) -> None:
        writes, self._soon, self._soon_at = self._soon, [], math.inf
        if writes:
            self._jobs.put(writes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the store thread; then send held writes on their way when their time is
        up (a durable write takes them along before that)."""
        token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._work, args=(token,), daemon=True,
                                  name="grapevine-store")
        thread.start()
        task_status.started()
        try:
            while True:
                with trio.move_on_at(self._soon_at) as self._waiting:
                    await trio.sleep_forever()
                self._waiting = None
                if trio.current_time() >= self._soon_at:
                    self._release_soon()
        finally:
            self._jobs.put(None)  # the thread ends after what it is doing

    def _work(self, token: trio.lowlevel.TrioToken) -> None:
        """The store thread: commit everything queued in one transaction, then wake its
        callers (one callback into trio per commit)."""
        jobs = self._jobs
        while (batch := jobs.get()) is not None:  # a caller's list: nobody else keeps it
            ending = False
            while not ending:
                try:
                    more = jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    ending = True
                else:
                    batch.extend(more)
            began = time.monotonic()
            commits, errors = self._commit_each(batch)
            took = time.monotonic() - began
            try:
                token.run_sync_soon(self._committed_batch, batch, commits, errors, took)
            except trio.RunFinishedError:
                return
            if ending:
                return

    def _commit_each(self, batch: list[_Write]) -> tuple[int, list[Exception | None]]:
        """Commit ``batch`` in one transaction; if that fails, each write in one of its
        own, so that a write that cannot be stored fails alone, not the callers it was
        batched with. Returns the transactions committed and each write's error."""
        try:
            self._commit(batch)
            return 1, [None] * len(batch)
        except Exception as exc:  # not only sqlite3.Error (a value it cannot bind is a
            if len(batch) == 1:  # ValueError or an OverflowError): the thread lives on
                return 0, [exc]
        commits, errors = 0, []
        for write in batch:
            try:
                self._commit([write])
            except Exception as exc:
                errors.append(exc)
            else:
                commits += 1
                errors.append(None)
        return commits, errors

    def _committed_batch(self, batch: list[_Write], commits: int,
                         errors: list[Exception | None], took: float) -> None:
        """In trio: a batch is on disk (or some of its writes failed), its commits having
        taken ``took`` seconds: wake its writers."""
        if commits:
            self.commit_seconds.observe(took / commits)
        failed = [error for error in errors if error is not None]
        if failed:
            self._failed(str(failed[0]), len(failed))
        self.commits += commits
        self.writes += len(batch) - len(failed)
        for request, error in zip(batch, errors, strict=True):
            request.error = error
            request.done.set()
        self._committed.set()
        self._committed = trio.Event()

    def _failed(self, cause: str, count: int) -> None:
        """``count`` writes failed with ``cause``: counted; logged the first time of each
        cause, then once per ``FAILURE_LOG_INTERVAL`` per cause with how many failed with
        it since its last line (two causes taking turns do not log every commit)."""
        self.counters["store_write_failures"] += count
        now = time.monotonic()
        when, unlogged = self._failure_logged.get(cause, (None, 0))
        unlogged += count
        if when is not None and now - when < FAILURE_LOG_INTERVAL:
            self._failure_logged[cause] = (when, unlogged)
            return
        logger.error("store_write_failed error=%r writes=%d total=%d", cause, unlogged,
                     self.counters["store_write_failures"])
        if len(self._failure_logged) >= FAILURE_CAUSES:
            self._failure_logged.clear()  # a stream of ever new messages: start again
        self._failure_logged[cause] = (now, 0)

    def _commit(self, batch: list[_Write]) -> None:
        assert self._db is not None, "Store.open() first"
        db = self._db
        puts = [s for request in batch for s in request.puts]
        deletes = [d for request in batch for d in request.deletes]
        devices = [d for request in batch for d in request.devices]
        # a user's last seq is kept when its messages go (until then they hold it):
        # off the path of the durable writes that senders wait for
        last: dict[str, int] = {}
        for user, seq in deletes:
            if seq > last.get(user, 0):
                last[user] = seq
        db.execute("BEGIN")
        try:
            # a Stored is a tuple in the columns' order
            db.executemany("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           puts)
            db.executemany(
                "INSERT INTO sequences VALUES (?, ?) ON CONFLICT(user) DO UPDATE "
                "SET last_seq = max(last_seq, excluded.last_seq)", list(last.items()),
            )
            db.executemany("DELETE FROM messages WHERE user = ? AND seq = ?", deletes)
            db.executemany(
                "INSERT INTO devices VALUES (?, ?, ?) ON CONFLICT(user, device) DO UPDATE "
                "SET seen = max(seen, excluded.seen)", devices,
            )
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself after some errors (a full disk, out of memory):
            # a ROLLBACK then would fail and its error would hide the real one
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.debug("store_rollback_failed", exc_info=True)
            raise


def _relayout(db: sqlite3.Connection) -> None:
    """Re-key the messages of a data dir written before 2026-11-30 by (seq, user)."""
    first = [name for _, name, _, _, _, pk in db.execute("PRAGMA table_info(messages)")
             if pk == 1]
    if first != ["user"]:
        return
    count = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    try:
        db.executescript(f"BEGIN; {RELAYOUT} COMMIT;")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    logger.info("store_relaid messages=%d key=seq,user", count)
