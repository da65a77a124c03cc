"""Frames of our own protocols (clients and peer links): msgpack or JSON, bounded.

The gossip layer speaks memberlist's old msgpack dialect in ``gossip/codec.py``; our own
protocols use today's msgpack (``bin`` for bytes, ``str`` for text) and, for browsers and
humans, the same values as JSON. This module and the gossip codec are the only two that
import msgpack. Unpacking never raises anything but :class:`FrameError`.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import msgpack


#: the largest integer a sequence number (or count) may be anywhere: SQLite's INTEGER and
#: msgpack's signed int64; JSON has no limit, so input checks hold numbers to it
MAX_SEQ = 2**63 - 1


def is_seq(value: Any) -> bool:
    """Whether ``value`` from a frame is a sequence number (or count) we can keep and
    send on: an int, not a bool, 0 to ``MAX_SEQ``."""
    return type(value) is int and 0 <= value <= MAX_SEQ


def seqs_of(value: Any) -> list[int]:
    """The sequence numbers in a frame's list (those that are not are left out; nothing
    if ``value`` is not a list)."""
    return [s for s in value if is_seq(s)] if isinstance(value, list) else []


class FrameError(ValueError):
    """Bytes that are not a valid frame; ``code`` is the client-protocol error code."""

    def __init__(self, reason: str, code: str = "bad_frame") -> None:
        super().__init__(reason)
        self.code = code


#: one packer for the process (``packb`` builds a new one per call: twice the cost of a
#: small frame); only the event loop's thread packs
_packer = msgpack.Packer(use_bin_type=True)


def is_message(value: Any) -> bool:
    """Whether ``value`` can be a message in a peer's frame: a map, or bytes that start
    like one packed (a QoS 0 message as the node that took it packed it, carried unread
    from there to the client: routing.py)."""
    if type(value) is bytes:
        return len(value) > 0 and (0x80 <= value[0] <= 0x8F or value[0] in (0xDE, 0xDF))
    return isinstance(value, dict)


def pack_message(message: dict[str, Any]) -> dict[str, Any] | bytes:
    """A new QoS 0 message packed once, to travel as those bytes (routing.py); the map
    itself if it cannot be packed (input checks let nothing such in: the links would log
    it and leave it out)."""
    try:
        return pack(message)
    except (TypeError, ValueError, OverflowError):
        return message


def unpack_message(packed: bytes) -> Any:
    """A packed message as its map again (for a JSON client or an older peer), bounded by
    its own size; :class:`FrameError` if it is not msgpack."""
    return unpack(packed, len(packed))


def pack(value: Any) -> bytes:
    try:
        return _packer.pack(value)
    except BaseException:
        _packer.reset()  # a value it cannot pack leaves the half-packed bytes behind
        raise


@functools.lru_cache(maxsize=16)
def _limits(max_size: int) -> dict[str, Any]:
    """What unpacking a value of at most ``max_size`` bytes may build."""
    return {"raw": False, "strict_map_key": True, "use_list": True,
            "max_str_len": max_size, "max_bin_len": max_size,
            "max_array_len": max_size // 2 + 1, "max_map_len": max_size // 4 + 1,
            "max_ext_len": 0}


def unpack(data: bytes, max_size: int) -> Any:
    """One msgpack value; containers and strings bounded by ``max_size``."""
    if len(data) > max_size:
        raise FrameError(f"frame of {len(data)} bytes is over the {max_size} limit", "too_large")
    try:
        return msgpack.unpackb(data, **_limits(max_size))
    except Exception as exc:  # msgpack raises many unrelated types for bad input
        raise FrameError(f"not msgpack: {type(exc).__name__}") from None


def unpacker(max_size: int) -> msgpack.Unpacker:
    """A streaming unpacker with ``unpack``'s bounds, for values of at most ``max_size``
    bytes each (its ``unpack()`` raises msgpack's own errors: the caller maps them)."""
    return msgpack.Unpacker(max_buffer_size=max_size, **_limits(max_size))


def dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def load_json(text: str, max_size: int) -> Any:
    if len(text) > max_size:
        raise FrameError(f"frame of {len(text)} characters is over the {max_size} limit",
                         "too_large")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("not JSON") from None
    if lone_surrogate(text, value):
        raise FrameError(LONE_SURROGATE)
    return value


#: why JSON that escapes half a surrogate pair is refused: its text has no UTF-8 form, so
#: it could be neither stored nor sent on (msgpack, SQLite and every peer need UTF-8)
LONE_SURROGATE = "text with an unpaired surrogate escape (\\ud800-\\udfff) is not valid Unicode"


def lone_surrogate(raw: str | bytes, value: Any) -> bool:
    """Whether ``value``, decoded from the JSON text ``raw``, holds a string with half a
    surrogate pair (only an escape in ``raw`` can make one: the walk is skipped without)."""
    marks = ("\\ud", "\\uD") if isinstance(raw, str) else (b"\\ud", b"\\uD")
    return any(mark in raw for mark in marks) and not utf8_clean(value)  # type: ignore[operator]


def utf8_clean(value: Any) -> bool:
    """Whether every string in ``value`` (decoded JSON: maps, lists, scalars) has a UTF-8
    form; JSON can escape half a surrogate pair, which Python decodes as is."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
