"""The client protocol of one WebSocket connection, as a sans-IO machine.

``docs/protocol.md`` is the contract. The shell hands every WebSocket message to
:meth:`ClientConnection.receive` (bytes for binary messages, str for text ones) and gets
back parsed requests and :class:`Violation` s; it encodes what goes to the client with
:meth:`ClientConnection.frames`, which packs objects into as few frames as it may, none
over ``Limits.out_frame`` bytes unless one object alone is larger. The
machine checks the token, the frame size, the rate (a token bucket on the ``now`` it is
given) and the subscription cap; it holds no sockets and never raises on client bytes.
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .frames import MAX_SEQ, FrameError, dump_json, load_json, pack, unpack, unpack_message
from .names import check_device, check_name, check_topic, check_user
from .token import TokenError, verify

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: the longest session id a hello may name (the node's own are ~40 bytes)
MAX_SESSION_SIZE = 128
#: WebSocket close codes the shell uses after a violation
CLOSE_NORMAL, CLOSE_UNSUPPORTED, CLOSE_POLICY, CLOSE_TOO_BIG = 1000, 1003, 1008, 1009
#: bytes a frame from the node holds at most, unless it holds one object alone: a
#: quarter of the 1 MiB message that WebSocket libraries take by default (trio-websocket,
#: websockets), which also takes the largest single object (docs/protocol.md)
OUT_FRAME = 256 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame: int = 64 * 1024
    #: the longest a QoS 1 message may be kept for its user (a send's ``ttl``)
    max_ttl: float = 30 * 24 * 3600.0
    #: objects per second a connection may send (each object of a batch counts; service
    #: tokens, the application's own servers, are not limited) ...
    rate: float = 50.0
    #: ... with bursts of this many
    burst: int = 100
    max_batch: int = 256
    #: bytes a frame to the client holds at most (one object larger travels alone)
    out_frame: int = OUT_FRAME
    max_subscriptions: int = 100
    max_topic: int = 256
    max_ref: int = 64
    hello_timeout: float = 10.0
    heartbeat: float = 30.0
    #: take tokens without ``exp`` (``--allow-tokens-without-exp``)
    tokens_without_exp: bool = False


# ---- what the client asks for --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    user: str
    device: str
    session: str | None
    last_seq: int | None
    service: bool = False


class Ack(NamedTuple):  # a tuple, like SendTo: made for every ack a client sends
    seq: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[str, ...]  # only the ones that are new for this connection


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Upstream:
    body: str
    ref: str | None


class SendTo(NamedTuple):  # made for every send: a tuple is cheaper than a frozen dataclass
    to: str
    body: str
    qos: int
    ttl: float | None
    ref: str | None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None


@dataclass(frozen=True, slots=True)
class Violation:
    """Answer with an error frame; close the connection with ``close`` unless None."""

    code: str
    reason: str
    ref: str | None = None
    close: int | None = None

    def frame(self) -> dict[str, Any]:
        error: dict[str, Any] = {"t": "error", "code": self.code, "reason": self.reason}
        if self.ref is not None:
            error["ref"] = self.ref
        return error


Request = Hello | Ack | Subscribe | Unsubscribe | Upstream | SendTo | Ping
_CLOSE_FOR = {"bad_frame": CLOSE_UNSUPPORTED, "too_large": CLOSE_TOO_BIG}


class State(enum.Enum):
    #: waiting for the hello (nothing else is accepted)
    GREETING = "greeting"
    #: authenticated
    OPEN = "open"
    #: a violation closed it; everything more is ignored
    CLOSED = "closed"


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Bucket:
    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float, n: int) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


@dataclass(slots=True)
class ClientConnection:
    """One client's connection. ``text`` is the encoding its hello chose."""

    secret: bytes
    now: float
    limits: Limits = field(default_factory=Limits)
    state: State = State.GREETING
    text: bool = False
    user: str | None = None
    service: bool = False
    subscriptions: set[str] = field(default_factory=set)
    _bucket: _Bucket = field(init=False)

    def __post_init__(self) -> None:
        self._bucket = _Bucket(self.limits.rate, self.limits.burst, self.limits.burst, self.now)

    @property
    def hello_deadline(self) -> float:
        return self.now + self.limits.hello_timeout

    # ---- receiving ----------------------------------------------------------------------

    def receive(self, now: float, data: bytes | str) -> list[Request | Violation]:
        """Parse one WebSocket message into requests, in order; a closing violation ends it."""
        if self.state is State.CLOSED:
            return []
        try:
            if isinstance(data, str):
                value = load_json(data, self.limits.max_frame)
                text = True
            else:
                value = unpack(data, self.limits.max_frame)
                text = False
        except FrameError as exc:
            return [self._close(exc.code, str(exc))]
        if self.state is State.GREETING:
            self.text = text  # answer in the encoding the client opened with, even a refusal
        objects = value if isinstance(value, list) else [value]
        if not objects or len(objects) > self.limits.max_batch:
            return [self._close("bad_frame", f"a batch holds 1 to {self.limits.max_batch} objects")]
        if not all(isinstance(o, dict) and isinstance(o.get("t"), str) for o in objects):
            return [self._close("bad_frame", "every object needs a string field 't'")]
        if not self.service and not self._bucket.take(now, len(objects)):
            return [self._close("rate_limited", f"more than {self.limits.rate:g} objects/s",
                                CLOSE_POLICY)]
        out: list[Request | Violation] = []
        for obj in objects:
            if self.state is State.GREETING:
                out.append(self._hello(now, obj, text))
            else:
                out.append(self._request(obj))
            if self.state is State.CLOSED:
                break
        return out

    def control(self, now: float) -> bool:
        """A WebSocket ping or pong from the client: it counts against the rate like an
        object, a service token's too (no client needs more than a few a second, and
        each costs the node a parse and an answer). False when over it: the shell closes
        the connection (1008)."""
        return self._bucket.take(now, 1)

    def _hello(self, now: float, obj: dict[str, Any], text: bool) -> Request | Violation:
        if obj["t"] != "hello":
            return self._close("unauthorized", "the first frame must be a hello", CLOSE_POLICY)
        try:
            version = obj.get("v", PROTOCOL_VERSION)
            if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
                raise _Bad(f"protocol version {str(version)[:32]!r} is not supported "
                           "(this node speaks 1)")
            claims = verify(self.secret, obj.get("token"), now,
                            without_exp=self.limits.tokens_without_exp)
            device = _device(obj.get("device"))
            session = _session(obj.get("session"))
            last_seq = _optional_int(obj, "last_seq")
        except TokenError as exc:
            return self._close("unauthorized", str(exc), CLOSE_POLICY)
        except _Bad as exc:
            return self._close("unauthorized", exc.reason, CLOSE_POLICY)
        self.state, self.text, self.user = State.OPEN, text, claims.user
        self.service = claims.service
        return Hello(claims.user, device, session, last_seq, claims.service)

    def _request(self, obj: dict[str, Any]) -> Request | Violation:
        kind = obj["t"]
        ref = obj.get("ref") if isinstance(obj.get("ref"), str) else None
        try:
            ref = _optional_str(obj, "ref", self.limits.max_ref)
            if kind == "send":  # the busiest kinds first
                to, qos, ttl = obj.get("to"), obj.get("qos", 0), obj.get("ttl")
                problem = send_problem(to, qos, ttl, self.limits.max_ttl)
                if problem:
                    raise _Bad(f"send: {problem}")
                return SendTo(to, _str(obj, "body", self.limits.max_frame), qos, ttl, ref)
            if kind == "ack":
                seq = _optional_int(obj, "seq")
                if seq is None:
                    raise _Bad("ack: seq is required")
                return Ack(seq)
            if kind == "sub":
                return self._subscribe(_topics(obj, self.limits.max_topic), ref)
            if kind == "unsub":
                topics = tuple(t for t in _topics(obj, self.limits.max_topic)
                               if t in self.subscriptions)
                self.subscriptions.difference_update(topics)
                return Unsubscribe(topics)
            if kind == "up":
                return Upstream(_str(obj, "body", self.limits.max_frame), ref)
            if kind == "ping":
                return Ping(ref)
            if kind == "hello":
                raise _Bad("already said hello")
            raise _Bad(f"unknown frame type {kind[:32]!r}")
        except _Bad as exc:
            return Violation("bad_request", exc.reason, ref)

    def _subscribe(self, topics: tuple[str, ...], ref: str | None) -> Request | Violation:
        reserved = [t for t in topics if t.startswith("$")]
        if reserved and not self.service:
            return Violation("forbidden", f"{reserved[0]}: topics starting with $ are for "
                             "application servers (a token with \"svc\": true)", ref)
        new = tuple(dict.fromkeys(t for t in topics if t not in self.subscriptions))
        if len(self.subscriptions) + len(new) > self.limits.max_subscriptions:
            return Violation("too_many_subscriptions",
                             f"at most {self.limits.max_subscriptions} topics per connection", ref)
        self.subscriptions.update(new)
        return Subscribe(new)

    def _close(self, code: str, reason: str, close: int | None = None) -> Violation:
        self.state = State.CLOSED
        return Violation(code, reason, None, close or _CLOSE_FOR.get(code, CLOSE_POLICY))

    # ---- sending ------------------------------------------------------------------------

    def frames(self, objects: list[dict[str, Any] | bytes]
               ) -> list[tuple[bytes | str, int]] | None:
        """``objects`` in order, in frames of at most ``limits.out_frame`` bytes (an object
        larger than that alone in its own), each with how many of ``objects`` it holds;
        one frame when they fit, as almost always (the whole is encoded first: splitting
        costs only when needed). None (logged) as ``encode``."""
        data = self.encode(objects)
        most = self.limits.out_frame
        if data is None or len(objects) == 1 or _size(data) <= most:
            return None if data is None else [(data, len(objects))]
        parts = [self.encode([obj]) for obj in objects]  # the whole encoded: so does each
        frames: list[tuple[bytes | str, int]] = []
        group: list[Any] = []
        size = 0
        for part in parts:
            length = _size(part)  # type: ignore[arg-type]
            if group and size + length + 8 > most:  # 8: the array's header or brackets
                frames.append((self._joined(group), len(group)))
                group, size = [], 0
            group.append(part)
            size += length + 1
        frames.append((self._joined(group), len(group)))
        return frames

    def _joined(self, parts: list[Any]) -> bytes | str:
        """Objects encoded one by one as one frame: one as itself, several as a batch."""
        if len(parts) == 1:
            return parts[0]  # type: ignore[no-any-return]
        if self.text:
            return "[" + ",".join(parts) + "]"
        return _array_header(len(parts)) + b"".join(parts)

    def encode(self, objects: list[dict[str, Any] | bytes]) -> bytes | str | None:
        """One frame: a single object as itself, several as a batch (an array); None (and
        logged) if a value in them has no form in the client's encoding. An object may
        come packed already (bytes: a QoS 0 message as the node that took it packed it):
        a binary frame takes those bytes as they are, a JSON client gets them unpacked."""
        try:
            if not self.text:
                if len(objects) == 1:
                    only = objects[0]
                    return only if type(only) is bytes else pack(only)
                if not any(type(obj) is bytes for obj in objects):
                    return pack(objects)
                return _array_header(len(objects)) + b"".join(
                    obj if type(obj) is bytes else pack(obj) for obj in objects)
            plain = [unpack_message(obj) if type(obj) is bytes else obj for obj in objects]
            text = dump_json(plain[0] if len(plain) == 1 else plain)
            text.encode()  # a lone surrogate has no UTF-8 form: the frame would not either
            return text
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int;
            # ValueError: FrameError too (packed bytes that are not msgpack)
            logger.error("client_frame_unencodable objects=%d error=%r", len(objects), str(exc))
            return None


