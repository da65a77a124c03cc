"""QoS 1: durable mailboxes on R nodes, acks, redelivery, handover. The trio shell.

The send path of a QoS 1 message (``docs/push.md`` draws it):

1. any node asks the user's owner to ``store`` it (over the peer link, or itself);
2. the owner numbers it (``mailbox.py``), writes it to its own disk and asks the next
   R-1 nodes of the ring to ``replicate`` it — all at once; each replica writes it to
   disk before it answers (``replication.py``). Messages with the same replicas go
   together: while one group is being written and copied, the next gathers (one disk
   write and one ``replicate`` request per replica for the whole group);
3. only when R copies are durable (or every node there is, in a cluster smaller than R)
   does the owner answer ``{"id", "seq"}``, and only then is the sender acknowledged;
4. the owner sends it to every node holding a session of the user; a client's ``ack``
   goes back to the owner, which removes what it covers and tells the replicas.

Unacked messages are sent again after ``ack_timeout`` and whenever a session of the user
registers (a reconnect, or a new owner after a death or a join). What counts as an
attempt is a write that its client did not ack before the connection ended (``tried``,
from the node holding it); a connection whose queue was full asks for what it missed
(``resend``), and the owner holds its retries to that node meanwhile (``hold``): a
slow reader is neither offered the same messages every ``ack_timeout`` nor loses any
(``redelivery.py``). When the ring changes,
every node copies its mailboxes to the users' new replica sets and drops the ones it no
longer holds once the new holders have them on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .frames import seqs_of
from .handover import Handover
from .latency import Histogram
from .mailbox import Limits, Mailboxes, Stored
from .redelivery import Redelivery
from .peer_proto import Budget
from .replication import Replication, note_copy, stored_bytes
from .routing import DeliverLocal, MessageIds, SendPeer, Unavailable
from .slices import in_slices
from .store import Store
from .store_requests import Answer, Reply, StoreRequests, parse_item

if TYPE_CHECKING:
    from .client_server import LocalClients
    from .config import Config
    from .peer_link import PeerLinks
    from .ring import HashRing
    from .routing import Router

logger = logging.getLogger(__name__)

#: messages an owner may be storing for other nodes at once; a stores request beyond it
#: is refused as overloaded (its senders are told, not held)
STORING = 65536
TICK = 1.0
Frame = dict[str, Any]


class _Group:
    """QoS 1 messages with the same replicas that an owner stores together: one write,
    one request per replica."""

    def __init__(self, replicas: tuple[str, ...]) -> None:
        self.replicas = replicas
        self.items: list[Stored] = []
        self.replies: list[Reply] = []  # one per item
        self.confirmed: set[str] = set()  # nodes that have the whole group on disk
        self.failure = ""  # why this node's disk did not take it, if it did not


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
        self._storing = 0  # messages of stores requests not answered yet
        #: by replicas: the group gathering while the one before is stored (a replica
        #: that does not answer holds up only the messages it is to copy)
        self._groups: dict[tuple[str, ...], _Group | None] = {}
        self._nursery: trio.Nursery | None = None
        self._requests = StoreRequests(links, config.replicate_timeout * 2)
        #: the copies on the replicas: asked for here, and kept here for other owners
        self.replication = Replication(config, ring=ring, links=links, store=store,
                                       mailboxes=self.mailboxes, push=self.push,
                                       ring_changed=self.ring_changed)
        self.handover = Handover(config, ring=ring, mailboxes=self.mailboxes, store=store,
                                 replication=self.replication,
                                 push=partial(self.push, reconnect=True))
        #: what the connections of users wrote and missed (at their nodes and owners)
        self.redelivery = Redelivery(config, ring=ring, router=router, links=links,
                                     mailboxes=self.mailboxes, carry_out=carry_out)
        #: None when this node may store as owner, else why not (the node sets it)
        self.ready: Callable[[], str | None] = lambda: None
        self._ids = ids
        #: how long QoS 1 sends that came in here waited until durable on R nodes
        self.send_seconds = Histogram(time.monotonic)

    # ---- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        messages, seqs, devices = await self.store.open()
        async for stored in in_slices(messages):  # gossip already runs: a turn for it
            self.mailboxes.put(stored)
        async for user, seq in in_slices(seqs.items()):
            self.mailboxes.note_seq(user, seq)
        async for user, device, seen in in_slices(devices):
            self.mailboxes.see_device(user, device, seen)
        if messages:
            logger.info("mailboxes_loaded messages=%d users=%d", len(messages),
                        len(self.mailboxes.users()))
        if not self.store.durable:
            logger.warning("qos1_not_durable reason=no_data_dir")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.store.run)
            nursery.start_soon(self.replication.run)
            nursery.start_soon(self._tick)
            nursery.start_soon(self.handover.run)
            task_status.started()

    # ---- sending ------------------------------------------------------------------------

    async def send(self, user: str, body: str, ttl: float | None, sender: str | None
                   ) -> dict[str, Any]:
        """Store a QoS 1 message on R nodes through its owner; ``{"id", "seq"}`` once done."""
        outcome: list[dict[str, Any] | Unavailable] = []
        done = trio.Event()

        def reply(result: dict[str, Any] | Unavailable) -> None:
            outcome.append(result)
            done.set()
        self.send_soon(user, body, ttl, sender, reply)
        await done.wait()
        if isinstance(outcome[0], Unavailable):
            raise outcome[0]
        return outcome[0]

    def send_soon(self, user: str, body: str, ttl: float | None, sender: str | None,
                  reply: Reply) -> None:
        """Start storing a QoS 1 message on R nodes through its owner; ``reply`` is called
        once, with ``{"id", "seq"}`` when it is durable there or the :class:`Unavailable`
        that says why not. Thousands in flight cost no task each."""
        reply = partial(self._timed, reply, time.monotonic())
        owner = self.ring.owner(user)
        if owner is None:
            reply(Unavailable("no grapevine node is alive to own this user"))
        elif owner != self.me:
            self._requests.store_soon(owner, [user, body, ttl, sender], reply)
        else:
            try:
                self._enqueue(user, body, ttl, sender, reply)
            except Unavailable as exc:
                reply(exc)

    def _timed(self, reply: Reply, began: float, result: dict[str, Any] | Unavailable
               ) -> None:
        """A send's outcome, its wait observed when it was stored."""
        if not isinstance(result, Unavailable):
            self.send_seconds.observe(time.monotonic() - began)
        reply(result)

    def _enqueue(self, user: str, body: str, ttl: float | None, sender: str | None,
                 reply: Reply) -> None:
        """Number a new message and add it to the group being gathered."""
        not_ready = self.ready()
        if not_ready:
            raise Unavailable(not_ready)
        try:
            stored = self.mailboxes.new(user, self._ids(), body, time.time(), ttl, sender=sender)
        except OverflowError as exc:
            raise Unavailable(str(exc)) from None
        replicas = tuple(n for n in self.ring.replicas(user, self.config.replicas)
                         if n != self.me)
        if replicas not in self._groups:  # nothing under way for these replicas
            assert self._nursery is not None, "Delivery.run() first"
            self._groups[replicas] = None
            self._nursery.start_soon(self._store_groups, replicas)
        group = self._groups[replicas]
        if group is None:
            group = self._groups[replicas] = _Group(replicas)
        group.items.append(stored)
        group.replies.append(reply)

    def _settled(self, group: _Group) -> None:
        """Tell the group's senders: acknowledged if it is on R nodes, else why not."""
        needed = 1 + len(group.replicas)
        stored_on = len(group.confirmed)
        if stored_on < needed:
            self.mailboxes.counters["under_replicated"] += len(group.items)
            why = f" ({self.me}: {group.failure})" if group.failure else ""
            error = Unavailable(f"stored on {stored_on} of {needed} nodes; not acknowledged"
                                f"{why}")
            for reply in group.replies:
                reply(error)
            return
        for user in dict.fromkeys(stored.user for stored in group.items):
            self.push(user)
        tracing = logger.isEnabledFor(logging.DEBUG)
        for stored, reply in zip(group.items, group.replies, strict=True):
            if tracing:  # ties a message id to its user and seq in the other debug lines
                logger.debug("message_durable id=%s user=%s seq=%d on=%s", stored.id,
                             stored.user, stored.seq, ",".join(sorted(group.confirmed)))
            reply({"id": stored.id, "seq": stored.seq})

    def _store_for(self, node: str, frame: Frame) -> None:
        """A ``stores`` request from ``node`` (or one ``store``, from nodes before batched
        stores): each item stored in the group of its replicas, or its error; answered
        when the last is settled."""
        single = frame.get("t") == "store"
        items = ([[frame.get(k) for k in ("user", "body", "ttl", "from")]] if single
                 else frame.get("items"))
        if not isinstance(items, list):
            self.links.reply(node, frame, {"error": "bad request: stores needs a list of items"})
            return
        if self._storing + len(items) > STORING:
            self.mailboxes.counters["stores_refused"] += 1
            self.links.reply(node, frame, {"error": f"{self.me} is overloaded; try again"})
            return
        self._storing += len(items)

        def done(results: list[Frame]) -> None:
            self._storing -= len(results)
            self.links.reply(node, frame, results[0] if single else {"results": results})
        answer = Answer(len(items), done)
        for index, item in enumerate(items):
            reply = partial(answer.set, index)
            try:
                self._enqueue(*parse_item(item), reply)
            except (Unavailable, ValueError) as exc:
                reply(exc)

    async def _store_groups(self, replicas: tuple[str, ...]) -> None:
        """Store the groups for ``replicas`` one at a time; the next gathers meanwhile."""
        try:
            while (group := self._groups.get(replicas)) is not None:
                await trio.lowlevel.checkpoint()  # the senders ready now join this group
                self._groups[replicas] = None
                confirmed: list[str] = []
                try:
                    await self._store_group(group, confirmed)
                finally:
                    group.confirmed.update(confirmed)
                    if len(group.confirmed) > len(group.replicas):  # on R nodes
                        for stored in group.items:
                            self.mailboxes.put(stored)
                    else:  # its senders are refused: never delivered, so a retry
                        self._withdraw(group)  # cannot make a duplicate
                    self._settled(group)
                self.mailboxes.counters["store_groups"] += 1
        finally:
            group = self._groups.pop(replicas, None)
            if group is not None:  # cancelled: nobody will store these
                self._settled(group)

    def _withdraw(self, group: _Group) -> None:
        """A group that did not reach R nodes: its copies go from every node that may
        hold one (this disk if its write went through, each replica told as by an ack,
        answered or not: a copy still on its way is dropped as it arrives), so none is
        delivered."""
        gone = [(stored.user, stored.seq) for stored in group.items]
        self.mailboxes.counters["withdrawn"] += len(gone)
        if self.me in group.confirmed:
            self.store.write_soon(deletes=gone)
        by_user: dict[str, list[int]] = {}
        for user, seq in gone:
            by_user.setdefault(user, []).append(seq)
        for user, seqs in by_user.items():
            for node in group.replicas:
                self.links.send_later(node, {"t": "acked", "user": user, "seqs": seqs})

    async def _store_group(self, group: _Group, confirmed: list[str]) -> None:
        """Write the group here and have its replicas copy it, all at once; each node
        that has it on disk is added to ``confirmed``. The copies are requests with
        callbacks, not tasks: one wait for the disk, one for the last replica. A group
        larger than a request's budget (``peer_proto.Budget``: its packed bytes, devices
        included) goes to each replica in several requests; a replica has the group once
        it has confirmed them all."""
        chunks = _chunks(group.items, self.replication.devices_bytes)
        copying = dict.fromkeys(group.replicas, len(chunks))  # requests not answered
        failed: set[str] = set()
        copied = trio.Event()

        def replied(node: str, count: int, reply: Frame | None) -> None:
            got: list[str] = []
            note_copy(node, reply, count, got)
            if not got:
                failed.add(node)
            copying[node] -= 1
            if copying[node] == 0:
                del copying[node]
                if node not in failed:
                    confirmed.append(node)
            if not copying:
                copied.set()
        for chunk in chunks:
            frame = self.replication.frame(chunk)
            for node in group.replicas:
                self.links.request_soon(node, frame, partial(replied, node, len(chunk)),
                                        self.config.replicate_timeout)
        try:
            await self.store.write(group.items)
        except Exception as exc:  # not durable here: the senders are not acknowledged
            logger.debug("store_failed messages=%d error=%r", len(group.items), str(exc))
            group.failure = str(exc)[:200]
        else:
            confirmed.append(self.me)
        if copying:
            await copied.wait()

    # ---- delivering ---------------------------------------------------------------------

    def registered(self, user: str, device: str) -> None:
        """A session of ``user`` registered here (the owner): note its device (stored and
        told to the replicas when it is new, and once in a while), deliver."""
        now = time.time()
        if self.mailboxes.see_device(user, device, now):
            record = [(user, device, now)]
            self.store.write_soon(devices=record)
            for node in self.ring.replicas(user, self.config.replicas):
                if node != self.me:  # a replica that takes over must wait for it too
                    self.links.send(node, {"t": "devices", "devices": [list(record[0])]})
        self.push(user, reconnect=True)

    def push(self, user: str, *, reconnect: bool = False) -> None:
        """Send what waits for ``user`` to the nodes holding its sessions (owner only):
        to a node whose retries are held (``hold``), only what was never sent."""
        if self.ring.owner(user) != self.me:
            return
        holders = self.router.holders(user)
        if not holders:
            return
        now = time.time()
        held = self._held(user, now) if not reconnect else ()
        retried = holders  # the nodes that get the due retries
        fresh: set[int] | None = None  # when some are held: the seqs never sent
        if held:
            retried = [node for node in holders if node not in held]
            if retried:
                fresh = {s.seq for s in self.mailboxes.to_send(user, now, held=True)}
        actions: list[Any] = []
        for stored in self.mailboxes.to_send(user, now, reconnect=reconnect,
                                             held=not retried):
            self.mailboxes.sent(stored, now)
            message = stored.to_client()
            for node in (retried if fresh is not None and stored.seq not in fresh
                         else holders):
                if node == self.me:
                    actions.append(DeliverLocal(user, message))
                else:
                    actions.append(SendPeer(node, {"t": "deliver", "user": user, "msg": message}))
        self._carry_out(actions)

    def _held(self, user: str, now: float) -> set[str] | tuple[()]:
        """The nodes whose retries of ``user``'s messages are held: a connection there
        missed messages and will ask for them. A hold of a connection no longer registered
        (its word lost, its node restarted) is forgotten."""
        holders = self.mailboxes.held(user, now)
        if not holders:
            return ()
        sessions = self.router.register.get(user, {})
        nodes = set()
        for holder in holders:
            node, session = holder
            if session in sessions.get(node, ()):
                nodes.add(node)
            else:
                self.mailboxes.hold(user, holder, 0.0)
        return nodes

    def client_ack(self, user: str, seqs: list[int], device: str) -> None:
        """A client here has these messages (``ClientSession.acked_through``): tell the
        owner."""
        if not seqs:
            return
        owner = self.ring.owner(user)
        if owner == self.me:
            self._acked_at_owner(user, seqs, device)
        elif owner is not None:
            self.links.send_later(owner, {"t": "ack", "user": user, "seqs": seqs,
                                          "device": device})

    def _acked_at_owner(self, user: str, seqs: list[int], device: str) -> None:
        removed = self.mailboxes.ack(user, seqs, device, time.time())
        if not removed:
            return
        done = [s.seq for s in removed]
        logger.debug("messages_acked user=%s device=%s seqs=%s", user, device, done)
        self.store.write_soon(deletes=[(user, s) for s in done])
        for node in self.ring.replicas(user, self.config.replicas):
            if node != self.me:
                self.links.send_later(node, {"t": "acked", "user": user, "seqs": done})

    # ---- frames from peers --------------------------------------------------------------

    def from_peer(self, node: str, frame: Frame) -> bool:
        """Handle a delivery frame; False if it is not one."""
        kind = frame.get("t")
        if kind in ("store", "stores"):
            self._store_for(node, frame)
            return True
        user = frame.get("user")
        if kind == "ack" and isinstance(user, str) and isinstance(frame.get("seqs"), list):
            device = frame.get("device") if isinstance(frame.get("device"), str) else ""
            self._acked_at_owner(user, seqs_of(frame["seqs"]), device)
            return True
        if kind in ("resend", "tried", "hold"):
            return self.redelivery.from_peer(node, frame)
        return self.replication.from_peer(node, frame)

    # ---- time and ring changes ----------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = time.time()
            # the users with sessions (whose owner this is): looked at every tick; the
            # rest a slice at a time, so a tick costs the same with a million waiting
            online = list(self.router.register)
            removed = self.mailboxes.expire(now, online) + self.mailboxes.sweep(now)
            if removed:
                # not expired: written too often without an ack
                dead = [stored for stored in removed if stored.expires > now]
                for stored in dead:
                    logger.warning("message_dead_lettered user=%s seq=%d id=%s attempts=%d",
                                   stored.user, stored.seq, stored.id, stored.attempts)
                if len(removed) > len(dead):
                    logger.info("messages_expired count=%d", len(removed) - len(dead))
                self.store.write_soon(deletes=[(s.user, s.seq) for s in removed])
            self.mailboxes.expire_holds(now)
            for user in self.mailboxes.retry_users(now, online):
                self.push(user)

    def ring_changed(self) -> None:
        self.handover.ring_changed()


def _chunks(messages: list[Stored], devices_bytes: Callable[[str], int]
            ) -> list[list[Stored]]:
    """``messages`` in the replicate requests of a ``Budget`` each (one at least): the
    packed bytes of each message, and of its user's devices once per request (a request
    carries the devices of its users)."""
    chunks: list[list[Stored]] = [[]]
    budget, users = Budget(), set[str]()
    for stored in messages:
        size = stored_bytes(stored)
        devices = 0 if stored.user in users else devices_bytes(stored.user)
        if not budget.room(size + devices):
            chunks.append([])
            budget, users = Budget(), set()
            devices = devices_bytes(stored.user)
        chunks[-1].append(stored)
        users.add(stored.user)
        budget.add(size + devices)
    return chunks

