"""The server side of WebSocket (RFC 6455), without I/O: the opening handshake and frames.

``client_server.py`` owns the sockets; this module only turns bytes into requests and
messages and back. It speaks what browsers and client libraries need of a push server:
text and binary messages, fragmentation, ping/pong and the closing handshake; no
extensions (a client offering permessage-deflate gets none) and no subprotocols.
Everything a client sends that breaks the RFC raises :class:`ProtocolError` with the
close code to answer with; nothing here raises anything else on client bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: close codes (RFC 6455 section 7.4.1)
NORMAL, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, POLICY, TOO_BIG = (
    1000, 1001, 1002, 1007, 1008, 1009)
#: largest opening request we read (browsers send well under 2 KiB)
MAX_REQUEST = 8192
#: frames one message may come in (browsers send one; libraries that fragment do so in
#: pieces of KiBs): without a cap, empty continuation frames cost the parser a list
#: entry and a parse each without ever reaching the size limit
MAX_FRAGMENTS = 1024
#: bytes of a close reason (a control frame's 125, less the code's two)
MAX_CLOSE_REASON = 123
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SHORT, _LONG = struct.Struct(">BBH"), struct.Struct(">BBQ")
_CLOSE_CODE = struct.Struct(">H")


class ProtocolError(Exception):
    """The client broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """A valid opening handshake."""

    path: str
    key: str
    #: bytes that followed the request (frames the client sent without waiting)
    rest: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    """An opening that is not a WebSocket handshake we accept: answer with an HTTP error."""

    status: int
    reason: str

    def response(self) -> bytes:
        phrase = {400: "Bad Request", 405: "Method Not Allowed",
                  426: "Upgrade Required", 431: "Request Header Fields Too Large"}
        body = (self.reason + "\n").encode()
        head = [f"HTTP/1.1 {self.status} {phrase.get(self.status, 'Error')}",
                "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
                "Connection: close"]
        if self.status == 426:
            head += ["Upgrade: websocket", "Sec-WebSocket-Version: 13"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def parse_request(data: bytes) -> Request | Refusal | None:
    """The opening request in ``data`` (everything read so far): None while incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return Refusal(431, "request head too large") if len(data) > MAX_REQUEST else None
    try:
        lines = data[:end].decode("latin-1").split("\r\n")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return Refusal(400, "undecodable request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return Refusal(400, "not an HTTP request line")
    method, path, version = parts
    if method != "GET":
        return Refusal(405, "a WebSocket opening is a GET")
    if version != "HTTP/1.1":
        return Refusal(400, "a WebSocket opening needs HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return Refusal(400, f"malformed header line {line[:40]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    upgrade = {t.strip().lower() for t in headers.get("upgrade", "").split(",")}
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if "websocket" not in upgrade or "upgrade" not in connection:
        return Refusal(426, "this port speaks WebSocket only (docs/protocol.md)")
    if headers.get("sec-websocket-version") != "13":
        return Refusal(426, "WebSocket version 13 only")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (binascii.Error, ValueError):
        return Refusal(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return Request(path, key, bytes(data[end + 4:]))


def accept_response(key: str) -> bytes:
    digest = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {digest}\r\n\r\n").encode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (what a server sends)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return _SHORT.pack(0x80 | opcode, 126, size) + payload
    return _LONG.pack(0x80 | opcode, 127, size) + payload


def message(data: bytes | str) -> bytes:
    """A whole message as one frame: text for str, binary for bytes."""
    if isinstance(data, str):
        return frame(TEXT, data.encode())
    return frame(BINARY, data)


def close_frame(code: int, reason: str = "") -> bytes:
    """Our close frame: ``reason`` as UTF-8, cut to the ``MAX_CLOSE_REASON`` bytes a
    control frame leaves it at a character's start (a client refuses a close frame
    whose reason is not valid UTF-8; RFC 6455 5.5.1); a lone surrogate becomes "?"."""
    data = reason.encode("utf-8", "replace")
    if len(data) > MAX_CLOSE_REASON:
        cut = MAX_CLOSE_REASON
        while data[cut] & 0xC0 == 0x80:  # inside a character: cut before its first byte
            cut -= 1
        data = data[:cut]
    return frame(CLOSE, _CLOSE_CODE.pack(code) + data)


def unmask(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    if not size:
        return b""
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(size, "little")


def close_code(payload: bytes) -> int:
    """The code of a close frame the client sent (1005, "none given", for an empty one)."""
    if not payload:
        return 1005
    if len(payload) < 2:
        raise ProtocolError(PROTOCOL_ERROR, "a close frame's code takes two bytes")
    (code,) = _CLOSE_CODE.unpack_from(payload)
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
        raise ProtocolError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "a close reason is UTF-8") from None
    return code


class FrameParser:
    """Client frames in, whole messages out.

    :meth:`feed` returns ``(opcode, payload)`` pairs in order: ``TEXT`` with a str,
    ``BINARY`` with bytes (fragments already joined), and the control frames ``PING``,
    ``PONG`` and ``CLOSE`` with their bytes. A message longer than ``max_message`` is
    refused from its header, before it is buffered; a fragmented one counts its frames'
    headers too, and may come in at most ``MAX_FRAGMENTS`` frames. What the parser holds
    is so bounded: the frames of one message, and at most one partial frame (a control
    frame is at most 131 bytes; the frames a ``feed`` completes are returned).
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes | str]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[int, bytes | str]] = []
        start = 0
        size_of_buffer = len(buffer)
        while size_of_buffer - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            if first & 0x70:
                raise ProtocolError(PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
            if not second & 0x80:
                raise ProtocolError(PROTOCOL_ERROR, "client frames must be masked")
            fin, opcode, size = first & 0x80, first & 0x0F, second & 0x7F
            head = 2
            if size == 126:
                if size_of_buffer - start < 4:
                    break
                size = int.from_bytes(buffer[start + 2:start + 4], "big")
                head = 4
            elif size == 127:
                if size_of_buffer - start < 10:
                    break
                size = int.from_bytes(buffer[start + 2:start + 10], "big")
                if size >> 63:
                    raise ProtocolError(PROTOCOL_ERROR, "frame length over 2**63")
                head = 10
            if opcode >= CLOSE:
                if opcode > PONG:
                    raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
                if not fin or size > 125:
                    raise ProtocolError(PROTOCOL_ERROR, "a control frame is whole and short")
            elif opcode > BINARY:
                raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            elif self._fragment_size + size > self.max_message:
                raise ProtocolError(TOO_BIG, f"message over {self.max_message} bytes")
            elif self._fragment_opcode is not None and len(self._fragments) >= MAX_FRAGMENTS:
                raise ProtocolError(POLICY, f"message in over {MAX_FRAGMENTS} frames")
            end = start + head + 4 + size
            if size_of_buffer < end:
                break
            mask = bytes(buffer[start + head:start + head + 4])
            payload = unmask(bytes(buffer[start + head + 4:end]), mask)
            start = end
            if opcode >= CLOSE:
                out.append((opcode, payload))
                continue
            if opcode == CONT:
                if self._fragment_opcode is None:
                    raise ProtocolError(PROTOCOL_ERROR, "continuation of no message")
                self._fragments.append(payload)
                self._fragment_size += head + 4 + size  # an empty frame still costs
                if not fin:
                    continue
                opcode, payload = self._fragment_opcode, b"".join(self._fragments)
                self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
            elif self._fragment_opcode is not None:
                raise ProtocolError(PROTOCOL_ERROR, "a new message inside a fragmented one")
            elif not fin:
                self._fragment_opcode, self._fragments, self._fragment_size = (
                    opcode, [payload], head + 4 + size)
                continue
            if opcode == TEXT:
                try:
                    out.append((TEXT, payload.decode()))
                except UnicodeDecodeError:
                    raise ProtocolError(INVALID_DATA, "text messages are UTF-8") from None
            else:
                out.append((BINARY, payload))
        if start:
            del buffer[:start]
        return out
