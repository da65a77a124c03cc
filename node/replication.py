"""Replication: the copies of QoS 1 messages on a user's replicas. Part of the QoS 1
shell (``delivery.py``).

An owner (storing a group, ``delivery.py``) or a node handing a mailbox over
(``handover.py``) sends a ``replicate`` request: messages and the device records of
their users. The replica answers it once the copies are on its disk, or with why not;
requests wait in a bounded queue for a pool of workers that wait only on the disk, so
group commit shares each fsync among them and nodes storing through each other never
hold each other's workers. The replica also keeps its copies in step with the owner:
``acked`` removes them, ``devices`` notes a device the owner has seen.

**A withdrawn copy is never kept.** An owner whose group did not reach R nodes
withdraws it with an ``acked`` to each replica, answered or not; that frame leaves on
the same link, in the same queue, after the ``replicate`` request it withdraws, so it
arrives after it (a resent batch is resent in order; a request dropped or refused on
the way never arrives). A replica counts the (user, seq) of every request from its
arrival until it is answered; an ``acked`` for one of those marks it gone (held here
already or not: a link that broke may deliver a request twice), and the request drops
it (from the disk too) once written. The marks live as
long as the requests that carry them: bounded by ``REQUESTS`` + ``WORKERS`` requests of
at most ``peer_proto.REQUEST_BYTES`` each, whatever the rate of withdrawals and however
slow the disk. Besides, the last ``GONE`` (user, seq) acked before their copy came are
remembered, for copies that come by another path (a handover from another node): a
best effort, for those would only be a duplicate of an acked message.
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
from .peer_proto import text_bytes
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
#: messages a replica remembers as acked before a copy came by another path (see above)
GONE = 4096
Frame = dict[str, Any]
#: a replicate request waiting for a worker: from, the frame, its messages
Request = tuple[str, Frame, list[Stored]]


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
        self._copies_in, self._copies = trio.open_memory_channel[Request](REQUESTS)
        #: (user, seq) the owner said are gone before a copy arrived here (the last GONE)
        self._gone_recently: dict[tuple[str, int], None] = {}
        #: (user, seq) -> replicate requests here, arrived and not answered, that carry it
        self._in_flight: dict[tuple[str, int], int] = {}
        #: those of them the owner said are gone (withdrawn or acked) since they arrived
        self._gone_in_flight: set[tuple[str, int]] = set()

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

    def devices_bytes(self, user: str) -> int:
        """What the devices of ``user`` add to a request (``peer_proto.Budget``)."""
        return sum(text_bytes(user, device) for device in self.mailboxes.devices(user))

    # ---- at the replica -----------------------------------------------------------------

    def from_peer(self, node: str, frame: Frame) -> bool:
        """A ``replicate``, ``devices`` or ``acked`` frame from ``node``; False if it is
        not one (or is malformed)."""
        kind, user = frame.get("t"), frame.get("user")
        if kind == "replicate":
            raw = frame.get("msgs")
            try:
                if not isinstance(raw, list) or not isinstance(frame.get("devices", []), list):
                    raise ValueError("replicate needs msgs and devices lists")
                messages = [Stored.from_wire(item) for item in raw]
            except ValueError as exc:
                self.links.reply(node, frame, {"error": f"bad request: {exc}"})
                return True
            try:
                self._copies_in.send_nowait((node, frame, messages))
            except trio.WouldBlock:
                self.links.reply(node, frame, {"error": f"{self.me} is overloaded; try again"})
                return True
            for stored in messages:  # until answered (see above)
                key = (stored.user, stored.seq)
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return True
        if kind == "devices" and isinstance(frame.get("devices"), list):
            self.store.write_soon(devices=self._see_devices(frame["devices"]))
            return True
        if kind == "acked" and isinstance(user, str) and isinstance(frame.get("seqs"), list):
            seqs = seqs_of(frame["seqs"])
            removed = self.mailboxes.remove(user, seqs)
            self._gone(user, seqs, {s.seq for s in removed})
            logger.debug("copies_acked user=%s by=%s seqs=%s", user, node,
                         [s.seq for s in removed])
            self.store.write_soon(deletes=[(user, s.seq) for s in removed])
            return True
        return False

    def _gone(self, user: str, seqs: list[int], held: set[int]) -> None:
        """Remember messages the owner said are gone: those a request here carries until
        it is answered (held here already or not: a request resent by a link that broke
        may carry one again), and the last ``GONE`` of those not held here."""
        for seq in seqs:
            key = (user, seq)
            if key in self._in_flight:
                self._gone_in_flight.add(key)
            if seq not in held:
                self._gone_recently[key] = None
        while len(self._gone_recently) > GONE:
            del self._gone_recently[next(iter(self._gone_recently))]

    async def _serve_requests(self, requests: trio.MemoryReceiveChannel[Request]) -> None:
        async for node, frame, messages in requests:
            try:
                answer = await self._answer(frame, messages)
            except Unavailable as exc:
                answer = {"error": str(exc)}
            except ValueError as exc:
                answer = {"error": f"bad request: {exc}"}
            except Exception as exc:  # the request's boundary: one never stops the node
                logger.exception("replicate_failed_here peer=%s", node)
                answer = {"error": f"{self.me} could not store the copies: {exc}"}
            finally:
                self._answered(messages)
            self.links.reply(node, frame, answer)

    def _answered(self, messages: list[Stored]) -> None:
        """The request carrying ``messages`` is done with: they are no longer on their way."""
        for stored in messages:
            key = (stored.user, stored.seq)
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
                self._gone_in_flight.discard(key)

    def _was_gone(self, stored: Stored) -> bool:
        key = (stored.user, stored.seq)
        return key in self._gone_in_flight or key in self._gone_recently

    async def _answer(self, frame: Frame, messages: list[Stored]) -> Frame:
        """A ``replicate`` request: the copies on disk here."""
        devices = self._see_devices(frame.get("devices", []))
        try:
            await self.store.write(messages, devices=devices)
        except Exception as exc:  # not on this disk (logged by the store): not kept
            raise Unavailable(f"{self.me} could not store the copies: {exc}") from None
        gone = [s for s in messages if self._was_gone(s)]
        if gone:  # withdrawn (or acked) while on their way here
            self.store.write_soon(deletes=[(s.user, s.seq) for s in gone])
            messages = [s for s in messages if not self._was_gone(s)]
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


def stored_bytes(stored: Stored) -> int:
    """What ``stored`` adds to a request (``peer_proto.Budget``)."""
    return text_bytes(stored.user, stored.id, stored.body, stored.sender)


def note_copy(node: str, reply: Frame | None, count: int, confirmed: list[str]) -> None:
    """A replicate request's outcome: ``node`` is added to ``confirmed`` if it has the
    copies on disk; anything else (an error, no answer in time) is logged."""
    if reply is not None and reply.get("ok"):
        confirmed.append(node)
    else:
        logger.warning("replicate_failed peer=%s messages=%d", node, count)
