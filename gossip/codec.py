"""memberlist's wire format: messages, UDP packet layers, node metadata.

The only ``import msgpack`` in the project. memberlist's Go codec writes the old
msgpack spec (``WriteExt=false``): strings and ``[]byte`` both travel as *raw*, so we
pack with ``use_bin_type=False`` and unpack with ``raw=True``, decoding string fields
ourselves. Struct fields are maps keyed by Go field names in alphabetical order.

Packet layers, outermost first (``docs/gossip-wire.md`` §3): label, encryption, CRC,
compress, compound, message. :func:`decode_packet` peels them in that order and never
raises anything but :class:`DecodeError`; one bad part of a compound is counted and the
other parts still count.

TCP stream framing lives in :mod:`gossip.stream`, built on the helpers here.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from . import lzw
from .errors import DecodeError
from .keyring import OVERHEAD as ENCRYPTION_OVERHEAD
from .keyring import Keyring
from .wire import (
    CLASS_OF, FIELDS, TYPE_OF, Compress, Kind, Message, MessageType, User,
)

#: Largest stream we accept or send (memberlist HEAD caps user state at 20 MiB).
MAX_STREAM_SIZE = 20 * 1024 * 1024
#: Largest output of one decompression (memberlist HEAD: 40 MiB); a stream reader asks
#: for less: what the stream may carry (:mod:`gossip.stream`).
MAX_DECOMPRESSED = 40 * 1024 * 1024
#: What one datagram may inflate to (``Envelope.max_inflate``, at least this). An honest
#: peer compresses the whole packet once, outermost (memberlist ``rawSendMsgPacket``; our
#: :func:`encode_packet`), so a compress message is opened only there, never inside a
#: compound or another compress; and what it compresses is at most its UDP buffer
#: (``UDPBufferSize``: 1,400 bytes by default in memberlist, serf and us). A cluster on
#: jumbo frames raises ``udp_buffer_size`` and the budget follows it. The LZW decoder
#: refuses a compress message longer than an honest encoding of this many bytes
#: (:func:`gossip.lzw.max_input`: 3,075 bytes for 2,048) before reading a code and
#: decodes at most :func:`gossip.lzw.max_codes` codes (2,050) at about half a
#: microsecond each, so this also bounds the CPU a datagram can cost.
MAX_PACKET_INFLATE = 2048
#: Largest push-pull memberlist v0.6.0 accepts.
MAX_PUSH_PULL_NODES = 1_048_576
#: Compound and compress may nest; deeper than this is an attack, not a peer.
MAX_NESTING = 4
#: Bytes a compound adds per part (a u16 length) and in total (type byte and count).
COMPOUND_PART_OVERHEAD = 2
COMPOUND_HEADER = 2
MAX_COMPOUND_PARTS = 255
CRC_OVERHEAD = 5

#: Per class: (attribute, Go name, is_bytes, is_str, omit_empty), in Go's key order.
_ENCODERS = {
    cls: tuple(
        (spec.name, spec.go_name, spec.kind is Kind.BYTES, spec.kind is Kind.STR, spec.omit_empty)
        for spec in sorted(specs, key=lambda spec: spec.go_name)
    )
    for cls, specs in FIELDS.items()
}


# ---- messages -----------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=False)


def _to_map(value: object) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for name, go_name, is_bytes, is_str, omit_empty in _ENCODERS[type(value)]:
        item = getattr(value, name)
        if omit_empty and not item:
            continue
        if is_bytes and not item:
            item = None  # a nil Go slice: msgpack nil, as Go writes it
        elif is_str:
            item = item.encode()
        out[go_name] = item
    return out


def encode_body(value: object) -> bytes:
    """The msgpack map of one struct, without a type byte."""
    return _pack(_to_map(value))


def encode(message: Message | Compress) -> bytes:
    """Type byte followed by the msgpack body (memberlist ``util.go encode``)."""
    if isinstance(message, User):
        return bytes((MessageType.USER,)) + message.payload
    return bytes((TYPE_OF[type(message)],)) + encode_body(message)


_STR, _BYTES, _BOOL, _INT = 0, 1, 2, 3


def _decoder_table(cls: type) -> tuple[tuple[str, bytes, int, int, int], ...]:
    """(name, go_name, kind, low, high) per field: plain ints, fast to test."""
    table = []
    for spec in FIELDS[cls]:
        if spec.kind is Kind.STR:
            table.append((spec.name, spec.go_name, _STR, 0, 0))
        elif spec.kind is Kind.BYTES:
            table.append((spec.name, spec.go_name, _BYTES, 0, 0))
        elif spec.kind is Kind.BOOL:
            table.append((spec.name, spec.go_name, _BOOL, 0, 0))
        else:
            low = -(2**63) if spec.kind is Kind.INT else 0
            table.append((spec.name, spec.go_name, _INT, low, spec.kind.value))
    return tuple(table)


_DECODERS = {cls: _decoder_table(cls) for cls in FIELDS}
_ZERO: dict[int, object] = {_STR: "", _BYTES: b"", _BOOL: False, _INT: 0}


def from_map(cls: type, raw: object) -> Any:
    """Build ``cls`` from an unpacked msgpack map; unknown keys are ignored."""
    if not isinstance(raw, dict):
        raise DecodeError(f"{cls.__name__}: body is not a map")
    values: dict[str, object] = {}
    for name, go_name, kind, low, high in _DECODERS[cls]:
        item = raw.get(go_name)
        if item is None:
            values[name] = _ZERO[kind]
        elif kind == _STR:
            if item.__class__ is not bytes:
                raise DecodeError(f"field {go_name.decode()} is not a string")
            try:
                values[name] = item.decode()
            except UnicodeDecodeError:
                raise DecodeError(f"field {go_name.decode()} is not UTF-8") from None
        elif kind == _BYTES:
            if item.__class__ is not bytes:
                raise DecodeError(f"field {go_name.decode()} is not bytes")
            values[name] = item
        elif kind == _BOOL:
            if item.__class__ is not bool:
                raise DecodeError(f"field {go_name.decode()} is not a bool")
            values[name] = item
        else:
            if item.__class__ is not int or not low <= item <= high:
                raise DecodeError(f"field {go_name.decode()} is not an integer in range")
            values[name] = item
    return cls(**values)


def _unpack_one(data: bytes, what: str) -> object:
    try:
        return msgpack.unpackb(data, raw=True, strict_map_key=True, use_list=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"{what}: bad msgpack ({type(exc).__name__})") from None


class NeedData(Exception):
    """A stream has not delivered the rest of an object yet."""


class StreamUnpacker:
    """One persistent unpacker over a stream's bytes, in memberlist's dialect: each
    object is parsed once, when its last byte is in (``gossip.stream`` reads with it).
    Its buffer starts at ``first_buffer`` bytes and never holds more than ``limit``."""

    __slots__ = ("_unpacker",)

    def __init__(self, limit: int, first_buffer: int) -> None:
        limit = max(limit, 1)
        self._unpacker = msgpack.Unpacker(
            raw=True, strict_map_key=True, use_list=False, max_buffer_size=limit,
            read_size=min(limit, first_buffer),
        )

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise DecodeError("stream body over its limit", "oversized") from None

    def unpack(self) -> object:
        """The next whole object; :class:`NeedData` if its last byte is not in yet."""
        try:
            return self._unpacker.unpack()
        except msgpack.OutOfData:
            raise NeedData from None
        except Exception as exc:  # msgpack raises several unrelated types
            raise DecodeError(f"bad msgpack in stream ({type(exc).__name__})") from None

    def read_bytes(self, n: int) -> bytes:
        """Up to ``n`` raw bytes from the buffer (fewer if not in yet)."""
        return self._unpacker.read_bytes(n)  # type: ignore[no-any-return]

    def tell(self) -> int:
        return self._unpacker.tell()  # type: ignore[no-any-return]


def decode_message(data: bytes) -> Message:
    """Decode one single message (type byte + body). Compound/compress are not allowed."""
    if not data:
        raise DecodeError("empty message")
    msg_type = data[0]
    if msg_type in _GOSSIP_TYPES:
        return _decode_gossip(bytes(data))
    if msg_type == MessageType.USER:
        return User(bytes(data[1:]))
    cls = CLASS_OF.get(msg_type)
    if cls is None or cls is Compress:
        raise DecodeError(f"message type {msg_type} not supported", "unknown_type")
    return from_map(cls, _unpack_one(data[1:], cls.__name__))


_GOSSIP_TYPES = frozenset((MessageType.ALIVE, MessageType.SUSPECT, MessageType.DEAD))


@functools.lru_cache(maxsize=4096)
def _decode_gossip(data: bytes) -> Message:
    """Alive/suspect/dead: the same bytes are gossiped many times, and the values are
    immutable, so one decoding serves every copy (errors are not cached)."""
    cls = CLASS_OF[data[0]]
    return from_map(cls, _unpack_one(data[1:], cls.__name__))


# ---- addresses ----------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def ip_to_bytes(host: str) -> bytes:
    """IPv4 as 4 bytes (what Go sends for an IPv4 address), IPv6 as 16."""
    return ipaddress.ip_address(host).packed


@functools.lru_cache(maxsize=8192)
def ip_from_bytes(raw: bytes) -> str:
    """Accept 4 bytes, or 16 (IPv6 or IPv4-mapped, which Go sends when bound to 0.0.0.0)."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        address = ipaddress.IPv6Address(raw)
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else str(address)
    raise DecodeError(f"address of {len(raw)} bytes")


