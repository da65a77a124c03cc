"""memberlist's TCP stream framing (``docs/gossip-wire.md`` §6).

A stream carries one request and at most one reply, in layers: an optional label
prefix, an optional encryption frame (``0A`` + u32 length), an optional compress
message, then the message itself. :class:`StreamReader` is a sans-IO reader: feed it
bytes as they arrive and it answers with the message once the last byte is in, without
waiting for the peer to close (memberlist peers never half-close).

The reader is incremental: each byte is looked at once (a msgpack object cut by a read
is resumed, not parsed again from the stream's start), so its CPU is linear in the
bytes received however slowly they come. What it may hold is bounded before it is
read: :class:`StreamLimits` (bytes and node states, sized from the cluster), then
what the stream's own headers declare (an encrypted frame's length; a push-pull's node
count and user state length), and one decompression, at most the stream's byte limit.

A decompression's CPU is bounded by its output (:mod:`gossip.lzw`), but a stream's
limit is megabytes: seconds of pure-Python decoding. A reader made with
``inflate_in_steps=True`` therefore stops when its compress message is whole
(:attr:`StreamReader.inflating`) and lets the shell run :meth:`StreamReader.inflate`
a bounded number of codes at a time, yielding to the event loop in between.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .codec import (
    ENCRYPTION_OVERHEAD, MAX_PUSH_PULL_NODES, MAX_STREAM_SIZE, Envelope, NeedData,
    StreamUnpacker, encode_body, from_map, inflater_of, label_header,
)
from .errors import DecodeError
from .wire import (
    CLASS_OF, Compress, Message, MessageType, Ping, PushNodeState, PushPull, PushPullHeader,
    User, UserMsgHeader,
)
from .lzw import Inflater

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
    message = envelope.maybe_compress(message, MAX_STREAM_SIZE)
    label = label_header(envelope.label)
    if envelope.keyring is None:
        return label + message
    header = bytes((MessageType.ENCRYPT,)) + struct.pack(
        ">I", len(message) + ENCRYPTION_OVERHEAD
    )
    return label + header + envelope.keyring.seal(message, header + envelope.label.encode())


#: Largest encoded push-pull node state we read: memberlist's 512-byte meta, a long
#: node name (hostnames stop at 253), a 16-byte address and Go's field names fit.
MAX_NODE_STATE = 1024
#: Node states any push-pull may carry, whatever the cluster: a small cluster can still
#: merge with a larger one, whose push-pull lists all its members.
MIN_STREAM_NODES = 4096
#: Bytes a stream may carry per node it may list: its state, and serf's share of the
#: user state (a status time per member, left members).
STREAM_BYTES_PER_NODE = MAX_NODE_STATE + 512
#: Bytes a stream may carry beyond that: serf's user state (its 512-slot event buffer).
STREAM_BYTES_BASE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What one stream may carry: bytes received (and inflated) and node states."""

    max_bytes: int = MAX_STREAM_SIZE
    max_nodes: int = MAX_PUSH_PULL_NODES

    @classmethod
    def for_cluster(cls, members: int) -> StreamLimits:
        """Limits for a stream to a node that knows ``members``: twice the cluster, at
        least :data:`MIN_STREAM_NODES` nodes, never above memberlist's own limits."""
        nodes = min(MAX_PUSH_PULL_NODES, max(MIN_STREAM_NODES, 2 * members))
        size = min(MAX_STREAM_SIZE, STREAM_BYTES_BASE + nodes * STREAM_BYTES_PER_NODE)
        return cls(size, nodes)


