"""Framing and the opening of peer links, without sockets."""

from __future__ import annotations

import pytest

from node.frames import FrameError, pack
from node.peer_proto import (
    FEATURES, HEADER, FrameReader, check_proof, encode_frames, hello, parse_hello, proof, unpacked,
)

KEYS = [b"k" * 32, b"old" * 8]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
def test_frames_split_however_the_bytes_arrive(chunk: int) -> None:
    """Many frames in one read, or one frame over many: all come out, in order."""
    frames = [{"t": "route", "user": f"u{i}", "msg": {"body": "x" * i}} for i in range(20)]
    data = encode_frames(frames)
    reader = FrameReader()
    got = []
    for start in range(0, len(data), chunk):
        got += reader.feed(data[start:start + chunk])
    assert got == frames
    assert reader.feed(b"") == []  # nothing left over


@pytest.mark.parametrize(("data", "code"), [
    (HEADER.pack(10_000_000), "too_large"),
    (HEADER.pack(3) + b"\xc1\xc1\xc1", "bad_frame"),
    (HEADER.pack(2) + pack([1]), "bad_frame"),
    (HEADER.pack(len(pack({"x": 1}))) + pack({"x": 1}), "bad_frame"),
    # a whole map and a second value in one frame's bytes; the first half of a map
    (HEADER.pack(len(pack({"t": "a"})) + 1) + pack({"t": "a"}) + pack(1), "bad_frame"),
    (HEADER.pack(4) + pack({"t": "abcdef"})[:4] + HEADER.pack(2) + pack({}), "bad_frame"),
    (HEADER.pack(5) + b"\xdd\xff\xff\xff\xff", "bad_frame"),  # claims 4 G items
])
def test_bad_frames_raise_frame_error(data: bytes, code: str) -> None:
    with pytest.raises(FrameError) as error:
        FrameReader().feed(data)
    assert error.value.code == code


def test_both_sides_prove_they_hold_a_cluster_key() -> None:
    dialer_nonce, acceptor_nonce = b"d" * 16, b"a" * 16
    opening = hello("b", acceptor_nonce, KEYS, answer_to=dialer_nonce)
    assert parse_hello(opening) == ("b", acceptor_nonce, frozenset(FEATURES))
    # the dialer checks the acceptor's proof over its own nonce ...
    assert check_proof(KEYS, "b", dialer_nonce, acceptor_nonce, opening["proof"])
    # ... with any installed key (rotation), and nothing else passes
    assert check_proof([b"new" * 8, KEYS[0]], "b", dialer_nonce, acceptor_nonce,
                       opening["proof"])
    assert not check_proof([b"x" * 32], "b", dialer_nonce, acceptor_nonce, opening["proof"])
    assert not check_proof(KEYS, "c", dialer_nonce, acceptor_nonce, opening["proof"])
    assert not check_proof(KEYS, "b", b"r" * 16, acceptor_nonce, opening["proof"])  # replay
    assert not check_proof(KEYS, "b", dialer_nonce, acceptor_nonce, "text")
    auth = proof(KEYS[0], "a", acceptor_nonce, dialer_nonce)
    assert check_proof(KEYS, "a", acceptor_nonce, dialer_nonce, auth)
    assert check_proof([], "anyone", b"", b"", None)  # a cluster without keys


@pytest.mark.parametrize("frame", [
    {"t": "auth"}, {"t": "hello", "v": 2, "node": "a", "nonce": b"n" * 16},
    {"t": "hello", "v": 1, "node": "", "nonce": b"n" * 16},
    {"t": "hello", "v": 1, "node": "a", "nonce": b"short"},
])
def test_bad_hellos_are_refused(frame: dict) -> None:
    with pytest.raises(FrameError):
        parse_hello(frame)


def test_features_are_what_a_hello_lists_and_none_from_an_older_node() -> None:
    older = {"t": "hello", "v": 1, "node": "a", "nonce": b"n" * 16}
    assert parse_hello(older)[2] == frozenset()
    assert parse_hello({**older, "features": "packed"})[2] == frozenset()
    assert parse_hello({**older, "features": ["packed", 5, "later"]})[2] == {"packed", "later"}
    assert parse_hello(hello("a", b"n" * 16, KEYS, features=()))[2] == frozenset()


def test_packed_messages_are_unpacked_for_an_older_peer() -> None:
    message = {"t": "msg", "id": "a.1", "body": "hi"}
    frames = [{"t": "route", "user": "u", "msg": pack(message)},
              {"t": "deliver", "user": "u", "msg": b"\xc1"},  # not msgpack: left out
              {"t": "deliver", "user": "v", "msg": message}, {"t": "register", "user": "u"}]
    assert unpacked(frames) == [{"t": "route", "user": "u", "msg": message}, *frames[2:]]
