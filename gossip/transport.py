"""The gossip transport: a trio UDP socket and a TCP listener on the same port.

Bytes in, bytes out (memberlist ``transport.go``); everything protocol-shaped lives in
the machine. Send errors are counted and logged at most once a minute per peer.
"""

from __future__ import annotations

import errno
import logging
import socket as stdlib_socket
from collections import Counter

import trio

logger = logging.getLogger(__name__)

Address = tuple[str, int]
#: Largest datagram we read (memberlist reads into a 64 KiB buffer).
MAX_DATAGRAM = 65536
#: memberlist asks the kernel for a 2 MB UDP receive buffer.
UDP_RECV_BUFFER = 2 * 1024 * 1024
_WARN_EVERY = 60.0


class Transport:
    """Use :func:`open_transport`; close with :meth:`close`."""

    def __init__(self, udp: stdlib_socket.socket, tcp: trio.SocketListener) -> None:
        udp.setblocking(False)
        self._raw = udp
        self._udp = trio.socket.from_stdlib_socket(udp)
        self.listener = tcp
        host, port = udp.getsockname()[:2]
        self.bound: Address = (host, port)
        self.counters: Counter[str] = Counter()
        self._last_warning: dict[Address, float] = {}

    async def send_packet(self, dst: Address, data: bytes) -> None:
        try:
            await self._udp.sendto(data, dst)
        except OSError as exc:
            self.counters["udp_send_errors"] += 1
            now = trio.current_time()
            if now - self._last_warning.get(dst, -_WARN_EVERY) >= _WARN_EVERY:
                self._last_warning[dst] = now
                logger.warning("udp_send_failed peer=%s:%d error=%s", dst[0], dst[1], exc)

    async def receive_packet(self) -> tuple[Address, bytes]:
        data, src = await self._udp.recvfrom(MAX_DATAGRAM)
        return (src[0], src[1]), data

    def receive_waiting(self, limit: int = 256) -> list[tuple[Address, bytes]]:
        """Datagrams already in the kernel's buffer, read without waiting.

        The machine's owner calls this before judging any timeout: after a stall
        (SIGSTOP, CPU starvation) the acks that came meanwhile must count first, however
        many other datagrams queued ahead of them."""
        waiting: list[tuple[Address, bytes]] = []
        while len(waiting) < limit:
            try:
                data, src = self._raw.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters["udp_receive_errors"] += 1
                break
            waiting.append(((src[0], src[1]), data))
        return waiting

    def close(self) -> None:
        self._udp.close()


async def open_transport(host: str, port: int) -> Transport:
    """Bind UDP and TCP on ``host:port``; with port 0, find one free for both.

    Raises ``OSError`` (``EADDRINUSE``) when an explicit port is taken.
    """
    attempts = 1 if port else 20
    last_error: OSError | None = None
    for _ in range(attempts):
        udp = stdlib_socket.socket(_family(host), stdlib_socket.SOCK_DGRAM)
        try:
            udp.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, UDP_RECV_BUFFER)
            udp.bind((host, port))
            chosen = udp.getsockname()[1]
            listeners = await trio.open_tcp_listeners(chosen, host=host)
        except OSError as exc:
            udp.close()
            last_error = exc
            if port or exc.errno != errno.EADDRINUSE:
                raise
            continue
        return Transport(udp, listeners[0])
    assert last_error is not None
    raise last_error


def _family(host: str) -> stdlib_socket.AddressFamily:
    return stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET


def advertise_address(bind_host: str, advertise: str | None) -> str:
    """The address peers should use for us: explicit, the bind address, or the
    address of the interface that routes outward (found without sending anything)."""
    if advertise:
        return advertise
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    probe = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    try:
        # connect() on UDP only picks a route; no packet leaves the host
        probe.connect(("192.0.2.1", 9))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