# ---- packet layers ------------------------------------------------------------------


def make_compound(parts: Sequence[bytes]) -> bytes:
    if not 0 < len(parts) <= MAX_COMPOUND_PARTS:
        raise ValueError(f"a compound holds 1..{MAX_COMPOUND_PARTS} parts, not {len(parts)}")
    head = bytes((MessageType.COMPOUND, len(parts)))
    lengths = b"".join(struct.pack(">H", len(part)) for part in parts)
    return head + lengths + b"".join(parts)


def split_compound(data: bytes) -> tuple[list[bytes], int]:
    """Parts of a compound (after its type byte) and how many were truncated."""
    if not data:
        raise DecodeError("compound without a part count")
    count = data[0]
    header_end = 1 + 2 * count
    if len(data) < header_end:
        raise DecodeError("compound truncated in its length table")
    parts: list[bytes] = []
    offset = header_end
    for index in range(count):
        (length,) = struct.unpack_from(">H", data, 1 + 2 * index)
        if offset + length > len(data):
            return parts, count - index
        parts.append(data[offset : offset + length])
        offset += length
    return parts, 0


def add_crc(data: bytes) -> bytes:
    return bytes((MessageType.HAS_CRC,)) + struct.pack(">I", zlib.crc32(data)) + data


def label_header(label: str) -> bytes:
    if not label:
        return b""
    raw = label.encode()
    return bytes((MessageType.HAS_LABEL, len(raw))) + raw


