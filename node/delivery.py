"""QoS 1: durable mailboxes on R nodes, acks, redelivery, handover. The trio shell.

The send path of a QoS 1 message (``docs/push.md`` draws it):

1. any node asks the user's owner to ``store`` it (over the peer link, or itself);
2. the owner numbers it (``mailbox.py``), writes it to its own disk and asks the next
   R-1 nodes of the ring to ``replicate`` it — all at once; each replica writes it to
   disk before it answers;
3. only when R copies are durable (or every node there is, in a cluster smaller than R)
   does the owner answer ``{"id", "seq"}``, and only then is the sender acknowledged;
4. the owner sends it to every node holding a session of the user; a client's ``ack``
   goes back to the owner, which removes what it covers and tells the replicas.

Unacked messages are sent again after ``ack_timeout`` and whenever a session of the user
registers (a reconnect, or a new owner after a death or a join). When the ring changes,
every node copies its mailboxes to the users' new replica sets and drops the ones it no
longer holds once the new holders have them on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .mailbox import Limits, Mailboxes, Stored
from .routing import DeliverLocal, MessageIds, SendPeer, Unavailable
from .store import Store

if TYPE_CHECKING:
    from .client_server import LocalClients
    from .config import Config
    from .peer_link import PeerLinks
    from .ring import HashRing
    from .routing import Router

logger = logging.getLogger(__name__)

#: requests served at once per pool: durable writes wait on the disk and on replicas,
#: so many are in flight while group commit shares each fsync among them
WORKERS = 256
REQUESTS = 1024
TICK = 1.0
Frame = dict[str, Any]


class Delivery:
    def __init__(self, config: Config, *, ring: HashRing, router: Router,
                 clients: LocalClients, links: PeerLinks, store: Store, ids: MessageIds,
                 carry_out: Callable[[list[Any]], None]) -> None:
        self.me = config.name
        self.config = config
        self.ring = ring
        self.router = router
        self.clients = clients
        self.links = links
        self.store = store
        self._carry_out = carry_out
        self.mailboxes = Mailboxes(Limits(
            ack_timeout=config.ack_timeout, max_attempts=config.max_attempts,
            default_ttl=config.default_ttl, max_pending_per_user=config.max_pending,
        ))
        # stores wait on replicas, replicas only on their disk: two pools, so that nodes
        # storing through each other can never hold each other's workers
        self._stores_in, self._stores = trio.open_memory_channel[tuple[str, Frame]](REQUESTS)
        self._copies_in, self._copies = trio.open_memory_channel[tuple[str, Frame]](REQUESTS)
        self._rebalance = trio.Event()
        self._copied: dict[str, frozenset[str]] = {}
        self._ids = ids

    # ---- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        messages, seqs, devices = await self.store.open()
        for stored in messages:
            self.mailboxes.put(stored)
        for user, seq in seqs.items():
            self.mailboxes.note_seq(user, seq)
        for user, device, seen in devices:
            self.mailboxes.see_device(user, device, seen)
        if messages:
            logger.info("mailboxes_loaded messages=%d users=%d", len(messages),
                        len(self.mailboxes.users()))
        if not self.store.durable:
            logger.warning("qos1_not_durable reason=no_data_dir")
        async with trio.open_nursery() as nursery:
            await nursery.start(self.store.run)
            for _ in range(WORKERS):
                nursery.start_soon(self._serve_requests, self._stores)
                nursery.start_soon(self._serve_requests, self._copies)
            nursery.start_soon(self._tick)
            nursery.start_soon(self._rebalancer)
            self._rebalance.set()
            task_status.started()

    # ---- sending ------------------------------------------------------------------------

    async def send(self, user: str, body: str, ttl: float | None, sender: str | None
                   ) -> dict[str, Any]:
        """Store a QoS 1 message on R nodes through its owner; ``{"id", "seq"}`` once done."""
        owner = self.ring.owner(user)
        if owner is None:
            raise Unavailable("no grapevine node is alive to own this user")
        if owner == self.me:
            return await self._store_as_owner(user, body, ttl, sender)
        with trio.move_on_after(self.config.replicate_timeout * 2) as scope:
            reply = await self.links.request(
                owner, {"t": "store", "user": user, "body": body, "ttl": ttl, "from": sender}
            )
        if scope.cancelled_caught:
            raise Unavailable(f"the owner {owner} did not confirm in time")
        if "error" in reply:
            raise Unavailable(str(reply["error"]))
        return {"id": reply["id"], "seq": reply["seq"]}

    async def _store_as_owner(self, user: str, body: str, ttl: float | None,
                              sender: str | None) -> dict[str, Any]:
        try:
            stored = self.mailboxes.new(user, self._ids(), body, time.time(), ttl, sender=sender)
        except OverflowError as exc:
            raise Unavailable(str(exc)) from None
        replicas = [n for n in self.ring.replicas(user, self.config.replicas) if n != self.me]
        confirmed: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_own, stored, confirmed)
            for node in replicas:
                nursery.start_soon(self._replicate, node, [stored], confirmed)
        self.mailboxes.put(stored)  # kept even if short of copies: it may still be delivered
        needed = 1 + len(replicas)
        if len(confirmed) < needed:
            self.mailboxes.counters["under_replicated"] += 1
            raise Unavailable(f"stored on {len(confirmed)} of {needed} nodes; not acknowledged")
        self.push(user)
        return {"id": stored.id, "seq": stored.seq}

    async def _write_own(self, stored: Stored, confirmed: list[str]) -> None:
        await self.store.write([stored])
        confirmed.append(self.me)

    async def _replicate(self, node: str, messages: list[Stored], confirmed: list[str]) -> None:
        """Copy ``messages`` (and their users' devices) to ``node``; on its disk, it is
        added to ``confirmed``."""
        devices = self._devices_of({s.user for s in messages})
        frame = {"t": "replicate", "msgs": [s.to_wire() for s in messages],
                 "devices": [list(d) for d in devices]}
        with trio.move_on_after(self.config.replicate_timeout):
            reply = await self.links.request(node, frame)
            if reply.get("ok"):
                confirmed.append(node)
                return
        logger.warning("replicate_failed peer=%s messages=%d", node, len(messages))

    def _devices_of(self, users: set[str]) -> list[tuple[str, str, float]]:
        return [(user, device, seen) for user in sorted(users)
                for device, seen in self.mailboxes.devices(user).items()]

    # ---- delivering ---------------------------------------------------------------------

    def registered(self, user: str, device: str) -> None:
        """A session of ``user`` registered here (the owner): note its device, deliver."""
        now = time.time()
        if self.mailboxes.see_device(user, device, now):
            record = [(user, device, now)]
            self.store.write_soon(devices=record)
            for node in self.ring.replicas(user, self.config.replicas):
                if node != self.me:  # a replica that takes over must wait for it too
                    self.links.send(node, {"t": "devices", "devices": [list(record[0])]})
        self.push(user, reconnect=True)

    def push(self, user: str, *, reconnect: bool = False) -> None:
        """Send what waits for ``user`` to the nodes holding its sessions (owner only)."""
        if self.ring.owner(user) != self.me:
            return
        holders = self.router.holders(user)
        if not holders:
            return
        now = time.time()
        devices = self.router.online_devices(user)
        actions: list[Any] = []
        for stored in self.mailboxes.to_send(user, now, reconnect=reconnect):
            message = self.mailboxes.sent(stored, now, devices).to_client()
            for node in holders:
                if node == self.me:
                    actions.append(DeliverLocal(user, message))
                else:
                    actions.append(SendPeer(node, {"t": "deliver", "user": user, "msg": message}))
        self._carry_out(actions)

    def client_ack(self, user: str, seq: int, device: str) -> None:
        """A client here acknowledged ``seq``: tell the owner."""
        owner = self.ring.owner(user)
        if owner == self.me:
            self._acked_at_owner(user, seq, device)
        elif owner is not None:
            self.links.send(owner, {"t": "ack", "user": user, "seq": seq, "device": device})

    def _acked_at_owner(self, user: str, seq: int, device: str) -> None:
        removed = self.mailboxes.ack(user, seq, device, time.time())
        if not removed:
            return
        seqs = [s.seq for s in removed]
        self.store.write_soon(deletes=[(user, s) for s in seqs])
        for node in self.ring.replicas(user, self.config.replicas):
            if node != self.me:
                self.links.send(node, {"t": "acked", "user": user, "seqs": seqs})

    # ---- frames from peers --------------------------------------------------------------

    def from_peer(self, node: str, frame: Frame) -> bool:
        """Handle a delivery frame; False if it is not one."""
        kind = frame.get("t")
        if kind in ("store", "replicate"):
            try:
                (self._stores_in if kind == "store" else self._copies_in).send_nowait((node, frame))
            except trio.WouldBlock:
                self.links.reply(node, frame, {"error": f"{self.me} is overloaded; try again"})
            return True
        user = frame.get("user")
        if kind == "ack" and isinstance(user, str) and isinstance(frame.get("seq"), int):
            device = frame.get("device") if isinstance(frame.get("device"), str) else ""
            self._acked_at_owner(user, frame["seq"], device)
            return True
        if kind == "devices" and isinstance(frame.get("devices"), list):
            self.store.write_soon(devices=self._see_devices(frame["devices"]))
            return True
        if kind == "acked" and isinstance(user, str) and isinstance(frame.get("seqs"), list):
            seqs = [s for s in frame["seqs"] if isinstance(s, int)]
            removed = self.mailboxes.remove(user, seqs)
            self.store.write_soon(deletes=[(user, s.seq) for s in removed])
            return True
        return False

    async def _serve_requests(self, requests: trio.MemoryReceiveChannel[tuple[str, Frame]]
                              ) -> None:
        async for node, frame in requests:
            try:
                answer = await self._answer(frame)
            except Unavailable as exc:
                answer = {"error": str(exc)}
            except ValueError as exc:
                answer = {"error": f"bad request: {exc}"}
            self.links.reply(node, frame, answer)

    async def _answer(self, frame: Frame) -> Frame:
        if frame["t"] == "store":
            user, body, ttl, sender = (frame.get(k) for k in ("user", "body", "ttl", "from"))
            if not isinstance(user, str) or not isinstance(body, str):
                raise ValueError("store needs a user and a body")
            if ttl is not None and not isinstance(ttl, int | float):
                raise ValueError("ttl must be a number")
            return await self._store_as_owner(user, body, ttl, sender)
        raw, raw_devices = frame.get("msgs"), frame.get("devices", [])
        if not isinstance(raw, list) or not isinstance(raw_devices, list):
            raise ValueError("replicate needs msgs and devices lists")
        messages = [Stored.from_wire(item) for item in raw]
        devices = self._see_devices(raw_devices)
        await self.store.write(messages, devices=devices)
        for stored in messages:
            self.mailboxes.put(stored)
        return {"ok": True}

    def _see_devices(self, raw: list[Any]) -> list[tuple[str, str, float]]:
        """Device records from a peer, noted in the mailboxes; malformed ones are skipped."""
        records = []
        for item in raw:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], str) and isinstance(item[2], int | float)):
                user, device, seen = item[0], item[1], float(item[2])
                self.mailboxes.see_device(user, device, seen)
                records.append((user, device, seen))
        return records

    # ---- time and ring changes ----------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = time.time()
            removed = self.mailboxes.expire(now)
            if removed:
                logger.info("messages_expired count=%d", len(removed))
                self.store.write_soon(deletes=[(s.user, s.seq) for s in removed])
            for user in self.mailboxes.retry_users(now):
                self.push(user)

    def ring_changed(self) -> None:
        self._rebalance.set()

    async def _rebalancer(self) -> None:
        while True:
            await self._rebalance.wait()
            self._rebalance = trio.Event()
            if not await self._rebalance_once():
                await trio.sleep(TICK)  # a holder did not answer: try again in a while
                self._rebalance.set()

    async def _rebalance_once(self) -> bool:
        """Copy each mailbox to its user's replica set; drop those no longer ours.

        Returns False if some new holder did not confirm its copy."""
        complete = True
        for user in self.mailboxes.users():
            holders = frozenset(self.ring.replicas(user, self.config.replicas))
            if not holders or self._copied.get(user) == holders:
                continue
            messages = self.mailboxes.pending(user)
            targets = holders - {self.me} - self._copied.get(user, frozenset())
            confirmed: list[str] = []
            async with trio.open_nursery() as nursery:
                for node in targets:
                    nursery.start_soon(self._replicate, node, messages, confirmed)
            if targets - set(confirmed):
                complete = False
                continue
            self._copied[user] = holders
            if self.me not in holders:
                dropped = self.mailboxes.drop_user(user)
                self._copied.pop(user, None)
                self.store.write_soon(deletes=[(s.user, s.seq) for s in dropped])
                logger.info("mailbox_handed_over user=%s messages=%d to=%s", user,
                            len(dropped), ",".join(sorted(holders)))
            elif self.ring.owner(user) == self.me:
                self.push(user, reconnect=True)
        return complete
