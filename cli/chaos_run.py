"""What ``grapevine chaos`` runs (the command and its flags: ``chaos.py``)."""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
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
from node.token import mint

from . import netns
from .client import CONNECTION_LOST, Session, hold
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, api_request, host_port
from .verdict import Receipt, Sent, judge

#: the devices' tokens: good for a day, longer than any run (nodes refuse tokens without exp)
TOKEN_TTL = 24 * 3600.0


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
    api_key: str | None = None
    replicas: int = 2
    down: set[str] = field(default_factory=set)  # killed or cut off: not to be used
    detections: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    receipts: dict[str, list[Receipt]] = field(default_factory=dict)
    send_failures: int = 0
    send_retries: int = 0
    reconnects: int = 0
    pauses: int = 0
    skipped: int = 0

    def live(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["name"] not in self.down]

    def reload(self) -> None:
        state = json.loads(Path(self.directory, "cluster.json").read_text())
        self.nodes, self.api_key = state["nodes"], state.get("api_key")


# ---- devices ------------------------------------------------------------------------------

async def device(run: Run, user: str, name: str, rng: random.Random, *,
                 reconnects: float, stop: trio.Event, ready: trio.Semaphore) -> None:
    receipts = run.receipts.setdefault(name, [])
    session = Session(mint(run.secret.encode(), user, time.time(), TOKEN_TTL), name,
                      ping_every=1.0, dead_after=3.0)
    welcomed = False

    async def handle(ws: Any, obj: dict[str, Any]) -> None:
        nonlocal welcomed
        if obj.get("t") == "welcome" and not welcomed:
            welcomed = True
            ready.release()  # known to the cluster from now on
        elif obj.get("t") == "msg" and obj.get("qos") == 1:
            receipts.append(Receipt(obj["id"], obj["seq"]))
            session.saw(obj["seq"])
            await ws.send_message(json.dumps({"t": "ack", "seq": obj["seq"]}))

    while not stop.is_set():
        node = rng.choice(run.live() or run.nodes)
        host, port = host_port(node["client"])
        try:
            with trio.move_on_after(rng.expovariate(reconnects or 1e-9)):
                await hold(host, port, session, handle)
            run.reconnects += 1
        except CONNECTION_LOST:
            await trio.sleep(0.2 + rng.random() * 0.3)


# ---- senders ------------------------------------------------------------------------------

async def sender(run: Run, users: list[str], count: int, rate: float,
                 rng: random.Random) -> None:
    limiter = trio.Semaphore(64)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for index in range(count):
            await trio.sleep_until(start + index / rate)
            await limiter.acquire()
            nursery.start_soon(_send_one, run, rng.choice(users), f"c{index}", limiter,
                               random.Random(f"{rng.random()}"))


async def _send_one(run: Run, user: str, body: str, limiter: trio.Semaphore,
                    rng: random.Random) -> None:
    """One message, retried on other nodes like a business server would (3 attempts)."""
    try:
        tried: set[str] = set()
        for attempt in range(3):
            candidates = [n for n in run.live() if n["name"] not in tried] or run.nodes
            node = rng.choice(candidates)
            tried.add(node["name"])
            try:
                answer = await trio.to_thread.run_sync(partial(
                    api_request, host_port(node["api"]), "POST", "/v1/send",
                    {"to": user, "body": body, "qos": 1}, api_key=run.api_key, timeout=5.0))
            except CliError:
                if attempt < 2:
                    run.send_retries += 1
                    await trio.sleep(0.2)
                continue
            run.sent.append(Sent(answer["id"], user, answer["seq"], True))
            return
        run.send_failures += 1
        run.sent.append(Sent(body, user, -1, False))
    finally:
        limiter.release()


# ---- faults -------------------------------------------------------------------------------

async def faults(run: Run, args: argparse.Namespace, rng: random.Random,
                 stop: trio.Event) -> None:
    """Every T seconds a fault: a kill -9 and restart or, with --partitions, every other
    fault a cut link healed after a while; with --pauses sometimes a SIGSTOP/SIGCONT.

    Faults run side by side on a fixed beat (a node killed at 10 s may still be down at
    20 s), but kills and cuts never take more than R-1 nodes away at once: a beat that
    would is skipped. (Beyond R-1 the cluster may forget a device that only the away
    nodes knew, and then take its other devices' acks as enough.)
    """
    # kills and cuts take turns among the faults that happen (a skipped beat does not
    # count: otherwise a kill that is still recovering would skip every cut)
    kinds = itertools.cycle(["kill", "cut"] if args.partitions else ["kill"])
    async with trio.open_nursery() as nursery:
        beat = trio.current_time()
        while True:
            beat += args.kill_every
            with trio.move_on_at(beat):
                await stop.wait()
            if stop.is_set():
                break
            candidates = run.live()
            if not candidates:
                continue
            victim = rng.choice(candidates)["name"]
            if args.pauses and rng.random() < 0.2:
                nursery.start_soon(_pause, run, victim, rng.uniform(0.5, 2.0))
            elif len(run.down) >= run.replicas - 1:
                run.skipped += 1
            elif next(kinds) == "cut":
                run.down.add(victim)
                nursery.start_soon(_partition, run, victim, args.partition_for)
            else:
                run.down.add(victim)
                nursery.start_soon(_kill_and_restart, run, victim, args.down_for)


