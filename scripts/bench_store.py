"""What one durable commit of the QoS 1 store costs (node/store.py): wall time, the event
loop's CPU and the whole process's user and system CPU per commit, for commits of a few
messages one after the other — the shape of a node's commits at a moderate rate, where
each group of a few messages is written alone (docs/benchmarks.md, "Where the time goes").
The messages go to random users of ``--users``, numbered as the mailboxes number them
(by the clock), and each commit also deletes those written ``--ack-lag`` commits before
(the acks that ride along). ``--devices`` makes each commit also store the device
record of each of its messages' users, as a replica did with every copy until
2026-11-30 (every known user has one). ``--standing`` messages wait in the table
throughout, as for users who are offline (other users than those written to, among
them by name).

    python scripts/bench_store.py [--commits 2000] [--per 5] [--users 1000] [--ack-lag 3]
                                  [--standing 20000] [--devices] [--dir DIR] [--json]

Runs on the disk of ``--dir`` (default: a temporary directory under /tmp), SQLite in WAL
mode with ``synchronous=FULL`` as the node runs it: every commit waits for an fsync.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_push import report

from node.mailbox import Stored
from node.store import Store


async def measure(directory: str, args: argparse.Namespace) -> dict[str, float]:
    commits, per, users, ack_lag, standing = (args.commits, args.per, args.users,
                                              args.ack_lag, args.standing)
    store = Store(str(Path(directory) / "bench.sqlite3"))
    await store.open()
    chosen = random.Random(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        seq = int(time.time() * 1_000_000) - 10 * standing
        waiting = []
        for _ in range(standing):
            seq += 1
            waiting.append(Stored(f"user{users + chosen.randrange(10 * users)}", seq,
                                  f"id{seq}", "x" * 256, 1.0, 2e9))
        await store.write(waiting, devices=[(f"user{u}", "phone", 1.0)
                                            for u in range(11 * users)])
        start = store.commits
        written: list[list[Stored]] = []
        wall, loop_cpu = time.perf_counter(), time.thread_time()
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(commits):
            batch = []
            for _ in range(per):
                seq = max(seq + 1, int(time.time() * 1_000_000))
                batch.append(Stored(f"user{chosen.randrange(users)}", seq, f"id{seq}",
                                    "x" * 256, 1.0, 2e9))
            written.append(batch)
            acked = written.pop(0) if len(written) > ack_lag else []
            devices = [(s.user, "phone", time.time()) for s in batch] if args.devices else []
            await store.write(batch, deletes=[(s.user, s.seq) for s in acked], devices=devices)
        after = resource.getrusage(resource.RUSAGE_SELF)
        wall, loop_cpu = time.perf_counter() - wall, time.thread_time() - loop_cpu
        nursery.cancel_scope.cancel()
    assert store.commits - start == commits
    return {"commits": commits, "messages_per_commit": per, "users": users,
            "ack_lag": ack_lag, "standing": standing, "devices": args.devices,
            "wall_us": round(wall / commits * 1e6, 1),
            "event_loop_cpu_us": round(loop_cpu / commits * 1e6, 1),
            "process_user_us": round((after.ru_utime - before.ru_utime) / commits * 1e6, 1),
            "process_sys_us": round((after.ru_stime - before.ru_stime) / commits * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--per", type=int, default=5, help="messages per commit (5)")
    parser.add_argument("--users", type=int, default=1000, help="users messages go to")
    parser.add_argument("--ack-lag", type=int, default=3,
                        help="a commit deletes the messages of the commit this many before")
    parser.add_argument("--standing", type=int, default=20000,
                        help="messages waiting in the table throughout (offline users)")
    parser.add_argument("--devices", action="store_true",
                        help="each commit also stores its users' device records")
    parser.add_argument("--dir", help="where the database goes (default: a temporary dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.commits, args.per, args.users) < 1 or min(args.ack_lag, args.standing) < 0:
        parser.error("--commits, --per and --users must be at least 1, --ack-lag and "
                     "--standing at least 0")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        figures = trio.run(measure, directory, args)
    report(figures, (
        f"{figures['commits']} commits of {figures['messages_per_commit']} messages to "
        f"{figures['users']} users (deleting those of {figures['ack_lag']} commits before; "
        f"{figures['standing']} waiting throughout"
        f"{'; with their device records' if figures['devices'] else ''}), per "
        f"commit: wall {figures['wall_us']} µs, event loop CPU "
        f"{figures['event_loop_cpu_us']} µs, process CPU user {figures['process_user_us']}"
        f" + system {figures['process_sys_us']} µs"), as_json=args.json)


if __name__ == "__main__":
    main()
