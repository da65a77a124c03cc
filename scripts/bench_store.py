"""What one durable commit of the QoS 1 store costs (node/store.py): wall time, the event
loop's CPU and the whole process's user and system CPU per commit, for commits of a few
messages one after the other — the shape of a node's commits at a moderate rate, where
each group of a few messages is written alone (docs/benchmarks.md, "Where the time goes").

    python scripts/bench_store.py [--commits 2000] [--per 5] [--dir DIR] [--json]

Runs on the disk of ``--dir`` (default: a temporary directory under /tmp), SQLite in WAL
mode with ``synchronous=FULL`` as the node runs it: every commit waits for an fsync.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_push import machine

from node.mailbox import Stored
from node.store import Store


async def measure(directory: str, commits: int, per: int) -> dict[str, float]:
    store = Store(str(Path(directory) / "bench.sqlite3"))
    await store.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        seq = 0
        wall, loop_cpu = time.perf_counter(), time.thread_time()
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(commits):
            batch = []
            for _ in range(per):
                seq += 1
                batch.append(Stored(f"user{seq % 100}", seq, f"id{seq}", "x" * 256, 1.0, 2e9))
            await store.write(batch)
        after = resource.getrusage(resource.RUSAGE_SELF)
        wall, loop_cpu = time.perf_counter() - wall, time.thread_time() - loop_cpu
        nursery.cancel_scope.cancel()
    assert store.commits == commits
    return {"commits": commits, "messages_per_commit": per,
            "wall_us": round(wall / commits * 1e6, 1),
            "event_loop_cpu_us": round(loop_cpu / commits * 1e6, 1),
            "process_user_us": round((after.ru_utime - before.ru_utime) / commits * 1e6, 1),
            "process_sys_us": round((after.ru_stime - before.ru_stime) / commits * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--per", type=int, default=5, help="messages per commit (5)")
    parser.add_argument("--dir", help="where the database goes (default: a temporary dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.commits < 1 or args.per < 1:
        parser.error("--commits and --per must be at least 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        figures = trio.run(measure, directory, args.commits, args.per)
    info = machine()
    if args.json:
        print(json.dumps({"machine": info, **figures}))
        return
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{figures['commits']} commits of {figures['messages_per_commit']} messages, per "
          f"commit: wall {figures['wall_us']} µs, event loop CPU "
          f"{figures['event_loop_cpu_us']} µs, process CPU user {figures['process_user_us']}"
          f" + system {figures['process_sys_us']} µs")


if __name__ == "__main__":
    main()
