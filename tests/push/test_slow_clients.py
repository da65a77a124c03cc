"""Clients that do not read, on every path that queues for a client (issue #17).

Each test runs a real node on 127.0.0.1 with a client whose socket is never read (its
receive buffer made small) while something is sent to it: QoS 0, QoS 1, topic and
broadcast deliveries, protocol pongs, WebSocket pongs (before and after the hello) and
error frames. Each checks that the node closes it with ``CLOSE_SLOW`` once its output
passes the bound (bytes waiting behind the socket, or a socket that took nothing for
``write_timeout``), counts it once, logs it once, and that a neighbour on the same node
is served meanwhile and after.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from node import client_out
from node.client_conn import Connection
from node.client_out import CLOSE_SLOW, OUT_LIMIT
from node.client_server import ClientServer
from node.fanout import Unavailable
from node.node import Node
from node.token import mint
from tests.push.test_client_server import SECRET, client_node, connect, hello, receive, token
from tests.push.test_websocket import client_frame

#: the write deadline in these tests (two heartbeats of 30 s otherwise)
WRITE_TIMEOUT = 0.5
BODY = "x" * 4000
#: most objects a test queues for the slow client (~12 MB of 4 KB messages: more than
#: the socket buffers, the queue and the bounds hold together)
MOST = 3000


@pytest.fixture(autouse=True)
def short_write_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_out, "WRITE_STALL_HEARTBEATS", WRITE_TIMEOUT / 30.0)


class Stalled:
    """A client on a raw socket that reads nothing until told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.offset = 0  # into the frames being sent: they go whole
        self.sent = 0  # bytes sent by ``send_some``

    @classmethod
    async def open(cls, node: Node, first: bytes = b"") -> Stalled:
        host, port = node.client_address  # type: ignore[misc]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        stalled = cls(sock)
        await stalled.send((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n").encode() + first)
        return stalled

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def send_some(self, chunk: bytes) -> None:
        """Whatever the socket takes now of an endless repetition of ``chunk`` (whole
        frames), waiting a little if it takes nothing."""
        try:
            took = self.sock.send(chunk[self.offset:])
            self.offset = (self.offset + took) % len(chunk)
            self.sent += took
        except BlockingIOError:
            with trio.move_on_after(0.05):
                await trio.lowlevel.wait_writable(self.sock)

    async def read_to_close(self) -> tuple[list[tuple[int, bytes]], int]:
        """Read at last: every frame up to the node's close frame, and its code. Shuts
        our side then (the node's closing handshake ends at once)."""
        data = b""
        frames: list[tuple[int, bytes]] = []
        with trio.fail_after(10):
            while True:
                while (parsed := server_frame(data)) is not None:
                    (opcode, payload), data = parsed
                    frames.append((opcode, payload))
                    if opcode == 0x8:
                        self.sock.shutdown(socket.SHUT_WR)
                        return frames, struct.unpack(">H", payload[:2])[0]
                try:
                    chunk = self.sock.recv(1 << 20)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.sock)
                    continue
                assert chunk, f"the node closed without a close frame after {len(frames)}"
                data += chunk

    def close(self) -> None:
        self.sock.close()


def small_send_buffers(monkeypatch: pytest.MonkeyPatch, size: int = 65536) -> None:
    """The node's side of every client socket accepted from now on gets a send buffer
    of ``size`` bytes (loopback's take megabytes; a client far away has the effect of
    small ones)."""
    start = ClientServer._start

    def small(server: ClientServer, nursery: trio.Nursery, sock: socket.socket,
              remote: str) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        start(server, nursery, sock, remote)
    monkeypatch.setattr(ClientServer, "_start", small)


def server_frame(data: bytes) -> tuple[tuple[int, bytes], bytes] | None:
    """The first (unmasked) frame of ``data`` and what follows it, or None if partial."""
    if len(data) < 2:
        return None
    size, head = data[1] & 0x7F, 2
    if size == 126:
        size, head = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        size, head = int.from_bytes(data[2:10], "big"), 10
    if len(data) < head + size:
        return None
    return (data[0] & 0x0F, data[head:head + size]), data[head + size:]


def hello_frame(user: str, *, service: bool = False) -> bytes:
    jwt = mint(SECRET.encode(), user, time.time(), service=True) if service else token(user)
    return client_frame(0x1, json.dumps({"t": "hello", "device": "d", "token": jwt}).encode())


async def welcomed(stalled: Stalled, until: bytes = b"welcome") -> None:
    """Read the 101 and the welcome (the last the client reads until the end)."""
    data = b""
    with trio.fail_after(5):
        while until not in data:
            try:
                chunk = stalled.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(stalled.sock)
                continue
            assert chunk
            data += chunk


@asynccontextmanager
async def neighbour_of(node: Node) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """A reading client on the same node; yields a check that a message reaches it."""
    async with connect(node) as ws:
        await hello(ws, "neighbour")

        async def served(tag: str, ws: WebSocketConnection = ws) -> None:
            node.send_message("neighbour", tag)
            with trio.fail_after(5):
                while True:
                    got = await receive(ws)
                    if any(o.get("body") == tag for o in (got if isinstance(got, list) else [got])):
                        return
        yield served


async def poll(holds: Callable[[], object]) -> None:
    """Until ``holds()`` (the caller bounds it): a condition of the node, not an event."""
    while True:
        if holds():
            return
        await trio.sleep(0.02)


def slow_closes(node: Node) -> int:
    return node.clients.counters["clients_closed_slow"]


async def cut_while(node: Node, step: Callable[[int], Awaitable[Any]],
                    served: Callable[[str], Awaitable[None]]) -> None:
    """Call ``step(i)`` until the node closes the slow client (at most ``MOST`` steps,
    10 s), checking on the way that the neighbour is served."""
    with trio.fail_after(10):
        for i in range(MOST):
            if slow_closes(node):
                break
            await step(i)
            if i % 200 == 100:
                await served(f"during {i}")
        await poll(lambda: slow_closes(node))  # the write deadline: nothing more sent


async def ends_slow(node: Node, stalled: Stalled, served: Callable[[str], Awaitable[None]],
                    caplog: pytest.LogCaptureFixture) -> list[tuple[int, bytes]]:
    """The slow client was closed: with ``CLOSE_SLOW`` after what waited for it, once
    counted and logged; the neighbour is still served. Returns the frames it read."""
    frames, code = await stalled.read_to_close()
    assert code == CLOSE_SLOW and b"not reading" in frames[-1][1]
    stalled.close()
    await served("after")
    assert slow_closes(node) == 1
    logged = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("client_closed_slow")]
    assert len(logged) == 1 and "remote=127.0.0.1:" in logged[0], logged
    return frames


