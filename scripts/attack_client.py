"""Hostile clients against one node: what they cost it, and how soon it cuts them.

Starts a one-node cluster (``grapevine cluster up 1``, as scripts/bench_push.py starts 3),
connects a **neighbour** that sends itself a QoS 0 message every 20 ms and times each
one's round trip, and runs each attack in turn from a client that never reads its socket:

* ``ping`` — WebSocket pings (``--ping-size`` bytes, 125 by default) as fast as the
  socket takes them, after the hello;
* ``ping-before-hello`` — the same before any hello;
* ``cont`` — a text message opened with one byte, then endless zero-length
  continuation frames.

For each: the node's RSS before, at its highest during and after the attacker left
(``/proc/PID/status`` VmRSS), the seconds until the node cut the attacker (``cut``: the
node's log line saying so, ``client_closed_slow`` or ``client_protocol_error``) and
until its socket ended (``gone``: the attacker's send failed or the node's FIN came;
a slow client gets the closing handshake's 2 + 2 s in between), the bytes the attacker
got in, and the neighbour's round-trip p99 during the attack (and at least 1 s from its
start). Prints the machine's line
first, then one line per attack (``--json``: one JSON object).

    python scripts/attack_client.py --seconds 15
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.token import mint
from scripts.bench_push import Cluster, grapevine, machine, machine_line

ATTACKS = ("ping", "ping-before-hello", "cont")


class OneNode(Cluster):
    """``grapevine cluster up 1``: the attacks and the neighbour share one node."""

    def __enter__(self) -> OneNode:
        up = grapevine("cluster", "up", "1", "--dir", str(self.dir), "--base-port", "0",
                       f"--token-secret={self.secret}")
        if up.returncode != 0:
            raise RuntimeError(f"cluster up failed: {up.stderr}")
        self.nodes = json.loads((self.dir / "cluster.json").read_text())["nodes"]
        return self


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (mask zero: the payload goes as it is)."""
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes((first, 0x80 | size))
    else:
        head = bytes((first, 0x80 | 126)) + size.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


