"""The output side of client connections: what the node writes to each, bounded.

* **writes do not wait**: :meth:`~node.clients.ClientSession.offer` queues an object
  and, on the first, marks the session (``mark``); one **flusher** task packs each
  marked session's queue into one frame and hands it to the kernel. Only a connection
  whose socket is full gets a task that waits to write more (``_drain``); meanwhile its
  queue fills, then drops QoS 0 objects (counted).
* **a client that does not read is closed** (``CLOSE_SLOW``, counted as
  ``clients_closed_slow``, logged once): when what waits behind the frame its socket
  is taking (answers written on the spot: WebSocket pongs, refusals) passes
  ``OUT_LIMIT``, or when its socket has taken nothing for two heartbeats while output
  waits. Everything else it is sent waits in its session's bounded queue.

What the socket did not take yet waits in the connection's ``out`` (``client_conn.py``);
``client_server.py`` reads the connections and calls ``send``, ``pong``, ``flush``,
``send_close`` and ``written`` (its closing handshake).
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import trio

from . import websocket as ws
from .client_conn import Connection
from .client_proto import CLOSE_NORMAL, Limits

logger = logging.getLogger(__name__)
#: bytes a connection may have waiting behind the frame its socket is taking (the queue is
#: only packed into a frame once the socket took the last one, so only what is written on
#: the spot lands there: pongs, error frames before a hello, the close frame); beyond it,
#: the client is not reading and is closed. A reader that is slow but moving never gets
#: near it: its messages wait in the session's queue, which drops (counted) when full
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
        """Write what the client's session has queued, a batch per frame, as long as its
        socket takes it."""
        session, machine = client.session, client.machine
        if session is None or machine is None:
            return
        while session.queue and not client.out and not client.closed and not client.close_sent:
            # noted before the write: an ack may be read before it returns
            batch = session.wrote(session.take(self.limits.max_batch))
            if not batch:
                continue
            frames = machine.frames(batch)  # bounded in bytes too (client_proto.OUT_FRAME)
            if frames is None:  # logged; noted as written: end it, so no later ack covers it
                batch = [{"t": "kick", "reason": "a message could not be encoded"}]
                frames = [machine.encode(batch) or ""]
            for data in frames:
                self.send(client, ws.message(data))
            kick = next((obj for obj in batch if type(obj) is dict and obj.get("t") == "kick"),
                        None)
            if kick is not None:
                session.closed_reason = "kicked"
                self.send_close(client, CLOSE_NORMAL, str(kick.get("reason", "kicked")))
                if client.scope is not None:
                    client.scope.cancel()
                session.queue.clear()
                return

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
