"""Text that has no UTF-8 form (JSON can escape half a surrogate pair): refused where it
enters, with a clear error; nothing else is lost and the node carries on."""

from __future__ import annotations

import json

import pytest
import trio

from node.frames import FrameError, load_json, utf8_clean
from node.mailbox import Stored
from node.peer_proto import FrameReader, encode_frames
from node.store import Store
from tests.node.helpers import http
from tests.push.test_client_server import client_node, closed_with, connect, hello, receive

LONE = '"x\\ud800y"'  # JSON for a string holding half a surrogate pair


def test_json_with_a_lone_surrogate_is_a_bad_frame_and_pairs_are_fine() -> None:
    assert load_json('{"body": "\\ud83d\\ude00"}', 100) == {"body": "\U0001F600"}
    with pytest.raises(FrameError, match="surrogate"):
        load_json('[{"t": "send", "to": "bob", "body": ' + LONE + "}]", 1000)
    with pytest.raises(FrameError, match="surrogate"):
        load_json("{" + LONE + ": 1}", 100)  # keys too
    assert not utf8_clean({"a": [1, {"b": "\ud800"}]})
    assert utf8_clean({"a": [1, {"b": "\U0001F600"}], "c": None})


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_client_sending_such_text_is_refused_and_everybody_else_is_served(
        qos: int) -> None:
    async with client_node() as node, connect(node) as sender, connect(node) as bob:
        await hello(sender, "alice")
        await hello(bob, "bob")
        await sender.send_message(
            f'{{"t": "send", "to": "bob", "qos": {qos}, "body": {LONE}}}')
        error = await receive(sender)
        assert error["t"] == "error" and error["code"] == "bad_frame"
        assert "surrogate" in error["reason"]
        assert await closed_with(sender) is not None
        async with connect(node) as again:
            await hello(again, "alice")
            await again.send_message(json.dumps(
                {"t": "send", "to": "bob", "qos": qos, "ref": "r", "body": "fine"}))
            assert (await receive(again))["t"] == "sent"
        message = await receive(bob)
        assert message["t"] == "msg" and message["body"] == "fine"


async def test_the_http_api_answers_400_with_the_reason() -> None:
    async with client_node() as node:
        api = node.api_address
        status, answer = await http(api, "POST", "/v1/send",
                                    f'{{"to": "bob", "qos": 1, "body": {LONE}}}'.encode())
        assert status == 400 and "surrogate" in answer["error"], answer
        status, answer = await http(api, "POST", "/v1/send",
                                    {"to": "bob", "qos": 1, "body": "fine"})
        assert status == 202 and node.delivery.mailboxes.pending_count("bob") == 1


def test_a_peer_frame_that_cannot_be_packed_is_left_out_not_its_neighbours() -> None:
    data = encode_frames([{"t": "a"}, {"t": "bad", "x": "\ud800"}, {"t": "c"},
                          {"t": "big", "seqs": [2**64]}, {"t": "e"}])  # over msgpack's ints
    assert [f["t"] for f in FrameReader().feed(data)] == ["a", "c", "e"]


async def test_a_store_write_that_fails_in_the_thread_fails_only_its_batch() -> None:
    store = Store(None)
    async with trio.open_nursery() as nursery:
        await store.open()
        await nursery.start(store.run)
        with pytest.raises(ValueError):
            await store.write([Stored("bob", 2, "i2", "x\ud800", 1.0, 2.0)])
        with trio.fail_after(5):
            await store.write([Stored("bob", 1, "i1", "fine", 1.0, 2.0)])  # the thread lives
        nursery.cancel_scope.cancel()
    assert store.commits == 1


async def test_a_message_the_client_cannot_be_sent_ends_its_connection() -> None:
    """Noted as written before the write, it must not be covered by a later ack: the
    connection ends (a kick) instead of carrying on without it."""
    async with client_node() as node, connect(node) as bob:
        await hello(bob, "bob")
        node.clients.deliver("bob", {"t": "msg", "id": "m", "seq": 7, "qos": 1, "body": "\ud800"})
        kick = await receive(bob)
        assert kick["t"] == "kick" and "encoded" in kick["reason"]
        assert await closed_with(bob) is not None
