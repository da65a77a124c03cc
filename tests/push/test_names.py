"""User ids, topics and device names are checked by one rule at every way in: HTTP
routes (path, query, body), client frames, token subjects, peer frames, the command line;
and an API key that cannot protect anything is refused at start."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse

import pytest

from node.client_proto import ClientConnection, Hello, Violation
from node.config import Config
from node.frames import FrameError
from node.mailbox import Stored
from node.peer_proto import parse_hello
from node.ring import HashRing
from node.routing import Router
from node.store_requests import parse_item
from node.token import TokenError, check_user, mint, verify
from tests.cli.test_cli import grapevine
from tests.node.helpers import http
from tests.push.test_client_server import client_node

#: ids that break or disguise a log line or a key, each refused everywhere
BAD_IDS = {
    "newline": "a\nb", "nul": "a\x00", "del": "a\x7f", "c1 next line": "a\x85b",
    "c1": "a\x9b", "line separator": "a\u2028b", "paragraph separator": "a\u2029b",
    "right-to-left override": "a\u202eb", "isolate": "a\u2066b", "bom": "\ufeffa",
    "10 KB": "a" * 10_000, "257 bytes": "é" * 128 + "a",
}
IDS = pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))


@IDS
def test_the_one_rule_refuses_it(bad: str) -> None:
    for name in (bad, ""):
        with pytest.raises(ValueError):
            check_user(name)


def test_names_at_the_byte_limit_and_beyond_ascii_are_fine() -> None:
    for good in ("a" * 256, "é" * 128, "日本", "a b", "user@example.com", "\U0001F600",
                 "\u0378"):  # unassigned today: allowed (nodes' Unicode versions differ)
        assert check_user(good) == good


@IDS
async def test_every_http_route_refuses_it_with_400(bad: str) -> None:
    async with client_node() as node:
        api = node.api_address
        quoted = urllib.parse.quote(bad, safe="")
        for method, path, body in (
                ("POST", "/v1/kick", {"user": bad}),
                ("POST", "/v1/send", {"to": bad, "body": "x"}),
                ("GET", f"/v1/users/{quoted}", None),
                ("GET", f"/v1/ring?key={quoted}", None),
                ("POST", "/v1/publish", {"topic": bad, "body": "x"})):
            status, answer = await http(api, method, path, body)
            assert status == 400 and "error" in answer, (method, path, status, answer)
        assert (await http(api, "POST", "/v1/kick", {"user": "fine"}))[0] == 202


@IDS
def test_client_frames_and_tokens_refuse_it(bad: str) -> None:
    now = time.time()
    with pytest.raises(TokenError, match=r"subject|longer"):
        verify(b"k", _token_for(bad, now), now)
    connection = ClientConnection(b"k", now)
    [event] = connection.receive(now, json.dumps(
        {"t": "hello", "token": mint(b"k", "alice", now), "device": bad}))
    assert isinstance(event, Violation) and "device" in event.reason
    connection = ClientConnection(b"k", now)
    [event] = connection.receive(now, json.dumps({"t": "hello", "token": mint(b"k", "a", now)}))
    assert isinstance(event, Hello) and event.device == ""  # none: the default device
    for obj in ({"t": "send", "to": bad, "body": "x"}, {"t": "sub", "topics": [bad]}):
        [event] = connection.receive(now, json.dumps(obj))
        assert isinstance(event, Violation) and event.code == "bad_request", obj


def _token_for(user: str, now: float) -> str:
    """A token whose subject is ``user``, signed, though ``mint`` would refuse it."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "exp": now + 60}).encode())
    signature = hmac.new(b"k", f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


@IDS
def test_peer_frames_naming_it_are_counted_and_dropped(bad: str) -> None:
    router = Router("a", HashRing(8, {"a": 1.0}).owner)
    for frame in ({"t": "register", "user": bad, "session": "s"},
                  {"t": "route", "user": bad, "msg": {"id": "1"}},
                  {"t": "deliver", "user": bad, "msg": {"id": "1"}}):
        assert router.from_peer("b", frame) == []
    assert router.counters["bad_peer_frames"] == 3
    with pytest.raises(ValueError):
        parse_item([bad, "body", None, None])
    with pytest.raises(ValueError):
        Stored.from_wire({"user": bad, "seq": 1, "id": "i", "body": "b", "ts": 1.0,
                          "expires": 2.0})


def test_a_peer_register_with_a_bad_device_keeps_the_session_as_the_default_device() -> None:
    router = Router("a", HashRing(8, {"a": 1.0}).owner)
    router.from_peer("b", {"t": "register", "user": "u", "session": "s", "device": "x\ny"})
    assert router.holders("u") == ["b"]


@pytest.mark.parametrize("key", ["   ", "short", "has space inside-------", "\t" * 20])
def test_an_api_key_that_protects_nothing_is_refused_beyond_loopback(key: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        Config.local("n", api_addr="0.0.0.0", api_key=key)
    Config.local("n", api_addr="0.0.0.0", api_key="k" * 16)


def test_the_command_line_refuses_a_blank_api_key_in_one_line_with_exit_2() -> None:
    result = grapevine("node", "--name", "n", "--api", "0.0.0.0:0", "--api-key", "   ")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--api-key" in result.stderr


@pytest.mark.parametrize("name", ["a\nb", "a b", "x" * 129, "a\u2028", "-a", 5, None])
def test_a_peer_hello_with_a_node_name_no_node_could_have_is_refused(name: object) -> None:
    with pytest.raises(FrameError, match="node name"):
        parse_hello({"t": "hello", "v": 1, "node": name, "nonce": b"n" * 16})
    assert parse_hello({"t": "hello", "v": 1, "node": "node-2.eu:1", "nonce": b"n" * 16})
