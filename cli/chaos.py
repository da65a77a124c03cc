"""``grapevine chaos``: kill, pause and restart nodes under load; prove nothing is lost.

One run: bring up a local cluster (``grapevine cluster up``), connect U users as clients
(a share of them on two devices; some devices drop and resume now and then), send M QoS 1
messages at a set rate through random nodes' HTTP APIs, and meanwhile every T seconds
kill -9 a random node and restart it a little later (never more than R-1 down at once),
or pause one with SIGSTOP/SIGCONT, or (``--netns --partitions``, root only) cut a node's
network link and heal it later. Then wait for quiescence and judge (``verdict.py``):
every message acknowledged to its sender must have reached every device of its user
(every device connects once before the first message is sent: the cluster cannot
promise a message to a device it has never seen).
Prints a report (and JSON with --json) and exits 1 on any loss.

Devices behave like an SDK (``client.py``): on losing their node (a closed connection,
or a node silent for 3 s) they move to another one, resuming their session (session id
and last seen sequence), and they ack what they receive. Senders behave like a business
server: a send that fails or times out is retried on another node (up to 3 attempts);
only the attempt the cluster acknowledged is promised.
"""

from __future__ import annotations

import argparse

from .common import lazy


def add_parser(sub: argparse._SubParsersAction) -> None:
    chaos = sub.add_parser("chaos", help="a chaos run: kill nodes under load, check for loss")
    chaos.add_argument("--nodes", type=int, default=5)
    chaos.add_argument("--users", type=int, default=100)
    chaos.add_argument("--two-device-share", type=float, default=0.2)
    chaos.add_argument("--messages", type=int, default=2000)
    chaos.add_argument("--rate", type=float, default=50.0, help="messages per second")
    chaos.add_argument("--kill-every", type=float, default=10.0, metavar="T",
                       help="a fault every T seconds: a kill -9 (with --partitions, every "
                       "other one a cut link)")
    chaos.add_argument("--down-for", type=float, default=3.0, help="seconds before a restart")
    chaos.add_argument("--pauses", action="store_true", help="also SIGSTOP/SIGCONT nodes")
    chaos.add_argument("--netns", action="store_true",
                       help="every node in its own network namespace (root only)")
    chaos.add_argument("--partitions", action="store_true",
                       help="also cut nodes' links and heal them (needs --netns)")
    chaos.add_argument("--partition-for", type=float, default=6.0, metavar="SECONDS",
                       help="how long a cut lasts")
    chaos.add_argument("--reconnects", type=float, default=0.02,
                       help="chance per second that a device drops and resumes")
    chaos.add_argument("--settle", type=float, default=90.0,
                       help="seconds to wait for every acknowledged message at the end")
    chaos.add_argument("--dir", default=None, help="cluster dir (default: a new temp dir)")
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--json", action="store_true")
    chaos.set_defaults(run=lazy("chaos_run:run_chaos"))
