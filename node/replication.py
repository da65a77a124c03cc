"""Replication: the copies of QoS 1 messages on a user's replicas. Part of the QoS 1
shell (``delivery.py``).

An owner (storing a group, ``delivery.py``) or a node handing a mailbox over
(``handover.py``) sends a ``replicate`` request: messages and the device records of
their users. The replica answers it once the copies are on its disk, or with why not;
requests wait in a bounded queue for a pool of workers that wait only on the disk, so
group commit shares each fsync among them and nodes storing through each other never
hold each other's workers. The replica also keeps its copies in step with the owner:
``acked`` removes them (and remembers those not here yet, so a copy still on its way is
dropped as it arrives), ``devices`` notes a device the owner has seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .frames import seqs_of
from .mailbox import Mailboxes, Stored
from .names import is_device, is_user
from .routing import Unavailable

if TYPE_CHECKING:
    from .config import Config
    from .peer_link import PeerLinks
    from .ring import HashRing
    from .store import Store

logger = logging.getLogger(__name__)

#: replicate requests served at once: each waits on the disk, so many are in flight
#: while group commit shares each fsync among them
WORKERS = 256
REQUESTS = 1024
#: messages a replica remembers as gone (withdrawn or acked before their copy came)
GONE = 4096
Frame = dict[str, Any]


class Replication:
    def __init__(self, config: Config, *, ring: HashRing, links: PeerLinks, store: Store,
                 mailboxes: Mailboxes, push: Callable[[str], None],
                 ring_changed: Callable[[], None]) -> None:
        self.me = config.name
        self.config = config
        self.ring = ring
        self.links = links
        #: the copies kept here (and the devices of their users), on this disk
        self.mailboxes, self.store = mailboxes, store
        self._push = push  # deliver what waits for a user (at its owner)
        self._ring_changed = ring_changed  # hand over what is not ours (soon)
        # replicate requests wait only on the disk (stores wait on replicas but hold no
        # task: their senders are called back), so nodes storing through each other can
        # never hold each other's workers
        self._copies_in, self._copies = trio.open_memory_channel[tuple[str, Frame]](REQUESTS)
        #: (user, seq) the owner said are gone before their copy arrived here
        self._gone_recently: dict[tuple[str, int], None] = {}

    async def run(self) -> None:
        """Serve replicate requests (``WORKERS`` of them at once)."""
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._serve_requests, self._copies)

    # ---- asking a replica ---------------------------------------------------------------

    def frame(self, messages: list[Stored], users: set[str] | None = None) -> Frame:
        """A request to copy ``messages`` and the devices of their users (or of
        ``users``)."""
        devices = self._devices_of(users if users is not None else {s.user for s in messages})
        return {"t": "replicate", "msgs": [s.to_wire() for s in messages],
                "devices": [list(d) for d in devices]}

    async def copy(self, node: str, messages: list[Stored], confirmed: list[str],
                   users: set[str] | None = None) -> None:
        """Copy ``messages`` and the devices of their users (or of ``users``) to ``node``;
        on its disk, it is added to ``confirmed``."""
        reply = None
        with trio.move_on_after(self.config.replicate_timeout):
            reply = await self.links.request(node, self.frame(messages, users))
        note_copy(node, reply, len(messages), confirmed)

    def _devices_of(self, users: set[str]) -> list[tuple[str, str, float]]:
        return [(user, device, seen) for user in sorted(users)
                for device, seen in self.mailboxes.devices(user).items()]

    # ---- at the replica -----------------------------------------------------------------

    def from_peer(self, node: str, frame: Frame) -> bool:
        """A ``replicate``, ``devices`` or ``acked`` frame from ``node``; False if it is
        not one (or is malformed)."""
        kind, user = frame.get("t"), frame.get("user")
        if kind == "replicate":
            try:
                self._copies_in.send_nowait((node, frame))
            except trio.WouldBlock:
                self.links.reply(node, frame, {"error": f"{self.me} is overloaded; try again"})
            return True
        if kind == "devices" and isinstance(frame.get("devices"), list):
            self.store.write_soon(devices=self._see_devices(frame["devices"]))
            return True
        if kind == "acked" and isinstance(user, str) and isinstance(frame.get("seqs"), list):
            seqs = seqs_of(frame["seqs"])
            removed = self.mailboxes.remove(user, seqs)
            if len(removed) < len(seqs):  # not here (yet): a copy on its way is not kept
                self._gone(user, seqs)
            logger.debug("copies_acked user=%s by=%s seqs=%s", user, node,
                         [s.seq for s in removed])
            self.store.write_soon(deletes=[(user, s.seq) for s in removed])
            return True
        return False

    def _gone(self, user: str, seqs: list[int]) -> None:
        """Remember (the last ``GONE`` of them) messages the owner said are gone."""
        for seq in seqs:
            self._gone_recently[(user, seq)] = None
        while len(self._gone_recently) > GONE:
            del self._gone_recently[next(iter(self._gone_recently))]

    async def _serve_requests(self, requests: trio.MemoryReceiveChannel[tuple[str, Frame]]
                              ) -> None:
        async for node, frame in requests:
            try:
                answer = await self._answer(frame)
            except Unavailable as exc:
                answer = {"error": str(exc)}
            except ValueError as exc:
                answer = {"error": f"bad request: {exc}"}
            except Exception as exc:  # the request's boundary: one never stops the node
                logger.exception("replicate_failed_here peer=%s", node)
                answer = {"error": f"{self.me} could not store the copies: {exc}"}
            self.links.reply(node, frame, answer)

    async def _answer(self, frame: Frame) -> Frame:
        """A ``replicate`` request: the copies on disk here."""
        raw, raw_devices = frame.get("msgs"), frame.get("devices", [])
        if not isinstance(raw, list) or not isinstance(raw_devices, list):
            raise ValueError("replicate needs msgs and devices lists")
        messages = [Stored.from_wire(item) for item in raw]
        devices = self._see_devices(raw_devices)
        try:
            await self.store.write(messages, devices=devices)
        except Exception as exc:  # not on this disk (logged by the store): not kept
            raise Unavailable(f"{self.me} could not store the copies: {exc}") from None
        gone = [s for s in messages if (s.user, s.seq) in self._gone_recently]
        if gone:  # withdrawn (or acked) while on their way here
            self.store.write_soon(deletes=[(s.user, s.seq) for s in gone])
            messages = [s for s in messages if (s.user, s.seq) not in self._gone_recently]
        fresh = [stored for stored in messages if self.mailboxes.put(stored)]
        if fresh:
            logger.debug("copies_stored users=%s seqs=%s", sorted({s.user for s in fresh}),
                         [s.seq for s in fresh])
        for user in {stored.user for stored in fresh}:
            self._push(user)  # a handover to the owner: deliver now, not at the next message
            if self.me not in self.ring.replicas(user, self.config.replicas):
                self._ring_changed()  # sent by a node with an older ring: pass it on
        return {"ok": True}

    def _see_devices(self, raw: list[Any]) -> list[tuple[str, str, float]]:
        """Device records from a peer, noted in the mailboxes; returns those to store
        (new here, or stored long ago). Malformed ones are skipped."""
        records = []
        for item in raw:
            if (isinstance(item, list) and len(item) == 3 and is_user(item[0])
                    and is_device(item[1]) and isinstance(item[2], int | float)
                    and not isinstance(item[2], bool) and math.isfinite(item[2])):
                user, device, seen = item[0], item[1], float(item[2])
                if self.mailboxes.see_device(user, device, seen):
                    records.append((user, device, seen))
        return records


def note_copy(node: str, reply: Frame | None, count: int, confirmed: list[str]) -> None:
    """A replicate request's outcome: ``node`` is added to ``confirmed`` if it has the
    copies on disk; anything else (an error, no answer in time) is logged."""
    if reply is not None and reply.get("ok"):
        confirmed.append(node)
    else:
        logger.warning("replicate_failed peer=%s messages=%d", node, count)
