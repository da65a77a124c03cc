"""Framing and authentication of the links between nodes, without I/O.

A link is one TCP connection per pair of nodes, full duplex. On it travel **frames**: a
4-byte big-endian length, then one msgpack map (``node/frames.py``). A writer packs every
frame it has queued into one ``send_all``; the reader splits them again with
:class:`FrameReader`, which refuses a frame longer than its limit.

Opening, dialer D and acceptor A, both knowing the cluster keys (the gossip keyring; a
cluster without keys authenticates nothing, like its gossip)::

    D -> A  {"t": "hello", "v": 1, "node": D, "nonce": nd}
    A -> D  {"t": "hello", "v": 1, "node": A, "nonce": na, "proof": mac(k, "A" | nd | na)}
    D -> A  {"t": "auth", "proof": mac(k, "D" | na | nd)}

where ``mac`` is HMAC-SHA256 and ``k`` the primary key of the side that computes it; the
checking side accepts a proof made with any installed key (rotation). Each side proves it
holds a key over the other's fresh nonce, so a recorded opening cannot be replayed.

Each hello also lists the ``features`` its node takes beyond protocol 1 (a node that
lists none, an older one, gets frames as protocol 1 has them): ``packed`` — the ``msg`` of a
``route``, ``deliver``, ``publish`` or ``broadcast`` frame may be the message packed
(msgpack bytes of the map) instead of the map itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

from membership.config import is_node_name

from .frames import FrameError, pack, unpack_message, unpacker

PEER_PROTOCOL = 1
#: the feature of messages carried packed (see above)
PACKED = "packed"
#: the feature of the ``hold``, ``resend`` and ``tried`` frames (docs/push.md: a slow
#: reader's missed messages and what counts as an attempt); sent only to peers listing it
REDELIVERY = "redelivery"
#: what this node takes beyond protocol 1 (see above)
FEATURES = (PACKED, REDELIVERY)
HEADER = struct.Struct(">I")
#: the largest frame a link carries (a reader refuses a longer one and ends the link;
#: a writer refuses to pack one, see ``encode_frames``)
MAX_PEER_FRAME = 4 * 1024 * 1024
NONCE_SIZE = 16
#: what a request that carries messages (``replicate`` of a group or a handover,
#: ``stores``) packs into one frame, about (``Budget``): a quarter of ``MAX_PEER_FRAME``,
#: so that one item over it (a body of up to ``--max-frame`` bytes) still fits
REQUEST_BYTES = 1 << 20
#: what one entry of such a request packs to besides its strings, at most (msgpack map
#: keys, numbers and the headers of its strings: a stored message is 67-114 bytes)
ENTRY_BYTES = 128

logger = logging.getLogger(__name__)

#: called with a frame ``encode_frames`` refused as too large, and its packed size
TooLarge = Callable[[dict[str, Any], int], None]


def text_bytes(*texts: str | None) -> int:
    """What an entry holding ``texts`` packs to, at most: their UTF-8 bytes (a
    character may be up to 4: counting characters let a frame grow past the limit)
    and ``ENTRY_BYTES``."""
    size = ENTRY_BYTES
    for text in texts:
        if text:
            size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size


class Budget:
    """The bytes of one request frame being filled: an entry goes in while there is
    ``room`` for it, and always into an empty frame (an entry alone is bounded by the
    input limits, far below ``MAX_PEER_FRAME``). The one rule by which ``replicate``
    (of a group or a handover) and ``stores`` requests are cut."""

    __slots__ = ("most", "used")

    def __init__(self, most: int | None = None) -> None:
        self.most = REQUEST_BYTES if most is None else most
        self.used = 0

    def room(self, size: int) -> bool:
        return not self.used or self.used + size <= self.most

    def add(self, size: int) -> None:
        self.used += size


def encode_frames(objects: Sequence[dict[str, Any]], too_large: TooLarge | None = None
                  ) -> bytes:
    """The frames, each behind its length. One that cannot be packed (a value msgpack
    cannot carry: input checks should have refused it) is logged and left out, never the
    others written with it (they were taken off the link's queue already: an error here
    would lose them all).

    A frame that packs to more than ``MAX_PEER_FRAME`` is never written (the peer's
    reader would end the link, and everything queued on it): it is handed to
    ``too_large`` (or logged) and left out; a reply is replaced by an error reply, so
    the request it answers fails at once and clearly, not by its timeout."""
    out = bytearray()
    for obj in objects:
        try:
            body = pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:  # an int beyond 64 bits
            logger.error("peer_frame_unpackable kind=%s error=%r", obj.get("t"), str(exc))
            continue
        if len(body) > MAX_PEER_FRAME:
            if too_large is None:
                logger.error("peer_frame_too_large kind=%s bytes=%d", obj.get("t"), len(body))
            else:
                too_large(obj, len(body))
            if obj.get("t") != "reply":
                continue
            body = pack({"t": "reply", "rid": obj.get("rid"),
                         "error": f"the answer of {len(body)} bytes is over the peer frame "
                                  f"limit of {MAX_PEER_FRAME}"})
        out += HEADER.pack(len(body))
        out += body
    return bytes(out)


class FrameReader:
    """Feed bytes as they arrive; take whole frames out. Raises only :class:`FrameError`
    (after which the link, and its reader, are done with).

    Each frame's body goes through one ``msgpack.Unpacker`` kept for the link: a call
    of ``unpackb`` per frame, with its limits as keywords each time, cost about twice
    as much (1.2-2.1 against 0.8 µs a frame of a batch of 64 deliveries)."""

    def __init__(self, max_frame: int = MAX_PEER_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame
        self._unpacker = unpacker(max_frame)
        self._taken = 0  # bytes the unpacker has been fed: each frame's must all be used

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        buffer = self._buffer
        frames: list[dict[str, Any]] = []
        start, size_of_header, filled = 0, HEADER.size, len(buffer)
        unpacker = self._unpacker
        try:
            with memoryview(buffer) as view:
                while filled - start >= size_of_header:
                    (size,) = HEADER.unpack_from(buffer, start)
                    if size > self._max:
                        raise FrameError(f"peer frame of {size} bytes is over {self._max}",
                                         "too_large")
                    end = start + size_of_header + size
                    if filled < end:
                        break
                    unpacker.feed(view[start + size_of_header:end])
                    self._taken += size
                    try:
                        value = unpacker.unpack()
                    except Exception as exc:  # msgpack raises many unrelated types
                        raise FrameError(f"not msgpack: {type(exc).__name__}") from None
                    if unpacker.tell() != self._taken:
                        raise FrameError("a peer frame holds more than one value")
                    start = end
                    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
                        raise FrameError("a peer frame is a map with a string 't'")
                    frames.append(value)
        finally:
            del buffer[:start]  # once per read, not once per frame
        return frames


def proof(key: bytes, name: str, theirs: bytes, mine: bytes) -> bytes:
    return hmac.new(key, b"grapevine-peer|" + name.encode() + b"|" + theirs + mine,
                    hashlib.sha256).digest()


def check_proof(keys: Sequence[bytes], name: str, theirs: bytes, mine: bytes,
                given: object) -> bool:
    """Whether ``given`` proves that ``name`` holds one of ``keys`` (no keys: always)."""
    if not keys:
        return True
    if not isinstance(given, bytes):
        return False
    return any(hmac.compare_digest(proof(key, name, theirs, mine), given) for key in keys)


def hello(name: str, nonce: bytes, keys: Sequence[bytes], answer_to: bytes | None = None,
          features: Sequence[str] = FEATURES) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "hello", "v": PEER_PROTOCOL, "node": name, "nonce": nonce,
                             "features": list(features)}
    if answer_to is not None:
        frame["proof"] = proof(keys[0], name, answer_to, nonce) if keys else b""
    return frame


def parse_hello(frame: dict[str, Any]) -> tuple[str, bytes, frozenset[str]]:
    """The (node, nonce, features) of a hello, or FrameError."""
    version = frame.get("v")
    if frame.get("t") != "hello" or type(version) is not int or version != PEER_PROTOCOL:
        raise FrameError("expected a peer hello of protocol 1")
    node, nonce = frame.get("node"), frame.get("nonce")
    if not is_node_name(node):  # it goes into every log line of the link
        raise FrameError("peer hello without a node name (1-128 of letters, digits, '_.:-')")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise FrameError("peer hello without a 16-byte nonce")
    features = frame.get("features")
    if not isinstance(features, list):
        return node, nonce, frozenset()
    return node, nonce, frozenset(f for f in features if isinstance(f, str))


def unpacked(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``frames`` as a peer without the ``packed`` feature takes them: a packed ``msg``
    unpacked again (one that does not unpack is logged and left out)."""
    out = []
    for frame in frames:
        message = frame.get("msg")
        if type(message) is not bytes:
            out.append(frame)
            continue
        try:
            out.append({**frame, "msg": unpack_message(message)})
        except FrameError as exc:
            logger.error("peer_frame_unpackable kind=%s error=%r", frame.get("t"), str(exc))
    return out
