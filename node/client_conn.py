"""A client connection's state, and one reader for every connection that waits for its
client's next message.

A connection's task used to wait for its socket itself: each message a client sent (an
ack, most of the time) cost a task step of its own and an ``epoll_ctl`` to wait again —
at QoS 1 under load, a third of the receiving node's core for the acks of 1,000 clients.
Now a connection with nothing to do **parks**: its socket joins one epoll set (level
triggered, registered once per quiet spell), and one task reads every socket that set
finds readable, a slice at a time, handing each one's bytes to ``readable(client)``,
which handles what needs no waiting (acks, pings, QoS 0 sends, subscriptions) on the
spot. Anything else — the closing handshake, the end of the stream, a violation that
ends the connection, a QoS 1 send beyond the connection's allowance — hands the
connection back to its own task, which carries on as before and parks again after.

A socket is only ever closed by its own task, after it has left the set: an fd that is
reused by the next accept cannot be mistaken for the old connection.
"""

from __future__ import annotations

import logging
import select
import socket
from collections import deque
from collections.abc import Callable

import trio

from . import websocket as ws
from .client_proto import ClientConnection, Request, Violation
from .clients import ClientSession

logger = logging.getLogger(__name__)

#: Messages above this are refused outright (close 1009, no error frame); below it and
#: above ``Config.max_frame`` the client gets a ``too_large`` error frame first.
WS_MAX_MESSAGE = 1024 * 1024
#: sockets read per turn of the reader: a burst of thousands (a mass disconnect, every
#: client answering one broadcast) is read over several passes of the event loop
SLICE = 256


#: a connection's inbox with no frame waiting (shared: not one empty deque each)
NO_FRAMES: tuple[()] = ()


class Gone(Exception):
    """The client's TCP connection ended (EOF or an error), or it sent a close frame."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code  # of the client's close frame, if it sent one


class Connection:
    """One accepted client TCP connection: its socket, parser, what it sent that is not
    handled yet and what waits to be written (``client_server.py`` serves it,
    ``client_out.py`` writes to it)."""

    __slots__ = (
        "close_sent",
        "closed",
        "drained",
        "draining",
        "failed",
        "heard",
        "in_flight",
        "inbox",
        "later",
        "later_noted",
        "machine",
        "out",
        "parser",
        "partial",
        "pending",
        "pong",
        "queue_partial",
        "remote",
        "room",
        "scope",
        "session",
        "slow",
        "sock",
    )

    def __init__(self, sock: socket.socket, remote: str) -> None:
        self.sock = sock
        self.remote = remote
        self.parser = ws.FrameParser(WS_MAX_MESSAGE)
        #: parsed, not yet handled: a deque while frames wait, else ``NO_FRAMES`` (an
        #: empty deque is 624 bytes; most connections wait with none)
        self.inbox: deque[tuple[int, bytes | str]] | tuple[()] = NO_FRAMES
        #: the payload of the last ping not answered yet: a run of pings read together is
        #: answered once, for the last (RFC 6455 5.5.3), so pongs grow with reads, not pings
        self.pong: bytes | None = None
        self.pending: list[Request | Violation] = []  # decoded, not yet handled
        self.heard = 0.0  # when the client last sent a message (trio's clock)
        self.out = bytearray()  # what the socket did not take yet
        #: bytes at the start of ``out`` that end a frame the socket has begun: what lies
        #: beyond them waits behind a write, and is what ``OUT_LIMIT`` bounds
        self.partial = 0
        #: the rest of a batch of the session's queue that went in several frames (each
        #: with the QoS 1 messages it carries): written one at a time, each once the
        #: socket took the one before; ``later_noted``: their QoS 1 messages in all
        self.later: list[tuple[bytes, int]] = []
        self.later_noted = 0
        #: the frame the socket is taking (``partial``) is one of the queue's: its QoS 1
        #: messages count as written once it has left ``out`` (``ClientSession.on_socket``)
        self.queue_partial = False
        self.slow = False  # closed for not reading (client_out.py, ``_slow``)
        self.draining = False  # a task waits to write ``out``
        self.closed = False
        self.close_sent = False
        self.session: ClientSession | None = None
        self.machine: ClientConnection | None = None
        self.scope: trio.CancelScope | None = None  # cancelled to end the conversation
        self.in_flight = 0  # QoS 1 sends not answered yet
        self.room: trio.Event | None = None  # set when ``in_flight`` drops below the cap
        self.drained: trio.Event | None = None  # set when ``out`` empties (if waited for)
        #: what the reader met that ends the connection: raised by ``_message``
        self.failed: BaseException | None = None

    def parse(self, data: bytes) -> None:
        """Frames of ``data`` into the inbox (empty: ``NO_FRAMES``, never an empty deque)."""
        frames = self.parser.feed(data)
        self.inbox = deque(frames) if frames else NO_FRAMES

    def release(self) -> None:
        """The connection has ended: let go of its buffers and of its session. The
        session's ``notify`` refers back to the connection, a cycle only Python's cyclic
        collector would free: until it ran (minutes on an idle node), a connection's
        output (hundreds of MB under a ping flood) stayed with the process."""
        self.out = bytearray()
        self.partial = 0
        self.later = []
        self.later_noted = 0
        self.inbox = NO_FRAMES
        self.pong = None
        self.pending = []
        self.parser = ws.FrameParser(self.parser.max_message)
        if self.session is not None:
            self.session.notify = _ignore
            self.session = None
        self.machine = None
        self.scope = None


def _ignore(_session: ClientSession) -> None:
    pass


class QuietReader:
    """The parked connections, by descriptor, and the task that reads them (``run``)."""

    def __init__(self, readable: Callable[[Connection], bool]) -> None:
        self._readable = readable  # False: hand the connection back to its task
        self._epoll = select.epoll()
        self._parked: dict[int, tuple[Connection, trio.Event]] = {}  # fd -> client, its wake-up

    def __len__(self) -> int:
        return len(self._parked)

    async def park(self, client: Connection) -> None:
        """Wait until the reader hands ``client`` back (or the caller is cancelled)."""
        fd = client.sock.fileno()
        woken = trio.Event()
        self._epoll.register(fd, select.EPOLLIN)  # first: if it fails, nothing is left
        self._parked[fd] = (client, woken)
        try:
            await woken.wait()
        finally:
            self._leave(fd)

    def _leave(self, fd: int) -> None:
        if self._parked.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def __enter__(self) -> QuietReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Closes the set: only once every connection that could park is done."""
        self._epoll.close()

    async def run(self) -> None:
        ready_fd = self._epoll.fileno()
        while True:
            await trio.lowlevel.wait_readable(ready_fd)
            while True:
                ready = self._epoll.poll(0, SLICE)
                for fd, _ in ready:
                    self._read(fd)
                if len(ready) < SLICE:
                    break
                await trio.lowlevel.checkpoint()

    def _read(self, fd: int) -> None:
        entry = self._parked.get(fd)
        if entry is None:
            return
        client, woken = entry
        try:
            keep = self._readable(client)
        except Exception as exc:  # the connection's task ends it (internal error)
            logger.exception("client_read_failed remote=%s", client.remote)
            client.failed = exc
            keep = False
        if not keep:
            self._leave(fd)
            woken.set()
