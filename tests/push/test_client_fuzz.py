"""Random requests, well-formed frames with wrong values, at a real node's client socket
in both encodings: whatever a client sends, the node answers or closes that connection,
and goes on serving (a durable send still completes) — seeded, bounded."""

from __future__ import annotations

import json
import random
from typing import Any

import msgpack
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.fuzzing import Values, fuzz_seeds
from tests.push.test_client_server import client_node, connect, token

ROUNDS, REQUESTS = 8, 30
TEXTS = ["", "a", "bob", "\ud800", "x" * 300, "é", "\x00", "$presence", "\U0001F600"]
NUMBERS = [0, 1, -1, 2**63, 2**64 - 1, -(2**63), 0.5, float("inf"), float("-inf"),
           float("nan"), 1e308, True, False, None]
KINDS = ["send", "send", "send", "ack", "sub", "unsub", "up", "ping", "kick", "nonsense"]
FIELDS = ["to", "body", "qos", "ttl", "ref", "seq", "topics", "topic"]


value = Values(TEXTS, NUMBERS, keys=TEXTS)


def request(rng: random.Random, me: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"t": rng.choice(KINDS)}
    for name in rng.sample(FIELDS, rng.randrange(5)):
        obj[name] = value(rng)
    if obj["t"] == "send" and rng.random() < 0.7:  # mostly sends that get far: to itself,
        obj["to"] = rng.choice([me, me, "nobody"])  # so that it is written back to it
        obj["body"] = rng.choice(TEXTS)
        obj["qos"] = rng.choice([0, 1, obj.get("qos")])
    return obj


def encode(obj: dict[str, Any], binary: bool) -> bytes | str | None:
    try:
        return msgpack.packb(obj) if binary else json.dumps(obj)
    except (TypeError, ValueError, OverflowError):
        return None  # not expressible in that encoding (bytes in JSON, 2**64 in...)


async def answered(ws: WebSocketConnection, ref: str, binary: bool) -> bool:
    """Read until the pong for ``ref``; False if the node closed the connection."""
    await ws.send_message(msgpack.packb({"t": "ping", "ref": ref}) if binary
                          else json.dumps({"t": "ping", "ref": ref}))
    with trio.fail_after(5):
        while True:
            data = await ws.get_message()
            value = msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)
            for obj in value if isinstance(value, list) else [value]:
                if obj.get("t") in ("pong", "sent") and obj.get("ref") == ref:
                    return True


@pytest.mark.fuzz
@pytest.mark.parametrize("fuzz_seed", fuzz_seeds(1, 2))
async def test_random_requests_never_stop_the_node(fuzz_seed: int) -> None:
    rng = random.Random(fuzz_seed)
    async with client_node() as node:
        for round_ in range(ROUNDS):
            binary = rng.random() < 0.5
            try:
                async with connect(node) as ws:
                    me = rng.choice(["alice", "bob"])
                    hello = {"t": "hello", "token": token(me)}
                    await ws.send_message(msgpack.packb(hello) if binary else json.dumps(hello))
                    await ws.get_message()
                    for _ in range(REQUESTS):
                        data = encode(request(rng, me), binary)
                        if data is not None:
                            await ws.send_message(data)
                    await answered(ws, f"end{round_}", binary)
            except ConnectionClosed:
                pass  # closed for what it sent: allowed; the node must serve the next one
            async with connect(node) as checker:  # still up, and still stores
                await checker.send_message(msgpack.packb({"t": "hello", "token": token("c")}))
                await checker.get_message()
                await checker.send_message(msgpack.packb(
                    {"t": "send", "to": "c", "qos": 1, "body": "ok", "ref": "durable"}))
                assert await answered(checker, "durable", True)
