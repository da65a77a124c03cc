"""The client port's listening socket and its accept loop (``client_server.py`` serves
what it accepts).

One connection is accepted per pass of the event loop, so a connect storm is spread
between the node's other tasks; running out of file descriptors (or memory) is counted,
logged, and waited out, not fatal.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, MutableMapping

import trio

logger = logging.getLogger(__name__)

#: errors of accept() that mean "out of resources now", not "the listener is broken"
ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(4096)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


async def accept_loop(listener: socket.socket, counters: MutableMapping[str, int],
                      start: Callable[[socket.socket, str], None]) -> None:
    """Accept for ever; ``start(sock, "host:port")`` each connection (non-blocking,
    TCP_NODELAY)."""
    while True:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno not in ACCEPT_EXHAUSTED:
                raise
            counters["client_accepts_exhausted"] += 1
            logger.warning("client_accept_failed reason=%r", exc.strerror)
            await trio.sleep(0.1)
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start(sock, f"{address[0]}:{address[1]}")
        await trio.lowlevel.cancel_shielded_checkpoint()
