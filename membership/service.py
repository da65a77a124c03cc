"""The trio shell around :class:`Swim`: one owner task, a UDP reader, TCP streams.

Only the owner task (``_run_owner``) touches the machine. Other tasks reach it through
one bounded memory channel, so there are no locks. Each step:

1. wait for one input until the machine's next deadline;
2. take whatever else is already queued (without waiting), feed it all with
   ``trio.current_time()``;
3. ``tick(now)``; flush the outbox (datagrams sent inline, streams dialled in tasks);
4. log member events and hand them to subscribers.

When a deadline wakes the owner it yields once before ticking, so that datagrams that
arrived while this process was stalled are read before any timeout is judged.

Inbound TCP streams are bounded before they are read: at most
:data:`MAX_INBOUND_STREAMS` at once, :data:`INBOUND_STREAM_BYTES` held by all of them
together, ``tcp_timeout`` each, and per stream what the cluster could need
(:meth:`StreamLimits.for_cluster`). Every refusal is counted (``streams_refused_*``,
``stream_replies_refused_*``) and logged once a minute per cause.

A compressed stream (request or reply) is inflated in steps, one stream at a time
(``inflations``, a limiter of one): :data:`INFLATE_STEP` LZW codes per step, then the
inflated message 64 KiB per step, with a checkpoint between steps, so the event loop
is never held for more than one step (a few milliseconds) however large the stream; a
stream waiting its turn is still bounded by ``tcp_timeout``.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from gossip.codec import encode
from gossip.errors import DecodeError
from gossip.stream import StreamLimits, StreamMessage, StreamReader, encode_stream
from gossip.keyring import Keyring
from gossip.transport import Transport, advertise_address, open_transport
from gossip.wire import Err

from .config import MembershipConfig
from .member import Address, EventKind, Member, MemberEvent
from .refusals import HINTS, Hold, Inbound, JoinRound, Refusals
from .streams import StreamPurpose
from .swim import SendPacket, SendStream, Swim, SwimStatistics

logger = logging.getLogger(__name__)

INBOX_SIZE = 4096
MAX_BATCH = 512
MAX_STREAMS = 128
READ_SIZE = 65536
#: inbound streams served at once (memberlist refuses a push-pull past 128 pending); one
#: more is closed as soon as it is accepted
MAX_INBOUND_STREAMS = 32
#: bytes all inbound streams may hold at once, received or inflated
INBOUND_STREAM_BYTES = 64 * 1024 * 1024
#: LZW codes a stream's decompression decodes between two checkpoints: 2-5 ms of CPU
#: at CPython's 0.5-1 us a code; then the inflated message is parsed 64 KiB a step
INFLATE_STEP = 4096


@dataclass(frozen=True, slots=True)
class _Packet:
    src: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class _StreamRequest:
    src: Address
    message: object
    reply: trio.MemorySendChannel[bytes | None]


@dataclass(frozen=True, slots=True)
class _StreamReply:
    token: int
    message: object | None  # None: the stream failed


@dataclass(frozen=True, slots=True)
class _Command:
    action: Callable[[Swim, float], None]


_Input = _Packet | _StreamRequest | _StreamReply | _Command


class Membership:
    """What the rest of the node holds: read the table, join, leave, subscribe."""

    def __init__(self, swim: Swim, inbox: trio.MemorySendChannel[_Input], transport: Transport):
        self._swim = swim
        self._inbox = inbox
        self.transport = transport
        self.counters: Counter[str] = Counter()
        self.refusals = Refusals(self.counters)
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self._changed = trio.Event()

    @property
    def name(self) -> str:
        return self._swim.name

    @property
    def address(self) -> Address:
        return self._swim.address

    @property
    def keyring(self) -> Keyring | None:
        return self._swim.envelope.keyring

    def members(self) -> tuple[Member, ...]:
        return self._swim.members()

    def local_member(self) -> Member:
        return self._swim.local_member

    def statistics(self) -> SwimStatistics:
        return self._swim.statistics()

    def subscribe(self, capacity: int = 1024) -> trio.MemoryReceiveChannel[MemberEvent]:
        """Member events from now on. A subscriber that falls behind loses events (counted)."""
        send, receive = trio.open_memory_channel[MemberEvent](capacity)
        self._subscribers.append(send)
        return receive

    async def command(self, action: Callable[[Swim, float], None]) -> None:
        await self._inbox.send(_Command(action))

    async def join(self, addresses: Sequence[str]) -> list[str]:
        """Resolve ``host:port`` seeds and push-pull with them; returns unresolvable ones."""
        resolved, failed = await resolve_all(addresses)
        if resolved:
            await self.command(lambda swim, now: swim.join(now, resolved))
        return failed

    async def leave(self) -> None:
        """Gossip our leave and wait until it has spread (the caller sets a timeout)."""
        await self.command(lambda swim, now: swim.leave(now))
        while not self._swim.leave_complete:
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Wait until the owner has run one more step."""
        await self._changed.wait()

    def _stepped(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _publish(self, event: MemberEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.send_nowait(event)
            except trio.WouldBlock:
                self.counters["events_dropped"] += 1
            except trio.BrokenResourceError:
                self._subscribers.remove(subscriber)


async def resolve_all(addresses: Sequence[str]) -> tuple[list[Address], list[str]]:
    resolved: list[Address] = []
    failed: list[str] = []
    for text in addresses:
        try:
            host, port = split_host_port(text)
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
        except (OSError, ValueError):
            failed.append(text)
            continue
        for info in infos:
            address = (str(info[4][0]), int(info[4][1]))
            if address not in resolved:
                resolved.append(address)
                break
    return resolved, failed


def split_host_port(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def serve_membership(
    config: MembershipConfig,
    *,
    keyring: Keyring | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[Membership] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind the gossip port, start the machine, join ``config.join``; runs until cancelled."""
    transport = await open_transport(config.bind_addr, config.bind_port)
    try:
        host = advertise_address(config.bind_addr, config.advertise_addr)
        port = config.advertise_port or transport.bound[1]
        swim = Swim(config, (host, port), keyring, rng or random.Random(), trio.current_time())
        send, receive = trio.open_memory_channel[_Input](INBOX_SIZE)
        membership = Membership(swim, send, transport)
        inbound = Inbound(MAX_INBOUND_STREAMS, INBOUND_STREAM_BYTES)
        inflations = trio.CapacityLimiter(1)
        logger.info(
            "gossip_listening bind=%s:%d advertise=%s:%d encrypted=%s profile=%s",
            transport.bound[0], transport.bound[1], host, port, keyring is not None,
            config.profile,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_packets, transport, send, membership)
            nursery.start_soon(
                trio.serve_listeners,
                _stream_handler(
                    swim, send, config, inbound, membership.refusals, inflations=inflations
                ),
                [transport.listener],
            )
            nursery.start_soon(
                partial(_run_owner, swim, receive, send, transport, membership,
                        inflations=inflations)
            )
            if config.join:
                failed = await membership.join(config.join)
                for text in failed:
                    logger.warning("join_address_unresolved address=%s", text)
            task_status.started(membership)
    finally:
        transport.close()


async def _read_packets(
    transport: Transport, inbox: trio.MemorySendChannel[_Input], membership: Membership
) -> None:
    while True:
        try:
            src, data = await transport.receive_packet()
        except OSError as exc:  # e.g. ICMP errors surfacing on some platforms
            membership.counters["udp_receive_errors"] += 1
            logger.debug("udp_receive_error error=%s", exc)
            continue
        try:
            inbox.send_nowait(_Packet(src, data))
        except trio.WouldBlock:
            membership.counters["packets_dropped_inbox_full"] += 1


def _stream_handler(
    swim: Swim, inbox: trio.MemorySendChannel[_Input], config: MembershipConfig,
    inbound: Inbound, refusals: Refusals, *, inflations: trio.CapacityLimiter,
) -> Callable[[trio.SocketStream], object]:
    async def handle_stream(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                return  # the peer is already gone
            src = (peer[0], peer[1])
            if inbound.active >= inbound.max_streams:
                refusals.note("stream_refused", "busy", src, counter="streams_refused",
                              detail=f"streams={inbound.active}")
                return
            inbound.active += 1
            hold = Hold(inbound)
            try:
                await _serve_one(stream, src, hold)
            except OSError:
                return  # the peer is already gone
            except Exception:  # the connection's boundary: never let one stop the node
                logger.exception("stream_handler_failed")
            finally:
                inbound.active -= 1
                hold.release()

    async def _serve_one(stream: trio.SocketStream, src: Address, hold: Hold) -> None:
        with trio.move_on_after(config.tcp_timeout) as deadline:
            reader = StreamReader(
                swim.envelope, limits=StreamLimits.for_cluster(len(swim.table)),
                inflate_in_steps=True,
            )
            try:
                message = await _read_message(stream, reader, inflations, hold)
            except DecodeError as exc:
                # a connection closed before its first byte (a port check) is only counted
                refusals.note("stream_refused", exc.reason, src, counter="streams_refused",
                              detail=f"bytes={reader.received}", log=reader.received > 0)
                if exc.reason not in ("busy", "memory"):
                    reply = encode_stream(encode(Err(str(exc))), swim.envelope)
                    await _send_quietly(stream, reply)
                return
            except (trio.BrokenResourceError, OSError):
                return
            hold.release()  # the message is parsed: what it held is free
            reply_send, reply_receive = trio.open_memory_channel[bytes | None](1)
            await inbox.send(_StreamRequest(src, message, reply_send))
            reply = await reply_receive.receive()
            if reply is not None:
                await _send_quietly(stream, reply)
        if deadline.cancelled_caught:
            refusals.note("stream_refused", "timeout", src, counter="streams_refused")

    return handle_stream


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _read_message(
    stream: trio.abc.ReceiveStream, reader: StreamReader, inflations: trio.CapacityLimiter,
    hold: Hold | None = None,
) -> object:
    charged = 0
    while True:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            reader.eof()
        if hold is not None:
            hold.take(len(data))
        message = reader.feed(data)
        if message is None and reader.inflating:
            message = await _inflate(reader, inflations)
        if hold is not None and reader.inflated > charged:
            hold.take(reader.inflated - charged)
            charged = reader.inflated
        if message is not None:
            return message


async def _inflate(reader: StreamReader, inflations: trio.CapacityLimiter) -> StreamMessage:
    """Run the stream's decompression in steps of :data:`INFLATE_STEP` codes, one
    stream at a time, with a checkpoint after each step."""
    async with inflations:
        while True:
            message = reader.inflate(INFLATE_STEP)
            if message is not None:
                return message
            await trio.lowlevel.checkpoint()


async def _dial(
    action: SendStream, swim: Swim, inbox: trio.MemorySendChannel[_Input],
    limiter: trio.CapacityLimiter, joins: JoinRound, *, inflations: trio.CapacityLimiter,
) -> None:
    message: object | None = None
    failure: str | None = "timeout"
    with trio.move_on_at(action.deadline):
        try:
            async with limiter:
                stream = await trio.open_tcp_stream(*action.dst)
                async with stream:
                    await stream.send_all(action.data)
                    if action.expect_reply:
                        reader = StreamReader(swim.envelope, inflate_in_steps=True)
                        message = await _read_message(stream, reader, inflations)
                    failure = None
        except DecodeError as exc:
            failure = exc.reason
            joins.refusals.note(
                "stream_reply_refused", exc.reason, action.dst,
                counter="stream_replies_refused", detail=f"purpose={action.purpose or 'none'}",
            )
        except (OSError, trio.BrokenResourceError) as exc:
            failure = "unreachable"
            logger.debug("stream_failed peer=%s:%d error=%s", action.dst[0], action.dst[1], exc)
    if action.purpose == StreamPurpose.JOIN.value:
        joins.finished(action.dst, failure)
    if action.expect_reply:
        await inbox.send(_StreamReply(action.token, message))


async def _run_owner(
    swim: Swim, inbox: trio.MemoryReceiveChannel[_Input], send: trio.MemorySendChannel[_Input],
    transport: Transport, membership: Membership, *, inflations: trio.CapacityLimiter,
) -> None:
    limiter = trio.CapacityLimiter(MAX_STREAMS)
    refusals = membership.refusals
    joins = JoinRound(refusals)
    async with trio.open_nursery() as dialers:
        while True:
            batch: list[_Input] = []
            with trio.move_on_at(swim.next_deadline()):
                batch.append(await inbox.receive())
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(inbox.receive_nowait())
                except trio.WouldBlock:
                    break
            # what the kernel holds counts before any deadline is judged (a stall)
            batch.extend(_Packet(src, data) for src, data in transport.receive_waiting())
            now = trio.current_time()
            for item in batch:
                _feed(swim, item, now, refusals)
            swim.tick(now)
            for action in swim.drain_outbox():
                if isinstance(action, SendPacket):
                    await transport.send_packet(action.dst, action.data)
                else:
                    if action.purpose == StreamPurpose.JOIN.value:
                        joins.started()
                    dialers.start_soon(
                        partial(_dial, action, swim, send, limiter, joins, inflations=inflations)
                    )
            for event in swim.drain_events():
                _log_event(swim.name, event)
                membership._publish(event)
            membership._stepped()


def _feed(swim: Swim, item: _Input, now: float, refusals: Refusals) -> None:
    if isinstance(item, _Packet):
        refused = swim.receive_packet(now, item.src, item.data)
        if refused in HINTS:  # a config mismatch: say it (swim counts dropped_<reason>)
            refusals.note("packet_refused", refused, item.src)
    elif isinstance(item, _StreamRequest):
        reply = swim.receive_stream(now, item.src, item.message)  # type: ignore[arg-type]
        try:
            item.reply.send_nowait(reply)
        except (trio.WouldBlock, trio.BrokenResourceError):
            pass
    elif isinstance(item, _StreamReply):
        if item.message is None:
            swim.stream_failed(now, item.token)
        else:
            swim.receive_stream_reply(now, item.token, item.message)  # type: ignore[arg-type]
    else:
        item.action(swim, now)


_EVENT_LEVEL = {
    EventKind.SUSPECTED: logging.WARNING,
    EventKind.FAILED: logging.WARNING,
    EventKind.REAPED: logging.DEBUG,
}


def _log_event(local: str, event: MemberEvent) -> None:
    member = event.member
    if member.name == local and event.previous is None:
        return
    logger.log(
        _EVENT_LEVEL.get(event.kind, logging.INFO),
        "member_%s member=%s peer=%s:%d incarnation=%d previous=%s accuser=%s",
        event.kind.value, member.name, member.address[0], member.address[1],
        member.incarnation, event.previous.label if event.previous is not None else "none",
        event.accuser or "none",
    )
