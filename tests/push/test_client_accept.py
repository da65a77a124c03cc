"""The client port's accept loop: one connection a pass, resource exhaustion waited out."""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter

import pytest
import trio
import trio.testing

from node.client_accept import accept_loop, listen


class Listener:
    """A real listening socket whose accept() fails as scripted first."""

    def __init__(self, failures: list[OSError]) -> None:
        self.real = listen("127.0.0.1", 0)
        self.failures = failures

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.failures:
            raise self.failures.pop(0)
        return self.real.accept()


async def test_running_out_of_descriptors_is_counted_logged_and_waited_out(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    listener = Listener([OSError(errno.EMFILE, "Too many open files"),
                         OSError(errno.ENFILE, "Too many open files in system")])
    client = socket.create_connection(listener.real.getsockname()[:2])
    counters: Counter[str] = Counter()
    started: list[tuple[socket.socket, str]] = []
    accepted = trio.Event()

    def start(sock: socket.socket, remote: str) -> None:
        started.append((sock, remote))
        accepted.set()
    caplog.set_level(logging.WARNING, logger="node.client_accept")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_loop, listener, counters, start)
            with trio.fail_after(5):
                await accepted.wait()
            nursery.cancel_scope.cancel()
        assert counters["client_accepts_exhausted"] == 2
        assert [r.getMessage() for r in caplog.records] == [
            "client_accept_failed reason='Too many open files'",
            "client_accept_failed reason='Too many open files in system'"]
        [(sock, remote)] = started
        assert remote == "{}:{}".format(*client.getsockname()[:2])
        assert not sock.getblocking()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock.close()
    finally:
        client.close()
        listener.real.close()


async def test_a_broken_listener_is_not_waited_out() -> None:
    listener = Listener([OSError(errno.EBADF, "Bad file descriptor")])
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):
            await accept_loop(listener, Counter(), lambda sock, remote: None)
    finally:
        listener.real.close()
