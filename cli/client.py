"""One client connection held the way an SDK holds it (``listen`` and the chaos devices).

:func:`hold` connects, says hello (resuming the session when one is known), keeps the
connection alive with pings and gives every frame to a handler. A node that answers
nothing for ``dead_after`` seconds is treated as gone (a cut link or a paused process
never closes the socket), so the caller moves on to another node just as it does when the
connection breaks: every such ending is one of :data:`CONNECTION_LOST`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket


class NodeSilent(Exception):
    """The node said nothing, not even a pong, for longer than the client waits."""


CONNECTION_LOST = (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError,
                   trio.TooSlowError, NodeSilent)

Handler = Callable[[WebSocketConnection, dict[str, Any]], Awaitable[None]]
#: called once the objects of a frame have all been handled (to ack them in one go)
FrameDone = Callable[[WebSocketConnection], Awaitable[None]]


@dataclass
class Session:
    """What a client keeps across connections to resume: its session, and the sequence
    number of the last QoS 1 message its connection delivered (in the connection's order,
    which is not always the order of numbers: docs/protocol.md)."""

    token: str
    device: str
    session: str | None = None
    last_seq: int | None = None
    ping_every: float | None = None  # default: half the heartbeat the node asks for
    dead_after: float | None = None  # default: the node's heartbeat

    def saw(self, seq: int) -> None:
        self.last_seq = seq

    def hello(self) -> str:
        frame: dict[str, Any] = {"t": "hello", "token": self.token, "device": self.device}
        if self.session:
            frame.update(session=self.session, last_seq=self.last_seq)
        return json.dumps(frame)


async def hold(host: str, port: int, session: Session, handle: Handler, *,
               connect_timeout: float = 5.0, frame_done: FrameDone | None = None) -> None:
    """Hold one connection until it is lost (raises one of :data:`CONNECTION_LOST`).

    ``handle`` sees every frame object (a batch is unpacked), the welcome included, after
    the session has taken the welcome's session id; it may send on the connection.
    ``frame_done`` is called after the last object of each frame.
    """
    async with open_websocket(host, port, "/", use_ssl=False,
                              connect_timeout=connect_timeout) as ws:
        await ws.send_message(session.hello())
        now = trio.current_time()
        heard, ping_every, dead_after = now, connect_timeout, connect_timeout
        next_ping = float("inf")  # no pings before the welcome
        while True:
            raw = None
            with trio.move_on_at(min(next_ping, heard + dead_after)):
                raw = await ws.get_message()  # only the read is cancelled, never a send
            now = trio.current_time()
            if raw is None:
                if now >= heard + dead_after:
                    raise NodeSilent(f"{host}:{port} silent for {now - heard:.1f} s")
                await ws.send_message('{"t":"ping"}')
                next_ping = now + ping_every
                continue
            heard = now
            frame = json.loads(raw)
            for obj in frame if isinstance(frame, list) else [frame]:
                if obj.get("t") == "welcome":
                    session.session = obj.get("session")
                    session.last_seq = None  # the resume (if any) has used it
                    heartbeat = float(obj.get("heartbeat", 30.0))
                    ping_every = session.ping_every or heartbeat / 2
                    dead_after = session.dead_after or heartbeat
                    next_ping = now + ping_every
                await handle(ws, obj)
            if frame_done is not None:
                await frame_done(ws)
