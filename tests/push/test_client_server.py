"""The client WebSocket server of a real node on 127.0.0.1: hello, limits, delivery."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from node.client_server import TEARDOWNS
from node.node import Node
from node.token import mint
from tests.node.helpers import local_config, start_node
from tests.push.test_handover import Turns
from tests.push.test_websocket import client_frame

SECRET = "client-secret"


def token(user: str, secret: str = SECRET) -> str:
    return mint(secret.encode(), user, time.time())


@asynccontextmanager
async def client_node(**overrides: Any) -> AsyncIterator[Node]:
    async with trio.open_nursery() as nursery:
        config = local_config("c1", client_port=0, token_secret=SECRET, **overrides)
        yield await start_node(nursery, config)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(node: Node) -> AsyncIterator[WebSocketConnection]:
    host, port = node.client_address  # type: ignore[misc]
    async with open_websocket(host, port, "/", use_ssl=False) as ws:
        yield ws


async def hello(ws: WebSocketConnection, user: str, binary: bool = False) -> dict:
    frame = {"t": "hello", "token": token(user), "device": "d"}
    await ws.send_message(msgpack.packb(frame) if binary else json.dumps(frame))
    return await receive(ws)


async def receive(ws: WebSocketConnection) -> Any:
    with trio.fail_after(5):
        data = await ws.get_message()
    return msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)


async def closed_with(ws: WebSocketConnection) -> int | None:
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


async def test_hello_welcome_ping_and_sub_in_json_and_msgpack() -> None:
    async with client_node() as node, connect(node) as ws, connect(node) as binary:
        welcome = await hello(ws, "alice")
        assert welcome["t"] == "welcome" and welcome["user"] == "alice"
        assert welcome["node"] == "c1" and welcome["resumed"] is False
        await ws.send_message(json.dumps([{"t": "ping", "ref": "p1"},
                                          {"t": "sub", "topics": ["news"]}]))
        answers = [await receive(ws)]
        if not isinstance(answers[0], list):
            answers.append(await receive(ws))
        flat = [o for a in answers for o in (a if isinstance(a, list) else [a])]
        assert flat == [{"t": "pong", "ref": "p1"}, {"t": "subbed", "topics": ["news"]}]
        assert (await hello(binary, "bob", binary=True))["user"] == "bob"
        assert len(node.clients) == 2 and node.clients.users() == 2


async def test_every_device_of_a_user_gets_a_message_and_writes_are_batched() -> None:
    async with client_node() as node, connect(node) as phone, connect(node) as laptop:
        await hello(phone, "alice")
        await hello(laptop, "alice")
        for i in range(50):  # queued without yielding: the writer packs them
            assert node.clients.deliver("alice", {"t": "msg", "id": str(i), "body": "x"}) == 2
        for ws in (phone, laptop):
            got: list[dict] = []
            frames = 0
            while len(got) < 50:
                frame = await receive(ws)
                frames += 1
                got.extend(frame if isinstance(frame, list) else [frame])
            assert [m["id"] for m in got] == [str(i) for i in range(50)]
            assert frames < 50
        assert node.clients.deliver("nobody", {"t": "msg"}) == 0


@pytest.mark.parametrize(("first", "code", "close"), [
    ({"t": "hello", "token": "garbage"}, "unauthorized", 1008),
    ({"t": "hello", "token": "@@"}, "unauthorized", 1008),
    ({"t": "ping"}, "unauthorized", 1008),
])
async def test_bad_hellos_get_an_error_frame_then_close(first: dict, code: str, close: int) -> None:
    async with client_node() as node, connect(node) as ws:
        await ws.send_message(json.dumps(first))
        error = await receive(ws)
        assert error["t"] == "error" and error["code"] == code
        assert await closed_with(ws) == close
        assert node.clients.counters["hello_refused"] == 1


@pytest.mark.parametrize("binary", [False, True])
async def test_a_token_for_another_cluster_is_refused_in_the_clients_encoding(
    binary: bool,
) -> None:
    async with client_node() as node, connect(node) as ws:
        frame = {"t": "hello", "token": mint(b"other", "eve", 0, None)}
        await ws.send_message(msgpack.packb(frame) if binary else json.dumps(frame))
        with trio.fail_after(5):
            data = await ws.get_message()
        assert isinstance(data, bytes) is binary
        error = msgpack.unpackb(data) if binary else json.loads(data)
        assert error["reason"] == "token signature does not match"
        assert await closed_with(ws) == 1008


async def test_oversized_frames_and_floods_are_cut_off_and_the_node_carries_on() -> None:
    async with client_node(max_frame=4096, client_rate=5.0, client_burst=10) as node:
        async with connect(node) as ws:
            await hello(ws, "alice")
            await ws.send_message(json.dumps({"t": "up", "body": "x" * 5000}))
            error = await receive(ws)
            assert error["code"] == "too_large"
            assert await closed_with(ws) == 1009
        async with connect(node) as ws:
            await hello(ws, "alice")
            for _ in range(20):
                try:
                    await ws.send_message(json.dumps({"t": "ping"}))
                except ConnectionClosed:
                    break
            seen = []
            with trio.fail_after(5):
                try:
                    while True:
                        frame = await receive(ws)
                        seen.extend(frame if isinstance(frame, list) else [frame])
                except ConnectionClosed as exc:
                    assert exc.reason.code == 1008
            assert seen[-1]["code"] == "rate_limited" and len(seen) <= 11
        async with connect(node) as ws:  # unharmed
            assert (await hello(ws, "carol"))["t"] == "welcome"
            await ws.send_message(json.dumps({"t": "teleport", "ref": "r"}))
            assert await receive(ws) == {"t": "error", "code": "bad_request", "ref": "r",
                                         "reason": "unknown frame type 'teleport'"}
            await ws.send_message(json.dumps({"t": "send", "to": "x", "body": "b", "ref": "s"}))
            sent = await receive(ws)
            assert sent["t"] == "sent" and sent["ref"] == "s" and sent["id"].startswith("c1.")
            await ws.send_message(json.dumps({"t": "send", "to": "x", "body": "b", "qos": 1}))
            stored = await receive(ws)
            assert stored["t"] == "sent" and stored["seq"] > 0
        assert node.clients.counters["client_error_too_large"] == 1
        assert node.clients.counters["client_error_rate_limited"] == 1


async def test_clients_that_reset_during_the_upgrade_do_not_stop_the_node() -> None:
    """Found by a partition run: a client gone before the node read its address
    (getpeername: ENOTCONN) ended the whole node."""
    async with client_node() as node:
        for _ in range(30):
            stream = await raw_upgrade(node)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            stream.socket.close()  # a reset, right behind the request
        async with connect(node) as ws:
            assert (await hello(ws, "after-the-resets"))["t"] == "welcome"


async def raw_upgrade(node: Node, extra: bytes = b"") -> trio.SocketStream:
    host, port = node.client_address  # type: ignore[misc]
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode() + extra)
    return stream


async def read_until(stream: trio.SocketStream, predicate: Any) -> bytes:
    data = b""
    with trio.fail_after(5):
        while not predicate(data):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_plain_http_on_the_client_port_gets_426_with_a_reason() -> None:
    async with client_node() as node:
        host, port = node.client_address  # type: ignore[misc]
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until(stream, lambda d: b"\n\n" in d.replace(b"\r", b""))
        assert data.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
        assert data.rstrip().endswith(b"this port speaks WebSocket only (docs/protocol.md)")
        assert node.clients.counters["handshakes_refused"] == 1


async def test_a_hello_in_fragments_right_behind_the_upgrade_with_a_ping_between() -> None:
    """What a browser or library may do: pipeline, fragment, ping; we answer each."""
    async with client_node() as node:
        hello = json.dumps({"t": "hello", "token": token("frag"), "device": "d"}).encode()
        stream = await raw_upgrade(node, client_frame(0x1, hello[:10], fin=False)
                                   + client_frame(0x9, b"hi") + client_frame(0x0, hello[10:]))
        data = await read_until(stream, lambda d: b"welcome" in d)
        assert b"HTTP/1.1 101 Switching Protocols\r\n" in data
        assert b"\x8a\x02hi" in data  # the pong, before the welcome
        assert data.index(b"\x8a\x02hi") < data.index(b"welcome")
        await stream.send_all(client_frame(0x2, b"\x01"))  # not msgpack: an error frame
        error = await read_until(stream, lambda d: b"bad_frame" in d)
        assert b"bad_frame" in error
        await stream.aclose()


async def test_an_unmasked_frame_is_a_protocol_error_closed_with_1002() -> None:
    async with client_node() as node, connect(node) as good:
        stream = await raw_upgrade(node)
        await read_until(stream, lambda d: b"\r\n\r\n" in d)
        await stream.send_all(b"\x81\x02hi")  # not masked
        data = await read_until(stream, lambda d: False)  # until the node closes
        assert data[0] == 0x88 and struct.unpack(">H", data[2:4])[0] == 1002
        assert data[4:] == b"client frames must be masked"
        assert node.clients.counters["client_protocol_errors"] == 1
        assert (await hello(good, "still-served"))["t"] == "welcome"


async def test_a_client_that_stops_reading_loses_qos0_not_the_node() -> None:
    async with client_node(client_queue=64) as node, connect(node) as fast:
        stalled = await raw_upgrade(node, client_frame(0x1, json.dumps(
            {"t": "hello", "token": token("slow")}).encode()))
        await read_until(stalled, lambda d: b"welcome" in d)
        await hello(fast, "fast")
        body = "x" * 4000
        for i in range(3000):  # ~12 MB: far beyond what the socket buffers hold
            node.clients.deliver("slow", {"t": "msg", "id": str(i), "body": body})
            if i % 100 == 0:
                await trio.lowlevel.checkpoint()
        [session] = node.clients.sessions_of("slow")
        assert session.dropped > 0  # its queue filled while its socket would not take more
        assert node.clients.deliver("fast", {"t": "msg", "id": "f", "body": "y"}) == 1
        assert (await receive(fast))["id"] == "f"  # everyone else is served at once
        await stalled.aclose()


async def test_a_client_silent_for_two_heartbeats_is_closed_however_long_it_talked() -> None:
    """The silence deadline is re-armed per quiet period, not per message: a client that
    pinged through several periods is closed two heartbeats after its last word, not
    before and not never."""
    async with client_node(heartbeat=0.25) as node, connect(node) as ws:
        await hello(ws, "quiet")
        for _ in range(12):  # 1.2 s of talk: more than two 0.5 s periods
            await trio.sleep(0.1)
            await ws.send_message(json.dumps({"t": "ping"}))
            last_word = trio.current_time()
            assert (await receive(ws))["t"] == "pong"
        with trio.fail_after(5):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
        assert trio.current_time() - last_word >= 0.5 * 0.9
        assert closed.value.reason.code == 1000 and "silent" in closed.value.reason.reason


async def test_a_mass_disconnect_is_torn_down_a_slice_at_a_time() -> None:
    """Connections that all end in one pass of the event loop (a load balancer
    restarting, a network blip) were all torn down in that pass: 10,000 held the loop
    for up to a second, long enough for peers to suspect the node. Now at most
    ``TEARDOWNS`` at a time, with the node's other tasks between."""
    count = 4 * TEARDOWNS
    async with client_node() as node:
        streams = []
        for i in range(count):
            frame = json.dumps({"t": "hello", "token": token(f"u{i}"), "device": "d"})
            stream = await raw_upgrade(node, client_frame(0x1, frame.encode()))
            await read_until(stream, lambda d: b"welcome" in d)
            streams.append(stream)
        assert len(node.clients) == count
        turns, seen, all_gone = Turns(), [], trio.Event()
        detach = node.clients.detach

        def counted(session: Any) -> None:
            seen.append(turns.count)  # which turn of the other task it happened in
            detach(session)
            if len(seen) == count:
                all_gone.set()
        node.clients.detach = counted  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(turns.take)
            for stream in streams:  # every client gone at once, no turn between
                stream.socket.close()
            with trio.fail_after(10):
                await all_gone.wait()
            nursery.cancel_scope.cancel()
        assert len(node.clients) == 0
        per_turn = Counter(seen)
        assert max(per_turn.values()) <= 2 * TEARDOWNS  # a slice, or the ends of two
        assert len(per_turn) >= 3
