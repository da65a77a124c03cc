"""How long the node's loops over every user hold its event loop, with ``--users``
users' mailboxes (a message and a device each): the start-up load of a data dir that
holds them (``Delivery.run``), and a handover round in which the node leaves every
user's replica set, hands each mailbox over and drops it (``node/handover.py``). For
each, the wall time and the longest stretch in which no other task of the node ran (a
node that leaves gossip unanswered for ~0.5 s is suspected), and the longest garbage
collection within it (Python's cyclic collector walks every container the mailboxes
hold, whatever the loop does). The peer links are stand-ins that confirm every copy at
once.

    python scripts/bench_long_loops.py [--users 100000] [--json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_push import report

from node.mailbox import Stored
from node.ring import HashRing
from node.stalls import GcWatch
from node.store import Store
from tests.node.helpers import delivery_of


class Links:
    """Peer links that confirm every copy at once."""

    async def request(self, node: str, frame: dict[str, Any]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"ok": True}

    def send(self, node: str, frame: dict[str, Any]) -> None:
        pass


class Stalls:
    """The longest stretch without a turn of another task, and the longest garbage
    collection (the node's own ``GcWatch``), while ``measuring``."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._last = time.perf_counter()

    async def watch(self) -> None:
        while True:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            self.longest, self._last = max(self.longest, now - self._last), now

    @contextmanager
    def measuring(self, figures: dict[str, float], name: str) -> Iterator[None]:
        self.longest, self._last = 0.0, time.perf_counter()
        collector = GcWatch()
        collector.install()
        started = time.perf_counter()
        try:
            yield
        finally:
            collector.remove()
        figures[f"{name}_s"] = round(time.perf_counter() - started, 2)
        figures[f"{name}_longest_stall_ms"] = round(self.longest * 1000, 1)
        figures[f"{name}_longest_gc_ms"] = round(collector.longest * 1000, 1)


async def measure(users: int, directory: str) -> dict[str, float]:
    path = str(Path(directory) / "mailboxes.sqlite3")
    writer = Store(path)
    await writer.open()
    async with trio.open_nursery() as nursery:  # a data dir holding every mailbox
        await nursery.start(writer.run)
        now = time.time()
        for start in range(0, users, 10_000):
            await writer.write(
                [Stored(f"user{n}", int(now * 1e6) + n, f"m{n}", "b", now, now + 86_400)
                 for n in range(start, min(users, start + 10_000))],
                devices=[(f"user{n}", "phone", now)
                         for n in range(start, min(users, start + 10_000))])
        nursery.cancel_scope.cancel()
    ring = HashRing(nodes={"old": 1.0})
    delivery = delivery_of("old", ring, Links(), Store(path))
    figures: dict[str, float] = {"users": users}
    stalls = Stalls()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalls.watch)
        await trio.lowlevel.checkpoint()
        with stalls.measuring(figures, "load"):
            await nursery.start(delivery.run)
        assert delivery.mailboxes.pending_count() == users
        ring.update({"new-a": 1.0, "new-b": 1.0})  # "old" leaves every replica set
        with stalls.measuring(figures, "handover"):
            complete = await delivery.handover.once()
        assert complete and delivery.mailboxes.pending_count() == 0
        nursery.cancel_scope.cancel()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users must be at least 1")
    with tempfile.TemporaryDirectory() as directory:
        figures = trio.run(measure, args.users, directory)
    report(figures, "; ".join(
        f"{what} of {figures['users']:,} mailboxes {figures[f'{name}_s']} s, the longest "
        f"stretch without another task {figures[f'{name}_longest_stall_ms']} ms (the "
        f"longest garbage collection {figures[f'{name}_longest_gc_ms']} ms)"
        for name, what in (("load", "loading"), ("handover", "handing over"))),
        as_json=args.json)


if __name__ == "__main__":
    main()
