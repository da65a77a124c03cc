"""How long a handover round (node/handover.py) holds the event loop: a node holding
``--users`` users' mailboxes (a message each) leaves their replica sets, hands every
mailbox over and drops it. Prints the round's wall time and the longest stretch in which
no other task of the node ran (a node that leaves gossip unanswered for ~0.5 s is
suspected), and the longest garbage collection in the round (Python's cyclic collector
walks every container the mailboxes hold, whatever the round does). The peer links are
stand-ins that confirm every copy at once.

    python scripts/bench_handover.py [--users 100000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_push import report

from node.clients import LocalClients
from node.delivery import Delivery
from node.ring import HashRing
from node.routing import MessageIds, Router
from node.store import Store
from tests.node.helpers import local_config


class Links:
    """Peer links that confirm every copy at once."""

    async def request(self, node: str, frame: dict[str, Any]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"ok": True}

    def send(self, node: str, frame: dict[str, Any]) -> None:
        pass


async def measure(users: int) -> dict[str, float]:
    ring = HashRing(nodes={"old": 1.0})
    delivery = Delivery(local_config("old"), ring=ring, router=Router("old", ring.owner),
                        clients=LocalClients(), links=Links(), store=Store(None),  # type: ignore[arg-type]
                        ids=MessageIds("old"), carry_out=lambda actions: None)
    longest = 0.0
    collections: list[float] = []
    started_gc = [0.0]

    def timing(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started_gc[0] = time.perf_counter()
        else:
            collections.append(time.perf_counter() - started_gc[0])

    async def other_task() -> None:
        nonlocal longest
        last = time.perf_counter()
        while True:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
    async with trio.open_nursery() as nursery:
        await delivery.store.open()
        await nursery.start(delivery.store.run)
        now = time.time()
        for n in range(users):
            delivery.mailboxes.put(delivery.mailboxes.new(f"user{n}", f"m{n}", "b", now, None))
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()
        ring.update({"new-a": 1.0, "new-b": 1.0})  # "old" leaves every replica set
        gc.callbacks.append(timing)
        started = time.perf_counter()
        complete = await delivery.handover.once()
        took = time.perf_counter() - started
        gc.callbacks.remove(timing)
        assert complete and delivery.mailboxes.pending_count() == 0
        nursery.cancel_scope.cancel()
    return {"users": users, "round_s": round(took, 2),
            "longest_stall_ms": round(longest * 1000, 1),
            "longest_gc_ms": round(max(collections, default=0.0) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users must be at least 1")
    figures = trio.run(measure, args.users)
    report(figures, f"handing over {figures['users']:,} mailboxes: the round took "
                    f"{figures['round_s']} s, the longest stretch without another task "
                    f"{figures['longest_stall_ms']} ms (the longest garbage collection "
                    f"{figures['longest_gc_ms']} ms)", as_json=args.json)


if __name__ == "__main__":
    main()
