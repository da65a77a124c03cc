"""A slow reader and a backlog of larger messages, on a real local cluster (issue #17,
findings 2 and 5).

Starts ``grapevine cluster up 3`` (profile local, a data dir each, R = 2) and:

1. **slow reader**: a client of user ``slow`` connects to node-3 and stops reading its
   socket (trio-websocket with its one-message queue: a message not asked for stops the
   reads), sending a ``ping`` every ``--ping-every`` seconds as an app would; then
   ``--messages`` QoS 1 messages of ``--body`` bytes go to ``slow`` through node-1's
   HTTP API (``--concurrency`` senders). The client does not read until ``--pause``
   seconds after the last send was answered (the owner's pending count is printed every
   10 s from the first send), then reads everything,
   acking the last QoS 1 message of each frame at most every 50 ms (its connection is
   opened again if it was closed meanwhile). Prints what it received of what was
   acknowledged to the senders, and the cluster's ``dead_lettered``, ``attempts``,
   ``resent`` and ``client_queue_full_drops``.
2. **backlog**: ``--backlog`` QoS 1 messages of ``--body`` bytes wait for the offline
   user ``backlog``, then ``grapevine listen --count N`` reads them from node-3; prints
   how many it printed before its timeout.

Every node is stopped at the end (``grapevine cluster down``). The defaults are the
issue's figures (8,000 messages of 4 KB, a 100 s pause, 300 waiting); a quick check:

    python scripts/slow_reader.py --messages 1000 --pause 15 --backlog 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.token import mint  # noqa: E402
from bench_push import machine, machine_line  # noqa: E402

ACK_EVERY = 0.05  # seconds between a reader's acks, at most (the node limits objects/s)


def grapevine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, text=True,
                          capture_output=True, check=False, timeout=timeout)


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def http(where: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP/1.1 request on a fresh connection; (status, JSON or None)."""
    payload = json.dumps(body).encode() if body is not None else b""
    host, port = address(where)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(head.encode() + payload)
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    top, _, content = raw.partition(b"\r\n\r\n")
    try:
        return int(top.split(b" ", 2)[1]), json.loads(content)
    except ValueError:
        return int(top.split(b" ", 2)[1]), None


async def send_all(api: str, user: str, count: int, body: str, concurrency: int) -> int:
    """``count`` QoS 1 sends to ``user``; how many were acknowledged (202)."""
    accepted = 0
    left = iter(range(count))

    async def sender() -> None:
        nonlocal accepted
        for _ in left:
            status, _answer = await http(api, "POST", "/v1/send",
                                         {"to": user, "body": body, "qos": 1})
            accepted += status == 202
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(sender)
    return accepted


