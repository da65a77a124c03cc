"""Peer links between two in-process nodes on 127.0.0.1: one link per pair, whatever happens.

Regressions from the netns chaos run: a peer seen dead and alive again while its old
link still stood got a second dial loop, and the two loops took turns replacing each
other's link hundreds of times a second; a connection reset by the peer ended the whole
node (the error came out of the link's nursery as an exception group).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from node.frames import pack
from node.peer_link import LATER, Frame, PeerLinks
from node.peer_proto import FEATURES, MAX_PEER_FRAME, REDELIVERY

KEY = b"k" * 32


class Side:
    def __init__(self, name: str, features: tuple[str, ...] = FEATURES) -> None:
        self.frames: list[Frame] = []
        self.arrived = trio.Event()
        self.links = PeerLinks(name, lambda: [KEY], self._on_frame, lambda _: None, features)
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def _on_frame(self, node: str, frame: Frame) -> None:
        self.frames.append(frame)
        self.arrived.set()

    async def next_frame(self) -> Frame:
        with trio.fail_after(10):
            while not self.frames:
                self.arrived = trio.Event()
                await self.arrived.wait()
        return self.frames.pop(0)


@asynccontextmanager
async def pair(older: str = "") -> AsyncIterator[tuple[Side, Side]]:
    """Two linked nodes; the one named ``older`` lists no features in its hello."""
    a, b = (Side(name, () if name == older else FEATURES)  # node-a has the smaller name:
            for name in ("node-a", "node-b"))              # it dials
    async with trio.open_nursery() as nursery:
        for side in (a, b):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            side.address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
            await nursery.start(side.links.serve, listeners)
        a.links.set_peers({"node-b": b.address})
        b.links.set_peers({"node-a": a.address})
        yield a, b
        nursery.cancel_scope.cancel()


async def test_a_peer_seen_dead_and_alive_again_keeps_one_dial_loop_and_one_link() -> None:
    async with pair() as (a, b):
        a.links.send("node-b", {"t": "x", "n": 0})
        assert (await b.next_frame())["n"] == 0
        for _ in range(3):  # dead and alive again while the old link still stands
            a.links.set_peers({})
            a.links.set_peers({"node-b": b.address})
        for n in range(1, 51):
            a.links.send("node-b", {"t": "x", "n": n})
            assert (await b.next_frame())["n"] == n
        assert a.links.counters["peer_dial_loops"] == 1
        assert a.links.counters["peer_links_opened"] == 1


async def test_a_connection_reset_by_the_peer_breaks_the_link_not_the_node() -> None:
    async with pair() as (a, b):
        a.links.send("node-b", {"t": "x", "n": 0})
        assert (await b.next_frame())["n"] == 0
        stream = b.links._peers["node-a"].stream
        assert stream is not None
        # close with SO_LINGER 0: the kernel answers with a reset, not a FIN
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()
        for n in range(1, 21):  # the dialler notices, dials again, and the frames flow
            a.links.send("node-b", {"t": "x", "n": n})
        seen = set()
        while 20 not in seen:
            seen.add((await b.next_frame())["n"])
        assert a.links.counters["peer_links_opened"] >= 2


async def test_request_soon_calls_back_with_the_reply_or_none_when_its_time_is_up() -> None:
    async with pair() as (a, b):
        answers: list[Frame | None] = []
        got = trio.Event()

        def on_reply(reply: Frame | None) -> None:
            answers.append(reply)
            got.set()
        a.links.request_soon("node-b", {"t": "q", "n": 1}, on_reply, timeout=5.0)
        asked = await b.next_frame()
        b.links.reply("node-a", asked, {"n": asked["n"] + 1})
        with trio.fail_after(5):
            await got.wait()
        assert answers == [{"n": 2, "t": "reply", "rid": asked["rid"]}]
        # unanswered: None once the timeout passes (and a late reply is only counted)
        got = trio.Event()
        started = trio.current_time()
        a.links.request_soon("node-b", {"t": "q", "n": 3}, on_reply, timeout=0.3)
        a.links.request_soon("node-b", {"t": "q", "n": 4}, lambda _: None, timeout=60.0)
        late = await b.next_frame()
        with trio.fail_after(5):
            await got.wait()
        assert answers[1] is None and trio.current_time() - started >= 0.3
        assert a.links.counters["peer_requests_timed_out"] == 1
        b.links.reply("node-a", late, {"n": 0})
        await b.next_frame()  # n = 4, never answered: it waits its own minute
        b.links.send("node-a", {"t": "x", "n": 5})
        assert (await a.next_frame())["n"] == 5  # the late reply came before this frame
        assert a.links.counters["peer_late_replies"] == 1 and len(answers) == 2


async def test_a_frame_sent_later_goes_with_the_next_frame_or_alone_after_a_while() -> None:
    """Acks are sent with ``send_later``: they ride along with the next frame to that
    peer (one write for both), and only when none comes do they go alone, LATER on."""
    async with pair() as (a, b):
        a.links.send("node-b", {"t": "x", "n": 0})
        assert (await b.next_frame())["n"] == 0
        writes = a.links.counters["peer_writes"]
        a.links.send_later("node-b", {"t": "ack", "n": 1})
        a.links.send_later("node-b", {"t": "ack", "n": 2})
        await trio.lowlevel.checkpoint()  # a pass ends: nothing is written for them yet
        assert a.links.counters["peer_writes"] == writes
        a.links.send("node-b", {"t": "x", "n": 3})
        assert [(await b.next_frame())["n"] for _ in range(3)] == [1, 2, 3]  # in order
        assert a.links.counters["peer_writes"] == writes + 1
        started = trio.current_time()
        a.links.send_later("node-b", {"t": "ack", "n": 4})
        assert (await b.next_frame())["n"] == 4
        assert trio.current_time() - started >= LATER
        assert a.links.counters["peer_writes"] == writes + 2


async def test_a_frame_may_grow_until_the_writer_takes_it() -> None:
    """Tickets: ``queued`` holds until the writer packs the frame, never after."""
    async with pair() as (a, b):
        items = [1]
        ticket = a.links.send("node-b", {"t": "grow", "items": items})
        assert a.links.queued("node-b", ticket)
        items.append(2)  # still unpacked: it goes with the frame
        first = await b.next_frame()
        assert first["items"] == [1, 2] and not a.links.queued("node-b", ticket)
        ticket = a.links.send("node-b", {"t": "x", "n": 0})
        a.links.set_peers({})  # the peer is gone: its queue is dropped, never packed
        assert not a.links.queued("node-b", ticket)


async def test_what_the_socket_does_not_take_at_once_follows_in_order() -> None:
    """Frames queued in one pass go out in one write at the end of it; a socket that
    takes only part leaves the rest to the link's writer, and frames queued meanwhile
    wait behind it."""
    async with pair() as (a, b):
        a.links.send("node-b", {"t": "x", "n": -1})
        assert (await b.next_frame())["n"] == -1  # the link is up
        blob = "z" * 65536
        for n in range(300):  # ~20 MB in one pass: far more than a socket buffer
            a.links.send("node-b", {"t": "x", "n": n, "blob": blob})
        await trio.lowlevel.checkpoint()  # the pass ends: its write leaves a remainder
        assert a.links._peers["node-b"].out
        for n in range(300, 310):  # queued while the writer drains
            a.links.send("node-b", {"t": "x", "n": n})
        assert [(await b.next_frame())["n"] for _ in range(310)] == list(range(310))
        assert not a.links._peers["node-b"].out
        assert a.links.counters["peer_frames_out"] == 311


async def test_a_packed_message_reaches_an_older_peer_unpacked_and_a_newer_one_as_is(
        caplog: pytest.LogCaptureFixture) -> None:
    """``packed`` is a feature a node's hello lists; a peer that lists none (a node of an
    older version, in a rolling upgrade) gets every ``msg`` as the map protocol 1 has."""
    message = {"t": "msg", "id": "n.1", "seq": 0, "qos": 0, "body": "hi", "ts": 1.5}
    packed = pack(message)
    caplog.set_level(logging.INFO, logger="node.peer_link")
    for old in ("node-a", "node-b"):  # the older one dials, then accepts
        caplog.clear()
        async with pair(older=old) as (a, b):
            for sender, receiver in ((a, b), (b, a)):
                sender.links.send(receiver.links.me, {"t": "route", "user": "u", "msg": packed})
                got = (await receiver.next_frame())["msg"]
                if receiver.links.me == old:
                    assert got == message
                else:
                    assert got == packed
        # the newer node's log says which peer is older (an operator's rolling upgrade)
        assert f"peer_connected peer={old} features=none" in caplog.messages


async def test_a_link_knows_which_features_its_peer_listed_both_ways() -> None:
    """A frame of a feature (the ``redelivery`` frames: ``hold``, ``resend``, ``tried``)
    goes only to a peer whose hello listed it: ``lists`` says so for the peer that dialled
    and the one that accepted, and says no before any hello."""
    assert not PeerLinks("x", lambda: [KEY], lambda *_: None, lambda _: None).lists(
        "node-b", REDELIVERY)
    for old in ("node-a", "node-b", ""):
        async with pair(older=old) as (a, b):
            a.links.send("node-b", {"t": "x"})
            await b.next_frame()
            b.links.send("node-a", {"t": "x"})
            await a.next_frame()
            assert a.links.lists("node-b", REDELIVERY) == (old != "node-b")
            assert b.links.lists("node-a", REDELIVERY) == (old != "node-a")


async def test_a_frame_over_the_limit_fails_its_request_not_the_link() -> None:
    """A frame larger than a peer's reader takes ended the link (and every frame queued
    on it) at the peer. It is refused where it is packed: a request of ours fails at once
    with why, a reply too large is an error reply, and the link goes on."""
    async with pair() as (a, b):
        a.links.send("node-b", {"t": "x", "n": 0})
        assert (await b.next_frame())["n"] == 0  # the link is up
        answers: list[Frame | None] = []
        got = trio.Event()

        def on_reply(reply: Frame | None) -> None:
            answers.append(reply)
            got.set()
        huge = "z" * (MAX_PEER_FRAME + 1)
        a.links.request_soon("node-b", {"t": "q", "blob": huge}, on_reply, timeout=60.0)
        a.links.send("node-b", {"t": "x", "n": 1})  # sent in the same write
        with trio.fail_after(10):
            await got.wait()
        assert answers[0] is not None and "over the peer frame limit" in answers[0]["error"]
        assert a.links.counters["peer_frames_too_large"] == 1
        assert (await b.next_frame())["n"] == 1
        # a peer's request whose answer is too large: it gets an error answer instead
        got = trio.Event()
        a.links.request_soon("node-b", {"t": "q", "n": 2}, on_reply, timeout=60.0)
        asked = await b.next_frame()
        b.links.reply("node-a", asked, {"blob": huge})
        with trio.fail_after(10):
            await got.wait()
        assert "over the peer frame limit" in answers[1]["error"]  # type: ignore[index]
        assert b.links.counters["peer_frames_too_large"] == 1
        a.links.send("node-b", {"t": "x", "n": 3})
        assert (await b.next_frame())["n"] == 3
        for side in (a, b):
            assert side.links.counters["peer_links_opened"] == 1
