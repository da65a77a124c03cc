"""The quiet reader (node/client_conn.py): parked connections are read by one task."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from node.client_proto import ClientConnection
from tests.push.test_client_server import (
    client_node, closed_with, connect, hello, raw_upgrade, read_until, receive, token,
)
from tests.push.test_websocket import client_frame


class Steps(trio.abc.Instrument):
    """Task steps of the connections' own tasks."""

    def __init__(self) -> None:
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("ClientServer._connection"):
            self.count += 1


async def test_a_parked_connection_is_served_without_waking_its_task() -> None:
    """Each message a client sent (an ack, a ping) was a task step of its connection's
    own, and an epoll_ctl to wait again; now the reader handles it on the spot."""
    async with client_node() as node, connect(node) as ws:
        await hello(ws, "pat")
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        try:
            for i in range(40):
                await ws.send_message(json.dumps({"t": "ping", "ref": str(i)}))
                assert await receive(ws) == {"t": "pong", "ref": str(i)}
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.count < 5  # 40 or more when each ping woke the connection's task


async def test_connections_that_come_and_go_leave_no_descriptor_behind() -> None:
    """A socket leaves the reader's set before its task closes it, however the
    connection ends: the next accept may reuse the descriptor."""
    async with client_node() as node:
        assert node.client_server is not None and node.client_server.reader is not None
        reader = node.client_server.reader
        for i in range(30):
            async with connect(node) as ws:
                await hello(ws, f"u{i}")
                await ws.send_message(json.dumps({"t": "ping", "ref": "r"}))
                assert await receive(ws) == {"t": "pong", "ref": "r"}
                await trio.testing.wait_all_tasks_blocked(0.01)
                assert len(reader) == 1  # parked: the reader answered the ping
                if i % 3 == 1:  # gone without a word: the reader sees the end of the stream
                    ws._stream.socket.shutdown(socket.SHUT_RDWR)
                    with pytest.raises(ConnectionClosed), trio.fail_after(5):
                        await ws.get_message()
                elif i % 3 == 2:  # kicked: its task is cancelled while parked
                    node.kick(f"u{i}", "test")
                    assert await closed_with(ws) == 1000
                # else the closing handshake, answered by the connection's task
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert len(reader) == 0
        async with connect(node) as ws:
            await hello(ws, "last")
            await ws.send_message(json.dumps({"t": "ping", "ref": "z"}))
            assert await receive(ws) == {"t": "pong", "ref": "z"}


async def test_a_failure_while_reading_a_parked_connection_ends_only_that_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = ClientConnection.receive

    def receive_or_fail(self: ClientConnection, now: float, data: Any) -> Any:
        if "boom" in str(data):
            raise RuntimeError("a bug met on the reader's turn")
        return original(self, now, data)
    monkeypatch.setattr(ClientConnection, "receive", receive_or_fail)
    async with client_node() as node, connect(node) as ws, connect(node) as other:
        await hello(ws, "ann")
        await hello(other, "bob")
        await ws.send_message(json.dumps({"t": "ping", "ref": "boom"}))
        assert await closed_with(ws) == 1011
        await other.send_message(json.dumps({"t": "ping", "ref": "still"}))
        assert await receive(other) == {"t": "pong", "ref": "still"}



async def test_a_node_stops_cleanly_with_connections_parked() -> None:
    """Every parked connection leaves the reader's set as the node stops, and the set is
    closed only after the last has: no error on the way out."""
    streams = []
    try:
        async with client_node() as node:
            for i in range(50):
                frame = json.dumps({"t": "hello", "token": token(f"p{i}"), "device": "d"})
                stream = await raw_upgrade(node, client_frame(0x1, frame.encode()))
                await read_until(stream, lambda d: b"welcome" in d)
                streams.append(stream)
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert node.client_server is not None and node.client_server.reader is not None
            assert len(node.client_server.reader) == 50
        # the node stopped here, every connection still open and parked
    finally:
        for stream in streams:
            stream.socket.close()