async def _pause(run: Run, victim: str, seconds: float) -> None:
    await _command("kill", victim, "--signal", "STOP", directory=run.directory)
    await trio.sleep(seconds)
    await _command("kill", victim, "--signal", "CONT", directory=run.directory)
    run.pauses += 1


async def _command(*args: str, directory: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(partial(cluster, *args, "--dir", directory))


async def _must(command: str, victim: str, run: Run) -> None:
    """``grapevine cluster COMMAND VICTIM``, which must work (the harness stops if not)."""
    done = await _command(command, victim, directory=run.directory)
    if done.returncode != 0:
        raise CliError(f"cluster {command} {victim} failed: {done.stderr.strip()}")


async def _seen(run: Run, victim: str, state: str, since: float) -> float | None:
    waited = await _command("wait", victim, state, "--timeout", "60",
                            directory=run.directory)
    return round(time.time() - since, 2) if waited.returncode == 0 else None


async def _kill_and_restart(run: Run, victim: str, down_for: float) -> None:
    killed = time.time()
    await _command("kill", victim, directory=run.directory)
    run.detections.append({"node": victim, "fault": "kill",
                           "detected_s": await _seen(run, victim, "dead", killed)})
    await trio.sleep(down_for)
    await _must("restart", victim, run)
    run.reload()
    run.down.discard(victim)


async def _partition(run: Run, victim: str, hold_for: float) -> None:
    cut = time.time()
    await _must("partition", victim, run)
    record = {"node": victim, "fault": "partition",
              "detected_s": await _seen(run, victim, "dead", cut)}
    run.detections.append(record)
    await trio.sleep(max(0.0, cut + hold_for - time.time()))
    healed = time.time()
    await _must("heal", victim, run)
    record["rejoined_s"] = await _seen(run, victim, "alive", healed)
    run.down.discard(victim)


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
        sending = time.time()
        await sender(run, users, args.messages, args.rate, rng)
        stop_faults.set()
        settling = time.time()
        deadline = trio.current_time() + args.settle
        while trio.current_time() < deadline:
            if judge(run.sent, devices, run.receipts).ok and not run.down:
                break
            await trio.sleep(1.0)  # quiescence is polled: devices ack on their own time
        stop_devices.set()
        nursery.cancel_scope.cancel()
    verdict = judge(run.sent, devices, run.receipts)
    return {"verdict": verdict.summary(), "send_failures": run.send_failures,
            "send_retries": run.send_retries, "messages": args.messages,
            "pauses": run.pauses, "faults_skipped": run.skipped,
            "rate": args.rate, "partitions": args.partitions, "netns": args.netns,
            "detections": run.detections, "device_reconnects": run.reconnects,
            "users": len(users), "devices": sum(len(d) for d in devices.values()),
            "nodes": len(run.nodes), "seconds": round(time.time() - started, 1),
            "sending_s": round(settling - sending, 1),
            "settling_s": round(time.time() - settling, 1),
            "lost_examples": verdict.lost[:10], "reordered_examples": verdict.reordered[:10]}


def run_chaos(args: argparse.Namespace) -> int:
    if args.nodes < 2 or args.users < 1 or args.messages < 1 or args.rate <= 0:
        raise CliError("need --nodes >= 2, --users >= 1, --messages >= 1, --rate > 0",
                       EXIT_USAGE)
    if args.partitions and not args.netns:
        raise CliError("--partitions needs --netns (links are cut between namespaces)",
                       EXIT_USAGE)
    if args.netns:
        netns.require_root()
    # SIGTERM tears down like Ctrl-C: nodes, namespaces and bridge go with the run
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    directory = args.dir or tempfile.mkdtemp(prefix="grapevine-chaos-")
    secret = f"chaos-{random.Random(args.seed).getrandbits(64):x}"
    where = ["--netns", "--base-port", "17946"] if args.netns else [
        "--base-port", str(free_base_port(args.nodes))]
    up = cluster("up", str(args.nodes), "--dir", directory, *where, "--token-secret", secret)
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
              f"{report['devices']} devices, {report['seconds']} s (sending "
              f"{report['sending_s']} s, then {report['settling_s']} s to quiescence)")
        print("  " + ", ".join(f"{k} {v}" for k, v in verdict.items() if k != "ok"))
        print(f"  send retries {report['send_retries']}, failures (not acknowledged "
              f"after 3 attempts) {report['send_failures']}, device reconnects "
              f"{report['device_reconnects']}")
        print(f"  faults: {len(report['detections'])} kills and cuts, {report['pauses']} "
              f"pauses, {report['faults_skipped']} skipped (R-1 nodes already away)")
        for detection in report["detections"]:
            what = "killed" if detection["fault"] == "kill" else "cut off"
            line = (f"  {what} {detection['node']}: seen dead by all after "
                    f"{detection['detected_s']} s")
            if "rejoined_s" in detection:
                line += f", alive again {detection['rejoined_s']} s after the heal"
            print(line)
        print("  VERDICT: " + ("ok, nothing acknowledged was lost" if verdict["ok"] else
                               f"LOSS: {report['lost_examples']}"))
    return EXIT_OK if verdict["ok"] else EXIT_FAILED
