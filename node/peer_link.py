"""Links between nodes: one persistent, authenticated TCP connection per pair.

Of two nodes, the one with the smaller name dials, as soon as it sees the other alive,
and dials again with backoff while the other stays alive; the other only accepts. Frames
for a peer wait in its bounded queue while the link is down (the oldest are dropped and
counted when it overflows) and go out packed, everything queued in one write. The
opening (the hello/auth exchange, and its bounds) is ``peer_opening.py``'s.

**Writes happen once per scheduler pass**, not by a task per write: whatever the tasks of
one pass queued for a link goes out in one ``write`` just before trio waits for I/O (an
instrument's ``before_io_wait``), so a frame costs no task step at all and frames of one
pass share a write. Only a socket that does not take everything gets its link's writer
task to wait until it can; until the rest is out, later frames wait in the queue.

``PeerLinks.send(node, frame)`` never blocks; frames that arrive are handed to
``on_frame(node, frame)``; ``on_connected(node)`` runs each time a link opens.
``await request(node, frame)`` tags the frame with a request id (``rid``) and returns the
peer's ``{"t": "reply", "rid": ...}`` frame; the caller bounds the wait.
``request_soon(node, frame, on_reply, timeout)`` does the same without a task waiting:
``on_reply`` gets the reply, or None once ``timeout`` has passed without one (one timer
task serves every request of the node).

A frame that packs to more than ``MAX_PEER_FRAME`` is never written (the peer would end
the link, and everything queued on it, at its reader): it is counted
(``peer_frames_too_large``) and logged once a minute; a request of ours gets an error
reply at once, a reply of ours is replaced by an error reply. The link goes on.

``send`` and ``request_soon`` return a ticket: while ``queued(node, ticket)`` holds, the
frame has not been packed yet, so a caller may still add to it (``stores`` requests
gather their messages that way, for free, until the writer takes them).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from functools import partial

import trio

from .frames import FrameError
from .peer_opening import Address, Frame, Inbound, Openings
from .peer_proto import FEATURES, MAX_PEER_FRAME, PACKED, encode_frames, unpacked

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 100_000
BACKOFF_MIN, BACKOFF_MAX = 0.05, 5.0
STABLE_LINK = 1.0  # seconds a link must last for the next dial to go without backoff
TIMER_SLACK = 0.1  # request_soon's timeouts fire up to this late
#: how long a frame sent with ``send_later`` may wait for other frames to the same peer
LATER = 0.02
#: seconds between two log lines of frames refused as too large (each is counted)
TOO_LARGE_LOG = 60.0


class _Peer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.address: Address | None = None
        self.queue: deque[Frame] = deque()
        self.wake = trio.Event()
        self.stream: trio.SocketStream | None = None
        self.generation = 0  # bumped by every new connection
        self.taken = 0  # bumped each time the writer takes the queue (tickets)
        self.out = bytearray()  # packed frames the socket did not take yet (the writer's)
        self.unsent: list[Frame] = []  # the frames ``out`` holds, sent again on a new link
        self.dirty = False  # in the links' list of queues to write at the end of the pass
        self.later = False  # in the links' list of queues to write when LATER is up
        self.packed = False  # its hello listed the "packed" feature (peer_proto)
        self.features: frozenset[str] = frozenset()  # what its last hello listed
        self.wanted = False  # alive in the member table
        self.dialing = False  # a dial loop runs for it (never two: they would take turns
        #                       replacing each other's link)

    def kick(self) -> None:
        self.wake.set()


class PeerLinks:
    def __init__(
        self, me: str, keys: Callable[[], Sequence[bytes]],
        on_frame: Callable[[str, Frame], None], on_connected: Callable[[str], None],
        features: Sequence[str] = FEATURES,
    ) -> None:
        self.me = me
        self._on_frame = on_frame
        self._on_connected = on_connected
        self._peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._rids = itertools.count(1)
        self._waiting: dict[int, Callable[[Frame | None], None]] = {}
        self._deadlines: list[tuple[float, int]] = []  # (when, rid) of request_soon
        self._timer: trio.CancelScope | None = None  # the timer's sleep, until the first
        self._dirty: list[_Peer] = []  # peers with frames queued during this pass
        self._later: list[_Peer] = []  # peers with frames that may wait up to LATER
        self._later_timer: trio.CancelScope | None = None
        self.counters: Counter[str] = Counter()
        self._too_large_logged = -math.inf  # when peer_frame_too_large was last logged
        #: both sides of a link's opening; ``features``: what our hello lists (tests play
        #: older nodes)
        self.openings = Openings(me, keys, tuple(features), self.counters)

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _Peer(name)
        return peer

    def connected(self) -> list[str]:
        return sorted(name for name, peer in self._peers.items() if peer.stream is not None)

    def lists(self, node: str, feature: str) -> bool:
        """Whether ``node``'s last hello listed ``feature`` (False before any hello: a
        frame of a feature goes only to peers known to take it; docs/development.md)."""
        peer = self._peers.get(node)
        return peer is not None and feature in peer.features

    # ---- what the node calls ------------------------------------------------------------

    def send(self, node: str, frame: Frame) -> int:
        """Queue ``frame`` for ``node``; returns its ticket (see ``queued``)."""
        peer = self._queue(node, frame)
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)
        return peer.taken

    def send_later(self, node: str, frame: Frame) -> None:
        """Queue ``frame`` for ``node`` to go with the next frame sent there, or within
        ``LATER``: for what nobody waits for (acks). At a moderate rate each would be a
        write of its own and wake the peer for it; so they share the writes that
        messages make anyway, or a few go together."""
        peer = self._queue(node, frame)
        if not peer.later:
            peer.later = True
            self._later.append(peer)
            if self._later_timer is not None and self._later_timer.deadline == math.inf:
                self._later_timer.deadline = trio.current_time() + LATER

    def _queue(self, node: str, frame: Frame) -> _Peer:
        peer = self._peer(node)
        if len(peer.queue) >= QUEUE_LIMIT:
            peer.queue.popleft()
            self.counters["peer_queue_drops"] += 1
        peer.queue.append(frame)
        return peer

    def queued(self, node: str, ticket: int) -> bool:
        """Whether frames queued with ``ticket`` still wait, unpacked, for the writer."""
        return self._peer(node).taken == ticket

    async def request(self, node: str, frame: Frame) -> Frame:
        """Send ``frame`` to ``node`` and wait for its reply (bound it with a timeout)."""
        rid = next(self._rids)
        arrived, slot = trio.Event(), []

        def replied(reply: Frame | None) -> None:
            slot.append(reply)
            arrived.set()
        self._waiting[rid] = replied
        try:
            self.send(node, {**frame, "rid": rid})
            await arrived.wait()
            return slot[0]
        finally:
            self._waiting.pop(rid, None)

    def request_soon(self, node: str, frame: Frame, on_reply: Callable[[Frame | None], None],
                     timeout: float) -> int:
        """Send ``frame`` to ``node``; ``on_reply`` gets its reply, or None if none came
        within ``timeout``. Returns the frame's ticket."""
        rid = next(self._rids)
        self._waiting[rid] = on_reply
        deadline = trio.current_time() + timeout
        heapq.heappush(self._deadlines, (deadline, rid))
        if self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline
        return self.send(node, {**frame, "rid": rid})

    def reply(self, node: str, request: Frame, answer: Frame) -> None:
        """Answer a request frame from ``node``."""
        self.send(node, {**answer, "t": "reply", "rid": request.get("rid")})

    def _replied(self, frame: Frame) -> None:
        rid = frame.get("rid")
        on_reply = self._waiting.pop(rid, None) if type(rid) is int else None  # not True
        if on_reply is None:
            self.counters["peer_late_replies"] += 1
            return
        on_reply(frame)

    async def _expire(self) -> None:
        """The timer of ``request_soon``: give up on requests whose time is up."""
        while True:
            # most entries were answered long before they come due: wake for them at
            # most every TIMER_SLACK, not once each
            first = (max(self._deadlines[0][0], trio.current_time() + TIMER_SLACK)
                     if self._deadlines else math.inf)
            with trio.CancelScope(deadline=first) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, rid = heapq.heappop(self._deadlines)
                on_reply = self._waiting.pop(rid, None)
                if on_reply is not None:  # else answered already
                    self.counters["peer_requests_timed_out"] += 1
                    on_reply(None)

    async def _send_later(self) -> None:
        """The timer of ``send_later``: frames that waited ``LATER`` go at the end of
        this pass (those that went along with others meanwhile are gone already)."""
        while True:
            first = trio.current_time() + LATER if self._later else math.inf
            with trio.CancelScope(deadline=first) as self._later_timer:
                await trio.sleep_forever()
            self._later_timer = None
            later, self._later = self._later, []
            for peer in later:
                peer.later = False
                if not peer.dirty:
                    peer.dirty = True
                    self._dirty.append(peer)

    def set_peers(self, peers: dict[str, Address]) -> None:
        """The live grapevine nodes and their link addresses (from their tags)."""
        for name, peer in self._peers.items():
            if name not in peers and peer.wanted:
                peer.wanted = False
                peer.queue.clear()
                peer.taken += 1  # what was queued will never be packed
                peer.kick()
        for name, address in peers.items():
            if name == self.me:
                continue
            peer = self._peer(name)
            peer.wanted, peer.address = True, address
            if self.me < name and not peer.dialing and self._nursery is not None:
                peer.dialing = True
                self.counters["peer_dial_loops"] += 1
                self._nursery.start_soon(self._dial_loop, peer)

    # ---- serving ------------------------------------------------------------------------

    async def serve(self, listeners: list[trio.SocketListener],
                    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        flusher = _EachPass(self.flush)
        trio.lowlevel.add_instrument(flusher)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._expire)
                nursery.start_soon(self._send_later)
                nursery.start_soon(trio.serve_listeners, self._accept, listeners)
                task_status.started()
                await trio.sleep_forever()
        finally:
            trio.lowlevel.remove_instrument(flusher)

    def flush(self) -> None:
        """Write what was queued for each link during this pass, one write per link; what
        a socket does not take is left to the link's writer task."""
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            peer.dirty = False
            stream = peer.stream
            if not peer.queue or stream is None:
                continue  # no link: the next one's writer sends the queue
            if peer.out:
                peer.kick()  # the writer is waiting to write: it takes the queue after
                continue
            batch, data = self._take(peer)
            try:
                sent = os.write(stream.socket.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError:  # broken: the writer finds out and the next link sends them
                peer.queue.extendleft(reversed(batch))
                peer.kick()
                continue
            if sent < len(data):
                peer.out += memoryview(data)[sent:]
                peer.unsent = batch
                peer.kick()

    async def _accept(self, stream: trio.SocketStream) -> None:
        async with stream:
            opened = await self.openings.accept(stream)
            if opened is not None:
                name, features, reader = opened
                peer = self._peer(name)
                self._listed(peer, features)
                await self._run(peer, stream, reader)

    def _listed(self, peer: _Peer, features: frozenset[str]) -> None:
        """What the peer's hello listed."""
        peer.packed, peer.features = PACKED in features, features

    async def _dial_loop(self, peer: _Peer) -> None:
        delay = BACKOFF_MIN
        try:
            while peer.wanted:
                try:
                    assert peer.address is not None
                    stream, reader = await self.openings.dial(
                        peer.name, peer.address, partial(self._listed, peer))
                except (FrameError, trio.TooSlowError, trio.BrokenResourceError,
                        OSError) as exc:
                    self.counters["peer_dial_failures"] += 1
                    logger.debug("peer_dial_failed peer=%s reason=%r", peer.name, str(exc))
                else:
                    opened = trio.current_time()
                    async with stream:
                        await self._run(peer, stream, reader)
                    if trio.current_time() - opened >= STABLE_LINK:
                        delay = BACKOFF_MIN
                        continue  # a link that held: dial again at once
                # a failed dial or a link that broke at once: back off
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            peer.dialing = False

    async def _run(self, peer: _Peer, stream: trio.SocketStream, reader: Inbound) -> None:
        """Carry frames both ways until the connection breaks or a newer one replaces it."""
        if peer.stream is not None:
            self.counters["peer_links_replaced"] += 1
        peer.generation += 1
        generation = peer.generation
        peer.stream = stream
        self.counters["peer_links_opened"] += 1
        # an older peer (a rolling upgrade) says no features: it gets protocol 1's frames
        logger.info("peer_connected peer=%s features=%s", peer.name,
                    PACKED if peer.packed else "none")
        self._on_connected(peer.name)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, peer, stream, generation, nursery.cancel_scope)
                await self._read(peer, stream, reader)
                nursery.cancel_scope.cancel()
        except* (FrameError, trio.BrokenResourceError, trio.ClosedResourceError,
                 OSError) as broken:
            logger.info("peer_link_broken peer=%s reason=%r", peer.name,
                        str(broken.exceptions[0]))
        except* Exception:  # the link's boundary: one link never stops the node
            self.counters["peer_links_failed"] += 1
            logger.exception("peer_link_failed peer=%s", peer.name)
        finally:
            if peer.generation == generation:
                peer.stream = None
                peer.queue.extendleft(reversed(peer.unsent))  # the next link sends them
                peer.unsent, peer.out = [], bytearray()
            self.counters["peer_links_closed"] += 1

    async def _read(self, peer: _Peer, stream: trio.SocketStream, inbound: Inbound) -> None:
        if inbound.opening:  # read past the opening: framed with the link's limit now
            inbound.pending.extend(inbound.reader.feed(bytes(inbound.opening)))
            inbound.opening = bytearray()
        while True:
            frames, inbound.pending = list(inbound.pending), deque()
            if not frames:
                data = await stream.receive_some(65536)
                if not data:
                    return
                frames = inbound.reader.feed(data)
            for frame in frames:
                self.counters["peer_frames_in"] += 1
                if frame["t"] == "reply":
                    self._replied(frame)
                    continue
                try:
                    self._on_frame(peer.name, frame)
                except Exception:  # a frame the node cannot handle must not end the link
                    self.counters["peer_frames_failed"] += 1
                    logger.exception("peer_frame_failed peer=%s type=%s", peer.name,
                                     frame.get("t"))

    async def _write(self, peer: _Peer, stream: trio.SocketStream, generation: int,
                     scope: trio.CancelScope) -> None:
        """The link's writer: writes what the socket did not take at once (waiting until
        it can), and what was queued before the link opened."""
        while peer.generation == generation and stream is peer.stream:
            if peer.out:
                await trio.lowlevel.wait_writable(stream.socket)
                try:
                    sent = os.write(stream.socket.fileno(), peer.out)
                except BlockingIOError:
                    continue
                del peer.out[:sent]
                if not peer.out:
                    peer.unsent = []
                continue
            if not peer.queue:
                peer.wake = trio.Event()
                await peer.wake.wait()
                continue
            peer.unsent, data = self._take(peer)
            peer.out += data
        scope.cancel()

    def _take(self, peer: _Peer) -> tuple[list[Frame], bytes]:
        """Everything queued for ``peer``, packed for one write (closes its tickets)."""
        batch = list(peer.queue) if peer.packed else unpacked(list(peer.queue))
        peer.queue.clear()
        peer.taken += 1
        self.counters["peer_frames_out"] += len(batch)
        self.counters["peer_writes"] += 1
        return batch, encode_frames(batch, partial(self._too_large, peer))

    def _too_large(self, peer: _Peer, frame: Frame, size: int) -> None:
        """``frame`` packed to more than a link carries and was left out (``encode_frames``
        answers a peer's request with an error instead): counted, logged once a
        ``TOO_LARGE_LOG`` interval, and a request of ours fails at once with why. The
        link goes on."""
        self.counters["peer_frames_too_large"] += 1
        now = time.monotonic()
        if now - self._too_large_logged >= TOO_LARGE_LOG:
            self._too_large_logged = now
            logger.error("peer_frame_too_large peer=%s kind=%s bytes=%d limit=%d count=%d",
                         peer.name, frame.get("t"), size, MAX_PEER_FRAME,
                         self.counters["peer_frames_too_large"])
        rid = frame.get("rid")
        on_reply = (self._waiting.pop(rid, None)
                    if frame.get("t") != "reply" and type(rid) is int else None)
        if on_reply is not None:  # called soon: this runs while frames are being written
            error = {"t": "reply", "rid": rid,
                     "error": f"the request of {size} bytes is over the peer frame limit "
                              f"of {MAX_PEER_FRAME}; not sent"}
            trio.lowlevel.current_trio_token().run_sync_soon(self._refused, on_reply, error)

    @staticmethod
    def _refused(on_reply: Callable[[Frame | None], None], error: Frame) -> None:
        try:
            on_reply(error)
        except Exception:  # run by trio itself: one that raises would end the node
            logger.exception("peer_reply_failed")


class _EachPass(trio.abc.Instrument):
    """Calls ``flush`` once per pass of the scheduler, just before it waits for I/O:
    after every task that was ready has run."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def before_io_wait(self, timeout: float) -> None:
        try:
            self._flush()
        except Exception:  # an instrument that raises is removed by trio: never raise
            logger.exception("peer_flush_failed")