class StreamReader:
    """Sans-IO reader of one stream message: ``feed(data)`` until it returns a message.

    Raises :class:`DecodeError` as soon as the bytes cannot be a valid message, and
    when more bytes arrive (or a header declares more) than the limits allow.

    ``inflate_in_steps``: a compress message is not inflated inside :meth:`feed`; once it
    is whole, ``feed`` returns None with :attr:`inflating` set, and :meth:`inflate` is
    called until it returns the message (no more bytes are fed meanwhile).
    """

    def __init__(
        self, envelope: Envelope, max_size: int = MAX_STREAM_SIZE,
        limits: StreamLimits | None = None, inflate_in_steps: bool = False,
    ) -> None:
        self._envelope = envelope
        self._limits = limits or StreamLimits(max_size)
        self._in_steps = inflate_in_steps
        self._max_size = self._limits.max_bytes
        self._label = envelope.label.encode()
        self._received = 0
        #: the label and encryption headers until they are whole
        self._head: bytearray | None = bytearray()
        self._frame: bytearray | None = None
        self._frame_length = 0
        self._aad = b""
        self._body: _Body | None = None
        self._done = False

    @property
    def received(self) -> int:
        return self._received

    @property
    def inflated(self) -> int:
        """Bytes decompression produced (the shell charges them as received bytes)."""
        return self._body.inflated if self._body is not None else 0

    @property
    def inflating(self) -> bool:
        """The compress message is whole and waits for :meth:`inflate`."""
        return self._body is not None and self._body.inflater is not None

    @property
    def codes(self) -> int:
        """LZW codes decoded so far (0 without a compress message)."""
        body = self._body
        return body.codes if body is not None else 0

    def inflate(self, budget: int) -> StreamMessage | None:
        """One step: up to ``budget`` more LZW codes, or once they are all decoded up to
        :data:`PARSE_STEP` bytes of the inflated message; the message once it is whole."""
        assert self._body is not None and self._body.inflater is not None
        message = self._body.inflate(budget)
        if message is not None:
            self._done = True
        return message

    def feed(self, data: bytes) -> StreamMessage | None:
        if self._done or self.inflating:
            raise DecodeError("data after the stream's message")
        self._received += len(data)
        if self._received > self._max_size:
            raise DecodeError(f"stream larger than {self._max_size} bytes", "oversized")
        if self._head is not None:
            self._head += data
            rest = self._start(self._head)
            if rest is None:
                return None
            self._head = None
            data = rest
        if self._frame is not None:
            self._frame += data[: self._frame_length - len(self._frame)]
            if len(self._frame) < self._frame_length:
                return None
            keyring = self._envelope.keyring
            assert keyring is not None
            plain = keyring.open(bytes(self._frame), self._aad)
            self._frame = None
            body = self._new_body(len(plain), complete=True)
            message = body.feed(plain)
        else:
            assert self._body is not None
            message = self._body.feed(data)
        if message is not None:
            self._done = True
        return message

    def eof(self) -> None:
        """The peer closed before a whole message arrived."""
        if not self._done:
            raise DecodeError(f"stream closed after {self._received} bytes", "truncated")

    def _start(self, head: bytearray) -> bytes | None:
        """Read the label and encryption headers; the bytes after them, or None."""
        if not head:
            return None
        at = 0
        if head[0] == MessageType.HAS_LABEL:
            if len(head) < 2 or len(head) < 2 + head[1]:
                return None
            if head[1] == 0 or head[2 : 2 + head[1]] != self._label:
                raise DecodeError("stream label does not match ours", "label")
            at = 2 + head[1]
        elif self._label:
            raise DecodeError("stream has no label but ours is set", "label")
        if len(head) <= at:
            return None
        keyring = self._envelope.keyring
        if head[at] == MessageType.ENCRYPT:
            if keyring is None:
                raise DecodeError("encrypted stream but no keyring", "key")
            if len(head) < at + 5:
                return None
            (length,) = struct.unpack_from(">I", head, at + 1)
            if length > self._max_size - at - 5:
                raise DecodeError(f"encrypted frame of {length} bytes", "oversized")
            if length < ENCRYPTION_OVERHEAD:
                raise DecodeError(f"encrypted frame of {length} bytes", "key")
            self._aad = bytes(head[at : at + 5]) + self._label
            self._frame = bytearray()
            self._frame_length = length
            return bytes(head[at + 5 :])
        if keyring is not None and self._envelope.verify_incoming:
            raise DecodeError("stream is not encrypted but encryption is on", "key")
        self._new_body(self._max_size, complete=False)
        return bytes(head[at:])

    def _new_body(self, size: int, complete: bool) -> _Body:
        self._body = _Body(self._limits, size, complete, in_steps=self._in_steps)
        return self._body


_TYPE, _OBJECT, _HEADER, _STATES, _RAW = range(5)
_FIRST_BUFFER = 4096
#: bytes of an inflated message parsed per step (what one socket read hands a plain stream)
PARSE_STEP = 65536