@asynccontextmanager
async def slow_setup(caplog: pytest.LogCaptureFixture, *, first: bytes | None = None,
                     **overrides: Any) -> AsyncIterator[tuple[Node, Stalled, Any]]:
    caplog.set_level(logging.INFO, logger="node.client_out")
    async with client_node(**overrides) as node, neighbour_of(node) as served:
        stalled = await Stalled.open(node, hello_frame("slow") if first is None else first)
        if first is None:
            await welcomed(stalled)
        elif not first:  # no hello: the 101 only
            await welcomed(stalled, b"\r\n\r\n")
        try:
            yield node, stalled, served
        finally:
            stalled.close()


# ---- deliveries: the write deadline --------------------------------------------------------

async def test_qos0_to_a_client_that_does_not_read(caplog: pytest.LogCaptureFixture) -> None:
    async with slow_setup(caplog, client_queue=64) as (node, stalled, served):
        async def step(i: int) -> None:
            node.send_message("slow", BODY)
            await trio.lowlevel.checkpoint()
        await cut_while(node, step, served)
        frames = await ends_slow(node, stalled, served, caplog)
        assert len(frames) > 100  # what waited for it was written before the close


async def test_qos1_to_a_client_that_does_not_read_stays_pending(
        caplog: pytest.LogCaptureFixture) -> None:
    """Nothing is acked or dropped on the node's side when it closes the client: what
    it did not read waits for it with the owner, and counts no attempt (a client stuck
    again on every connection would otherwise dead-letter acknowledged messages)."""
    async with slow_setup(caplog, client_queue=64) as (node, stalled, served):
        sent = []

        async def step(i: int) -> None:
            sent.append((await node.send("slow", BODY, qos=1))["seq"])
        await cut_while(node, step, served)
        await ends_slow(node, stalled, served, caplog)
        boxes = node.delivery.mailboxes
        with trio.fail_after(5):  # its session is gone, and the owner told what it wrote
            await poll(lambda: not node.clients.sessions_of("slow"))
        assert boxes.pending_count("slow") == len(sent)
        assert boxes.counters["attempts"] == 0
        assert all(stored.attempts == 0 for stored in boxes.pending("slow"))


