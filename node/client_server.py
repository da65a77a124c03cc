"""The client WebSocket server (trio-websocket): the shell around ``client_proto``.

Each connection runs two tasks in its own nursery (a failure ends only that connection):

* the **reader** feeds every WebSocket message to the connection's
  :class:`~node.client_proto.ClientConnection` and acts on what comes out;
* the **writer** drains the connection's bounded queue and packs everything queued into
  one frame (one ``send_message`` per object caps a node near 9 k messages/s here; packed
  writes are several times faster). When the queue is full, QoS 0 messages for that
  client are dropped and counted: a slow client never slows anyone else.

The sessions themselves, by user and by topic, live in ``clients.py``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from .client_proto import (
    CLOSE_NORMAL, ClientConnection, Hello, Limits, Ping, Request, SendTo, Subscribe,
    Unsubscribe, Violation,
)
from .clients import ClientSession, LocalClients, Object
from .config import Config

logger = logging.getLogger(__name__)
#: trio-websocket refuses messages above this outright (close 1009, no error frame); below
#: it and above ``Config.max_frame`` the client gets a ``too_large`` error frame first
WS_MAX_MESSAGE = 1024 * 1024
#: messages trio-websocket reads ahead per connection (its default of 1 costs a task
#: switch per message under load; the rate limit still bounds what a client can queue)
MESSAGE_QUEUE = 8


#: What the node does with requests beyond the protocol's own (routing, upstream); the
#: server answers the client with whatever object the handler returns (or nothing).
RequestHandler = Callable[[ClientSession, Request], Awaitable["Object | None"]]
#: Resume a session after a short disconnect: its topics, or None if it cannot be resumed.
ResumeHandler = Callable[[Hello], Awaitable["list[str] | None"]]
#: QoS 1 sends one connection may have waiting for durability at once
SENDS_IN_FLIGHT = 256
#: A connection that ended for one of these may come back and resume.
RESUMABLE = ("client_closed", "heartbeat_missed")


class ClientServer:
    def __init__(self, config: Config, clients: LocalClients, handle: RequestHandler,
                 resume: ResumeHandler) -> None:
        self.config = config
        self.node_name = config.name
        self.clients = clients
        self.handle = handle
        self.resume = resume
        self.limits = Limits(
            max_frame=config.max_frame, rate=config.client_rate, burst=config.client_burst,
            max_subscriptions=config.max_subscriptions, heartbeat=config.heartbeat,
        )
        self._secret = (config.token_secret or "").encode()
        self._ids = itertools.count(1)

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: serve_websocket(
                self._accept, self.config.client_addr, self.config.client_port or 0, None,
                max_message_size=WS_MAX_MESSAGE, connect_timeout=10, disconnect_timeout=5,
                message_queue_size=MESSAGE_QUEUE,
                task_status=task_status,
            ))
            endpoint = server.listeners[0]
            address = (str(endpoint.address), int(endpoint.port))
            logger.info("client_listening address=%s:%d", *address)
            task_status.started(address)

    async def _accept(self, request: WebSocketRequest) -> None:
        try:
            ws = await request.accept()
            endpoint = ws.remote  # getpeername: fails once the client has reset
            remote = f"{endpoint.address}:{endpoint.port}"  # type: ignore[union-attr]
        except (ConnectionClosed, OSError, trio.BrokenResourceError) as exc:
            self.clients.counters["clients_gone_at_accept"] += 1
            logger.debug("client_gone_at_accept reason=%r", str(exc))
            return
        try:
            try:
                await self._converse(ws, remote)
            except BaseExceptionGroup as group:  # from the reader/writer nursery
                _, rest = group.split(ConnectionClosed)  # leaves only, however nested
                if rest is not None:
                    raise rest from None
        except ConnectionClosed:
            pass  # the client went away: nothing to answer
        except Exception:  # the connection's boundary: one client never stops the node
            logger.exception("client_handler_failed remote=%s", remote)
            await ws.aclose(1011, "internal error")

    async def _converse(self, ws: WebSocketConnection, remote: str) -> None:
        machine = ClientConnection(self._secret, time.time(), self.limits)
        data: bytes | str | None = None
        with trio.move_on_after(self.limits.hello_timeout):
            data = await ws.get_message()
        if data is None:
            self.clients.counters["hello_timeouts"] += 1
            await _refuse(ws, machine, Violation("unauthorized", "no hello within "
                                                 f"{self.limits.hello_timeout:g} s", None, 1008))
            return
        events = machine.receive(time.time(), data)
        hello = events[0] if events else None
        if not isinstance(hello, Hello):
            self.clients.counters["hello_refused"] += 1
            logger.info("client_refused remote=%s reason=%r", remote,
                        getattr(hello, "reason", "no hello"))
            if isinstance(hello, Violation):
                await _refuse(ws, machine, hello)
            return
        topics = None
        if hello.session is not None:
            with trio.move_on_after(2.0):
                topics = await self.resume(hello)
        if topics is not None:
            machine.subscriptions.update(topics[:self.limits.max_subscriptions])
        send, receive = trio.open_memory_channel[Object](self.config.client_queue)
        session_id = hello.session if topics is not None else (
            f"{self.node_name}.{next(self._ids)}.{secrets.token_urlsafe(6)}")
        session = ClientSession(session_id, hello.user, hello.device, remote, send,
                                machine.subscriptions)
        welcome = {"t": "welcome", "session": session.session, "user": session.user,
                   "node": self.node_name, "heartbeat": self.limits.heartbeat,
                   "resumed": topics is not None}
        if topics is not None:
            welcome["topics"] = sorted(machine.subscriptions)
        await ws.send_message(machine.encode([welcome]))
        self.clients.attach(session)
        logger.info("client_connected user=%s session=%s device=%s remote=%s",
                    session.user, session.session, session.device or "-", remote)
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                written = trio.Event()
                nursery.start_soon(self._write, ws, machine, session, receive, written)
                reason, violation = await self._read(ws, machine, session, events[1:], nursery)
                if violation is not None:
                    # the error goes after everything already queued, then we close
                    session.offer(violation.frame())
                    send.close()
                    with trio.move_on_after(2):
                        await written.wait()
                    await _refuse(ws, machine, violation, frame=False)
                nursery.cancel_scope.cancel()
        finally:
            session.closed_reason = session.closed_reason or reason
            self.clients.detach(session)
            logger.info("client_disconnected user=%s session=%s reason=%s dropped=%d",
                        session.user, session.session, session.closed_reason, session.dropped)

    async def _read(self, ws: WebSocketConnection, machine: ClientConnection,
                    session: ClientSession, pending: list[Request | Violation],
                    nursery: trio.Nursery) -> tuple[str, Violation | None]:
        idle = self.limits.heartbeat * 2
        in_flight = trio.Semaphore(SENDS_IN_FLIGHT)
        while True:
            for event in pending:
                if isinstance(event, Violation):
                    self.clients.counters[f"client_error_{event.code}"] += 1
                    if event.close is not None:
                        return event.code, event
                    session.offer(event.frame())
                    continue
                if isinstance(event, SendTo) and event.qos == 1:
                    # durable sends take milliseconds: answer them as they complete, many
                    # at once per connection, instead of one after the other
                    await in_flight.acquire()
                    nursery.start_soon(self._answer_later, session, event, in_flight)
                    continue
                self._offer_answer(session, await self._answer(session, event))
            with trio.move_on_after(idle):
                try:
                    data = await ws.get_message()
                except ConnectionClosed:
                    return "client_closed", None
                pending = machine.receive(time.time(), data)
                continue
            await ws.aclose(CLOSE_NORMAL, f"silent for {idle:g} s")
            return "heartbeat_missed", None

    async def _answer_later(self, session: ClientSession, event: Request,
                            in_flight: trio.Semaphore) -> None:
        try:
            self._offer_answer(session, await self._answer(session, event))
        finally:
            in_flight.release()

    def _offer_answer(self, session: ClientSession, answer: Object | None) -> None:
        if answer is not None and not session.offer(answer):
            self.clients.counters["answers_dropped"] += 1

    async def _answer(self, session: ClientSession, event: Request) -> Object | None:
        if isinstance(event, Ping):
            return {"t": "pong", **({"ref": event.ref} if event.ref else {})}
        if isinstance(event, Subscribe):
            self.clients.subscribe(session, event.topics)
            return {"t": "subbed", "topics": list(event.topics)}
        if isinstance(event, Unsubscribe):
            self.clients.unsubscribe(session, event.topics)
            return {"t": "unsubbed", "topics": list(event.topics)}
        return await self.handle(session, event)

    async def _write(self, ws: WebSocketConnection, machine: ClientConnection,
                     session: ClientSession, outbox: trio.MemoryReceiveChannel[Object],
                     written: trio.Event) -> None:
        batch_limit = self.limits.max_batch
        async for first in outbox:
            batch = [first]
            while len(batch) < batch_limit:
                try:
                    batch.append(outbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            session.wrote(batch)  # before the write: an ack may be read before it returns
            await ws.send_message(machine.encode(batch))
            kick = next((obj for obj in batch if obj.get("t") == "kick"), None)
            if kick is not None:
                session.closed_reason = "kicked"
                await ws.aclose(CLOSE_NORMAL, str(kick.get("reason", "kicked"))[:120])
                return
        written.set()  # the outbox was closed and everything in it is sent


async def _refuse(ws: WebSocketConnection, machine: ClientConnection, violation: Violation,
                  *, frame: bool = True) -> None:
    """Tell the client why (unless the error frame went already), then close."""
    with trio.move_on_after(2):
        try:
            if frame:
                await ws.send_message(machine.encode([violation.frame()]))
            await ws.aclose(violation.close or 1008, violation.reason[:120])
        except ConnectionClosed:
            pass