def _strip_label(data: bytes, label: str) -> bytes:
    if data and data[0] == MessageType.HAS_LABEL:
        if len(data) < 2 or len(data) < 2 + data[1] or data[1] == 0:
            raise DecodeError("truncated label header", "label")
        theirs = data[2 : 2 + data[1]]
        if theirs != label.encode():
            raise DecodeError("packet label does not match ours", "label")
        return data[2 + data[1] :]
    if label:
        raise DecodeError("packet has no label but ours is set", "label")
    return data


def decompress_payload(body: bytes, max_output: int = MAX_DECOMPRESSED) -> bytes:
    """The bytes inside a ``compress`` message (body without the type byte)."""
    return decompress_map(_unpack_one(body, "compress"), max_output)


def decompress_map(raw: object, max_output: int = MAX_DECOMPRESSED) -> bytes:
    out = inflater_of(raw, max_output).run()
    assert out is not None
    return out


def inflater_of(raw: object, max_output: int) -> lzw.Inflater:
    """A decompression of an unpacked ``compress`` body, to run at once or in steps;
    input longer than an honest encoding of ``max_output`` bytes is refused here."""
    message = from_map(Compress, raw)
    if message.algo != 0:
        raise DecodeError(f"unknown compression algorithm {message.algo}")
    return lzw.Inflater(message.buf, max_output)


#: below this many bytes LZW cannot win back the compress message's own overhead
COMPRESS_MIN = 96


def compress_message(data: bytes) -> bytes:
    return encode(Compress(algo=0, buf=lzw.compress(data)))


@dataclass(frozen=True, slots=True)
class Envelope:
    """How we wrap outgoing packets; the inverse is :func:`decode_packet`."""

    keyring: Keyring | None = None
    label: str = ""
    verify_incoming: bool = True
    verify_outgoing: bool = True
    #: LZW-compress what we send when that makes it smaller (memberlist EnableCompression)
    compress: bool = False
    #: bytes one datagram may inflate to, over all its parts (see MAX_PACKET_INFLATE); we
    #: send a packet larger than that uncompressed
    max_inflate: int = MAX_PACKET_INFLATE

    def maybe_compress(self, payload: bytes, limit: int = MAX_DECOMPRESSED) -> bytes:
        """``payload`` as a ``compress`` message if compression is on and it saves bytes
        (never when it is larger than ``limit``: a receiver would refuse to inflate it)."""
        if not self.compress or not COMPRESS_MIN <= len(payload) <= limit:
            return payload
        compressed = compress_message(payload)
        return compressed if len(compressed) < len(payload) else payload

    @property
    def overhead(self) -> int:
        """Bytes the envelope adds to every packet (label, encryption; CRC not counted)."""
        encryption = ENCRYPTION_OVERHEAD if self.keyring is not None and self.verify_outgoing else 0
        return len(label_header(self.label)) + encryption