async def test_topic_publishes_to_a_client_that_does_not_read(
        caplog: pytest.LogCaptureFixture) -> None:
    async with slow_setup(caplog, client_queue=64) as (node, stalled, served):
        await stalled.send(client_frame(0x1, json.dumps({"t": "sub", "topics": ["news"]}
                                                        ).encode()))
        with trio.fail_after(5):
            await poll(node.clients.topics)

        async def step(i: int) -> None:
            node.fanout.publish("news", BODY)
            await trio.lowlevel.checkpoint()
        await cut_while(node, step, served)
        await ends_slow(node, stalled, served, caplog)


async def test_broadcasts_to_a_client_that_does_not_read(
        caplog: pytest.LogCaptureFixture) -> None:
    async with slow_setup(caplog, client_queue=64) as (node, stalled, served):
        async def step(i: int) -> None:
            try:
                node.fanout.broadcast(BODY)
            except Unavailable:  # the node paces broadcasts: wait for room
                await trio.sleep(0.01)
            await trio.lowlevel.checkpoint()
        await cut_while(node, step, served)
        await ends_slow(node, stalled, served, caplog)


# ---- answers: the queue, then the write deadline ------------------------------------------

#: 256 requests a frame, each answered with ~100 bytes (a service token: no rate limit)
REF = "r" * 64


async def test_protocol_pongs_to_a_client_that_does_not_read(
        caplog: pytest.LogCaptureFixture) -> None:
    pings = client_frame(0x1, json.dumps([{"t": "ping", "ref": REF}] * 256).encode())
    async with slow_setup(caplog, first=hello_frame("slow", service=True)) as (
            node, stalled, served):
        await welcomed(stalled)
        await cut_while(node, lambda i: stalled.send_some(pings), served)
        await ends_slow(node, stalled, served, caplog)


async def test_error_frames_to_a_client_that_does_not_read(
        caplog: pytest.LogCaptureFixture) -> None:
    """A client sending bad requests (each answered with an error, the connection kept)
    and never reading the errors."""
    bad = client_frame(0x1, json.dumps([{"t": "teleport", "ref": REF}] * 256).encode())
    async with slow_setup(caplog, first=hello_frame("slow", service=True)) as (
            node, stalled, served):
        await welcomed(stalled)
        await cut_while(node, lambda i: stalled.send_some(bad), served)
        await ends_slow(node, stalled, served, caplog)
        assert node.clients.counters["client_error_bad_request"] > 0


# ---- a kick, and what counts as written ---------------------------------------------------

async def test_a_kick_reaches_a_client_whose_queue_is_full(
        caplog: pytest.LogCaptureFixture) -> None:
    """Found in review: a kick was queued like any object, so a client whose queue was
    full (one that reads slowly, or not for a while) lost it, and was closed 4008 later
    as not reading instead. A kick never waits in the queue: when the socket takes
    nothing more it is written behind what the socket is taking, then the close (1000)."""
    async with slow_setup(caplog, client_queue=16) as (node, stalled, served):
        [session] = node.clients.sessions_of("slow")
        with trio.fail_after(5):
            for _ in range(MOST):
                if len(session.queue) >= 16:
                    break
                node.send_message("slow", BODY)
                await trio.lowlevel.checkpoint()
        assert len(session.queue) == 16
        node.kick("slow", "bye")
        frames, code = await stalled.read_to_close()
        assert code == 1000 and frames[-1][1][2:] == b"bye"
        assert json.loads(frames[-2][1]) == {"t": "kick", "reason": "bye"}
        assert slow_closes(node) == 0
        await served("after")


