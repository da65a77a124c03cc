"""Load generator for scripts/bench_push.py: C receiving clients + S senders, one process.

Runs in the benchmark's own virtualenv (aiohttp + uvloop, the same client stack as the
socket.io peer's load generator, so that neither side is measured through a slower
client) and speaks grapevine's client protocol (docs/protocol.md) in msgpack frames.

* Receivers: users u0..u{C-1}, one connection each, to the receiving node. A message body
  is ``"<sender>:<monotonic send time>:<payload>"``; latency = receive time - send time
  on this process's one clock. QoS 1 messages are acked, once per frame received: the
  last one in it (the ack is cumulative in the connection's order).
* Senders: S connections to the sending node, each sending ``send`` objects to uniformly
  random users. **Closed loop** (default): at most --window messages in flight; a sender
  packs every permit it holds into one frame (the protocol allows batches), so the
  offered rate is what the cluster sustains. **Open loop** (--rate R): R messages/s in
  all, sent every 5 ms in frames of whatever is due — for latency at a fixed load.

Every phase is bounded in time; a watchdog hard-exits after --max-runtime seconds.
Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import threading
import time
from pathlib import Path

import aiohttp
import msgpack
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.token import mint

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def machine_cpu() -> tuple[int, int]:
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class State:
    def __init__(self, senders: int) -> None:
        self.measuring = False
        self.received = self.received_window = 0
        self.sent = self.sent_window = 0
        self.acked = 0  # `sent` answers: for QoS 1, durable on R nodes
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []
        self.permits: list[asyncio.Semaphore | None] = [None] * senders
        self.seen: set[str] = set()
        self.duplicates = 0
        self.stopped = False  # senders done: set ``drained`` once all has arrived
        self.drained = asyncio.Event()


async def connect(session: aiohttp.ClientSession, url: str, token: str
                  ) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url, max_msg_size=0, autoping=True,
                                  timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    await ws.send_bytes(msgpack.packb({"t": "hello", "token": token}))
    message = await ws.receive(timeout=15)
    welcome = msgpack.unpackb(message.data)
    if not isinstance(welcome, dict) or welcome.get("t") != "welcome":
        raise RuntimeError(f"no welcome: {welcome!r}")
    return ws


def objects(data: bytes) -> list[dict]:
    value = msgpack.unpackb(data)
    return value if isinstance(value, list) else [value]


async def receive_loop(ws: aiohttp.ClientWebSocketResponse, st: State, qos: int) -> None:
    now = time.monotonic
    binary = aiohttp.WSMsgType.BINARY
    while True:
        message = await ws.receive()
        if message.type != binary:
            return
        top = 0
        for obj in objects(message.data):
            if obj.get("t") != "msg":
                continue
            arrived = now()
            sender, sent_at, _payload = obj["body"].split(":", 2)
            if qos == 1:
                top = obj["seq"]  # acks go by the connection's order (docs/protocol.md)
                if obj["id"] in st.seen:
                    st.duplicates += 1
                    continue
                st.seen.add(obj["id"])
            st.received += 1
            if st.measuring:
                st.received_window += 1
                st.latencies.append(arrived - float(sent_at))
            permits = st.permits[int(sender)]
            if permits is not None:
                permits.release()
        if st.stopped and st.received >= st.sent:
            st.drained.set()
        if top:
            await ws.send_bytes(msgpack.packb({"t": "ack", "seq": top}))


async def answers_loop(ws: aiohttp.ClientWebSocketResponse, st: State) -> None:
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            return
        for obj in objects(message.data):
            if obj.get("t") == "sent":
                st.acked += 1
            elif obj.get("t") == "error":
                st.errors[obj.get("code", "?")] = st.errors.get(obj.get("code", "?"), 0) + 1


def send_object(k: int, rnd: random.Random, clients: int, qos: int, payload: str) -> dict:
    return {"t": "send", "to": f"u{rnd.randrange(clients)}", "qos": qos,
            "body": f"{k}:{time.monotonic()!r}:{payload}"}


async def closed_loop_sender(k: int, ws: aiohttp.ClientWebSocketResponse, st: State,
                             a: argparse.Namespace, payload: str) -> None:
    rnd = random.Random(1000 + k)
    permits = st.permits[k]
    assert permits is not None
    while True:
        await permits.acquire()
        batch = [send_object(k, rnd, a.clients, a.qos, payload)]
        while len(batch) < a.batch and permits.locked() is False:
            await permits.acquire()
            batch.append(send_object(k, rnd, a.clients, a.qos, payload))
        await ws.send_bytes(msgpack.packb(batch if len(batch) > 1 else batch[0]))
        st.sent += len(batch)
        if st.measuring:
            st.sent_window += len(batch)


async def open_loop_sender(k: int, ws: aiohttp.ClientWebSocketResponse, st: State,
                           a: argparse.Namespace, payload: str) -> None:
    rnd = random.Random(1000 + k)
    rate = a.rate / a.senders
    start, done = time.monotonic(), 0
    while True:
        await asyncio.sleep(0.005)
        due = int((time.monotonic() - start) * rate) - done
        if due <= 0:
            continue
        batch = [send_object(k, rnd, a.clients, a.qos, payload) for _ in range(due)]
        for first in range(0, len(batch), a.batch):
            part = batch[first:first + a.batch]
            await ws.send_bytes(msgpack.packb(part if len(part) > 1 else part[0]))
        done += due
        st.sent += due
        if st.measuring:
            st.sent_window += due


async def main(a: argparse.Namespace) -> dict:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    st = State(a.senders)
    secret = a.secret.encode()
    result: dict = {"clients": a.clients, "senders": a.senders, "window": a.window,
                    "rate": a.rate, "qos": a.qos, "payload_bytes": a.payload,
                    "duration_s": a.duration, "warmup_s": a.warmup, "batch": a.batch}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks: list[asyncio.Task] = []
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    try:
        probe = await connect(session, a.recv_url, mint(secret, "probe", time.time()))
        await probe.close()
        await asyncio.sleep(1.0)
        rss0 = rss_kib(a.server_pid)
        gate = asyncio.Semaphore(a.connect_concurrency)

        async def one(i: int) -> None:
            async with gate:
                ws = await connect(session, a.recv_url, mint(secret, f"u{i}", time.time()))
                sockets.append(ws)
                tasks.append(asyncio.create_task(receive_loop(ws, st, a.qos)))

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(a.clients))),
                               a.connect_timeout)
        took = time.monotonic() - started
        result.update(connect_s=round(took, 2), connections_per_s=round(a.clients / took, 1))
        await asyncio.sleep(2.0)
        rss1 = rss_kib(a.server_pid)
        result.update(rss_before_kib=rss0, rss_after_kib=rss1,
                      rss_per_conn_kib=round((rss1 - rss0) / a.clients, 2))
        if a.duration <= 0:
            return result
        await asyncio.sleep(a.settle)  # registrations reach the owners
        senders = []
        for k in range(a.senders):
            # senders are the application's servers: service tokens, not rate-limited
            ws = await connect(session, a.send_url,
                               mint(secret, f"sender{k}", time.time(), service=True))
            sockets.append(ws)
            senders.append(ws)
            st.permits[k] = asyncio.Semaphore(max(1, a.window // a.senders))
            tasks.append(asyncio.create_task(answers_loop(ws, st)))
        payload = "x" * a.payload
        loop = open_loop_sender if a.rate else closed_loop_sender
        if a.rate:
            st.permits = [None] * a.senders
        sending = [asyncio.create_task(loop(k, senders[k], st, a, payload))
                   for k in range(a.senders)]
        await asyncio.sleep(a.warmup)
        pids = {name: int(pid) for name, pid in
                (item.split("=") for item in a.cpu_pids.split(",") if item)}
        pids["loadgen"] = os.getpid()
        c0, m0, t0 = {n: cpu_s(p) for n, p in pids.items()}, machine_cpu(), time.monotonic()
        st.measuring = True
        await asyncio.sleep(a.duration)
        st.measuring = False
        t1, m1, c1 = time.monotonic(), machine_cpu(), {n: cpu_s(p) for n, p in pids.items()}
        for task in sending:
            task.cancel()
        st.stopped = True
        if st.received < st.sent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(st.drained.wait(), 10.0)
        elapsed = t1 - t0
        latencies = sorted(st.latencies)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

        result.update(
            elapsed_s=round(elapsed, 3), delivered_window=st.received_window,
            delivered_per_s=round(st.received_window / elapsed, 1),
            offered_per_s=round(st.sent_window / elapsed, 1),
            p50_ms=pct(0.50), p90_ms=pct(0.90), p99_ms=pct(0.99), max_ms=pct(1.0),
            sent_total=st.sent, received_total=st.received, acked_total=st.acked,
            lost=st.sent - st.received, duplicates=st.duplicates, errors=st.errors,
            cpu_pct={n: round(100 * (c1[n] - c0[n]) / elapsed, 1) for n in pids},
            machine_busy_pct=round(100 * os.cpu_count() * (m1[0] - m0[0])
                                   / max(1, m1[1] - m0[1]), 1),
        )
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await session.close()


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recv-url", required=True)
    ap.add_argument("--send-url", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--cpu-pids", default="")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.0, help="open loop at this rate")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--qos", type=int, choices=[0, 1], default=0)
    ap.add_argument("--payload", type=int, default=256)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--connect-concurrency", type=int, default=100)
    ap.add_argument("--connect-timeout", type=float, default=300.0)
    ap.add_argument("--max-runtime", type=float, default=600.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for url in (a.recv_url, a.send_url):
        if not url.startswith("ws://127.0.0.1:"):
            ap.error(f"{url}: loopback only (ws://127.0.0.1:PORT/)")
    return a


if __name__ == "__main__":
    args = parse()
    watchdog = threading.Timer(args.max_runtime, lambda: os._exit(4))
    watchdog.daemon = True
    watchdog.start()
    res = uvloop.run(main(args))
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
