"""``grapevine chaos``: kill, pause and restart nodes under load; prove nothing is lost.

One run: bring up a local cluster (``grapevine cluster up``), connect U users as clients
(a share of them on two devices; some devices drop and resume now and then), send M QoS 1
messages at a set rate through random nodes' HTTP APIs, and meanwhile every T seconds
kill -9 a random node and restart it a little later (never more than R-1 down at once),
or pause one with SIGSTOP/SIGCONT. Then wait for quiescence and judge (``verdict.py``):
every message acknowledged to its sender must have reached every device of its user
(every device connects once before the first message is sent: the cluster cannot
promise a message to a device it has never seen).
Prints a report (and JSON with --json) and exits 1 on any loss.

Devices behave like an SDK: on losing their node they move to another one, resuming
their session (session id and last seen sequence), and they ack what they receive.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket

from node.token import mint

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, api_request, host_port
from .verdict import Receipt, Sent, judge


def add_parser(sub: argparse._SubParsersAction) -> None:
    chaos = sub.add_parser("chaos", help="a chaos run: kill nodes under load, check for loss")
    chaos.add_argument("--nodes", type=int, default=5)
    chaos.add_argument("--users", type=int, default=100)
    chaos.add_argument("--two-device-share", type=float, default=0.2)
    chaos.add_argument("--messages", type=int, default=2000)
    chaos.add_argument("--rate", type=float, default=50.0, help="messages per second")
    chaos.add_argument("--kill-every", type=float, default=10.0, metavar="T")
    chaos.add_argument("--down-for", type=float, default=3.0, help="seconds before a restart")
    chaos.add_argument("--pauses", action="store_true", help="also SIGSTOP/SIGCONT nodes")
    chaos.add_argument("--reconnects", type=float, default=0.02,
                       help="chance per second that a device drops and resumes")
    chaos.add_argument("--settle", type=float, default=90.0,
                       help="seconds to wait for every acknowledged message at the end")
    chaos.add_argument("--dir", default=None, help="cluster dir (default: a new temp dir)")
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--json", action="store_true")
    chaos.set_defaults(run=run_chaos)


# ---- the cluster, through the cluster command --------------------------------------------

def cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", "cluster", *args], text=True,
                          capture_output=True, check=False, timeout=180)


def free_base_port(count: int) -> int:
    """A base port P such that P .. P+4*count are free on 127.0.0.1 (checked, not held)."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 30000 - 4 * count)
        try:
            for port in range(base, base + 4 * count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise CliError("no free block of ports for the cluster")


@dataclass
class Run:
    directory: str
    nodes: list[dict[str, Any]]
    secret: str
    replicas: int = 2
    down: set[str] = field(default_factory=set)
    detections: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    receipts: dict[str, list[Receipt]] = field(default_factory=dict)
    send_failures: int = 0
    reconnects: int = 0

    def live(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["name"] not in self.down]

    def reload(self) -> None:
        state = json.loads(Path(self.directory, "cluster.json").read_text())
        self.nodes = state["nodes"]


# ---- devices ------------------------------------------------------------------------------

async def device(run: Run, user: str, name: str, rng: random.Random, *,
                 reconnects: float, stop: trio.Event, ready: trio.Semaphore) -> None:
    session: str | None = None
    last_seq: int | None = None
    receipts = run.receipts.setdefault(name, [])
    token = mint(run.secret.encode(), user, time.time(), None)
    while not stop.is_set():
        node = rng.choice(run.live() or run.nodes)
        host, port = host_port(node["client"])
        try:
            async with open_websocket(host, port, "/", use_ssl=False, connect_timeout=5) as ws:
                hello: dict[str, Any] = {"t": "hello", "token": token, "device": name}
                if session:
                    hello.update(session=session, last_seq=last_seq)
                await ws.send_message(json.dumps(hello))
                drop_at = trio.current_time() + rng.expovariate(reconnects or 1e-9)
                with trio.move_on_at(drop_at):
                    while True:
                        frame = json.loads(await ws.get_message())
                        top = None
                        for obj in frame if isinstance(frame, list) else [frame]:
                            if obj.get("t") == "welcome":
                                if session is None:
                                    ready.release()  # known to the cluster from now on
                                session = obj["session"]
                            elif obj.get("t") == "msg" and obj.get("qos") == 1:
                                receipts.append(Receipt(obj["id"], obj["seq"]))
                                top = max(top or 0, obj["seq"])
                        if top is not None:
                            last_seq = max(last_seq or 0, top)
                            await ws.send_message(json.dumps({"t": "ack", "seq": top}))
                run.reconnects += 1
        except (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError,
                trio.TooSlowError):
            await trio.sleep(0.2 + rng.random() * 0.3)


# ---- senders ------------------------------------------------------------------------------

async def sender(run: Run, users: list[str], count: int, rate: float,
                 rng: random.Random) -> None:
    limiter = trio.Semaphore(32)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for index in range(count):
            await trio.sleep_until(start + index / rate)
            await limiter.acquire()
            nursery.start_soon(_send_one, run, rng.choice(users), f"c{index}", limiter)


async def _send_one(run: Run, user: str, body: str, limiter: trio.Semaphore) -> None:
    try:
        node = random.choice(run.live() or run.nodes)
        try:
            answer = await trio.to_thread.run_sync(lambda: api_request(
                host_port(node["api"]), "POST", "/v1/send",
                {"to": user, "body": body, "qos": 1}, timeout=15.0))
        except CliError:
            run.send_failures += 1
            run.sent.append(Sent(body, user, -1, False))
            return
        run.sent.append(Sent(answer["id"], user, answer["seq"], True))
    finally:
        limiter.release()


# ---- faults -------------------------------------------------------------------------------

async def faults(run: Run, args: argparse.Namespace, rng: random.Random,
                 stop: trio.Event) -> None:
    every, down_for, pauses = args.kill_every, args.down_for, args.pauses
    while not stop.is_set():
        with trio.move_on_after(every):
            await stop.wait()
        if stop.is_set():
            return
        victim = rng.choice(run.live())
        if pauses and rng.random() < 0.3:
            await trio.to_thread.run_sync(cluster, "kill", victim["name"], "--signal", "STOP",
                                          "--dir", run.directory)
            await trio.sleep(rng.uniform(0.5, 2.0))
            await trio.to_thread.run_sync(cluster, "kill", victim["name"], "--signal", "CONT",
                                          "--dir", run.directory)
            continue
        if len(run.down) >= run.replicas - 1:
            continue
        run.down.add(victim["name"])
        killed = time.time()
        await trio.to_thread.run_sync(cluster, "kill", victim["name"], "--dir", run.directory)
        waited = await trio.to_thread.run_sync(cluster, "wait", victim["name"], "dead",
                                               "--dir", run.directory, "--timeout", "60")
        run.detections.append({"node": victim["name"], "detected_s": round(
            time.time() - killed, 2) if waited.returncode == 0 else None})
        await trio.sleep(down_for)
        restarted = await trio.to_thread.run_sync(cluster, "restart", victim["name"],
                                                  "--dir", run.directory)
        if restarted.returncode != 0:
            raise CliError(f"restart of {victim['name']} failed: {restarted.stderr}")
        run.reload()
        run.down.discard(victim["name"])


# ---- the run ------------------------------------------------------------------------------

async def chaos(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    rng = random.Random(args.seed)
    users = [f"user{i}" for i in range(args.users)]
    devices = {u: [f"{u}/a"] + ([f"{u}/b"] if rng.random() < args.two_device_share else [])
               for u in users}
    stop_devices, stop_faults = trio.Event(), trio.Event()
    ready = trio.Semaphore(0, max_value=sum(len(d) for d in devices.values()))
    started = time.time()
    async with trio.open_nursery() as nursery:
        for user, names in devices.items():
            for name in names:
                nursery.start_soon(partial(
                    device, run, user, name, random.Random(f"{args.seed}:{name}"),
                    reconnects=args.reconnects, stop=stop_devices, ready=ready))
        # a message can only be promised to devices the cluster has seen: every device
        # connects once before the first send (and its registration reaches the owner)
        with trio.fail_after(120):
            for _ in range(ready.max_value):
                await ready.acquire()
        await trio.sleep(1.0)
        nursery.start_soon(faults, run, args, random.Random(args.seed + 1), stop_faults)
        await sender(run, users, args.messages, args.rate, rng)
        stop_faults.set()
        deadline = trio.current_time() + args.settle
        while trio.current_time() < deadline:
            if judge(run.sent, devices, run.receipts).ok and not run.down:
                break
            await trio.sleep(1.0)  # quiescence is polled: devices ack on their own time
        stop_devices.set()
        nursery.cancel_scope.cancel()
    verdict = judge(run.sent, devices, run.receipts)
    return {"verdict": verdict.summary(), "send_failures": run.send_failures,
            "detections": run.detections, "device_reconnects": run.reconnects,
            "users": len(users), "devices": sum(len(d) for d in devices.values()),
            "nodes": len(run.nodes), "seconds": round(time.time() - started, 1),
            "lost_examples": verdict.lost[:10], "reordered_examples": verdict.reordered[:10]}


def run_chaos(args: argparse.Namespace) -> int:
    if args.nodes < 2 or args.users < 1 or args.messages < 1 or args.rate <= 0:
        raise CliError("need --nodes >= 2, --users >= 1, --messages >= 1, --rate > 0",
                       EXIT_USAGE)
    directory = args.dir or tempfile.mkdtemp(prefix="grapevine-chaos-")
    secret = f"chaos-{random.Random(args.seed).getrandbits(64):x}"
    up = cluster("up", str(args.nodes), "--dir", directory, "--base-port",
                 str(free_base_port(args.nodes)), "--token-secret", secret)
    if up.returncode != 0:
        raise CliError(f"cluster up failed: {up.stderr.strip()}")
    try:
        run = Run(directory, [], secret)
        run.reload()
        report = trio.run(chaos, args, run)
    finally:
        cluster("down", "--dir", directory)
    verdict = report["verdict"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"chaos: {report['nodes']} nodes, {report['users']} users on "
              f"{report['devices']} devices, {report['seconds']} s")
        print("  " + ", ".join(f"{k} {v}" for k, v in verdict.items() if k != "ok"))
        print(f"  send failures (not acknowledged) {report['send_failures']}, "
              f"device reconnects {report['device_reconnects']}")
        for detection in report["detections"]:
            print(f"  killed {detection['node']}: seen dead by all after "
                  f"{detection['detected_s']} s")
        print("  VERDICT: " + ("ok, nothing acknowledged was lost" if verdict["ok"] else
                               f"LOSS: {report['lost_examples']}"))
    return EXIT_OK if verdict["ok"] else EXIT_FAILED