@dataclass(frozen=True, slots=True)
class DecodedPacket:
    messages: tuple[Message, ...]
    #: parts of compounds that were malformed or truncated and so dropped
    dropped: int
    #: the first reason for a dropped part (for statistics), or ""
    reason: str = ""


def encode_packet(parts: Sequence[bytes], envelope: Envelope, crc: bool = False) -> bytes:
    """Wrap encoded messages into one datagram: compound if several, then compression,
    CRC, seal, label (memberlist's rawSendMsgPacket order)."""
    payload = envelope.maybe_compress(
        parts[0] if len(parts) == 1 else make_compound(parts), envelope.max_inflate
    )
    if crc:
        payload = add_crc(payload)
    label = label_header(envelope.label)
    if envelope.keyring is not None and envelope.verify_outgoing:
        payload = envelope.keyring.seal(payload, envelope.label.encode())
    return label + payload


def decode_packet(data: bytes, envelope: Envelope) -> DecodedPacket:
    """Peel every layer of one datagram; raise only :class:`DecodeError`."""
    data = _strip_label(bytes(data), envelope.label)
    if envelope.keyring is not None:
        try:
            data = envelope.keyring.open(data, envelope.label.encode())
        except DecodeError:
            if envelope.verify_incoming:
                raise
    if len(data) >= CRC_OVERHEAD and data[0] == MessageType.HAS_CRC:
        (expected,) = struct.unpack_from(">I", data, 1)
        data = data[CRC_OVERHEAD:]
        if zlib.crc32(data) != expected:
            raise DecodeError("CRC mismatch", "crc")
    messages: list[Message] = []
    dropped, reason = _collect(data, messages, 0, envelope.max_inflate)
    if not messages and dropped:
        raise DecodeError(f"no valid message in packet ({reason})", reason)
    return DecodedPacket(tuple(messages), dropped, reason)


def _collect(
    data: bytes, out: list[Message], depth: int, max_inflate: int
) -> tuple[int, str]:
    """Append the messages in ``data`` to ``out``; return (dropped parts, first reason).

    ``max_inflate`` is what the datagram may still inflate to: only its outermost layer
    may be a compress message (see MAX_PACKET_INFLATE), so one decompression at most."""
    if depth > MAX_NESTING:
        return 1, "nesting"
    if not data:
        return 1, "malformed"
    msg_type = data[0]
    try:
        if msg_type == MessageType.COMPOUND:
            parts, truncated = split_compound(data[1:])
            dropped, reason = truncated, ("truncated" if truncated else "")
            for part in parts:
                part_dropped, part_reason = _collect(part, out, depth + 1, 0)
                dropped += part_dropped
                reason = reason or part_reason
            return dropped, reason
        if msg_type == MessageType.COMPRESS:
            if depth > 0:
                return 1, "nesting"  # refused before any work: no honest peer nests it
            return _collect(decompress_payload(data[1:], max_inflate), out, depth + 1, 0)
        out.append(decode_message(data))
        return 0, ""
    except DecodeError as exc:
        return 1, exc.reason


# ---- node metadata ------------------------------------------------------------------

#: memberlist's limit on Alive.Meta.
META_MAX_SIZE = 512
_TAGS_MAGIC = 0xFF


def encode_tags(tags: dict[str, str]) -> bytes:
    """serf's tag format: ``FF`` then a msgpack map of strings (``FF 80`` for none)."""
    meta = bytes((_TAGS_MAGIC,)) + _pack({k.encode(): v.encode() for k, v in sorted(tags.items())})
    if len(meta) > META_MAX_SIZE:
        raise ValueError(f"tags encode to {len(meta)} bytes; the limit is {META_MAX_SIZE}")
    return meta


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from a member's meta. Like serf, meta without ``FF`` is the legacy role."""
    if not meta or meta[0] != _TAGS_MAGIC:
        return {"role": meta.decode(errors="replace")} if meta else {}
    raw = _unpack_one(meta[1:], "tags")
    if not isinstance(raw, dict):
        raise DecodeError("tags are not a map")
    tags: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise DecodeError("tag names and values must be strings")
        tags[key.decode(errors="replace")] = value.decode(errors="replace")
    return tags