def opened(address: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A socket through the WebSocket opening (the 101 read)."""
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf is not None:  # before connect: the window it announces
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the node closed during the opening")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return sock


def hello(secret: str, user: str) -> bytes:
    token = mint(secret.encode(), user, time.time())
    return frame(0x1, json.dumps({"t": "hello", "token": token, "device": "d"}).encode())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Neighbour(threading.Thread):
    """A well-behaved client that sends itself a message every 20 ms and notes how long
    each took to come back."""

    def __init__(self, address: str, secret: str) -> None:
        super().__init__(daemon=True)
        self.sock = opened(address)
        self.sock.sendall(hello(secret, "neighbour"))
        self.sock.settimeout(5)
        self.buffer = b""
        self._next()  # the welcome
        self.sent: dict[str, float] = {}
        self.rtts: list[tuple[float, float]] = []  # (when, seconds)
        self.stop = threading.Event()

    def _next(self) -> Any:
        while True:
            if len(self.buffer) >= 2:
                size, head = self.buffer[1] & 0x7F, 2
                if size == 126:
                    size, head = int.from_bytes(self.buffer[2:4], "big"), 4
                elif size == 127:
                    size, head = int.from_bytes(self.buffer[2:10], "big"), 10
                if len(self.buffer) >= head + size:
                    payload = self.buffer[head:head + size]
                    self.buffer = self.buffer[head + size:]
                    return json.loads(payload)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the node closed the neighbour")
            self.buffer += chunk

    def run(self) -> None:
        sender = threading.Thread(target=self._send, daemon=True)
        sender.start()
        while not self.stop.is_set():
            try:
                got = self._next()
            except (OSError, RuntimeError):
                return
            for obj in got if isinstance(got, list) else [got]:
                started = self.sent.pop(obj.get("body", ""), None)
                if obj.get("t") == "msg" and started is not None:
                    self.rtts.append((time.monotonic(), time.monotonic() - started))

    def _send(self) -> None:
        count = 0
        while not self.stop.wait(0.02):
            count += 1
            self.sent[str(count)] = time.monotonic()
            body = json.dumps({"t": "send", "to": "neighbour", "body": str(count)})
            try:
                self.sock.sendall(frame(0x1, body.encode()))
            except OSError:
                return

    def p99_ms(self, start: float, end: float) -> float | None:
        window = sorted(rtt for when, rtt in self.rtts if start <= when <= end)
        if len(window) < 2:
            return None
        return round(statistics.quantiles(window, n=100)[98] * 1000, 2)


def cut_at(log: Path, local: str) -> float | None:
    """When the node logged cutting the client at ``local`` (its address), epoch s."""
    for line in log.read_text(errors="replace").splitlines():
        if f"remote={local} " in line and ("event=client_closed_slow" in line
                                           or "event=client_protocol_error" in line):
            stamp = line.split(" ", 1)[0].removeprefix("ts=").removesuffix("Z")
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return None


def attack(kind: str, sock: socket.socket, secret: str, seconds: float, *, ping_size: int
           ) -> tuple[float | None, int]:
    """Run one attack for up to ``seconds``; (seconds until the socket ended or None,
    bytes sent)."""
    if kind != "ping-before-hello":
        sock.sendall(hello(secret, f"attacker-{kind}"))
    if kind in ("ping", "ping-before-hello"):
        chunk = frame(0x9, b"p" * ping_size) * 512
    else:
        sock.sendall(frame(0x1, b"x", fin=False))
        chunk = frame(0x0, b"", fin=False) * 8192
    sock.setblocking(False)
    sent = offset = 0
    started = time.monotonic()
    deadline = started + seconds
    try:
        while time.monotonic() < deadline:
            try:
                took = sock.send(chunk[offset:])
            except BlockingIOError:
                time.sleep(0.001)  # a load generator pacing itself, not a test
                continue
            sent += took
            offset = (offset + took) % len(chunk)  # frames stay whole across sends
            try:  # the node's FIN: it cut us (we read nothing else)
                if sock.recv(1, socket.MSG_PEEK) == b"" and sock.recv(1 << 20) == b"":
                    return time.monotonic() - started, sent
            except BlockingIOError:
                pass
    except OSError:
        return time.monotonic() - started, sent
    finally:
        sock.close()
    return None, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="longest each attack runs")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after each attack before the RSS is read again")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--ping-size", type=int, default=125, choices=range(126),
                        metavar="0..125", help="payload bytes of each ping")
    parser.add_argument("--dir", help="keep the node's folder (and its log) here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch, OneNode(
            Path(args.dir or scratch), "attack") as cluster:
        node = cluster.nodes[0]
        pid, address = int(node["pid"]), node["client"]
        neighbour = Neighbour(address, cluster.secret)
        neighbour.start()
        time.sleep(1.0)  # the neighbour's first round trips, as a baseline
        for kind in args.attacks.split(","):
            before = rss_mib(pid)
            peak = [before]
            done = threading.Event()

            def sample(peak: list[float] = peak, done: threading.Event = done) -> None:
                while not done.wait(0.1):
                    peak[0] = max(peak[0], rss_mib(pid))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            sock = opened(address, rcvbuf=4096)
            local = "{}:{}".format(*sock.getsockname()[:2])
            start, wall = time.monotonic(), time.time()
            gone, sent = attack(kind, sock, cluster.secret, args.seconds,
                                ping_size=args.ping_size)
            end = time.monotonic()
            done.set()
            sampler.join()
            time.sleep(args.settle)  # what stays once the attacker is gone
            cut = cut_at(Path(node["dir"], "node.log"), local)
            results[kind] = {
                "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak[0], 1),
                "rss_after_mib": round(rss_mib(pid), 1),
                "cut_after_s": None if cut is None else round(cut - wall, 3),
                "gone_after_s": None if gone is None else round(gone, 3),
                "sent_mib": round(sent / 2**20, 1),
                "neighbour_p99_ms": neighbour.p99_ms(start, max(end, start + 1.0)),
                "neighbour_p99_quiet_ms": neighbour.p99_ms(start - 1.0, start),
            }
        neighbour.stop.set()
        log = Path(cluster.nodes[0]["dir"], "node.log").read_text(errors="replace")
        results["slow_closes_logged"] = log.count("client_closed_slow")
    if args.json:
        print(json.dumps({"machine": info, **results}))
        return
    print(machine_line(info))
    for kind, figures in results.items():
        if isinstance(figures, dict):
            print(f"{kind}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
        else:
            print(f"{kind}: {figures}")


if __name__ == "__main__":
    main()
