"""Every integer decoded from a client or a peer, at its bounds: negative, zero, 2**31,
2**32, 2**53, 2**63, 2**64, floats, bools, NaN and infinities (which Python's JSON reads)
are refused with a clear error or counted and dropped — never a crash, never a value
kept that could not be encoded again (msgpack and SQLite stop at 2**63 - 1 signed)."""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from node.client_proto import Ack, ClientConnection, Hello, SendTo, Violation
from node.frames import MAX_SEQ, FrameError, is_seq, seqs_of
from node.mailbox import Stored
from node.peer_proto import NONCE_SIZE, parse_hello
from node.ring import HashRing
from node.routing import Router, SendPeer
from node.store_requests import _outcome, parse_item
from node.token import mint
from tests.node.helpers import http
from tests.push.test_push_nodes import cluster, owner_of

SECRET = b"k"
NOW = 1_800_000_000.0
#: integers past what a seq may be, and what is not an integer at all
NOT_SEQS = [-1, -(2**63), 2**63, 2**64 - 1, 2**64, 10**30, 1.0, 0.5, True, False, math.nan,
            math.inf, -math.inf, "1", None, [1]]
SEQS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, MAX_SEQ]


def json_text(value: object) -> str:
    return json.dumps(value)  # NaN and Infinity written as Python's JSON reads them


@pytest.mark.parametrize("seq", SEQS)
def test_seqs_in_range_are_taken(seq: int) -> None:
    assert is_seq(seq) and seqs_of([seq]) == [seq]
    connection = _opened()
    assert connection.receive(NOW, json_text({"t": "ack", "seq": seq})) == [Ack(seq)]


@pytest.mark.parametrize("bad", NOT_SEQS, ids=repr)
def test_client_numbers_out_of_range_are_a_bad_request_not_a_crash(bad: object) -> None:
    assert not is_seq(bad) and seqs_of([bad, 7]) == [7]
    connection = _opened()
    for obj in ({"t": "ack", "seq": bad}, {"t": "send", "to": "bob", "body": "x", "qos": bad}):
        if obj.get("qos") in (0, 1) and type(obj.get("qos")) is int:
            continue
        [event] = connection.receive(NOW, json_text(obj))
        assert isinstance(event, Violation) and event.code == "bad_request", (obj, event)
    for ttl in (bad, 0, -1, 10**30):
        if ttl is None or (isinstance(ttl, int | float) and not isinstance(ttl, bool)
                           and 0 < ttl <= 3600):
            continue
        [event] = connection.receive(NOW, json_text(
            {"t": "send", "to": "bob", "body": "x", "ttl": ttl}))
        assert isinstance(event, Violation) and "ttl" in event.reason, (ttl, event)


@pytest.mark.parametrize("version", [True, 1.0, 2, 0, -1, 2**64, math.nan, "1"], ids=repr)
def test_a_hello_of_another_version_is_refused_even_one_equal_to_1(version: object) -> None:
    connection = ClientConnection(SECRET, NOW)
    [event] = connection.receive(NOW, json_text(
        {"t": "hello", "v": version, "token": mint(SECRET, "alice", NOW)}))
    assert isinstance(event, Violation) and "version" in event.reason
    with pytest.raises(FrameError):
        parse_hello({"t": "hello", "v": version, "node": "b", "nonce": b"n" * NONCE_SIZE})


@pytest.mark.parametrize("bad", NOT_SEQS, ids=repr)
def test_a_hello_last_seq_out_of_range_is_refused(bad: object) -> None:
    if bad is None:
        return  # absent: a new session
    connection = ClientConnection(SECRET, NOW)
    [event] = connection.receive(NOW, json_text(
        {"t": "hello", "token": mint(SECRET, "alice", NOW), "session": "s", "last_seq": bad}))
    assert isinstance(event, Violation)


def test_a_send_with_qos_1_as_a_float_or_a_bool_is_refused() -> None:
    connection = _opened()
    for qos in (1.0, True, 0.0, False):
        [event] = connection.receive(NOW, json_text(
            {"t": "send", "to": "bob", "body": "x", "qos": qos}))
        assert isinstance(event, Violation), qos
    [event] = connection.receive(NOW, json_text({"t": "send", "to": "bob", "body": "x",
                                                 "qos": 1}))
    assert isinstance(event, SendTo) and event.qos == 1