async def test_an_attempt_counts_only_what_left_the_node_for_the_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: a connection that ended (its client gone) counted an attempt for
    every QoS 1 message noted as written, those still in the node's buffer behind a
    full socket too, which its client never had. Only messages whose frame left the
    node whole for the socket are reported as tried."""
    monkeypatch.setattr(client_out, "WRITE_STALL_HEARTBEATS", 2)  # no 4008 meanwhile
    small_send_buffers(monkeypatch)
    async with client_node() as node:
        reported: list[tuple[str, list[int]]] = []  # what the owner counts as tried
        tried = node.delivery.mailboxes.tried

        def spy(user: str, seqs: Iterable[int]) -> Any:
            reported.append((user, list(seqs)))
            return tried(user, reported[-1][1])
        monkeypatch.setattr(node.delivery.mailboxes, "tried", spy)
        stalled = await Stalled.open(node, hello_frame("tia"))
        await welcomed(stalled)
        connection = connection_of(stalled)
        [session] = node.clients.sessions_of("tia")
        for _ in range(5):  # one frame each, taken by the socket whole
            await node.send("tia", BODY, qos=1)
        answered: list[object] = []
        for _ in range(50):  # 200 KB at once (no task each): one frame the socket begins
            node.delivery.send_soon("tia", BODY, None, None, answered.append)
        with trio.fail_after(10):
            await poll(lambda: len(answered) == 50 and connection.out)
        assert all(isinstance(answer, dict) for answer in answered)
        # the seqs in the frame the socket is taking (of its objects not begun)
        held = b"".join([bytes(connection.out), *(data for data, _ in connection.later)])
        unsent = {int(seq) for seq in re.findall(rb'"seq":(\d+)', held)}
        written = list(session.written or ())
        assert unsent and set(written) >= unsent
        stalled.close()  # the client goes
        with trio.fail_after(5):
            await poll(lambda: reported)
        [(user, seqs)] = reported
        assert user == "tia" and session.closed_reason == "client_closed"
        assert seqs and seqs == written[:len(seqs)]
        assert not unsent & set(seqs)
        boxes = node.delivery.mailboxes
        assert {s.seq for s in boxes.pending("tia") if s.attempts} == set(seqs)


# ---- WebSocket pongs ------------------------------------------------------------------------

PINGS = client_frame(0x9, b"p" * 125) * 64


def connection_of(stalled: Stalled) -> Connection:
    """The node's side of ``stalled`` (the same process)."""
    local = "{}:{}".format(*stalled.sock.getsockname()[:2])
    [connection] = [o for o in gc.get_objects()
                    if isinstance(o, Connection) and o.remote == local]
    return connection


