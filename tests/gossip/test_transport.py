"""The UDP/TCP transport on 127.0.0.1: what waits in the kernel can be read at once."""

from __future__ import annotations

import socket

import trio

from gossip.transport import open_transport


async def test_datagrams_waiting_in_the_kernel_are_read_without_waiting() -> None:
    transport = await open_transport("127.0.0.1", 0)
    try:
        assert transport.receive_waiting() == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(5):
                sender.sendto(b"ack %d" % i, transport.bound)
            here = sender.getsockname()
        # as after a SIGSTOP: nothing has run since they arrived
        waiting = transport.receive_waiting()
        assert [data for _src, data in waiting] == [b"ack %d" % i for i in range(5)]
        assert {src for src, _data in waiting} == {("127.0.0.1", here[1])}
        assert transport.receive_waiting() == []
        with trio.move_on_after(0.05):  # and nothing is left for the reader either
            await transport.receive_packet()
            raise AssertionError("a datagram was read twice")
    finally:
        transport.close()
