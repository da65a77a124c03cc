"""What hostile gossip traffic costs a node: CPU per datagram, memory under a flood of
streams, CPU of a trickled push-pull, CPU and event-loop holds of compressed streams
(issue #17, findings 3 and 6).

Datagrams (in this process, through ``Swim.receive_packet``, CPU by
``time.process_time``): random junk; the issue's datagram (as many compress parts as
fit in 64 KB, each inflating to 512 KiB); a compress message of 64 KB of LZW CLEAR
codes (each costs the decoder a code and yields nothing), and one of CLEAR codes just
within the bytes an honest encoding of the budget may take; the worst a datagram can
still cost within the inflation budget (one compress part of incompressible bytes up to
the budget, whose inflated bytes are a compound of small messages); and a 64 KB
compound of valid messages, the most a datagram costs without compression.

Streams (against a node in a child process on 127.0.0.1, ``serve_membership`` only,
its RSS read from /proc): ``--streams`` connections to an encrypted node, each declaring
an encrypted frame of 20 MiB (the issue's flood) and then of the largest size a stream
may declare, writing as fast as the node reads and reconnecting when it is closed, for
``--seconds`` each; then one push-pull trickled to a plaintext node for ``--seconds``,
its header claiming 250,000 nodes, then 4,096 (the most it may claim): the node's CPU
seconds over that time; then one stream whose compress message is CLEAR codes up to the
stream limit (10 MiB for a small cluster), and one honest compressed push-pull whose
user state is ``--literal-mib`` of random bytes (an LZW code a byte or so: the most
decoding a stream's bytes can buy): the node's CPU seconds and the longest its event
loop was held meanwhile (a task in the node sleeping 5 ms at a time, how late it woke;
``idle``: the same over 2 s with no stream, what the machine itself adds).
The node's refusal counters are printed with each.

    python scripts/attack_gossip.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_push import machine, machine_line  # noqa: E402

from gossip import codec, lzw  # noqa: E402
from gossip.codec import encode, encode_body, make_compound  # noqa: E402
from gossip.stream import (  # noqa: E402
    MIN_STREAM_NODES, StreamLimits, encode_push_pull, encode_stream,
)
from gossip.wire import Compress, PushNodeState, PushPull, Suspect  # noqa: E402
from membership.config import MembershipConfig  # noqa: E402
from membership.swim import Swim  # noqa: E402

KEY = b"k" * 16
_CHILD = r"""
import json, os, random, signal, sys
import trio
sys.path.insert(0, sys.argv[1])
from gossip.keyring import Keyring
from membership.config import MembershipConfig
from membership.service import serve_membership

longest = 0.0

async def watch_loop():
    # how late a 5 ms sleep wakes: the longest the event loop was held; SIGUSR1 resets
    global longest
    while True:
        start = trio.current_time()
        await trio.sleep(0.005)
        longest = max(longest, trio.current_time() - start - 0.005)

async def reset_on_signal(task_status=trio.TASK_STATUS_IGNORED):
    global longest
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        task_status.started()
        async for _ in signals:
            longest = 0.0

async def main(out, keyed):
    config = MembershipConfig.lan("victim", bind_addr="127.0.0.1", bind_port=0)
    keyring = Keyring([b"k" * 16]) if keyed else None
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_membership(
            config, keyring=keyring, rng=random.Random(1), task_status=task_status))
        nursery.start_soon(watch_loop)
        await nursery.start(reset_on_signal)  # before the parent may signal
        print(node.address[1], flush=True)
        while True:
            counters = {**node.statistics().counters, **node.counters,
                        "longest_hold_ms": round(longest * 1000, 1)}
            with open(out + ".tmp", "w") as f:
                json.dump(counters, f)
            os.replace(out + ".tmp", out)
            await trio.sleep(0.2)

