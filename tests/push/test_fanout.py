"""Topics, broadcast, kick, upstream and presence across real nodes on 127.0.0.1."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import h11
import msgpack
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket

from node.clients import ClientSession, LocalClients
from node.fanout import Fanout
from node.peer_link import PeerLinks
from node.ring import HashRing
from node.routing import MessageIds
from node.token import mint
from node.webhook import parse_url
from tests.node.helpers import http, local_config, start_node

from .test_push_nodes import (
    SECRET, cluster, device, next_message, next_object, registered, wait_until,
)


async def subscribe(ws: Any, *topics: str) -> dict:
    await ws.send_message(json.dumps({"t": "sub", "topics": list(topics), "ref": "s"}))
    return await next_object(ws)


async def test_a_publish_reaches_every_subscriber_on_every_node_and_nobody_else() -> None:
    async with cluster(["a", "b", "c"]) as nodes, device(nodes[1], "u1") as one, \
            device(nodes[2], "u2") as two, device(nodes[2], "u3") as bystander:
        for ws in (one, two):
            assert (await subscribe(ws, "news"))["t"] == "subbed"
        status, answer = await http(nodes[0].api_address, "POST", "/v1/publish",
                                    {"topic": "news", "body": "extra!"})
        assert status == 202
        for ws in (one, two):
            message = await next_message(ws)
            assert (message["id"], message["topic"], message["body"]) == (
                answer["id"], "news", "extra!")
        await bystander.send_message(json.dumps({"t": "ping", "ref": "p"}))
        assert (await next_object(bystander))["t"] == "pong"  # and no message before it
        status, _ = await http(nodes[0].api_address, "POST", "/v1/publish",
                               {"topic": "$presence", "body": "x"})
        assert status == 400


async def test_a_broadcast_reaches_every_client_on_every_node() -> None:
    async with cluster(["a", "b", "c"]) as nodes, device(nodes[0], "x") as x, \
            device(nodes[1], "y") as y, device(nodes[2], "z") as z:
        status, answer = await http(nodes[1].api_address, "POST", "/v1/broadcast",
                                    {"body": "to all"})
        assert status == 202
        for ws in (x, y, z):
            message = await next_message(ws)
            assert message["id"] == answer["id"] and message["broadcast"] is True


async def test_kick_closes_every_session_of_the_user() -> None:
    async with cluster(["a", "b", "c"]) as nodes, device(nodes[0], "mal") as first, \
            device(nodes[2], "mal") as second:
        with trio.fail_after(5):
            await wait_until(nodes, lambda: registered(nodes, "mal", 2))
        status, _ = await http(nodes[1].api_address, "POST", "/v1/kick",
                               {"user": "mal", "reason": "banned"})
        assert status == 202
        for ws in (first, second):
            assert await next_object(ws) == {"t": "kick", "reason": "banned"}
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1000


async def test_service_clients_hear_presence_and_upstream_and_others_may_not() -> None:
    async with cluster(["a", "b"]) as nodes:
        host, port = nodes[0].client_address  # type: ignore[misc]
        async with open_websocket(host, port, "/", use_ssl=False) as app:
            token = mint(SECRET.encode(), "app-server", time.time(), service=True)
            await app.send_message(json.dumps({"t": "hello", "token": token}))
            assert (await next_object(app))["t"] == "welcome"
            assert (await subscribe(app, "$presence", "$upstream"))["t"] == "subbed"
            async with device(nodes[1], "gus") as gus:
                online = await next_message(app)
                assert online["topic"] == "$presence"
                assert online["body"]["event"] == "online" and online["body"]["user"] == "gus"
                await gus.send_message(json.dumps({"t": "up", "body": "hi app", "ref": "u1"}))
                up = await next_message(app)
                assert up["topic"] == "$upstream" and up["body"]["body"] == "hi app"
                assert up["body"]["ref"] == "u1" and up["body"]["node"] == "b"
                refused = await subscribe(gus, "$presence")
                assert refused["t"] == "error" and refused["code"] == "forbidden"
            offline = await next_message(app)
            assert offline["body"]["event"] == "offline" and offline["body"]["user"] == "gus"


async def test_the_webhook_gets_every_event_in_order_despite_failures() -> None:
    posts: list[dict] = []
    answers = iter([500, 503])  # then 200 for ever
    got_enough = trio.Event()

    async def webhook(stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        body = b""
        async with stream:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            status = next(answers, 200)
            if status == 200:
                posts.append(json.loads(body))
                if sum(len(p["events"]) for p in posts) >= 3:
                    got_enough.set()
            await stream.send_all(connection.send(h11.Response(
                status_code=status, headers=[("Content-Length", "0")])) + connection.send(
                h11.EndOfMessage()))

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, webhook, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        config = local_config("hooked", client_port=0, token_secret=SECRET,
                              webhook=f"http://127.0.0.1:{port}/events")
        node = await start_node(nursery, config)
        async with device(node, "hal") as hal:
            await hal.send_message(json.dumps({"t": "up", "body": "ping app"}))
        with trio.fail_after(10):
            await got_enough.wait()
        events = [e for p in posts for e in p["events"]]
        assert [e["event"] for e in events] == ["online", "up", "offline"]
        assert all(p["node"] == "hooked" for p in posts)
        assert node.fanout.webhook.counters["webhook_failures"] == 2
        nursery.cancel_scope.cancel()


def test_webhook_urls_are_checked() -> None:
    assert parse_url("https://app.example/hook?x=1") == ("https", "app.example", 443,
                                                         "/hook?x=1")
    for bad in ("ftp://x/", "http://", "nonsense"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError, match="webhook"):
        local_config("x", webhook="mailto:me")


async def test_broadcasts_are_paced_at_the_configured_rate(autojump_clock: Any) -> None:
    clients = LocalClients()
    sessions, arrived = [], trio.Event()
    for i in range(100):
        sessions.append(ClientSession(f"s{i}", f"u{i}", "", "", set(), limit=10,
                                      notify=lambda _, i=i: arrived.set() if i == 99 else None))
        clients.attach(sessions[-1])
    config = local_config("pacer", broadcast_rate=50.0)
    links = PeerLinks("pacer", list, lambda *_: None, lambda _: None)
    fanout = Fanout(config, ring=HashRing(), clients=clients, links=links,
                    ids=MessageIds("pacer"))
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        start = trio.current_time()
        fanout.broadcast("slowly")
        with trio.fail_after(60):
            await arrived.wait()  # the last session is served last
        took = trio.current_time() - start  # virtual seconds
        assert 1.9 <= took <= 2.5  # 100 deliveries at 50/s
        assert all([msgpack.unpackb(m)["body"] for m in s.queue] == ["slowly"]
                   for s in sessions)
        packed = sessions[0].queue[0]  # packed once for every session
        assert all(s.queue[0] is packed for s in sessions)
        nursery.cancel_scope.cancel()


def test_a_packed_publish_from_a_peer_reaches_subscribers_and_junk_is_counted() -> None:
    clients = LocalClients()
    session = ClientSession("s", "u", "", "", set(), limit=10)
    clients.attach(session)
    clients.subscribe(session, ("news",))
    links = PeerLinks("here", list, lambda *_: None, lambda _: None)
    fanout = Fanout(local_config("here"), ring=HashRing(), clients=clients, links=links,
                    ids=MessageIds("here"))
    packed = msgpack.packb({"t": "msg", "id": "there.1", "seq": 0, "topic": "news", "body": "b"})
    for frame in ({"t": "publish", "topic": "news", "msg": packed},
                  {"t": "publish", "topic": "news", "msg": b"\x93\x01\x02\x03"},  # an array
                  {"t": "broadcast", "msg": "text"}):
        assert fanout.from_peer(frame)
    assert list(session.queue) == [packed]
    assert fanout.counters["bad_peer_frames"] == 2
