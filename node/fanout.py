"""Messages for many: topics, broadcast, and the application's events (upstream, presence).

* **Publish** to a topic: the entry node sends the message to every other grapevine node
  over the peer links; each node queues it for its own subscribers. QoS 0. Like a QoS 0
  message to a user (routing.py), it is packed once, by the entry node: every node and
  every subscriber's connection takes those bytes as they are.
* **Broadcast**: the same trip, then each node paces delivery to all of its clients at
  ``--broadcast-rate`` deliveries per second, so that one burst cannot flood the node or
  the application behind it. Broadcasts wait in a bounded queue (full: refused).
* **Upstream and presence**: a client's ``up`` frame, and every session opening or
  closing, become events for the application: POSTed to ``--webhook`` (``webhook.py``)
  and published on the reserved topics ``$upstream`` and ``$presence``, which only
  service tokens (``grapevine token --service``) may subscribe to.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from .frames import is_message, pack_message
from .routing import MessageIds, Unavailable, qos0_message
from .webhook import Webhook

if TYPE_CHECKING:
    from .clients import ClientSession, LocalClients, Queued
    from .config import Config
    from .peer_link import PeerLinks
    from .ring import HashRing

logger = logging.getLogger(__name__)

UPSTREAM, PRESENCE = "$upstream", "$presence"
BROADCAST_QUEUE = 64
PACE_SLICE = 0.05  # seconds of deliveries handed out at once


class Fanout:
    def __init__(self, config: Config, *, ring: HashRing, clients: LocalClients,
                 links: PeerLinks, ids: MessageIds) -> None:
        self.me = config.name
        self.ring = ring
        self.clients = clients
        self.links = links
        self.rate = config.broadcast_rate
        self.webhook = Webhook(config.webhook, config.name) if config.webhook else None
        self._broadcasts_in, self._broadcasts = trio.open_memory_channel[dict[str, Any] | bytes](
            BROADCAST_QUEUE)
        self._ids = ids
        self.counters: Counter[str] = Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pace_broadcasts)
            if self.webhook is not None:
                nursery.start_soon(self.webhook.run)
            task_status.started()

    def _message(self, body: Any, **extra: Any) -> tuple[str, Queued]:
        """A new message's id, and the message packed once for every node and session."""
        message = qos0_message(self._ids(), body, time.time(), **extra)
        return message["id"], pack_message(message)

    def _to_every_node(self, frame: dict[str, Any]) -> None:
        for node in self.ring.nodes:
            if node != self.me:
                self.links.send(node, frame)

    # ---- topics ---------------------------------------------------------------------------

    def publish(self, topic: str, body: Any, *, sender: str | None = None) -> dict[str, Any]:
        extra = {"topic": topic, **({"from": sender} if sender else {})}
        message_id, message = self._message(body, **extra)
        self._to_every_node({"t": "publish", "topic": topic, "msg": message})
        self.counters["published"] += 1
        self.counters["publish_deliveries"] += self.clients.publish(topic, message)
        return {"id": message_id}

    # ---- broadcast ------------------------------------------------------------------------

    def broadcast(self, body: Any) -> dict[str, Any]:
        message_id, message = self._message(body, broadcast=True)
        self._queue_broadcast(message)  # refused here first: then nobody gets it
        self._to_every_node({"t": "broadcast", "msg": message})
        return {"id": message_id}

    def _queue_broadcast(self, message: Queued) -> None:
        try:
            self._broadcasts_in.send_nowait(message)
        except trio.WouldBlock:
            self.counters["broadcasts_refused"] += 1
            raise Unavailable(f"{BROADCAST_QUEUE} broadcasts are already waiting on "
                              f"{self.me}; try again later") from None

    async def _pace_broadcasts(self) -> None:
        async for message in self._broadcasts:
            sessions = self.clients.sessions()
            step = max(1, int(self.rate * PACE_SLICE))
            for start in range(0, len(sessions), step):
                chunk = sessions[start:start + step]
                self.counters["broadcast_deliveries"] += sum(s.offer(message) for s in chunk)
                if start + step < len(sessions):
                    await trio.sleep(len(chunk) / self.rate)
            self.counters["broadcasts"] += 1

    # ---- from peers -----------------------------------------------------------------------

    def from_peer(self, frame: dict[str, Any]) -> bool:
        kind, message = frame.get("t"), frame.get("msg")
        if kind not in ("publish", "broadcast"):
            return False
        if not is_message(message):
            self.counters["bad_peer_frames"] += 1
            return True
        if kind == "publish" and isinstance(frame.get("topic"), str):
            self.counters["publish_deliveries"] += self.clients.publish(frame["topic"], message)
        elif kind == "broadcast":
            try:
                self._queue_broadcast(message)
            except Unavailable:
                logger.warning("broadcast_dropped reason=queue_full")
        return True

    # ---- the application's events -----------------------------------------------------

    def upstream(self, session: ClientSession, body: str, ref: str | None) -> None:
        self._event("up", session, body=body, **({"ref": ref} if ref else {}))

    def presence(self, session: ClientSession, online: bool) -> None:
        self._event("online" if online else "offline", session)

    def _event(self, kind: str, session: ClientSession, **fields: Any) -> None:
        event = {"event": kind, "user": session.user, "session": session.session,
                 "device": session.device, "node": self.me, "ts": round(time.time(), 3),
                 **fields}
        if self.webhook is not None:
            self.webhook.enqueue(event)
        self.publish(UPSTREAM if kind == "up" else PRESENCE, event)