@pytest.mark.parametrize("after_hello", [True, False])
async def test_websocket_pongs_to_a_client_that_does_not_read(
        after_hello: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Found by an attack: every ping was answered on the spot, and what the socket did
    not take waited without limit: +30 MB/s, and still there after the client left (the
    connection and its session referred to each other: only the cyclic collector, much
    later, freed them). Now the pings of one read get one pong, for the last; a socket
    that then takes nothing for the write deadline closes the client; nothing of the
    connection stays once it has gone. (Pings count against a client's rate: the node's
    is raised here, as a service token's is not limited; the node's socket buffer is
    made small, as a slow network's would be, so that pongs alone fill it.)"""
    first = hello_frame("slow") if after_hello else b""
    async with slow_setup(caplog, first=first, client_rate=1e9, client_burst=10**9) as (
            node, stalled, served):
        if after_hello:
            await welcomed(stalled)
        connection_of(stalled).sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await cut_while(node, lambda i: stalled.send_some(PINGS), served)
        gc.disable()  # what is still referenced, not what a collection would free
        try:
            frames = await ends_slow(node, stalled, served, caplog)
            pongs = sum(opcode == 0xA for opcode, _ in frames)
            pings = stalled.sent // (len(PINGS) // 64)
            assert 0 < pongs < pings // 8  # a pong per read, not per ping
            with trio.fail_after(5):  # its task ends right after the closing handshake
                await poll(lambda: not any(isinstance(o, Connection) and o.slow
                                           for o in gc.get_objects()))
        finally:
            gc.enable()


async def test_what_waits_behind_a_socket_is_bounded_in_bytes() -> None:
    """Whatever is written on the spot (pongs, errors before a hello, the close frame):
    past ``OUT_LIMIT`` behind the frame the socket is taking, the client is closed at
    once, without waiting for the write deadline."""
    async with client_node() as node:
        output = node.client_server.output
        ours, theirs = socket.socketpair()  # theirs is never read
        with ours, theirs:
            ours.setblocking(False)
            connection = Connection(ours, "pair")
            big = b"\x82\x7f" + (2**20).to_bytes(8, "big") + bytes(2**20)  # one 1 MiB frame
            output.send(connection, big)
            assert connection.partial == len(connection.out) > 0  # the kernel took a part
            pong = client_out.ws.frame(0xA, b"p" * 125)
            for _ in range(OUT_LIMIT // len(pong) + 1):
                output.send(connection, pong)
            assert connection.slow and connection.close_sent
            assert len(connection.out) - connection.partial <= OUT_LIMIT + 2 + 125
            assert node.clients.counters["clients_closed_slow"] == 1
            assert connection.out.endswith(b"not reading: over 262144 bytes waiting")
            connection.closed = True  # the drain task stops


# ---- liveness ------------------------------------------------------------------------------

async def test_websocket_pings_count_as_hearing_from_the_client() -> None:
    """Any frame is hearing from the client: a protocol ``ping`` kept a connection open,
    a WebSocket ping (what libraries send on their own, `websockets` every 20 s) did
    not, and a client that only sent those was closed as silent. What closes a client
    that talks but never reads is the output bound (the tests above)."""
    async with client_node(heartbeat=0.25) as node, connect(node) as ws:
        await hello(ws, "pinger")
        with trio.fail_after(5):
            for _ in range(12):  # 1.2 s of WebSocket pings: more than two 0.5 s periods
                await trio.sleep(0.1)  # the client's own pace, not a synchronisation
                await ws.ping()
                last_word = trio.current_time()
        with trio.fail_after(5):
            await poll(lambda: not node.clients.sessions_of("pinger"))
        assert trio.current_time() - last_word >= 0.5 * 0.9
        assert node.clients.counters["clients_closed_slow"] == 0


async def test_a_ping_flood_is_cut_at_the_clients_rate() -> None:
    """Each ping costs the node a pong: a flood of empty ones (6 bytes each) held its loop
    ~50 ms per read and never filled the output bound (the kernel took megabytes of
    2-byte pongs first), before or after the hello. Pings and pongs count against the
    connection's rate like objects: the flood is closed with 1008 after the burst."""
    async with client_node(client_rate=5.0, client_burst=10) as node:
        for first in (b"", hello_frame("pinger")):
            stalled = await Stalled.open(node, first)
            await welcomed(stalled, b"welcome" if first else b"\r\n\r\n")
            await stalled.send(client_frame(0x9, b"") * 11)
            frames, code = await stalled.read_to_close()
            stalled.close()
            assert code == 1008 and b"pings/s" in frames[-1][1]
            burst = 10 - (1 if first else 0)  # the hello took one
            assert frames[-1][0] == 0x8 and len(frames) - 1 <= burst
            assert all(opcode == 0xA for opcode, _ in frames[:-1])
        assert node.clients.counters["client_error_rate_limited"] == 2


HELLO = client_frame(0x1, json.dumps({"t": "hello", "token": token("ends")}).encode())


@pytest.mark.parametrize(("first", "then"), [
    (HELLO, b""),  # the client goes
    (HELLO, client_frame(0x8, struct.pack(">H", 1000))),  # it closes
    (HELLO, client_frame(0x9, b"") * 200),  # a ping flood, over the rate
    (HELLO, client_frame(0x2, b"\x01")),  # a bad frame
    (HELLO, b"\x81\x02hi"),  # a protocol error
    (HELLO, client_frame(0x1, json.dumps({"t": "send", "to": "y", "body": "b", "qos": 1}
                                         ).encode())),  # a QoS 1 send in flight
    (HELLO, None),  # kicked
    (client_frame(0x1, b'{"t": "ping"}'), b""),  # no hello
    (b"", b""),  # gone before its hello
], ids=["eof", "close", "ping-flood", "bad-frame", "unmasked", "qos1", "kick", "no-hello",
        "gone-early"])
async def test_nothing_of_a_connection_outlives_it(first: bytes, then: bytes | None) -> None:
    """However a connection ends, nothing refers to it after (the cyclic collector off):
    an exception raised from the quiet reader's note kept its frames and the connection
    in a cycle, and the flusher kept the last connections it wrote to until it wrote
    again; with them whatever they still held."""
    async with client_node() as node:
        gc.collect()
        gc.disable()
        try:
            stalled = await Stalled.open(node, first)
            await welcomed(stalled, b"welcome" if first == HELLO else b"\r\n\r\n")
            if then is None:
                node.kick("ends", "bye")
            else:
                await stalled.send(then)
            stalled.sock.shutdown(socket.SHUT_WR)
            with trio.fail_after(10):
                while True:  # until the node closes: everything it sends is read
                    try:
                        if not stalled.sock.recv(65536):
                            break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(stalled.sock)
                    except ConnectionResetError:
                        break
                stalled.close()
                await poll(lambda: not any(isinstance(o, Connection)
                                           for o in gc.get_objects()))
        finally:
            gc.enable()
