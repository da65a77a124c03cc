"""Flash disconnects: a dropped connection's session is parked at its user's owner and
resumed from any node within the resume window (docs/protocol.md, "Resuming").

The owner keeps a parked session's topics and the QoS 1 messages its connection wrote
and the client had not acked, in the order written. A resume's ``last_seq`` — the last
message the client read on that connection — acks what the connection wrote up to it
(``clients.take_through``); the rest is sent again. That is exact only if a connection
never writes a message twice, which ``clients.Written`` sees to: a message sent again to
a connection whose client has it is acked again here (``read_already``), not written.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from .client_proto import Hello
from .clients import ClientSession, LocalClients, take_through
from .config import Config
from .delivery import Delivery
from .frames import seqs_of
from .peer_link import PeerLinks
from .ring import HashRing
from .routing import Parked, Router

logger = logging.getLogger(__name__)
#: a connection that ended for one of these may come back and resume
RESUMABLE = ("client_closed", "heartbeat_missed", "slow")


class Resumes:
    def __init__(self, config: Config, *, ring: HashRing, router: Router, links: PeerLinks,
                 delivery: Delivery, clients: LocalClients) -> None:
        self.config = config
        self.ring = ring
        self.router = router
        self.links = links
        self.delivery = delivery
        self.clients = clients

    def park(self, session: ClientSession) -> None:
        """A connection ended: park its session at the owner if the client may resume."""
        owner = self.ring.owner(session.user)
        if session.closed_reason not in RESUMABLE or owner is None:
            return
        topics = sorted(session.subscriptions)
        until = time.time() + self.config.resume_window
        written = list(session.written or ())
        read = session.written.reads() if session.written is not None else []
        logger.debug("session_parked user=%s session=%s owner=%s written=%s", session.user,
                     session.session, owner, written)
        if owner == self.config.name:
            self.router.park(session.user, session.session, topics, until, time.time(),
                             written=written, read=read)
        else:
            self.links.send(owner, {"t": "park", "user": session.user, "until": until,
                                    "session": session.session, "topics": topics,
                                    "written": written, "read": read})

    def read_already(self, session: ClientSession, seqs: list[int]) -> None:
        """Messages sent again to a connection whose client has them: an owner that
        missed their ack (it went astray, or the owner came back with an old copy). They
        are acked again rather than written twice."""
        self.clients.counters["client_reacks"] += len(seqs)
        logger.debug("messages_reacked user=%s session=%s seqs=%s", session.user,
                     session.session, seqs)
        self.delivery.client_ack(session.user, seqs, session.device)

    async def resume(self, hello: Hello) -> Parked | None:
        """A client came back with its session id: what the owner kept of it, if it did,
        with ``read`` now everything the client is known to have read, the last it named
        last (the new connection does not write those again).

        ``last_seq`` counts as an ack of what the old connection wrote up to it (the
        owner parked that list): the client has those, so they are not sent again. The
        ack reaches the owner before the new session registers."""
        owner = self.ring.owner(hello.user)
        if owner is None or hello.session is None:
            return None
        if owner == self.config.name:
            parked = self.router.unpark(hello.user, hello.session, time.time())
        else:
            reply = await self.links.request(
                owner, {"t": "unpark", "user": hello.user, "session": hello.session})
            parked = _parked_from(reply)
        if parked is None:
            return None
        acked: list[int] = []
        if hello.last_seq is not None:
            acked = take_through(parked.written, hello.last_seq)
            logger.debug("session_resumed user=%s session=%s owner=%s last_seq=%s written=%s "
                         "acked=%s", hello.user, hello.session, owner, hello.last_seq,
                         parked.written, acked)
            self.delivery.client_ack(hello.user, acked, hello.device)
        return parked._replace(read=[*parked.read, *acked, hello.last_seq])

    def from_peer(self, node: str, frame: dict[str, Any]) -> bool:
        """Parking and resuming sessions, at the owner; False if ``frame`` is neither."""
        kind, user, session = frame.get("t"), frame.get("user"), frame.get("session")
        if kind not in ("park", "unpark"):
            return False
        if not isinstance(user, str) or not isinstance(session, str):
            self.router.counters["bad_peer_frames"] += 1
            return True
        now = time.time()
        if kind == "unpark":
            parked = self.router.unpark(user, session, now)
            self.links.reply(node, frame, parked._asdict() if parked is not None
                             else {"topics": None})
            return True
        topics, until = frame.get("topics"), frame.get("until")
        if isinstance(topics, list) and isinstance(until, int | float) and math.isfinite(until):
            limit = now + self.config.resume_window
            self.router.park(user, session, [t for t in topics if isinstance(t, str)],
                             min(float(until), limit), now, written=_seqs(frame, "written"),
                             read=_seqs(frame, "read"))
        return True


def _parked_from(reply: dict[str, Any]) -> Parked | None:
    """The owner's answer to an unpark, or None (not parked, junk)."""
    topics = reply.get("topics")
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        return None
    return Parked(topics, _seqs(reply, "written"), _seqs(reply, "read"))


def _seqs(frame: dict[str, Any], name: str) -> list[int]:
    """A list of sequence numbers from a peer's frame (nothing if absent or not a list:
    nodes before 2026-11-30 send no ``read``)."""
    return seqs_of(frame.get(name))
