"""The client WebSocket server: sockets, the shell around ``websocket`` and ``client_proto``.

Built for many mostly idle connections and for many small writes to different ones, on
plain non-blocking sockets and trio's low-level waits (a general WebSocket library cost
here 33 KiB and five tasks per idle connection, and a task switch plus a lock per write):

* one **task per connection** reads the opening handshake (``websocket.py``) and the
  hello, and handles every message through the connection's
  :class:`~node.client_proto.ClientConnection`; with nothing to do it **parks** with the
  quiet reader (``client_conn.py``): one task reads every parked socket that is readable
  and handles on the spot what needs no waiting (acks, pings, QoS 0 sends), and hands
  the rest (the closing handshake, the end of the stream, a violation that ends the
  connection) back to the connection's task;
* **writes do not wait**: one flusher for the node packs each session's queue into a
  frame and hands it to the kernel, a frame at a time, and **a client that does not
  read is closed**
  (4008): the output side, in ``client_out.py``.

The sessions themselves, by user and by topic, live in ``clients.py``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from . import websocket as ws
from .client_accept import accept_loop, listen
from .client_conn import NO_FRAMES, Connection, Gone, QuietReader
from .client_out import ClientOutput
from .client_proto import (
    CLOSE_NORMAL, ClientConnection, Hello, Limits, Ping, Request, SendTo, Subscribe,
    Unsubscribe, Violation,
)
from .clients import ClientSession, LocalClients, Object
from .config import Config
from .routing import Parked

logger = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 10.0  # the opening handshake must be done within this
CLOSE_TIMEOUT = 2.0  # how long a closing connection waits for the client's close frame
RECEIVE_BYTES = 65536
#: sessions torn down at once. A mass disconnect (a load balancer restarting, a network
#: blip, a load generator exiting) ends thousands of connections in one pass of the event
#: loop, and each teardown (detach, presence, resume parking, its log line: ~70 µs) ran
#: in that same pass: 10,000 held the loop for 0.5-1 s, long enough for peers to suspect
#: the node. Beyond this many the others wait their turn, between the node's other tasks
#: (accepts are one per pass already)
TEARDOWNS = 64

#: What the node does with requests beyond the protocol's own (routing, upstream); the
#: server answers the client with whatever object the handler returns (or nothing).
RequestHandler = Callable[[ClientSession, Request], "Object | None"]
#: Resume a session after a short disconnect: what was kept of it, or None if it cannot be.
ResumeHandler = Callable[[Hello], Awaitable["Parked | None"]]
#: Start a QoS 1 send; the node calls ``answer`` once with the frame for the client when
#: the message is durable on R nodes or cannot be (no task waits per message meanwhile).
DurableSender = Callable[[ClientSession, SendTo, Callable[[Object], None]], None]
#: QoS 1 sends one connection may have waiting for durability at once
SENDS_IN_FLIGHT = 256


class ClientServer:
    def __init__(self, config: Config, clients: LocalClients, handle: RequestHandler,
                 resume: ResumeHandler, send_durable: DurableSender) -> None:
        self.config = config
        self.node_name = config.name
        self.clients = clients
        self.handle = handle
        self.resume = resume
        self.send_durable = send_durable
        self.limits = Limits(
            max_frame=config.max_frame, rate=config.client_rate, burst=config.client_burst,
            max_subscriptions=config.max_subscriptions, heartbeat=config.heartbeat,
            max_ttl=config.max_ttl, tokens_without_exp=config.allow_tokens_without_exp)
        self._secret = (config.token_secret or "").encode()
        self._ids = itertools.count(1)
        self._teardowns = trio.CapacityLimiter(TEARDOWNS)
        #: what is written to the connections, bounded (``client_out.py``)
        self.output = ClientOutput(self.limits, clients.counters)
        #: connections with nothing to do wait here; its set closes when ``serve`` ends
        self.reader = QuietReader(self._parked_readable)

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listener = listen(self.config.client_addr, self.config.client_port or 0)
        with listener, self.reader:  # the reader's set closes after every connection
            address = listener.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.reader.run)
                await nursery.start(self.output.run)
                nursery.start_soon(accept_loop, listener, self.clients.counters, partial(
                    self._start, nursery))
                logger.info("client_listening address=%s:%d", *address)
                task_status.started((str(address[0]), int(address[1])))
                await trio.sleep_forever()

    def _start(self, nursery: trio.Nursery, sock: socket.socket, remote: str) -> None:
        nursery.start_soon(self._connection, Connection(sock, remote))

    async def _connection(self, client: Connection) -> None:
        reason = "closed"
        try:
            reason = await self._converse(client)
        except Gone as gone:
            reason = gone.reason
            if gone.code is not None:  # answer the client's close frame
                self.output.send_close(client, ws.NORMAL if gone.code == 1005 else gone.code)
        except ws.ProtocolError as exc:
            reason = "protocol_error"
            self.clients.counters["client_protocol_errors"] += 1
            logger.info("client_protocol_error remote=%s reason=%r", client.remote, exc.reason)
            await self._close(client, exc.code, exc.reason)
        except Exception:  # the connection's boundary: one client never stops the node
            reason = "internal_error"
            logger.exception("client_handler_failed remote=%s", client.remote)
            await self._close(client, 1011, "internal error")
        finally:
            client.closed = True
            session = client.session
            if session is not None:
                session.closed = True  # nothing more is written to it meanwhile
                session.closed_reason = session.closed_reason or reason
                with trio.CancelScope(shield=True):  # a node stopping tears down too
                    async with self._teardowns:
                        self._tear_down(session)
            trio.lowlevel.notify_closing(client.sock)
            client.sock.close()
            client.release()

    def _tear_down(self, session: ClientSession) -> None:
        self.clients.counters["client_rewrites_skipped"] += session.rewrites_skipped
        self.clients.detach(session)
        logger.info("client_disconnected user=%s session=%s reason=%s dropped=%d",
                    session.user, session.session, session.closed_reason, session.dropped)

    # ---- one conversation ---------------------------------------------------------------

    async def _converse(self, client: Connection) -> str:
        """The conversation, in a scope that ends it early: a kick, or a client closed
        for not reading (``client_out``); then the closing handshake."""
        with trio.CancelScope() as client.scope:
            return await self._converse_in_scope(client)
        await self._close(client, CLOSE_NORMAL, "kicked")  # sent already if it was slow
        if client.slow:
            return "slow"
        return (client.session and client.session.closed_reason) or "closed"

    async def _converse_in_scope(self, client: Connection) -> str:
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            if not await self._handshake(client):
                return "refused"
        if client.machine is None:
            self.clients.counters["handshake_timeouts"] += 1
            return "handshake_timeout"
        machine = client.machine
        data = None
        with trio.move_on_after(self.limits.hello_timeout):
            data = await self._message(client)
        if data is None:
            self.clients.counters["hello_timeouts"] += 1
            await self._refuse(client, Violation(
                "unauthorized", f"no hello within {self.limits.hello_timeout:g} s", None, 1008))
            return "hello_timeout"
        events = machine.receive(time.time(), data)
        hello = events[0] if events else None
        if not isinstance(hello, Hello):
            self.clients.counters["hello_refused"] += 1
            logger.info("client_refused remote=%s reason=%r", client.remote,
                        getattr(hello, "reason", "no hello"))
            if isinstance(hello, Violation):
                await self._refuse(client, hello)
            return "refused"
        resumed = None
        if hello.session is not None:
            with trio.move_on_after(2.0):
                resumed = await self.resume(hello)
        topics = None if resumed is None else resumed.topics
        if topics is not None:
            machine.subscriptions.update(topics[:self.limits.max_subscriptions])
        session_id = hello.session if topics is not None else (
            f"{self.node_name}.{next(self._ids)}.{secrets.token_urlsafe(6)}")
        session = ClientSession(session_id, hello.user, hello.device, client.remote,
                                machine.subscriptions, notify=lambda _: self.output.mark(client),
                                limit=self.config.client_queue,
                                read_before=[hello.last_seq] if resumed is None else resumed.read)
        welcome = {"t": "welcome", "session": session.session, "user": session.user,
                   "node": self.node_name, "heartbeat": self.limits.heartbeat,
                   "resumed": topics is not None}
        if topics is not None:
            welcome["topics"] = sorted(machine.subscriptions)
        self.output.send(client, ws.message(machine.encode([welcome]) or ""))
        client.session = session
        self.clients.attach(session)
        logger.info("client_connected user=%s session=%s device=%s remote=%s",
                    session.user, session.session, session.device or "-", client.remote)
        return await self._read(client, session, machine, events[1:])

    async def _handshake(self, client: Connection) -> bool:
        data = b""
        while True:
            chunk = await self._receive(client)
            if not chunk:
                self.clients.counters["clients_gone_at_accept"] += 1
                return False
            data += chunk
            request = ws.parse_request(data)
            if request is None:
                continue
            if isinstance(request, ws.Refusal):
                self.clients.counters["handshakes_refused"] += 1
                logger.info("client_handshake_refused remote=%s status=%d reason=%r",
                            client.remote, request.status, request.reason)
                self.output.send(client, request.response())
                return False
            self.output.send(client, ws.accept_response(request.key))
            client.machine = ClientConnection(self._secret, time.time(), self.limits)
            if request.rest:
                client.parse(request.rest)
            return True

    async def _read(self, client: Connection, session: ClientSession, machine: ClientConnection,
                    pending: list[Request | Violation]) -> str:
        """Serve the client until it goes, breaks a limit or is silent for two heartbeats.

        The silence deadline is one cancel scope per quiet period, not one per message
        (that cost a tenth of a busy node): the scope ends at ``heard + idle``; when it
        fires and something was heard meanwhile, a new one starts from there. Whatever
        the deadline interrupts is safe to take up again: events wait in
        ``client.pending`` until handled, and bytes in the parser."""
        idle = self.limits.heartbeat * 2
        client.pending.extend(pending)
        client.heard = trio.current_time()
        while True:
            with trio.move_on_at(client.heard + idle):
                refusal = await self._serve(client, session, machine)
                await self._refuse(client, refusal)
                return refusal.code
            if trio.current_time() >= client.heard + idle:
                await self._close(client, CLOSE_NORMAL, f"silent for {idle:g} s")
                return "heartbeat_missed"

    async def _serve(self, client: Connection, session: ClientSession, machine: ClientConnection
                     ) -> Violation:
        """Handle the client's requests; returns the violation that ends the connection.
        With nothing to do, the connection parks with the quiet reader."""
        while True:
            stop = self._handle(client, session)
            if isinstance(stop, Violation):
                self.clients.counters[f"client_error_{stop.code}"] += 1
                return stop
            if stop:  # durable sends take milliseconds: at most SENDS_IN_FLIGHT at once
                client.room = trio.Event()
                await client.room.wait()
            elif client.inbox or client.failed is not None:
                data = await self._message(client)
                client.heard = trio.current_time()
                client.pending.extend(machine.receive(time.time(), data))
            else:
                await self.reader.park(client)

    def _handle(self, client: Connection, session: ClientSession) -> Violation | bool:
        """Handle the pending requests that need no waiting. Stops at (and leaves pending)
        a violation that ends the connection, returned, or a QoS 1 send beyond the
        connection's allowance (True); False when all are handled."""
        pending = client.pending
        while pending:
            event = pending[0]
            if isinstance(event, Violation):
                if event.close is not None:
                    return event
                self.clients.counters[f"client_error_{event.code}"] += 1
                session.offer(event.frame())
            elif isinstance(event, SendTo) and event.qos == 1:
                # answered as each becomes durable, many at once per connection
                if client.in_flight >= SENDS_IN_FLIGHT:
                    return True
                client.in_flight += 1
                self.send_durable(session, event, partial(self._sent, client, session))
            else:
                self._offer_answer(session, self._answer(session, event))
            del pending[0]
        return False

    def _parked_readable(self, client: Connection) -> bool:
        """The quiet reader found a parked connection's socket readable: read once and
        handle what needs no waiting. False hands the connection back to its task."""
        try:
            data = client.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            client.failed = Gone("client_closed")
            return False
        try:
            frames = client.parser.feed(data)
        except ws.ProtocolError as exc:
            client.failed = exc
            return False
        machine = client.machine
        assert machine is not None and client.session is not None, "parked before the hello"
        for index, (opcode, payload) in enumerate(frames):
            if opcode in (ws.TEXT, ws.BINARY):
                client.heard = trio.current_time()
                client.pending.extend(machine.receive(time.time(), payload))
            elif opcode in (ws.PING, ws.PONG):
                try:
                    self._control(client)
                except ws.ProtocolError as exc:
                    client.failed = exc
                    return False
                if opcode == ws.PING:
                    client.pong = payload  # type: ignore[assignment]
            else:  # the closing handshake is the task's
                client.inbox = deque(frames[index:])
                self.output.pong(client)
                return False
        self.output.pong(client)
        return self._handle(client, client.session) is False

    def _sent(self, client: Connection, session: ClientSession, answer: Object) -> None:
        """A QoS 1 send of this connection is answered."""
        client.in_flight -= 1
        if client.room is not None:
            client.room.set()
            client.room = None
        self._offer_answer(session, answer)

    def _offer_answer(self, session: ClientSession, answer: Object | None) -> None:
        if answer is not None and not session.offer(answer):
            self.clients.counters["answers_dropped"] += 1

    def _answer(self, session: ClientSession, event: Request) -> Object | None:
        if isinstance(event, Ping):
            return {"t": "pong", **({"ref": event.ref} if event.ref else {})}
        if isinstance(event, Subscribe):
            self.clients.subscribe(session, event.topics)
            return {"t": "subbed", "topics": list(event.topics)}
        if isinstance(event, Unsubscribe):
            self.clients.unsubscribe(session, event.topics)
            return {"t": "unsubbed", "topics": list(event.topics)}
        return self.handle(session, event)

    # ---- reading ------------------------------------------------------------------------

    async def _receive(self, client: Connection) -> bytes:
        """The next bytes from the socket; b"" once the client has gone. Yields once: by
        waiting, or after reading what was there (a flood cannot hog the node)."""
        waited = False
        while True:
            try:
                data = client.sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(client.sock)
                waited = True
                continue
            except OSError:
                return b""
            if not waited:  # a flood never waits: a kick or a slow close must still end it
                await trio.lowlevel.checkpoint_if_cancelled()
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _message(self, client: Connection) -> bytes | str:
        """The next data message; answers pings on the way. Raises :class:`Gone` when
        the client closes or goes, ``ws.ProtocolError`` when it breaks the protocol."""
        while True:
            if client.failed is not None:  # met by the quiet reader: raised once
                failed, client.failed = client.failed, None
                try:
                    raise failed
                finally:  # else this frame, in the exception's traceback, holds it: a cycle
                    del failed
            while client.inbox:
                opcode, payload = client.inbox.popleft()  # type: ignore[union-attr]
                if not client.inbox:
                    client.inbox = NO_FRAMES  # parked with none: no empty deque kept
                if opcode in (ws.TEXT, ws.BINARY):
                    self.output.pong(client)
                    return payload
                if opcode == ws.PING:
                    self._control(client)
                    client.pong = payload  # type: ignore[assignment]
                elif opcode == ws.PONG:
                    self._control(client)
                elif opcode == ws.CLOSE:
                    raise Gone("client_closed", ws.close_code(payload))  # type: ignore[arg-type]
            self.output.pong(client)
            data = await self._receive(client)
            if not data:
                raise Gone("client_closed")
            client.parse(data)

    def _control(self, client: Connection) -> None:
        """A ping or pong from the client: hearing from it, like any frame, and one
        object against its rate (each ping costs a pong: a flood of empty pings, 6 bytes
        each, cost the loop ~50 ms per read, and the kernel's buffers took megabytes of
        pongs before the output bound saw any). Raises ``ws.ProtocolError`` (1008)
        beyond the rate."""
        client.heard = trio.current_time()
        machine = client.machine
        if machine is not None and not machine.control(time.time()):
            self.clients.counters["client_error_rate_limited"] += 1
            raise ws.ProtocolError(ws.POLICY, f"more than {self.limits.rate:g} pings/s")

    # ---- closing ------------------------------------------------------------------------

    async def _refuse(self, client: Connection, violation: Violation) -> None:
        """An error frame after everything already queued, then the close."""
        if client.session is not None:
            client.session.offer(violation.frame())
            self.output.flush(client)
        elif client.machine is not None:
            self.output.send(client, ws.message(client.machine.encode([violation.frame()]) or ""))
        await self._close(client, violation.close or 1008, violation.reason)

    async def _close(self, client: Connection, code: int, reason: str) -> None:
        """The closing handshake: our close frame once all before it is written, then
        (bounded) the client's, after which the caller closes the socket."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.output.written(client)
        self.output.send_close(client, code, reason)
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                while True:  # what the client still sends is dropped
                    await self._message(client)
            except (Gone, ws.ProtocolError):
                pass