def _size(data: bytes | str) -> int:
    """The bytes of a frame's payload (text goes as UTF-8)."""
    if type(data) is bytes or data.isascii():
        return len(data)
    return len(data.encode())  # type: ignore[union-attr]


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items (packed one after the other)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 65536:
        return _ARRAY16.pack(0xDC, count)
    return _ARRAY32.pack(0xDD, count)


_ARRAY16, _ARRAY32 = struct.Struct(">BH"), struct.Struct(">BI")


def send_problem(to: Any, qos: Any, ttl: Any, max_ttl: float) -> str | None:
    """What is wrong with a send's recipient, ``qos`` and ``ttl``, or None. The client
    socket and the HTTP API ask the same: a recipient must be a user id a token could
    name (anything else could never be delivered, and a QoS 1 message would wait out its
    TTL), a TTL finite and at most ``max_ttl``."""
    try:
        check_user(to)
    except ValueError as exc:
        return f"to: {exc}"
    if type(qos) is not int or qos not in (0, 1):  # not True, not 1.0
        return "qos must be 0 (at most once) or 1 (at least once)"
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                            or not 0 < ttl <= max_ttl):
        return f"ttl must be a number of seconds above 0 and at most {max_ttl:g}"
    return None


def _str(obj: dict[str, Any], name: str, limit: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _Bad(f"{obj['t']}: {name} must be a string")
    if len(value) > limit:
        raise _Bad(f"{obj['t']}: {name} longer than {limit}")
    return value


def _optional_str(obj: dict[str, Any], name: str, limit: int) -> str | None:
    return None if obj.get(name) is None else _str(obj, name, limit)


def _session(value: object) -> str | None:
    """A hello's session id to resume: a name as any other (it reaches log lines)."""
    if value is None:
        return None
    try:
        return check_name(value, "hello: session", MAX_SESSION_SIZE)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _optional_int(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise _Bad(f"{obj['t']}: {name} must be a non-negative integer below 2**63")
    return value


def _topics(obj: dict[str, Any], limit: int) -> tuple[str, ...]:
    topics = obj.get("topics")
    if not isinstance(topics, list) or not topics:
        raise _Bad(f"{obj['t']}: topics must be a non-empty list of strings")
    try:
        return tuple(check_topic(t, limit) for t in topics)
    except ValueError as exc:
        raise _Bad(f"{obj['t']}: {exc}") from None


def _device(value: object) -> str:
    if value is None:
        return ""
    try:
        return check_device(value)
    except ValueError as exc:
        raise _Bad(f"hello: {exc}") from None
