"""memberlist's TCP stream framing (``memberlist-wire.md`` §6).

A stream carries one request and at most one reply, in layers: an optional label
prefix, an optional encryption frame (``0A`` + u32 length), an optional compress
message, then the message itself. :class:`StreamReader` is a sans-IO reader: feed it
bytes as they arrive and it answers with the message once the last byte is in, without
waiting for the peer to close (memberlist peers never half-close).
"""

from __future__ import annotations

import struct

from .codec import (
    ENCRYPTION_OVERHEAD, MAX_PUSH_PULL_NODES, MAX_STREAM_SIZE, Envelope, NeedData,
    decompress_map, decompress_payload, encode_body, from_map, label_header, unpack_prefix,
)
from .errors import DecodeError
from .wire import (
    CLASS_OF, Compress, Message, MessageType, Ping, PushNodeState, PushPull, PushPullHeader,
    User, UserMsgHeader,
)

StreamMessage = Ping | Message | PushPull


def encode_push_pull(push_pull: PushPull) -> bytes:
    header = PushPullHeader(len(push_pull.states), len(push_pull.user_state), push_pull.join)
    body = [bytes((MessageType.PUSH_PULL,)), encode_body(header)]
    body.extend(encode_body(state) for state in push_pull.states)
    body.append(push_pull.user_state)
    return b"".join(body)


def encode_user_stream(payload: bytes) -> bytes:
    return bytes((MessageType.USER,)) + encode_body(UserMsgHeader(len(payload))) + payload


def encode_stream(message: bytes, envelope: Envelope) -> bytes:
    """Frame one stream message: compressed if that helps, label prefix, then the
    encryption frame if keyed (memberlist's sendLocalState order)."""
    message = envelope.maybe_compress(message)
    label = label_header(envelope.label)
    if envelope.keyring is None:
        return label + message
    header = bytes((MessageType.ENCRYPT,)) + struct.pack(
        ">I", len(message) + ENCRYPTION_OVERHEAD
    )
    return label + header + envelope.keyring.seal(message, header + envelope.label.encode())


class StreamReader:
    """Sans-IO reader of one stream message: ``feed(data)`` until it returns a message.

    Raises :class:`DecodeError` as soon as the bytes cannot be a valid message, and
    when more than :data:`MAX_STREAM_SIZE` bytes arrive without completing one.
    """

    def __init__(self, envelope: Envelope, max_size: int = MAX_STREAM_SIZE) -> None:
        self._envelope = envelope
        self._max_size = max_size
        self._buffer = bytearray()
        self._done = False

    def feed(self, data: bytes) -> StreamMessage | None:
        if self._done:
            raise DecodeError("data after the stream's message")
        self._buffer += data
        if len(self._buffer) > self._max_size:
            raise DecodeError(f"stream larger than {self._max_size} bytes", "oversized")
        try:
            message = self._parse(bytes(self._buffer))
        except NeedData:
            return None
        self._done = True
        return message

    def eof(self) -> None:
        """The peer closed before a whole message arrived."""
        if not self._done:
            raise DecodeError(f"stream closed after {len(self._buffer)} bytes", "truncated")

    def _parse(self, data: bytes) -> StreamMessage:
        label = self._envelope.label.encode()
        if not data:
            raise NeedData
        if data[0] == MessageType.HAS_LABEL:
            if len(data) < 2 or len(data) < 2 + data[1]:
                raise NeedData
            if data[2 : 2 + data[1]] != label:
                raise DecodeError("stream label does not match ours", "label")
            data = data[2 + data[1] :]
        elif label:
            raise DecodeError("stream has no label but ours is set", "label")
        if not data:
            raise NeedData
        keyring = self._envelope.keyring
        if data[0] == MessageType.ENCRYPT:
            if keyring is None:
                raise DecodeError("encrypted stream but no keyring", "key")
            if len(data) < 5:
                raise NeedData
            (length,) = struct.unpack_from(">I", data, 1)
            if length > self._max_size:
                raise DecodeError(f"encrypted frame of {length} bytes", "oversized")
            if len(data) < 5 + length:
                raise NeedData
            data = keyring.open(data[5 : 5 + length], data[:5] + label)
            return _parse_complete(data)
        if keyring is not None and self._envelope.verify_incoming:
            raise DecodeError("stream is not encrypted but encryption is on", "key")
        if data[0] == MessageType.COMPRESS:
            (raw,), _used = unpack_prefix(data[1:], 1)
            return _parse_complete(decompress_map(raw))
        return _parse_message(data, complete=False)


def _parse_complete(data: bytes) -> StreamMessage:
    """A stream body that arrived whole (decrypted or decompressed)."""
    if data and data[0] == MessageType.COMPRESS:
        data = decompress_payload(data[1:])
    try:
        return _parse_message(data, complete=True)
    except NeedData:
        raise DecodeError("stream message truncated", "truncated") from None


def _parse_message(data: bytes, complete: bool) -> StreamMessage:
    if not data:
        raise NeedData
    msg_type = data[0]
    body = data[1:]
    if msg_type == MessageType.PUSH_PULL:
        (raw_header,), used = unpack_prefix(body, 1)
        header = from_map(PushPullHeader, raw_header)
        if not 0 <= header.nodes <= MAX_PUSH_PULL_NODES:
            raise DecodeError(f"push-pull with {header.nodes} nodes", "oversized")
        if not 0 <= header.user_state_len <= MAX_STREAM_SIZE:
            raise DecodeError(f"push-pull user state of {header.user_state_len} bytes", "oversized")
        if header.nodes * 8 > MAX_STREAM_SIZE:
            raise DecodeError("push-pull node count exceeds the stream limit", "oversized")
        raw_states, used_states = unpack_prefix(body[used:], header.nodes)
        states = tuple(from_map(PushNodeState, raw) for raw in raw_states)
        tail = body[used + used_states :]
        if len(tail) < header.user_state_len:
            raise NeedData
        return PushPull(header.join, states, bytes(tail[: header.user_state_len]))
    if msg_type == MessageType.USER:
        (raw_header,), used = unpack_prefix(body, 1)
        header = from_map(UserMsgHeader, raw_header)
        if not 0 <= header.user_msg_len <= MAX_STREAM_SIZE:
            raise DecodeError(f"user message of {header.user_msg_len} bytes", "oversized")
        if len(body) - used < header.user_msg_len:
            raise NeedData
        return User(bytes(body[used : used + header.user_msg_len]))
    cls = CLASS_OF.get(msg_type)
    if cls is None or cls is Compress or cls is User:
        raise DecodeError(f"stream message type {msg_type} not supported", "unknown_type")
    (raw,), _used = unpack_prefix(body, 1)
    return from_map(cls, raw)
