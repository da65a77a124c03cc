"""The SDK-like client loop: heartbeats keep a live node, silence means the node is gone."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

from cli.client import NodeSilent, Session, hold
from tests.push.test_client_server import client_node, token


async def test_a_live_node_is_kept_by_pings_and_a_session_learns_its_id() -> None:
    async with client_node(heartbeat=0.4) as node:
        host, port = node.client_address  # type: ignore[misc]
        session = Session(token("ann"), "phone")
        kinds: list[str] = []

        async def handle(ws: WebSocketConnection, obj: dict[str, Any]) -> None:
            kinds.append(obj["t"])

        # 10 heartbeats: without pings the node would close the connection after two
        with trio.move_on_after(4.0) as scope:
            await hold(host, port, session, handle)
        assert scope.cancelled_caught, "hold ended although the node was alive"
        assert kinds[0] == "welcome" and session.session
        assert kinds.count("pong") >= 8


async def test_a_silent_node_is_left_after_its_heartbeat() -> None:
    pings: list[str] = []

    async def mute(request: WebSocketRequest) -> None:
        ws = await request.accept()
        hello = json.loads(await ws.get_message())
        assert hello["t"] == "hello" and hello["session"] == "s-old" and hello["last_seq"] == 7
        await ws.send_message(json.dumps({"t": "welcome", "session": "s-old",
                                          "heartbeat": 0.5}))
        while True:  # reads pings, answers nothing: a paused process or a cut link
            pings.append(await ws.get_message())

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_websocket, mute, "127.0.0.1", 0, None)
        port = listeners.port
        session = Session("t", "phone", session="s-old", last_seq=7)

        async def ignore(ws: WebSocketConnection, obj: dict[str, Any]) -> None:
            pass

        started = trio.current_time()
        with trio.fail_after(10), pytest.raises(NodeSilent):
            await hold("127.0.0.1", port, session, ignore)
        assert trio.current_time() - started >= 0.5
        assert pings and all(json.loads(p) == {"t": "ping"} for p in pings)
        nursery.cancel_scope.cancel()