trio.run(main, sys.argv[2], sys.argv[3] == "1")
"""


# ---- datagrams ----------------------------------------------------------------------


def _cpu_per_datagram(swim: Swim, datagram: bytes, seconds: float) -> float:
    """Microseconds of CPU per datagram, over at least ``seconds`` (and 5 datagrams)."""
    count, start = 0, time.process_time()
    while count < 5 or time.process_time() - start < seconds:
        swim.receive_packet(1.0, ("10.0.0.9", 7946), datagram)
        count += 1
    return (time.process_time() - start) / count * 1e6


def _worst_allowed(swim: Swim, rng: random.Random) -> bytes:
    """One compress part of incompressible bytes (one LZW code per byte, as near as
    LZW gets) inflating to just under the budget: a compound of small messages."""
    parts, size = [], 2
    while True:
        part = encode(Suspect(rng.randrange(2**32), rng.randbytes(8).hex(), "x"))
        if size + len(part) + 2 > swim.envelope.max_inflate - 64 or len(parts) == 255:
            break
        parts.append(part)
        size += len(part) + 2
    return codec.compress_message(make_compound(parts))


def _clears(size: int) -> bytes:
    """``size`` bytes of 9-bit LZW CLEAR codes (8 codes fill 9 bytes)."""
    pattern = int("".join(format(256, "09b") for _ in range(8)), 2).to_bytes(9, "big")[::-1]
    return (pattern * (size // 9 + 1))[:size]


def _valid_compound(rng: random.Random) -> bytes:
    parts, size = [], 2
    while len(parts) < 255:
        part = encode(Suspect(rng.randrange(2**32), rng.randbytes(60).hex(), "x" * 40))
        if size + len(part) + 2 > 65000:
            break
        parts.append(part)
        size += len(part) + 2
    return make_compound(parts)


def datagrams(seconds: float) -> dict[str, Any]:
    rng = random.Random(1)
    swim = Swim(MembershipConfig.lan("n0"), ("10.0.0.1", 7946), None, rng, 0.0)
    bomb_part = codec.compress_message(b"\x00" * 512 * 1024)
    bomb = make_compound([bomb_part] * min(255, 65000 // (len(bomb_part) + 2)))
    worst = _worst_allowed(swim, rng)
    within = lzw.max_input(swim.envelope.max_inflate)
    figures = {
        "junk_us": _cpu_per_datagram(swim, rng.randbytes(1400), seconds),
        "issue_bomb_us": _cpu_per_datagram(swim, bomb, seconds),
        "issue_bomb_bytes": len(bomb),
        "clear_64k_us": _cpu_per_datagram(swim, encode(Compress(0, _clears(64000))), seconds),
        "clear_within_us": _cpu_per_datagram(swim, encode(Compress(0, _clears(within))), seconds),
        "clear_within_bytes": within,
        "worst_allowed_us": _cpu_per_datagram(swim, worst, seconds),
        "worst_allowed_bytes": len(worst),
        "valid_64k_us": _cpu_per_datagram(swim, _valid_compound(rng), seconds),
    }
    return {k: round(v, 1) for k, v in figures.items()}


# ---- streams at a node in a child process --------------------------------------------


class Victim:
    def __init__(self, keyed: bool) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.stats = os.path.join(self._dir.name, "counters.json")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(ROOT), self.stats, "1" if keyed else "0"],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        self.address = ("127.0.0.1", int(self.process.stdout.readline()))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counters(self) -> dict[str, Any]:
        try:
            return json.loads(Path(self.stats).read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def refusals(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counters().items()) if "refused" in k}

    def reset_longest_hold(self) -> None:
        self.process.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._dir.cleanup()


async def _flood_one(address: tuple[str, int], declared: int, stop: float) -> None:
    chunk = random.Random(2).randbytes(65536)
    while trio.current_time() < stop:
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError:
            await trio.sleep(0.05)
            continue
        async with stream:
            with trio.move_on_at(stop):
                try:
                    await stream.send_all(b"\x0a" + struct.pack(">I", declared))
                    while True:
                        await stream.send_all(chunk)
                except (trio.BrokenResourceError, OSError):
                    pass


async def flood(victim: Victim, streams: int, declared: int, seconds: float) -> dict[str, Any]:
    before = victim.rss_mb()
    peak = before
    stop = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(_flood_one, victim.address, declared, stop)
        while trio.current_time() < stop:
            peak = max(peak, victim.rss_mb())
            await trio.sleep(0.05)
    await trio.sleep(0.5)
    return {"declared_mib": round(declared / 2**20, 1), "rss_before_mb": round(before),
            "rss_peak_mb": round(peak), "refused": victim.refusals()}


async def trickle(victim: Victim, nodes: int, seconds: float) -> dict[str, Any]:
    """A push-pull whose header claims ``nodes``, its states sent 64 bytes at a time."""
    header = msgpack.packb({b"Join": False, b"Nodes": nodes, b"UserStateLen": 0})
    state = encode_body(PushNodeState("trickle", b"\x7f\x00\x00\x01", 7946, b"", 1, 0,
                                      bytes((1, 5, 2, 2, 5, 5))))
    body = b"\x06" + header + state * nodes
    cpu = victim.cpu_seconds()
    sent = 0
    with trio.move_on_after(seconds):
        try:
            stream = await trio.open_tcp_stream(*victim.address)
            async with stream:
                for at in range(0, len(body), 64):
                    await stream.send_all(body[at : at + 64])
                    sent += 64
                    await trio.sleep(0.001)
        except (trio.BrokenResourceError, OSError):
            pass
    await trio.sleep(0.5)
    return {"nodes": nodes, "sent_bytes": sent, "node_cpu_s": round(victim.cpu_seconds() - cpu, 2),
            "refused": victim.refusals()}


async def one_stream(victim: Victim, data: bytes, seconds: float) -> dict[str, Any]:
    """Send ``data`` as one stream, read until the node answers and closes (or
    ``seconds``): the node's CPU and the longest its event loop was held meanwhile."""
    victim.reset_longest_hold()
    await trio.sleep(0.5)  # the reset is seen, the stats file rewritten
    cpu = victim.cpu_seconds()
    replied = 0
    with trio.move_on_after(seconds):
        try:
            stream = await trio.open_tcp_stream(*victim.address)
            async with stream:
                await stream.send_all(data)
                while chunk := await stream.receive_some(65536):
                    replied += len(chunk)
        except (trio.BrokenResourceError, OSError):
            pass
    await trio.sleep(0.5)
    return {"sent_bytes": len(data), "reply_bytes": replied,
            "node_cpu_s": round(victim.cpu_seconds() - cpu, 2),
            "longest_hold_ms": victim.counters().get("longest_hold_ms"),
            "refused": victim.refusals()}


