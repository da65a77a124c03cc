"""Handover: when the ring changes, mailboxes move to their users' new replica sets.

Every node copies each mailbox it holds, with the devices of its user, to the nodes of
the user's replica set that do not have it yet, and drops the ones it no longer holds
once the new holders have them on disk (``docs/push.md``). Part of the QoS 1 shell
(``delivery.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .mailbox import Stored, as_stored
from .peer_proto import Budget
from .replication import stored_bytes
from .slices import in_slices

if TYPE_CHECKING:
    from .config import Config
    from .mailbox import Mailboxes
    from .replication import Replication
    from .ring import HashRing
    from .store import Store

logger = logging.getLogger(__name__)

#: users per handover request (their messages and devices), and a ``peer_proto.Budget``
#: of packed bytes at most
HANDOVER_USERS = 500
RETRY = 1.0  # seconds before a round that a holder did not confirm is tried again


class Handover:
    def __init__(self, config: Config, *, ring: HashRing, mailboxes: Mailboxes, store: Store,
                 replication: Replication, push: Callable[[str], None]) -> None:
        self._me = config.name
        self._replicas = config.replicas
        self._ring = ring
        #: the mailboxes held here, on this disk
        self._mailboxes, self._store = mailboxes, store
        self._replication = replication  # copies mailboxes to other nodes
        self._push = push  # offer a user's mailbox anew (at its owner, when it came here)
        self._wanted = trio.Event()
        self._copied: dict[str, frozenset[str]] = {}  # user -> holders that have its box
        #: one object for each set of holders: a million users share a few (a set each
        #: was a million objects for the garbage collector to walk)
        self._sets: dict[frozenset[str], frozenset[str]] = {}

    def ring_changed(self) -> None:
        """Hand over what moved (soon, in the handover's own task)."""
        self._wanted.set()

    async def run(self) -> None:
        self._wanted.set()
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            if not await self.once():
                await trio.sleep(RETRY)  # a holder did not answer: try again in a while
                self._wanted.set()

    def _holders(self, user: str) -> frozenset[str]:
        return self._shared(
            frozenset(self._ring.replicas(user, self._replicas)))

    def _shared(self, nodes: frozenset[str]) -> frozenset[str]:
        return self._sets.setdefault(nodes, nodes)

    async def once(self) -> bool:
        """Copy each mailbox, and the devices each user has, to the user's replica set;
        drop those no longer ours. One request per new holder and batch of users.

        Devices go along even when no message waits: a new owner that did not know a
        device would take the acks of the user's other devices as enough, and a message
        would never reach the device it forgot. Returns False if some new holder did not
        confirm its copy."""
        boxes, me = self._mailboxes, self._me
        self._sets = {}  # those of nodes long gone need not be kept
        # user -> its holders, and those of them to copy to: shared sets, not a tuple
        # per user (what a round keeps is no work for the garbage collector)
        moving: dict[str, frozenset[str]] = {}
        targets_of: dict[str, frozenset[str]] = {}
        batches: dict[str, list[str]] = {}  # node -> users to copy there
        # what is copied: messages that arrive while the copies are under way are not in
        # it, so they are not dropped with it (the next round takes them). Plain tuples
        # in a tuple: untracked by the collector once it has seen them
        snapshot: dict[str, tuple[Any, ...]] = {}
        async for user in in_slices(boxes.known_users()):  # a million is seconds of work
            holders = self._holders(user)
            if not holders or self._copied.get(user) == holders:
                continue
            targets = self._shared(holders - {me} - self._copied.get(user, frozenset()))
            moving[user], targets_of[user] = holders, targets
            snapshot[user] = boxes.kept(user)
            for node in targets:
                batches.setdefault(node, []).append(user)
        confirmed: dict[str, set[str]] = {}  # node -> users it confirmed
        async with trio.open_nursery() as nursery:
            for node, users in batches.items():
                nursery.start_soon(self._hand_over, node, users, snapshot, confirmed)
        complete = True
        handed_over = [0, 0]  # users, messages: one line for the round, not one each
        async for user, holders in in_slices(moving.items()):
            if any(user not in confirmed.get(node, ()) for node in targets_of[user]):
                complete = False
                continue
            if self._holders(user) != holders:
                complete = False  # the ring moved while copying: the next round decides
                continue
            if me not in holders:
                dropped = boxes.remove(user, [as_stored(p).seq for p in snapshot[user]])
                if boxes.pending_count(user):
                    complete = False  # more came meanwhile: copy those in the next round
                else:
                    boxes.drop_user(user)
                self._copied.pop(user, None)  # if it comes back here, copy it again
                self._store.write_soon(deletes=[(s.user, s.seq) for s in dropped])
                if dropped:
                    handed_over[0] += 1
                    handed_over[1] += len(dropped)
                    logger.debug("mailbox_handed_over user=%s seqs=%s to=%s", user,
                                 [s.seq for s in dropped], ",".join(sorted(holders)))
                continue
            self._copied[user] = holders
            if self._ring.owner(user) == me:
                self._push(user)
        if handed_over[0]:
            logger.info("mailboxes_handed_over users=%d messages=%d complete=%s",
                        handed_over[0], handed_over[1], str(complete).lower())
        return complete

    async def _hand_over(self, node: str, users: list[str],
                         snapshot: dict[str, tuple[Any, ...]],
                         confirmed: dict[str, set[str]]) -> None:
        """Copy ``users``' mailboxes and devices to ``node`` in requests of a bounded size
        (a ``Budget`` each, the devices of each user in it counted: a user's messages may
        span several); a user is confirmed once all of its are."""
        done = confirmed.setdefault(node, set())
        devices_bytes = self._replication.devices_bytes
        messages: list[Stored] = []
        batch: set[str] = set()
        budget = Budget()
        for index, user in enumerate(users):
            devices = devices_bytes(user)
            if not budget.room(devices):
                if not await self._copy(node, messages, batch):
                    return
                done.update(batch)
                messages, batch, budget = [], set(), Budget()
            batch.add(user)
            budget.add(devices)
            for plain in snapshot[user]:
                stored = as_stored(plain)
                size = stored_bytes(stored)
                if not budget.room(size) and (messages or len(batch) > 1):
                    if not await self._copy(node, messages, batch):
                        return
                    done.update(batch - {user})  # the user at hand may have more to come
                    messages, batch, budget = [], {user}, Budget()
                    budget.add(devices)
                messages.append(stored)
                budget.add(size)
            if index + 1 == len(users) or len(batch) >= HANDOVER_USERS:
                if not await self._copy(node, messages, batch):
                    return
                done.update(batch)
                messages, batch, budget = [], set(), Budget()

    async def _copy(self, node: str, messages: list[Stored], users: set[str]) -> bool:
        ok: list[str] = []
        self._mailboxes.counters["handover_requests"] += 1
        await self._replication.copy(node, messages, ok, users=users)
        return bool(ok)
