"""The opening of a link between nodes: the hello/auth exchange, on accept and on dial.

Each side sends a hello (its name, a nonce, its ``features`` and, from the acceptor, a
proof over both nonces); the dialler answers with its own proof (``peer_proto``). Until
a connection has proved it holds a cluster key it is bounded: each of its frames is at
most ``OPENING_FRAME`` bytes (a longer one is refused at its header), the whole opening
takes at most ``HANDSHAKE_TIMEOUT``, and at most ``OPENINGS`` accepted connections are in
their opening at once (one more is closed at once, ``peer_handshakes_shed``). A refused
opening is counted (``peer_handshakes_refused``) and logged at most every
``REFUSED_LOG_INTERVAL``.

``peer_link.py`` runs the link that an opening yields, reading on from its ``Inbound``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import trio

from .frames import FrameError
from .peer_proto import (
    HEADER, NONCE_SIZE, FrameReader, check_proof, encode_frames, hello, parse_hello, proof,
)

logger = logging.getLogger(__name__)

Frame = dict[str, Any]
Address = tuple[str, int]
HANDSHAKE_TIMEOUT = 5.0
#: the longest frame of the opening (a hello is ~100 bytes with a 128-byte name): the
#: bytes of a connection nobody has authenticated yet are bounded by it, not by the
#: 4 MiB of a link's frames
OPENING_FRAME = 4096
#: openings (accepted connections not yet authenticated) at once; one more is closed
#: at once (``peer_handshakes_shed``): junk connections hold at most this many
#: sockets, for at most HANDSHAKE_TIMEOUT each
OPENINGS = 128
#: a refused opening is logged at most this often (the counter has them all)
REFUSED_LOG_INTERVAL = 60.0


class Inbound:
    """Frames read from one connection: the opening's one at a time from ``opening``
    (each at most ``OPENING_FRAME`` bytes); what it read past them is framed with the
    link's own limit once the link runs."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.pending: deque[Frame] = deque()
        self.opening = bytearray()


class Openings:
    """Both sides of the opening for one node, and the bounds on accepted ones."""

    def __init__(self, me: str, keys: Callable[[], Sequence[bytes]], features: Sequence[str],
                 counters: Counter[str]) -> None:
        self.me = me
        self.features = features  # what our hello lists
        self._keys = keys
        self.counters = counters  # the links' (``PeerLinks.counters``)
        self._openings = 0  # accepted connections in their opening
        self._refused_logged = -math.inf  # when a refused opening was last logged

    async def accept(self, stream: trio.SocketStream
                     ) -> tuple[str, frozenset[str], Inbound] | None:
        """The acceptor's side of the opening: the peer's name, the features its hello
        listed and its reader, or None (shed beyond ``OPENINGS``, or refused: counted,
        and logged at most every ``REFUSED_LOG_INTERVAL``). The caller closes ``stream``."""
        if self._openings >= OPENINGS:
            self.counters["peer_handshakes_shed"] += 1
            if self.counters["peer_handshakes_shed"] == 1:
                logger.warning("peer_handshakes_shed limit=%d", OPENINGS)
            return None
        self._openings += 1
        try:
            return await self._accept(stream)
        finally:
            self._openings -= 1

    async def _accept(self, stream: trio.SocketStream
                      ) -> tuple[str, frozenset[str], Inbound] | None:
        keys = list(self._keys())
        reader = Inbound()
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                name, theirs, features = parse_hello(await _next(stream, reader))
                mine = os.urandom(NONCE_SIZE)
                await stream.send_all(encode_frames([
                    hello(self.me, mine, keys, theirs, self.features)]))
                auth = await _next(stream, reader)
                if auth.get("t") != "auth" or not check_proof(
                    keys, name, mine, theirs, auth.get("proof")
                ):
                    raise FrameError("peer did not prove it holds a cluster key")
        except (FrameError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            self.counters["peer_handshakes_refused"] += 1
            now = trio.current_time()
            if now - self._refused_logged >= REFUSED_LOG_INTERVAL:
                self._refused_logged = now
                logger.warning("peer_refused reason=%r refused=%d",
                               str(exc) or type(exc).__name__,
                               self.counters["peer_handshakes_refused"])
            return None
        return name, features, reader

    async def dial(self, name: str, address: Address,
                   listed: Callable[[frozenset[str]], None]) -> tuple[trio.SocketStream, Inbound]:
        """The dialler's side: the open, authenticated stream to ``name`` and its reader.
        ``listed`` gets the features of the peer's hello once its proof holds (a peer
        that cannot prove a key changes nothing of what we know).
        Raises ``FrameError``, ``trio.TooSlowError``,
        ``trio.BrokenResourceError`` or ``OSError`` when the opening fails."""
        keys = list(self._keys())
        reader = Inbound()
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            stream = await trio.open_tcp_stream(*address)
            try:
                mine = os.urandom(NONCE_SIZE)
                await stream.send_all(encode_frames([
                    hello(self.me, mine, keys, features=self.features)]))
                reply = await _next(stream, reader)
                answered, theirs, features = parse_hello(reply)
                if answered != name:
                    raise FrameError(f"dialled {name} but {answered} answered")
                if not check_proof(keys, answered, mine, theirs, reply.get("proof")):
                    raise FrameError("peer did not prove it holds a cluster key")
                listed(features)
                auth = proof(keys[0], self.me, theirs, mine) if keys else b""
                await stream.send_all(encode_frames([{"t": "auth", "proof": auth}]))
            except BaseException:
                await stream.aclose()
                raise
        return stream, reader


async def _next(stream: trio.SocketStream, inbound: Inbound) -> Frame:
    """The next frame of the opening: refused (``FrameError``) as soon as its header
    says it is longer than ``OPENING_FRAME``, so a connection that has proved nothing
    is never buffered beyond that."""
    buffer = inbound.opening
    while True:
        if len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            if size > OPENING_FRAME:
                raise FrameError(f"opening frame of {size} bytes is over {OPENING_FRAME}",
                                 "too_large")
            end = HEADER.size + size
            if len(buffer) >= end:
                [frame] = FrameReader(OPENING_FRAME).feed(bytes(buffer[:end]))
                del buffer[:end]
                return frame
        data = await stream.receive_some(OPENING_FRAME)
        if not data:
            raise trio.BrokenResourceError("peer closed during the opening")
        buffer += data
