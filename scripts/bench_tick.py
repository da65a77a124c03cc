"""What the QoS 1 mailboxes' once-a-second tick costs the event loop (node/mailbox.py,
``Delivery._tick``) when many users wait offline with messages: the tick looks at the
mailboxes of users with sessions (``expire(now, online)`` and ``retry_users``) and at a
slice of the rest (``sweep``). ``--whole`` also times what a tick did before 2026-11-30:
every mailbox and every message, each second. And how long one full garbage collection
takes with those mailboxes in memory (the collector walks every container they hold).

    python scripts/bench_tick.py [--offline 100000] [--messages 5] [--online 10000]
                                 [--ticks 20] [--whole] [--json]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_push import report

from node.mailbox import Mailboxes, Stored

NOW = 1_800_000_000.0


def fill(args: argparse.Namespace) -> tuple[Mailboxes, list[str]]:
    boxes = Mailboxes()
    seq = int(NOW * 1_000_000)
    for user in range(args.offline + args.online):
        name = f"user{user}"
        boxes.see_device(name, "phone", NOW)
        for _ in range(args.messages):
            seq += 1
            boxes.put(Stored(name, seq, f"id{seq}", "x" * 64, NOW, NOW + 86_400))
    online = [f"user{user}" for user in range(args.offline, args.offline + args.online)]
    return boxes, online


def timed(ticks: int, tick: Callable[[float], object]) -> float:
    """Milliseconds per tick, the median of ``ticks``."""
    took = []
    for n in range(ticks):
        started = time.perf_counter()
        tick(NOW + 1 + n)
        took.append((time.perf_counter() - started) * 1000)
    return round(sorted(took)[len(took) // 2], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", type=int, default=100_000,
                        help="users without a session, with messages waiting")
    parser.add_argument("--messages", type=int, default=5, help="messages per user")
    parser.add_argument("--online", type=int, default=10_000,
                        help="users with sessions (whose owner this node is)")
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--whole", action="store_true",
                        help="also time a tick that looks at every mailbox (as before)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.offline, args.messages, args.online) < 0 or args.ticks < 1:
        parser.error("counts must be at least 0, --ticks at least 1")
    boxes, online = fill(args)
    figures: dict[str, object] = {
        "offline_users": args.offline, "online_users": args.online,
        "messages_per_user": args.messages,
        "tick_ms": timed(args.ticks, lambda now: (
            boxes.expire(now, online), boxes.sweep(now), boxes.retry_users(now, online))),
    }
    gc.collect()
    started = time.perf_counter()
    gc.collect()
    figures["full_gc_ms"] = round((time.perf_counter() - started) * 1000, 1)
    if args.whole:
        everyone = [f"user{user}" for user in range(args.offline + args.online)]
        figures["whole_tick_ms"] = timed(args.ticks, lambda now: (
            boxes.expire(now), boxes.retry_users(now, everyone)))
    report(figures, (
        f"{args.offline:,} offline and {args.online:,} online users, {args.messages} "
        f"messages each: a tick takes {figures['tick_ms']} ms of the event loop"
        + (f" (looking at every mailbox: {figures['whole_tick_ms']} ms)"
           if args.whole else "")
        + f"; a full garbage collection {figures['full_gc_ms']} ms"), as_json=args.json)


if __name__ == "__main__":
    main()