class _Body:
    """The message itself (after label and encryption), parsed as its bytes arrive.

    One persistent msgpack ``Unpacker`` holds what is not yet parsed; each object is
    taken once, when its last byte is in. ``complete``: all bytes are in the first feed
    (a decrypted frame or a decompressed body), so running short is an error."""

    def __init__(
        self, limits: StreamLimits, size: int, complete: bool, may_inflate: bool = True,
        in_steps: bool = False,
    ) -> None:
        self._limits = limits
        self._complete = complete
        self._may_inflate = may_inflate
        self._in_steps = in_steps
        #: bytes its compress message inflated to (one at most, within the stream's limit)
        self.inflated = 0
        #: its compress message's decompression, while it runs (or its output is parsed)
        self.inflater: Inflater | None = None
        self._plain: memoryview | None = None
        self._inner: _Body | None = None
        self._parsed = 0
        #: LZW codes decoded
        self.codes = 0
        # the buffer starts small and doubles as bytes come (msgpack would take up to
        # 1 MiB at once); it never holds more than ``size``
        self._unpacker = StreamUnpacker(size, _FIRST_BUFFER)
        self._stage = _TYPE
        self._type = 0
        self._fed = 0
        #: the body may not be longer than this (its headers narrow it)
        self._allowed = size
        self._header_end = 0
        self._nodes = 0
        self._join = False
        self._states: list[PushNodeState] = []
        self._raw = bytearray()
        self._raw_length = 0

    def feed(self, data: bytes) -> StreamMessage | None:
        self._fed += len(data)
        if self._fed > self._allowed:
            raise DecodeError(
                f"stream body longer than the {self._allowed} bytes its header allows",
                "oversized",
            )
        if data:
            self._unpacker.feed(data)
        message = self._advance()
        if message is None and self._complete and self.inflater is None:
            raise DecodeError("stream message truncated", "truncated")
        return message

    def _next(self) -> object:
        """The next whole msgpack object; raises ``NeedData`` if not in yet."""
        return self._unpacker.unpack()

    def _advance(self) -> StreamMessage | None:
        try:
            while True:
                if self._stage == _TYPE:
                    first = self._unpacker.read_bytes(1)
                    if not first:
                        return None
                    self._begin(first[0])
                elif self._stage == _OBJECT:
                    raw = self._next()
                    if self._type == MessageType.COMPRESS:
                        return self._decompressed(raw)
                    cls = CLASS_OF[self._type]
                    return from_map(cls, raw)  # type: ignore[no-any-return]
                elif self._stage == _HEADER:
                    self._header(self._next())
                elif self._stage == _STATES:
                    if len(self._states) == self._nodes:
                        self._stage = _RAW
                        continue
                    before = self._unpacker.tell()
                    raw = self._next()
                    if self._unpacker.tell() - before > MAX_NODE_STATE:
                        raise DecodeError("push-pull node state too large", "oversized")
                    self._states.append(from_map(PushNodeState, raw))
                else:
                    want = self._raw_length - len(self._raw)
                    if want:
                        self._raw += self._unpacker.read_bytes(want)
                    if len(self._raw) < self._raw_length:
                        return None
                    return self._finish()
        except NeedData:
            return None

    def _begin(self, msg_type: int) -> None:
        self._type = msg_type
        if msg_type == MessageType.COMPRESS:
            if not self._may_inflate:
                raise DecodeError("compressed stream inside a compressed stream")
            self._stage = _OBJECT
        elif msg_type in (MessageType.PUSH_PULL, MessageType.USER):
            self._stage = _HEADER
        else:
            cls = CLASS_OF.get(msg_type)
            if cls is None or cls is Compress or cls is User:
                raise DecodeError(f"stream message type {msg_type} not supported", "unknown_type")
            self._stage = _OBJECT

    def _header(self, raw: object) -> None:
        limits = self._limits
        end = self._unpacker.tell()
        if self._type == MessageType.USER:
            user = from_map(UserMsgHeader, raw)
            if not 0 <= user.user_msg_len <= self._allowed - end:
                raise DecodeError(f"user message of {user.user_msg_len} bytes", "oversized")
            self._raw_length = user.user_msg_len
            self._allowed = end + user.user_msg_len
            self._stage = _RAW
            return
        header = from_map(PushPullHeader, raw)
        if not 0 <= header.nodes <= limits.max_nodes:
            raise DecodeError(f"push-pull with {header.nodes} nodes", "oversized")
        if not 0 <= header.user_state_len <= self._allowed - end:
            raise DecodeError(f"push-pull user state of {header.user_state_len} bytes", "oversized")
        declared = end + header.nodes * MAX_NODE_STATE + header.user_state_len
        if header.nodes * 8 > self._allowed - end:  # a node state takes 8 bytes at least
            raise DecodeError("push-pull node count exceeds the stream limit", "oversized")
        self._allowed = min(self._allowed, declared)
        self._nodes = header.nodes
        self._join = header.join
        self._raw_length = header.user_state_len
        self._stage = _STATES

    def _decompressed(self, raw: object) -> StreamMessage | None:
        self.inflater = inflater_of(raw, self._limits.max_bytes)
        if self._in_steps:
            return None
        message = self.inflate(None)
        assert message is not None
        return message

    def inflate(self, budget: int | None) -> StreamMessage | None:
        """Decode up to ``budget`` LZW codes, or once all are decoded parse up to
        :data:`PARSE_STEP` bytes of the inflated message (all at once if None)."""
        inflater = self.inflater
        assert inflater is not None
        if self._plain is None:
            try:
                plain = inflater.run(budget)
            finally:
                self.codes = inflater.codes
            if plain is None:
                return None
            self.inflated = len(plain)
            self._plain = memoryview(plain)
            self._inner = _Body(self._limits, len(plain), complete=False, may_inflate=False)
            if budget is not None:
                return None  # the parse is the next step
        assert self._inner is not None
        end = len(self._plain) if budget is None else self._parsed + PARSE_STEP
        message = self._inner.feed(bytes(self._plain[self._parsed : end]))
        self._parsed = min(end, len(self._plain))
        if message is None:
            if self._parsed < len(self._plain):
                return None
            raise DecodeError("stream message truncated", "truncated")
        self.inflater = None
        self._plain = self._inner = None
        return message

    def _finish(self) -> StreamMessage:
        if self._type == MessageType.USER:
            return User(bytes(self._raw))
        return PushPull(self._join, tuple(self._states), bytes(self._raw))
