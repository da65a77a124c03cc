"""The WebSocket codec (node/websocket.py): openings, frames, and every way to break them."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import websocket as ws

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def opening(*, method: str = "GET", version: str = "HTTP/1.1", headers: dict | None = None,
            drop: tuple[str, ...] = ()) -> bytes:
    fields = {"Host": "127.0.0.1:1", "Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
              "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13", **(headers or {})}
    lines = [f"{method} /push HTTP/1.1".replace("HTTP/1.1", version)]
    lines += [f"{k}: {v}" for k, v in fields.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None,
                 rsv: int = 0, masked: bool = True) -> bytes:
    mask = os.urandom(4) if mask is None else mask
    size = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = struct.pack(">BBH", first, bit | 126, size)
    else:
        head = struct.pack(">BBQ", first, bit | 127, size)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_valid_opening_is_accepted_with_the_rfc_digest_and_keeps_what_follows() -> None:
    hello = client_frame(ws.TEXT, b'{"t":"hello"}')
    request = ws.parse_request(opening() + hello)
    assert isinstance(request, ws.Request)
    assert request.path == "/push" and request.key == KEY and request.rest == hello
    # the example of RFC 6455 section 1.3
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in ws.accept_response(KEY)
    assert ws.accept_response(KEY).startswith(b"HTTP/1.1 101 ")
    assert ws.parse_request(opening()[:-2]) is None  # not complete yet


@pytest.mark.parametrize(("raw", "status", "words"), [
    (opening(method="POST"), 405, "GET"),
    (opening(version="HTTP/1.0"), 400, "HTTP/1.1"),
    (opening(drop=("Upgrade",)), 426, "WebSocket only"),
    (opening(headers={"Connection": "keep-alive"}), 426, "WebSocket only"),
    (opening(headers={"Sec-WebSocket-Version": "8"}), 426, "version 13"),
    (opening(drop=("Sec-WebSocket-Key",)), 400, "Sec-WebSocket-Key"),
    (opening(headers={"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}), 400, "16 bytes"),
    (b"\x16\x03\x01 not http\r\n\r\n", 400, "request line"),
    (opening(headers={"X-Big": "y" * 9000})[:8500], 431, "too large"),
    (b"GET / HTTP/1.1\r\nbroken line\r\n\r\n", 400, "malformed header"),
])
def test_bad_openings_are_refused_with_a_status_and_a_reason(raw: bytes, status: int,
                                                              words: str) -> None:
    refusal = ws.parse_request(raw)
    assert isinstance(refusal, ws.Refusal)
    assert refusal.status == status and words in refusal.reason
    response = refusal.response()
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert response.endswith(refusal.reason.encode() + b"\n")


def test_server_frames_use_the_shortest_length_form() -> None:
    for size, head in ((0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)):
        data = ws.frame(ws.BINARY, b"x" * size)
        assert len(data) == head + size and data[0] == 0x82
    assert ws.message("é")[:1] == b"\x81" and ws.message("é")[2:] == "é".encode()
    assert ws.close_frame(1000, "bye") == b"\x88\x05\x03\xe8bye"


@given(st.text(max_size=200), st.sampled_from([1000, 1008, 4008]))
def test_a_close_reason_is_cut_at_a_character_boundary(reason: str, code: int) -> None:
    """Found in review: the reason was cut at 123 bytes, perhaps inside a character; a
    client must fail a close frame whose reason is not UTF-8 (RFC 6455 8.1), and a lone
    surrogate (JSON allows one) did not encode at all. The longest valid UTF-8 prefix
    that fits is kept (a lone surrogate becomes "?")."""
    data = ws.close_frame(code, reason)
    masked = data[:1] + bytes((data[1] | 0x80,)) + bytes(4) + data[2:]  # as a client's
    assert ws.FrameParser(125).feed(masked) == [(ws.CLOSE, data[2:])]
    assert ws.close_code(data[2:]) == code  # it checks the reason is UTF-8
    kept = data[4:].decode()
    whole = reason.encode("utf-8", "replace").decode()
    assert whole.startswith(kept) and len(data[4:]) <= ws.MAX_CLOSE_REASON
    if kept != whole:  # the next character would not have fitted
        assert len((kept + whole[len(kept)]).encode()) > ws.MAX_CLOSE_REASON


def test_a_long_close_reason_keeps_whole_characters() -> None:
    for reason, kept in (("é" * 100, 122), ("x" + "é" * 100, 123), ("€" * 60, 123),
                         ("😀" * 40, 120), ("a" * 200, 123), ("\ud800ok", 3)):
        payload = ws.close_frame(1000, reason)[4:]
        assert len(payload) == kept and payload.decode()


@given(st.lists(st.tuples(st.sampled_from([ws.TEXT, ws.BINARY]), st.binary(max_size=70000)),
                max_size=4),
       st.integers(1, 5000), st.binary(min_size=4, max_size=4))
def test_messages_come_out_whole_however_the_bytes_are_split(
        messages: list[tuple[int, bytes]], step: int, mask: bytes) -> None:
    expected = []
    wire = b""
    for opcode, raw in messages:
        payload = raw.decode("latin-1").encode() if opcode == ws.TEXT else raw  # valid UTF-8
        expected.append((opcode, payload.decode() if opcode == ws.TEXT else payload))
        wire += client_frame(opcode, payload, mask=mask)
    parser = ws.FrameParser(1 << 20)
    got = []
    for at in range(0, len(wire), step):
        got += parser.feed(wire[at:at + step])
    assert got == expected


def test_fragments_are_joined_and_control_frames_may_come_between_them() -> None:
    parser = ws.FrameParser(1000)
    wire = (client_frame(ws.TEXT, "hé".encode()[:2], fin=False)
            + client_frame(ws.PING, b"are you there")
            + client_frame(ws.CONT, "hé".encode()[2:] + b" there", fin=False)
            + client_frame(ws.CONT, b"!")
            + client_frame(ws.CLOSE, struct.pack(">H", 1000) + b"done"))
    assert parser.feed(wire) == [(ws.PING, b"are you there"), (ws.TEXT, "hé there!"),
                                 (ws.CLOSE, b"\x03\xe8done")]


@pytest.mark.parametrize(("wire", "code", "words"), [
    (client_frame(ws.TEXT, b"x", masked=False), ws.PROTOCOL_ERROR, "masked"),
    (client_frame(ws.TEXT, b"x", rsv=0x40), ws.PROTOCOL_ERROR, "reserved"),
    (client_frame(0x3, b"x"), ws.PROTOCOL_ERROR, "opcode"),
    (client_frame(0xB, b"x"), ws.PROTOCOL_ERROR, "opcode"),
    (client_frame(ws.PING, b"x" * 126), ws.PROTOCOL_ERROR, "control"),
    (client_frame(ws.PING, b"x", fin=False), ws.PROTOCOL_ERROR, "control"),
    (client_frame(ws.CONT, b"x"), ws.PROTOCOL_ERROR, "continuation"),
    (client_frame(ws.TEXT, b"a", fin=False) + client_frame(ws.TEXT, b"b"),
     ws.PROTOCOL_ERROR, "inside"),
    (client_frame(ws.TEXT, b"\xff\xfe"), ws.INVALID_DATA, "UTF-8"),
    (client_frame(ws.TEXT, b"a" * 600, fin=False) + client_frame(ws.CONT, b"b" * 600),
     ws.TOO_BIG, "over 1000"),
])
def test_broken_frames_raise_the_close_code_to_answer_with(wire: bytes, code: int,
                                                           words: str) -> None:
    with pytest.raises(ws.ProtocolError) as caught:
        ws.FrameParser(1000).feed(wire)
    assert caught.value.code == code and words in caught.value.reason


def test_an_oversized_message_is_refused_from_its_header_before_it_is_buffered() -> None:
    head = struct.pack(">BBQ", 0x82, 0x80 | 127, 50 * 2**20)
    with pytest.raises(ws.ProtocolError) as caught:
        ws.FrameParser(2**20).feed(head)  # no payload sent at all
    assert caught.value.code == ws.TOO_BIG


def test_empty_continuation_frames_are_capped_per_message_and_their_headers_count() -> None:
    """Found by an attack: an endless stream of empty continuation frames never reached
    the size limit (only payload counted): +61 MB for 8 M frames in 10 s, cut after 60 s.
    Each frame's header now counts against the message, and a message is refused past
    ``MAX_FRAGMENTS`` frames, from the header of the one too many."""
    parser = ws.FrameParser(2**20)
    empty = client_frame(ws.CONT, b"", fin=False)
    assert parser.feed(client_frame(ws.TEXT, b"x", fin=False)) == []
    assert parser.feed(empty * (ws.MAX_FRAGMENTS - 1)) == []
    with pytest.raises(ws.ProtocolError) as caught:
        parser.feed(empty[:2])  # the header alone of the frame one too many
    assert caught.value.code == ws.POLICY and "frames" in caught.value.reason
    small = ws.FrameParser(1000)  # 6 bytes a frame: 1000 bytes before the cap
    small.feed(client_frame(ws.BINARY, b"", fin=False))
    with pytest.raises(ws.ProtocolError) as caught:
        small.feed(empty * 200)
    assert caught.value.code == ws.TOO_BIG


def test_a_message_at_the_cap_of_frames_is_joined() -> None:
    parser = ws.FrameParser(2**20)
    wire = (client_frame(ws.BINARY, b"a", fin=False)
            + client_frame(ws.CONT, b"b", fin=False) * (ws.MAX_FRAGMENTS - 2)
            + client_frame(ws.CONT, b"c"))
    assert parser.feed(wire) == [(ws.BINARY, b"a" + b"b" * (ws.MAX_FRAGMENTS - 2) + b"c")]


@pytest.mark.parametrize(("payload", "code"), [
    (b"", 1005), (struct.pack(">H", 1000), 1000), (struct.pack(">H", 4000) + b"app", 4000),
])
def test_close_codes_a_client_may_send(payload: bytes, code: int) -> None:
    assert ws.close_code(payload) == code


@pytest.mark.parametrize("payload", [
    b"\x03", struct.pack(">H", 999), struct.pack(">H", 1005), struct.pack(">H", 2999),
    struct.pack(">H", 1000) + b"\xff",
])
def test_close_codes_a_client_may_not_send(payload: bytes) -> None:
    with pytest.raises(ws.ProtocolError):
        ws.close_code(payload)


def test_unmask_matches_the_rfc_definition() -> None:
    mask, data = b"\x37\xfa\x21\x3d", os.urandom(1001)
    assert ws.unmask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert hashlib.sha1(ws.unmask(ws.unmask(data, mask), mask)).digest() == \
        hashlib.sha1(data).digest()
