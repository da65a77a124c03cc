"""The client protocol machine: hello first, limits, batches, both encodings."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.client_proto import (
    CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, Ack, ClientConnection, Hello, Limits, Ping,
    SendTo, State, Subscribe, Unsubscribe, Upstream, Violation,
)
from node.token import mint

SECRET = b"k"
NOW = 1_800_000_000.0


def opened(text: bool = True, **limits: object) -> ClientConnection:
    connection = ClientConnection(SECRET, NOW, Limits(**limits))  # type: ignore[arg-type]
    hello = {"t": "hello", "token": mint(SECRET, "alice", NOW), "device": "phone"}
    data = json.dumps(hello) if text else msgpack.packb(hello)
    [event] = connection.receive(NOW, data)
    assert event == Hello("alice", "phone", None, None)
    assert connection.state is State.OPEN and connection.text is text
    return connection


def send(connection: ClientConnection, *objects: dict, at: float = NOW) -> list:
    value = objects[0] if len(objects) == 1 else list(objects)
    return connection.receive(at, json.dumps(value) if connection.text else msgpack.packb(value))


@pytest.mark.parametrize("text", [True, False])
def test_requests_parse_in_either_encoding(text: bool) -> None:
    connection = opened(text)
    events = send(
        connection,
        {"t": "ack", "seq": 7},
        {"t": "sub", "topics": ["news", "sport", "news"]},
        {"t": "unsub", "topics": ["sport", "never-subscribed"]},
        {"t": "up", "body": "hi", "ref": "r1"},
        {"t": "send", "to": "bob", "body": "yo", "qos": 1, "ttl": 60, "ref": "r2"},
        {"t": "ping", "ref": "p"},
    )
    assert events == [
        Ack(7), Subscribe(("news", "sport")), Unsubscribe(("sport",)), Upstream("hi", "r1"),
        SendTo("bob", "yo", 1, 60, "r2"), Ping("p"),
    ]
    assert connection.subscriptions == {"news"}
    frame = connection.encode([{"t": "pong", "ref": "p"}, {"t": "msg", "body": "b"}])
    decoded = json.loads(frame) if text else msgpack.unpackb(frame)
    assert decoded == [{"t": "pong", "ref": "p"}, {"t": "msg", "body": "b"}]
    one = connection.encode([{"t": "pong"}])
    assert (json.loads(one) if text else msgpack.unpackb(one)) == {"t": "pong"}
    # no form in the encoding: None (the server then ends the connection), never a raise
    unencodable = {"t": "msg", "body": "\ud800"} if text else {"t": "msg", "seq": 2**64}
    assert connection.encode([unencodable]) is None


@pytest.mark.parametrize("text", [True, False])
@pytest.mark.parametrize("size", [1, 2, 15, 16, 256])  # arrays of 1-15 have a one-byte head
def test_packed_messages_go_out_as_they_came_beside_other_objects(text: bool, size: int
                                                                 ) -> None:
    """A QoS 0 message reaches the client server packed (bytes): a binary frame carries
    its bytes as they are, in a batch beside objects packed here; a JSON client gets the
    same objects."""
    connection = opened(text)
    objects = [{"t": "msg", "id": f"a.{i}", "seq": 0, "body": "x" * i} for i in range(size)]
    queued = [msgpack.packb(o) if i % 2 == 0 else o for i, o in enumerate(objects)]
    frame = connection.encode(queued)
    decoded = json.loads(frame) if text else msgpack.unpackb(frame)
    assert decoded == (objects[0] if size == 1 else objects)
    if not text and size == 1:
        assert frame == queued[0]  # not unpacked and packed again
    if text:  # bytes that are not msgpack: logged, None (never a raise)
        assert connection.encode([b"\x81\xc1"]) is None


@pytest.mark.parametrize(("first", "reason"), [
    ({"t": "ping"}, "first frame must be a hello"),
    ({"t": "hello", "token": "nope"}, "not a JWT"),
    ({"t": "hello", "token": mint(b"wrong", "alice", NOW)}, "signature"),
    ({"t": "hello", "token": mint(SECRET, "alice", NOW), "v": 9}, "version"),
    ({"t": "hello", "token": mint(SECRET, "alice", NOW), "session": "s", "last_seq": 10**30},
     "below 2**63"),
    # a session id is a name like any other: it reaches log lines when resumed
    ({"t": "hello", "token": mint(SECRET, "alice", NOW), "session": "a\nforged=1"},
     "control characters"),
    ({"t": "hello", "token": mint(SECRET, "alice", NOW), "session": "s\u2028"},
     "line separators"),
])
def test_nothing_before_a_good_hello(first: dict, reason: str) -> None:
    connection = ClientConnection(SECRET, NOW)
    [violation] = connection.receive(NOW, json.dumps(first))
    assert isinstance(violation, Violation)
    assert violation.code == "unauthorized" and reason in violation.reason
    assert violation.close == CLOSE_POLICY and connection.state is State.CLOSED
    assert connection.receive(NOW, json.dumps(first)) == []  # closed: ignores the rest


def test_bad_requests_are_answered_and_the_connection_stays_open() -> None:
    connection = opened()
    cases = [
        ({"t": "ack"}, "seq"),
        ({"t": "ack", "seq": -1}, "non-negative"),
        ({"t": "ack", "seq": 2**63}, "below 2**63"),  # JSON has no limit; no seq is this big
        ({"t": "send", "to": "bob", "body": "x", "qos": 2, "ref": "q"}, "qos"),
        ({"t": "send", "to": "bob", "body": "x", "ttl": 0}, "ttl"),
        ({"t": "send", "body": "x"}, "to"),
        ({"t": "send", "to": "", "body": "x"}, "non-empty string of at most 256 bytes"),
        ({"t": "send", "to": "é" * 200, "body": "x"}, "at most 256 bytes"),  # 400 bytes
        ({"t": "send", "to": "bob\n", "body": "x"}, "control characters"),
        ({"t": "send", "to": "bob", "body": "x", "ttl": 1e300}, "at most 2.592e+06"),
        ({"t": "sub", "topics": []}, "topics"),
        ({"t": "sub", "topics": ["x" * 300]}, "topic"),
        ({"t": "hello", "token": "t"}, "already"),
        ({"t": "teleport"}, "unknown"),
    ]
    for obj, reason in cases:
        [violation] = send(connection, obj)
        assert isinstance(violation, Violation) and violation.code == "bad_request", obj
        assert reason in violation.reason and violation.close is None
    assert violation.frame() == {"t": "error", "code": "bad_request",
                                 "reason": "unknown frame type 'teleport'"}
    assert connection.state is State.OPEN


@pytest.mark.parametrize(("data", "code", "close"), [
    (b"\xc1", "bad_frame", CLOSE_UNSUPPORTED),
    ("{not json", "bad_frame", CLOSE_UNSUPPORTED),
    ("[1, 2]", "bad_frame", CLOSE_UNSUPPORTED),
    ('{"no_t": 1}', "bad_frame", CLOSE_UNSUPPORTED),
    ("[]", "bad_frame", CLOSE_UNSUPPORTED),
    ("x" * 70_000, "too_large", CLOSE_TOO_BIG),
    (msgpack.packb({"t": "up", "body": "x" * 70_000}), "too_large", CLOSE_TOO_BIG),
])
def test_broken_frames_close_the_connection(data: bytes | str, code: str, close: int) -> None:
    connection = opened()
    [violation] = connection.receive(NOW, data)
    assert isinstance(violation, Violation) and (violation.code, violation.close) == (code, close)
    assert connection.state is State.CLOSED


def test_a_flood_is_cut_off_and_a_steady_client_is_not() -> None:
    steady = opened(rate=10.0, burst=5)
    for i in range(100):  # 10 pings a second for 10 s
        assert send(steady, {"t": "ping"}, at=NOW + i / 10) == [Ping(None)]
    flood = opened(rate=10.0, burst=5)
    results = [send(flood, {"t": "ping"}, at=NOW) for _ in range(7)]
    assert results[:4] == [[Ping(None)]] * 4  # the hello took one token
    [violation] = results[4]
    assert violation.code == "rate_limited" and violation.close == CLOSE_POLICY
    assert results[5] == results[6] == []
    big_batch = opened(rate=10.0, burst=5)
    [violation] = send(big_batch, *({"t": "ping"} for _ in range(6)))
    assert violation.code == "rate_limited"


def test_the_subscription_cap_refuses_the_whole_request() -> None:
    connection = opened(max_subscriptions=3)
    assert send(connection, {"t": "sub", "topics": ["a", "b"]}) == [Subscribe(("a", "b"))]
    [violation] = send(connection, {"t": "sub", "topics": ["a", "c", "d"], "ref": "s"})
    assert violation.code == "too_many_subscriptions" and violation.ref == "s"
    assert connection.subscriptions == {"a", "b"} and connection.state is State.OPEN
    assert send(connection, {"t": "sub", "topics": ["a", "c"]}) == [Subscribe(("c",))]


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=200), st.text(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["t", "seq", "topics", "body", "to", "qos",
                                                    "ttl", "ref"]), inner, max_size=5),
                 max_leaves=12).map(json.dumps),
))
def test_random_frames_never_raise(data: bytes | str) -> None:
    connection = opened()
    for event in connection.receive(NOW, data):
        assert isinstance(event, Violation | Ack | Subscribe | Unsubscribe | Upstream | SendTo
                          | Ping)


def test_service_tokens_are_not_rate_limited() -> None:
    connection = ClientConnection(SECRET, NOW, Limits(rate=1.0, burst=2))
    hello = {"t": "hello", "token": mint(SECRET, "app", NOW, service=True)}
    [event] = connection.receive(NOW, json.dumps(hello))
    assert isinstance(event, Hello) and event.service
    for _ in range(50):
        assert send(connection, {"t": "ping"}) == [Ping(None)]


@pytest.mark.parametrize("text", [True, False])
def test_frames_to_the_client_are_bounded_in_bytes_and_keep_the_order(text: bool) -> None:
    """A batch of larger objects goes in several frames, each at most ``out_frame``
    bytes (the 1 MiB a WebSocket library takes by default was passed by 256 messages of
    4 KB in one frame); one object larger than that goes alone; small batches stay one
    frame."""
    connection = opened(text, out_frame=10_000)
    small = [{"t": "pong", "ref": str(n)} for n in range(200)]
    assert [count for _, count in connection.frames(small) or []] == [200]  # type: ignore[arg-type]
    big = [{"t": "msg", "seq": n, "body": "é" * 1500} for n in range(20)]  # 3 KB of UTF-8
    big[7]["body"] = "x" * 30_000  # alone in its frame
    queued: list = [*big[:3], msgpack.packb({"t": "msg", "seq": 99, "body": "packed"}),
                    *big[3:]]
    frames = connection.frames(queued)
    assert frames is not None and len(frames) > 5
    assert sum(count for _, count in frames) == len(queued)
    got = []
    for frame, count in frames:
        payload = frame.encode() if isinstance(frame, str) else frame
        value = json.loads(frame) if text else msgpack.unpackb(frame)
        objects = value if isinstance(value, list) else [value]
        assert len(payload) <= 10_000 or len(objects) == 1
        assert len(objects) == count  # how many of the objects it holds
        got.extend(objects)
    assert [o["seq"] for o in got] == [0, 1, 2, 99, *range(3, 20)]
    assert got[8]["body"] == "x" * 30_000 and got[0]["body"] == "é" * 1500