def _literal_push_pull(mib: float) -> bytes:
    """An honest compressed push-pull of random bytes: about one LZW code per byte."""
    state = random.Random(3).randbytes(int(mib * 2**20))
    compressed = codec.compress_message(encode_push_pull(PushPull(False, (), state)))
    return encode_stream(compressed, codec.Envelope())


async def streams(count: int, seconds: float, literal_mib: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    victim = Victim(keyed=True)
    try:
        largest = StreamLimits.for_cluster(1).max_bytes - 5
        out["flood_20mib"] = await flood(victim, count, 20 * 2**20, seconds)
        out["flood_largest"] = await flood(victim, count, largest, seconds)
    finally:
        victim.stop()
    victim = Victim(keyed=False)
    try:
        out["trickle_250k"] = await trickle(victim, 250_000, seconds)
        out["trickle_allowed"] = await trickle(victim, MIN_STREAM_NODES, seconds)
        victim.reset_longest_hold()
        await trio.sleep(2.0)
        out["idle"] = {"longest_hold_ms": victim.counters().get("longest_hold_ms")}
        clears = encode(Compress(0, _clears(StreamLimits.for_cluster(1).max_bytes - 64)))
        out["clear_codes_stream"] = await one_stream(victim, clears, max(seconds, 15.0))
        out["literal_stream"] = await one_stream(
            victim, _literal_push_pull(literal_mib), max(seconds, 15.0)
        )
    finally:
        victim.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--literal-mib", type=float, default=2.0,
                        help="random user state of the compressed push-pull")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    info = machine()
    figures = {"datagrams": datagrams(min(args.seconds, 2.0)),
               "streams": trio.run(streams, args.streams, args.seconds, args.literal_mib)}
    if args.json:
        print(json.dumps({"machine": info, **figures}))
        return
    print(machine_line(info))
    d = figures["datagrams"]
    print(f"datagram CPU: junk {d['junk_us']} us, the issue's bomb ({d['issue_bomb_bytes']} B) "
          f"{d['issue_bomb_us']} us, 64 KB of CLEAR codes {d['clear_64k_us']} us, "
          f"{d['clear_within_bytes']} B of CLEAR codes {d['clear_within_us']} us, "
          f"worst allowed ({d['worst_allowed_bytes']} B) "
          f"{d['worst_allowed_us']} us, 64 KB of valid messages {d['valid_64k_us']} us")
    for name, result in figures["streams"].items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