@pytest.mark.parametrize("field", ["seq", "attempts", "ts", "expires"])
@pytest.mark.parametrize("bad", NOT_SEQS, ids=repr)
def test_a_stored_message_from_a_peer_with_a_number_out_of_range_is_refused(
        field: str, bad: object) -> None:
    raw = {"user": "bob", "seq": 5, "id": "i", "body": "b", "ts": 1.0, "expires": 2.0,
           "attempts": 0}
    ok_as_time = (isinstance(bad, int | float) and not isinstance(bad, bool)
                  and math.isfinite(bad))
    if field in ("ts", "expires") and ok_as_time:
        return  # any finite time is a time
    raw[field] = bad
    with pytest.raises(ValueError):
        Stored.from_wire(raw)
    assert Stored.from_wire({**raw, field: 1}).seq in (1, 5)


@pytest.mark.parametrize("ttl", [0, -1, True, math.nan, math.inf, -math.inf, "5", [1]],
                         ids=repr)
def test_a_stores_item_with_a_ttl_that_is_no_duration_is_refused(ttl: object) -> None:
    with pytest.raises(ValueError, match="ttl"):
        parse_item(["bob", "body", ttl, None])
    assert parse_item(["bob", "body", 2**53, None])[2] == 2**53


@pytest.mark.parametrize("seq", [*NOT_SEQS, 0.0], ids=repr)
def test_an_owner_answer_with_a_seq_we_could_not_send_on_is_unavailable(seq: object) -> None:
    outcome = _outcome("b", {"id": "m", "seq": seq})
    assert not isinstance(outcome, dict), outcome
    assert _outcome("b", {"id": "m", "seq": MAX_SEQ}) == {"id": "m", "seq": MAX_SEQ}


@pytest.mark.parametrize("hops", ["x", None, [1], math.nan, True, -1, 0, 0.5, 1.0], ids=repr)
def test_a_routed_frame_with_hops_of_any_type_never_raises(hops: object) -> None:
    ring = HashRing(64, dict.fromkeys(["a", "b", "c"], 1.0))
    user = next(u for u in (f"u{i}" for i in range(100)) if ring.owner(u) == "c")
    router = Router("b", ring.owner)
    actions = router.from_peer("a", {"t": "route", "user": user, "msg": {"id": "1"},
                                     "hops": hops})
    assert actions == [SendPeer("c", {"t": "route", "user": user, "msg": {"id": "1"},
                                      "hops": 1})]
    for value in actions[0].frame.values():  # what it sends on can be packed
        msgpack.packb(value)


def test_a_routed_frame_that_was_rerouted_once_is_not_rerouted_again() -> None:
    ring = HashRing(64, dict.fromkeys(["a", "b", "c"], 1.0))
    user = next(u for u in (f"u{i}" for i in range(100)) if ring.owner(u) == "c")
    router = Router("b", ring.owner)
    for hops in (1, 2, MAX_SEQ):
        assert router.from_peer("a", {"t": "route", "user": user, "msg": {"id": "1"},
                                      "hops": hops}) == []


def _opened() -> ClientConnection:
    connection = ClientConnection(SECRET, NOW)
    [event] = connection.receive(NOW, json_text({"t": "hello", "token": mint(SECRET, "a", NOW)}))
    assert isinstance(event, Hello)
    return connection


@pytest.mark.parametrize("answer", [
    {"nodes": {"a": "two"}, "pending": math.nan},
    {"nodes": {"a": 2**64 - 1, "b": -1, "c": True}, "pending": 2**63},
    {"nodes": [1, 2], "pending": "many"},
], ids=["strings", "out of range", "wrong shapes"])
async def test_a_presence_answer_that_makes_no_sense_is_not_a_500(answer: dict) -> None:
    async with cluster(["a", "b"]) as nodes:
        owner = owner_of(nodes, "dora")
        other = next(n for n in nodes if n is not owner)
        owner._presence_here = lambda user: answer  # type: ignore[method-assign]
        status, presence = await http(other.api_address, "GET", "/v1/users/dora")
        assert status == 200, presence
        assert presence["pending"] == 0 and presence["devices"] == 0
        assert json.dumps(presence, allow_nan=False)
