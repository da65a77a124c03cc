"""The gossip port's shell on 127.0.0.1: inbound streams past the cap are refused and
counted, and a node with another --encrypt key says so instead of failing in silence."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from gossip.codec import Envelope, encode, encode_packet
from gossip.keyring import Keyring
from gossip.stream import StreamReader, encode_push_pull, encode_stream
from gossip.wire import Ack, MessageType, Ping, PushNodeState, PushPull
from membership import service
from membership.config import MembershipConfig
from membership.service import Membership, serve_membership


@asynccontextmanager
async def gossip_node(
    name: str, keys: tuple[bytes, ...] = (), join: tuple[str, ...] = ()
) -> AsyncIterator[Membership]:
    config = MembershipConfig.lan(name, bind_addr="127.0.0.1", bind_port=0, join=join,
                        join_retry_interval=0.2)
    keyring = Keyring(keys) if keys else None
    async with trio.open_nursery() as nursery:
        membership = await nursery.start(
            lambda task_status: serve_membership(
                config, keyring=keyring, rng=random.Random(1), task_status=task_status
            )
        )
        try:
            yield membership
        finally:
            nursery.cancel_scope.cancel()


async def until(
    node: Membership, condition: Callable[[], bool], seconds: float = 10.0
) -> None:
    """Wait, step by step of ``node``'s owner (a few a second at least), for ``condition``."""
    with trio.fail_after(seconds):
        while not condition():
            await node.wait_changed()


async def tcp_ping(membership: Membership, envelope: Envelope) -> object:
    """A TCP ping on the gossip port (how memberlist probes over TCP): the ack."""
    stream = await trio.open_tcp_stream(*membership.address)
    async with stream:
        await stream.send_all(encode_stream(encode(Ping(7, membership.name)), envelope))
        reader = StreamReader(envelope)
        while True:
            data = await stream.receive_some(65536)
            assert data, "the node closed the probe"
            message = reader.feed(data)
            if message is not None:
                return message


async def test_inbound_streams_past_the_cap_are_refused_and_counted() -> None:
    extra = 5
    async with gossip_node("a") as node:
        held: list[trio.SocketStream] = []
        try:
            for _ in range(service.MAX_INBOUND_STREAMS + extra):
                stream = await trio.open_tcp_stream(*node.address)
                await stream.send_all(b"\x06")  # a push-pull that never comes
                held.append(stream)
            await until(node, lambda: node.counters["streams_refused_busy"] >= extra)
            with trio.fail_after(5):  # the refused ones are closed at once
                assert await held[-1].receive_some(10) == b""
        finally:
            for stream in held:
                await stream.aclose()
        await until(node, lambda: node.counters["streams_refused_busy"] == extra)
        # once they are gone, the port serves again
        with trio.fail_after(5):
            assert await tcp_ping(node, Envelope()) == Ack(7)


async def test_a_node_with_another_key_says_why_it_cannot_join(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="membership.service")
    async with gossip_node("seed", keys=(b"a" * 16,)) as seed:
        host, port = seed.address
        async with gossip_node("joiner", keys=(b"b" * 16,), join=(f"{host}:{port}",)) as joiner:
            await until(seed, lambda: seed.counters["streams_refused_key"] >= 1
                        and joiner.counters["stream_replies_refused_key"] >= 1
                        and "join_failed" in caplog.text)
            assert len(seed.members()) == 1 and len(joiner.members()) == 1
            # a datagram no key of ours opens: counted (dropped_key) and said
            sealed = encode_packet([encode(Ping(1, "seed"))],
                                   Envelope(Keyring([b"b" * 16])))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(sealed, seed.address)
                await until(seed, lambda: seed.statistics().counters.get("dropped_key", 0) >= 1
                            and "packet_refused" in caplog.text)
    lines = caplog.text.splitlines()
    refused = [line for line in lines if "stream_refused reason=key" in line]
    assert refused and "peer=127.0.0.1:" in refused[0] and "--encrypt" in refused[0]
    join = [line for line in lines if "join_failed" in line]
    assert f"seeds={host}:{port}" in join[0] and "the seed's key differs?" in join[0]
    # each cause is logged once a minute, however often it happens
    assert len(join) == 1 and len(refused) == 1
    packet = [line for line in lines if "packet_refused reason=key" in line]
    assert "peer=127.0.0.1:" in packet[0] and "--encrypt" in packet[0]


async def test_a_compressed_stream_is_inflated_in_steps_with_the_loop_free_between() -> None:
    states = tuple(PushNodeState(f"node-{i}", b"\x7f\x00\x00\x01", 7946, b"", 1, 0, bytes(6))
                   for i in range(100))
    rng = random.Random(2)  # 16 letters: LZW halves them, with many short codes
    user_state = bytes(rng.choice(b"abcdefghijklmnop") for _ in range(100_000))
    push_pull = PushPull(False, states, user_state)
    data = encode_stream(encode_push_pull(push_pull), Envelope(compress=True))
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(data)
    ticks = 0

    async def ticker() -> None:  # runs once each time the event loop gets a turn
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    reader = StreamReader(Envelope(), inflate_in_steps=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        before = ticks
        message = await service._read_message(receive, reader, trio.CapacityLimiter(1))
        during = ticks - before
        nursery.cancel_scope.cancel()
    assert message == push_pull
    steps = -(-reader.codes // service.INFLATE_STEP)
    assert data[0] == MessageType.COMPRESS and steps >= 5  # a compress message
    assert during >= steps - 1  # no step ran into the next without the loop in between
