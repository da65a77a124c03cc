"""The output side of client connections: what the node writes to each, bounded.

* **writes do not wait**: :meth:`~node.clients.ClientSession.offer` queues an object
  and, on the first, marks the session (``mark``); one **flusher** task packs each
  marked session's queue into a frame and hands it to the kernel, **one frame at a
  time**: the next only once the socket took all of the one before (a batch that goes
  in several frames keeps the rest on the connection, ``later``). Only a connection
  whose socket is full gets a task that waits to write more (``_drain``); meanwhile its
  queue fills, then drops QoS 0 objects (counted).
* **a client that does not read is closed** (``CLOSE_SLOW``, counted as
  ``clients_closed_slow``, logged once): when what waits behind the frame its socket
  is taking passes ``OUT_LIMIT`` — only what is written on the spot can be there
  (WebSocket pongs, refusals before the hello, the close frame): a frame of the queue
  is written only into an empty ``out`` — or when its socket has taken nothing for two
  heartbeats while output waits. Everything else it is sent waits in its session's
  bounded queue.
* **a QoS 1 message counts as written** (``ClientSession.on_socket``; an attempt if the
  connection ends unacked) once its frame has left ``out`` whole for the socket.
* **a kick** (``ClientSession.kick``) is never dropped at a full queue: it is written
  once the queue is, or at once behind what the socket is taking if the socket takes
  nothing more now; then the node's close frame, and the conversation is cancelled.

What the socket did not take yet waits in the connection's ``out`` (``client_conn.py``);
``client_server.py`` reads the connections and calls ``send``, ``pong``, ``flush``,
``send_close`` and ``written`` (its closing handshake).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import trio

from . import websocket as ws
from .client_conn import Connection
from .client_proto import CLOSE_NORMAL, Limits

logger = logging.getLogger(__name__)
#: bytes a connection may have waiting behind the frame its socket is taking (a frame of
#: the queue is only written once the socket took the last one whole, so only what is
#: written on the spot lands there: pongs, error frames before a hello, the close frame);
#: beyond it, the client is not reading and is closed. A reader that is slow but moving
#: never gets near it, whatever its socket buffers: its messages wait in the session's
#: queue (which drops, counted, when full) or in the rest of a batch (``later``)
OUT_LIMIT = 256 * 1024
#: heartbeats a connection's socket may take nothing while output waits for it before the
#: client is closed as not reading (as long as the node waits for a silent client to speak)
WRITE_STALL_HEARTBEATS = 2
#: the close code for a client that does not read what it is sent (docs/protocol.md)
CLOSE_SLOW = 4008
#: sessions the flusher serves between checkpoints
FLUSH_SLICE = 256


class ClientOutput:
    """The flusher, the tasks that wait for full sockets (``run``), and the bounds on
    what waits for a client."""

    def __init__(self, limits: Limits, counters: Counter[str]) -> None:
        self.limits = limits
        self.counters = counters  # the clients' (``LocalClients.counters``)
        self.write_timeout = limits.heartbeat * WRITE_STALL_HEARTBEATS
        self._marked: list[Connection] = []
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The flusher; the tasks that drain full sockets run in here too."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._flush_marked()  # its locals go with it: no connection is kept

    def mark(self, client: Connection) -> None:
        """A first object waits in the client's queue: the flusher will write it."""
        self._marked.append(client)
        self._wake.set()

    async def _flush_marked(self) -> None:
        marked, self._marked = self._marked, []
        for served, client in enumerate(marked, 1):
            self.flush(client)
            if served % FLUSH_SLICE == 0:
                await trio.lowlevel.checkpoint()

    def flush(self, client: Connection) -> None:
        """Write what the client's session has queued, one frame at a time, as long as
        its socket takes each whole; then its kick, if one came."""
        session, machine = client.session, client.machine
        if session is None or machine is None:
            return
        while not client.out and not client.closed and not client.close_sent:
            if client.later:  # the rest of a batch that went in several frames
                data, noted = client.later.pop(0)
                client.later_noted -= noted
            elif session.queue:
                # its QoS 1 messages noted as written (what the connection carries already is
                # dropped), on the socket once their frame has left ``out`` whole
                batch = session.wrote(session.take(self.limits.max_batch))
                if not batch:
                    continue
                frames = machine.frames(batch)  # bounded in bytes too (client_proto.OUT_FRAME)
                if frames is None:  # logged; noted as written: end it, so no later ack covers it
                    session.kick = {"t": "kick", "reason": "a message could not be encoded"}
                    break
                data = ws.message(frames[0][0])
                if len(frames) > 1:
                    self._keep_rest(client, batch, frames)
            else:
                break
            self.send(client, data)
            if client.closed:
                return
            if client.out:  # its QoS 1 messages are written once it has left ``out``
                client.queue_partial = True
            else:
                session.on_socket(client.later_noted)
        if session.kick is not None:
            self._kick(client)

    @staticmethod
    def _keep_rest(client: Connection, batch: list[Any],
                   frames: list[tuple[bytes | str, int]]) -> None:
        """The frames after the first of a batch, for ``flush`` to write one at a time,
        each with how many QoS 1 messages (noted by ``wrote``) it carries."""
        start = frames[0][1]
        for data, count in frames[1:]:
            noted = sum(1 for obj in batch[start:start + count]
                        if type(obj) is dict and obj.get("qos") == 1
                        and isinstance(obj.get("seq"), int))
            client.later.append((ws.message(data), noted))
            client.later_noted += noted
            start += count

    def _kick(self, client: Connection) -> None:
        """End the conversation with the session's kick (``flush`` calls it once all
        queued before it is written, or once the socket takes nothing more for the
        moment: a kick must reach a client that does not read fast, behind what its
        socket is taking). What is still queued is not written (its QoS 1 messages stay
        with their owner)."""
        session, machine = client.session, client.machine
        if (session is None or machine is None or session.kick is None or client.closed
                or client.close_sent):
            return
        kick = session.kick
        session.closed_reason = "kicked"
        session.queue.clear()
        client.later.clear()
        client.later_noted = 0
        data = machine.encode([kick]) or machine.encode(
            [{"t": "kick", "reason": "kicked"}]) or ""
        # small (an API kick's reason is at most 200 characters): never "not reading"
        self.send(client, ws.message(data), closing=True)
        self.send_close(client, CLOSE_NORMAL, str(kick.get("reason", "kicked")))
        if client.scope is not None:
            client.scope.cancel()

    def pong(self, client: Connection) -> None:
        """Answer the last ping read, if it is not answered yet."""
        if client.pong is not None:
            self.send(client, ws.frame(ws.PONG, client.pong))
            client.pong = None

    def send(self, client: Connection, data: bytes, *, closing: bool = False) -> None:
        """Hand ``data`` (whole frames) to the socket now; what it does not take waits in
        ``out``. More than ``OUT_LIMIT`` waiting behind the frame the socket is taking
        closes the client as not reading (the close frame alone may go beyond)."""
        if client.closed or client.close_sent:
            return
        out = client.out
        if out:
            if not closing and len(out) - client.partial + len(data) > OUT_LIMIT:
                self._slow(client, f"over {OUT_LIMIT} bytes waiting")
                return
            out += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset: the reading task finds out and ends the connection
            client.closed = True
            return
        if sent < len(data):
            out += data[sent:]
            client.partial = len(out)
            if not client.draining and self._nursery is not None:
                client.draining = True
                self._nursery.start_soon(self._drain, client)

    def send_close(self, client: Connection, code: int, reason: str = "") -> None:
        """Our close frame, once; nothing is written after it."""
        if not client.close_sent:
            self.send(client, ws.close_frame(code, reason), closing=True)  # reason cut there
            client.close_sent = True

    def _slow(self, client: Connection, why: str) -> None:
        """The client does not read what it is sent: close it (once), counted and logged.
        What waits for it stays (it is written if the client reads again before the
        closing handshake ends), our close frame behind it; nothing is acked or dropped
        here: its QoS 1 messages stay with their owner until read."""
        if client.slow or client.closed or client.close_sent:
            return
        client.slow = True
        session = client.session
        self.counters["clients_closed_slow"] += 1
        logger.warning("client_closed_slow user=%s session=%s remote=%s buffered=%d "
                       "queued=%d reason=%r", session.user if session else "-",
                       session.session if session else "-", client.remote, len(client.out),
                       len(session.queue) if session else 0, why)
        if session is not None:
            session.closed = True  # nothing more is queued for it
            session.closed_reason = "slow"
        self.send_close(client, CLOSE_SLOW, f"not reading: {why}")
        if client.scope is not None:
            client.scope.cancel()

    async def _drain(self, client: Connection) -> None:
        """Write ``out`` as the socket takes it, then whatever queued meanwhile. A socket
        that takes nothing for ``write_timeout`` closes the client as not reading; any
        byte taken starts the wait again (a slow reader that moves is never cut)."""
        try:
            while client.out and not client.closed:
                with trio.move_on_after(math.inf if client.slow else self.write_timeout
                                        ) as waiting:
                    await trio.lowlevel.wait_writable(client.sock)
                if waiting.cancelled_caught:
                    self._slow(client, f"nothing taken for {self.write_timeout:g} s")
                    continue
                try:
                    sent = client.sock.send(client.out)
                except BlockingIOError:
                    continue
                del client.out[:sent]
                client.partial = max(0, client.partial - sent)
                if client.queue_partial and not client.partial:  # a queue frame left whole
                    client.queue_partial = False
                    if client.session is not None:
                        client.session.on_socket(client.later_noted)
                if not client.out:
                    self.flush(client)
        except (OSError, trio.ClosedResourceError):
            client.closed = True
        finally:
            client.draining = False
            if client.drained is not None:
                client.drained.set()

    async def written(self, client: Connection) -> None:
        """Wait until everything queued for the client is on its socket (the caller
        bounds it)."""
        self.flush(client)
        if client.out and not client.closed:
            client.drained = trio.Event()
            await client.drained.wait()