async def counters(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """The cluster's counters that tell what happened to the messages, summed."""
    names = ("dead_lettered", "attempts", "resent", "redelivered", "client_queue_full_drops",
             "expired")
    total = dict.fromkeys(names, 0)
    for node in nodes:
        _status, status = await http(node["api"], "GET", "/v1/status")
        for name in names:
            total[name] += int((status or {}).get("counters", {}).get(name, 0))
    return total


async def pending(api: str, user: str) -> int:
    _status, presence = await http(api, "GET", f"/v1/users/{user}")
    return int((presence or {}).get("pending", -1))


async def hello(ws: WebSocketConnection, secret: str, user: str) -> None:
    await ws.send_message(json.dumps({"t": "hello", "device": "reader",
                                      "token": mint(secret.encode(), user, time.time())}))


async def read_until(client: str, secret: str, user: str, ws: WebSocketConnection | None,
                     *, want: int, idle: float) -> tuple[int, int]:
    """Read (and ack) until ``want`` distinct QoS 1 messages came, or none came for
    ``idle`` seconds; connects again whenever the connection is closed. Returns the
    messages received and the connections it took."""
    ids: set[str] = set()
    connections = 1 if ws is not None else 0
    while len(ids) < want:
        try:
            if ws is None:
                async with open_websocket(*address(client), "/", use_ssl=False) as fresh:
                    connections += 1
                    await hello(fresh, secret, user)
                    await _read(fresh, ids, want, idle)
            else:
                current, ws = ws, None
                await _read(current, ids, want, idle)
        except (ConnectionClosed, OSError, trio.BrokenResourceError):
            continue
        except trio.TooSlowError:
            break
    return len(ids), connections


async def _read(ws: WebSocketConnection, ids: set[str], want: int, idle: float) -> None:
    last_ack = 0.0
    unacked = None
    while len(ids) < want:
        with trio.fail_after(idle):
            frame = json.loads(await ws.get_message())
        for obj in frame if isinstance(frame, list) else [frame]:
            if obj.get("t") == "msg" and obj.get("qos") == 1:
                ids.add(obj["id"])
                unacked = obj["seq"]
        now = trio.current_time()
        if unacked is not None and (now - last_ack >= ACK_EVERY or len(ids) >= want):
            await ws.send_message(json.dumps({"t": "ack", "seq": unacked}))
            last_ack, unacked = now, None


async def slow_reader(nodes: list[dict[str, Any]], secret: str,
                      args: argparse.Namespace) -> dict[str, Any]:
    user, client, api = "slow", nodes[2]["client"], nodes[0]["api"]
    async with open_websocket(*address(client), "/", use_ssl=False) as ws:
        await hello(ws, secret, user)
        welcome = json.loads(await ws.get_message())
        assert welcome.get("t") == "welcome", welcome

        async def ping() -> None:
            while True:
                await trio.sleep(args.ping_every)
                try:
                    await ws.send_message('{"t":"ping"}')
                except ConnectionClosed:  # the node cut the client for not reading (4008)
                    print("slow reader: the node closed the connection "
                          f"({ws.closed.code if ws.closed else '?'}); reading reopens it",
                          flush=True)
                    return
        async with trio.open_nursery() as pings:
            pings.start_soon(ping)
            began = trio.current_time()
            accepted = await send_all(api, user, args.messages, "x" * args.body,
                                      args.concurrency)
            sent_in = trio.current_time() - began
            print(f"slow reader: {accepted} of {args.messages} sends acknowledged in "
                  f"{sent_in:.1f} s; not reading for {args.pause:g} s more", flush=True)
            timeline = []
            pause_end = trio.current_time() + args.pause
            while (now := trio.current_time()) < pause_end:
                timeline.append((round(now - began), await pending(api, user)))
                print(f"  t={timeline[-1][0]:>4} s  pending={timeline[-1][1]}", flush=True)
                await trio.sleep(min(10.0, pause_end - now))
            pings.cancel_scope.cancel()
        before = await counters(nodes)
        print(f"slow reader: reading again (pending {await pending(api, user)})", flush=True)
        began = trio.current_time()
        received, connections = await read_until(client, secret, user, ws, want=accepted,
                                                 idle=args.read_idle)
        read_in = trio.current_time() - began
    await trio.sleep(1.0)  # the last acks reach the owner
    after = await counters(nodes)
    return {"messages": args.messages, "acknowledged": accepted, "received": received,
            "read_seconds": round(read_in, 1), "connections": connections,
            "pending_timeline": timeline, "pending_after": await pending(api, user),
            "at_resume": before, **after}


async def backlog(nodes: list[dict[str, Any]], secret: str, args: argparse.Namespace
                  ) -> dict[str, Any]:
    user = "backlog"
    accepted = await send_all(nodes[0]["api"], user, args.backlog, "x" * args.body,
                              args.concurrency)
    listen = await trio.to_thread.run_sync(lambda: grapevine(
        "listen", "--client", nodes[2]["client"], "--user", user, f"--secret={secret}",
        "--count", str(accepted), "--timeout", str(args.listen_timeout),
        timeout=args.listen_timeout + 30))
    lines = [line for line in listen.stdout.splitlines() if line.startswith("{")]
    lost = listen.stderr.count("listen: lost")
    if args.verbose:
        print(listen.stderr, file=sys.stderr)
    return {"backlog": args.backlog, "acknowledged": accepted, "listened": len(lines),
            "listen_exit": listen.returncode, "listen_reconnects": lost}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gv-slow-reader-"))
    secret = "slow-reader-" + str(int(time.time()))
    up = grapevine("cluster", "up", "3", "--dir", str(work), "--base-port", "0",
                   f"--token-secret={secret}")
    if up.returncode != 0:
        raise SystemExit(f"cluster up failed: {up.stderr}")
    try:
        nodes = json.loads((work / "cluster.json").read_text())["nodes"]
        figures: dict[str, Any] = {}
        if args.messages:
            figures["slow_reader"] = await slow_reader(nodes, secret, args)
        if args.backlog:
            figures["backlog"] = await backlog(nodes, secret, args)
        return figures
    finally:
        grapevine("cluster", "down", "--dir", str(work))
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=8000,
                        help="QoS 1 messages to the slow reader (0: skip it)")
    parser.add_argument("--body", type=int, default=4096, help="bytes per message body")
    parser.add_argument("--pause", type=float, default=100.0,
                        help="seconds the reader does not read after the last send")
    parser.add_argument("--ping-every", type=float, default=20.0,
                        help="seconds between the reader's pings while it does not read")
    parser.add_argument("--read-idle", type=float, default=30.0,
                        help="the reader gives up after this many seconds without a message")
    parser.add_argument("--backlog", type=int, default=300,
                        help="QoS 1 messages waiting for grapevine listen (0: skip it)")
    parser.add_argument("--listen-timeout", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=32, help="senders at once")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--verbose", action="store_true", help="grapevine listen's stderr")
    args = parser.parse_args()
    figures = trio.run(run, args)
    if args.json:
        print(json.dumps({"machine": machine(), **figures}))
        return
    print(machine_line(machine()))
    slow = figures.get("slow_reader")
    if slow:
        print(f"slow reader: received {slow['received']} of {slow['acknowledged']} "
              f"acknowledged ({slow['messages']} sent) in {slow['read_seconds']} s over "
              f"{slow['connections']} connection(s); dead_lettered={slow['dead_lettered']} "
              f"attempts={slow['attempts']} resent={slow['resent']} "
              f"redelivered={slow['redelivered']} "
              f"client_queue_full_drops={slow['client_queue_full_drops']} "
              f"(at resume: drops={slow['at_resume']['client_queue_full_drops']} "
              f"dead_lettered={slow['at_resume']['dead_lettered']}); "
              f"pending after: {slow['pending_after']}")
    back = figures.get("backlog")
    if back:
        print(f"backlog: grapevine listen read {back['listened']} of {back['acknowledged']} "
              f"({back['backlog']} sent, {back['listen_reconnects']} reconnects, exit "
              f"{back['listen_exit']})")


if __name__ == "__main__":
    main()
