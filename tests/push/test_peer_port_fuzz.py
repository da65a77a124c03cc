"""Raw bytes at a node's peer-link port, before and after a valid authenticated opening:
length prefixes at their bounds, truncated, huge and mutated frames, trickled bytes. A
connection that has proved nothing is never buffered beyond one small opening frame,
only so many are open at once, and whatever comes the node stays up, answers its
peers and delivers a QoS 1 message afterwards. Seeded, bounded, with a CPU and memory
budget per input."""

from __future__ import annotations

import json
import os
import random
import struct
from typing import Any

import pytest
import trio

from node import peer_opening
from node.node import Node
from node.peer_proto import MAX_PEER_FRAME, FrameReader, encode_frames, hello, proof
from tests.fuzzing import Budget, Values, fuzz_seeds
from tests.push.test_peer_input import FIELDS, GOOD, KINDS, NUMBERS, TEXTS
from tests.push.test_push_nodes import KEY, cluster, device, next_message, owner_of

HEADER = struct.Struct(">I")


async def closed_by_node(stream: trio.SocketStream) -> bool:
    """Read until the node closes the connection (True) or it stops sending (False: the
    caller's deadline)."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def authenticated(node: Node, name: str) -> trio.SocketStream:
    """A connection to ``node``'s peer port that has done a valid opening as ``name``."""
    stream = await trio.open_tcp_stream(*node.peer_address)
    mine = os.urandom(16)
    await stream.send_all(encode_frames([hello(name, mine, [KEY])]))
    reader, frames = FrameReader(), []
    while not frames:
        data = await stream.receive_some(65536)
        assert data, "the node closed the opening"
        frames = reader.feed(data)
    theirs = frames[0]["nonce"]
    await stream.send_all(encode_frames([{"t": "auth", "proof": proof(KEY, name, theirs,
                                                                        mine)}]))
    return stream


async def test_an_opening_frame_longer_than_an_opening_is_refused_at_its_header() -> None:
    """Before: a stranger's first header could declare 4 MiB and the node waited for
    (and buffered) it until the opening's 5 s were up."""
    async with cluster(["a", "b"]) as (_a, b):
        stream = await trio.open_tcp_stream(*b.peer_address)
        async with stream:
            await stream.send_all(HEADER.pack(MAX_PEER_FRAME) + b"\x81")
            with trio.fail_after(3):  # the opening's own timeout is 5 s
                assert await closed_by_node(stream)
        assert b.links.counters["peer_handshakes_refused"] == 1


async def test_openings_beyond_the_cap_are_closed_at_once_and_links_still_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_opening, "OPENINGS", 3)
    monkeypatch.setattr(peer_opening, "HANDSHAKE_TIMEOUT", 60.0)  # the three silent ones wait
    async with cluster(["a", "b"]) as (a, b):
        silent = [await trio.open_tcp_stream(*b.peer_address) for _ in range(3)]
        with trio.fail_after(5):
            while b.links.counters["peer_handshakes_shed"] == 0:
                extra = await trio.open_tcp_stream(*b.peer_address)
                async with extra:
                    with trio.move_on_after(0.5):  # the three may not be accepted yet
                        await closed_by_node(extra)
        for stream in silent:
            await stream.aclose()
        user = next(u for u in (f"u{i}" for i in range(1000)) if a.ring.owner(u) == "b")
        with trio.fail_after(5):
            sent = await a.delivery.send(user, "after the flood", None, None)
        assert sent["seq"] > 0


value = Values(TEXTS, NUMBERS, keys=[*FIELDS, "seq", "id", "ts", "expires", "attempts", "t",
                                     "qos", "v", "node", "nonce", "proof", "features"],
               depth=3)
SIZES = [0, 1, 2, 4095, 4096, 4097, 65536, MAX_PEER_FRAME, MAX_PEER_FRAME + 1, 2**31,
         2**32 - 1]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        roll = rng.random()
        if roll < 0.4 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif roll < 0.6:
            del out[rng.randrange(len(out) + 1):]
        elif roll < 0.8:
            out += out[:rng.randrange(len(out) + 1)]
        else:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
    return bytes(out)


def frame(rng: random.Random) -> dict[str, Any]:
    obj: dict[str, Any] = {"t": rng.choice([*KINDS, "hello", "auth"])}
    for name in rng.sample(FIELDS, rng.randrange(6)):
        obj[name] = value(rng)
    if obj["t"] == "replicate" and rng.random() < 0.5:
        obj["msgs"] = [{**GOOD, "user": f"fz{rng.randrange(5)}"}]
    return obj


def stream_bytes(rng: random.Random, opened: bool) -> bytes:
    """What one connection sends (after the opening when ``opened``)."""
    roll = rng.random()
    if roll < 0.2:
        return rng.randbytes(rng.randrange(2000))
    if roll < 0.4:
        size = rng.choice(SIZES)
        return HEADER.pack(size) + rng.randbytes(min(size, rng.randrange(200)))
    if roll < 0.7 and not opened:
        good = encode_frames([hello(rng.choice(["fz", "b", "", "x" * 5000]),
                                    rng.randbytes(rng.choice([16, 0, 15])), [KEY])])
        return mutate(rng, good) if rng.random() < 0.7 else good
    frames = encode_frames([frame(rng) for _ in range(rng.randrange(1, 6))])
    return mutate(rng, frames) if rng.random() < 0.3 else frames


async def send_one(node: Node, rng: random.Random, opened: bool) -> bytes:
    if opened:
        stream = await authenticated(node, "fuzz-peer")
    else:
        stream = await trio.open_tcp_stream(*node.peer_address)
    data = stream_bytes(rng, opened)
    async with stream:
        try:
            if rng.random() < 0.1:  # trickled: a few bytes at a time
                for at in range(0, min(len(data), 64), 4):
                    await stream.send_all(data[at:at + 4])
                    await trio.sleep(0.002)  # what is tested: bytes that come slowly
                data = data[:64]
            else:
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the node refused it already
    return data


@pytest.mark.fuzz
@pytest.mark.parametrize("fuzz_seed", fuzz_seeds(1, 2, 3))
async def test_raw_bytes_at_the_peer_port_never_stop_the_node(fuzz_seed: int) -> None:
    rng = random.Random(fuzz_seed)
    async with cluster(["a", "b"]) as nodes:
        a, b = nodes
        user = next(u for u in (f"u{i}" for i in range(1000)) if a.ring.owner(u) == "b")
        budget = Budget()
        for round_ in range(6):
            for _ in range(15):
                with trio.fail_after(10):
                    data = await send_one(b, rng, opened=rng.random() < 0.4)
                budget.check(data[:200])
            with trio.fail_after(10):  # b still serves its real peer
                sent = await a.delivery.send(user, f"round {round_}", None, None)
            assert sent["seq"] > 0
        assert "a" in b.links.connected()
        assert b.links.counters["peer_frames_failed"] == 0  # no handler raised
        assert b.links.counters["peer_handshakes_refused"] > 0
        assert b.links.counters["peer_links_opened"] > 10  # the fuzz got past openings
        listener = owner_of(nodes, "dora")
        async with device(listener, "dora") as dora:
            sent = await a.delivery.send("dora", "after the fuzz", None, None)
            message = await next_message(dora)
            assert message["body"] == "after the fuzz" and message["seq"] == sent["seq"]
            await dora.send_message(json.dumps({"t": "ack", "seq": message["seq"]}))
