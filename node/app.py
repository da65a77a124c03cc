"""A whole node under one nursery: membership first, then the ring, then the HTTP API.

``run_node(config, *, task_status)`` starts the services in dependency order with
``nursery.start`` and reports a :class:`Node` once everything listens, so tests can bind
port 0 and read the real addresses. ``Node.request_stop()`` (SIGINT/SIGTERM in the CLI,
``POST /v1/leave`` in the API) leaves the cluster gracefully, waiting at most
``config.leave_timeout`` for the goodbye to spread, then cancels everything.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass

import trio

from gossip.keyring import Keyring
from membership.member import Address
from membership.service import Membership, serve_membership

from .client_server import ClientServer, LocalClients
from .config import Config
from .http_api import serve_http_api
from .metrics import node_registry
from .ring import HashRing, ring_members

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    gossip: Address
    api: Address | None
    client: Address | None


class Node:
    def __init__(self, config: Config, membership: Membership) -> None:
        self.config = config
        self.membership = membership
        self.ring = HashRing(config.ring_vnodes)
        self.clients = LocalClients()
        self.api_address: Address | None = None
        self.client_address: Address | None = None
        self.metrics_registry = node_registry(self)
        self._started = trio.current_time()
        self._stop = trio.Event()

    @property
    def addresses(self) -> NodeAddresses:
        return NodeAddresses(self.membership.address, self.api_address, self.client_address)

    def uptime(self) -> float:
        return trio.current_time() - self._started

    def request_stop(self) -> None:
        """Leave gracefully and stop (idempotent)."""
        self._stop.set()

    async def wait_stop_requested(self) -> None:
        await self._stop.wait()

    def refresh_ring(self) -> bool:
        """Rebuild the ring from the member table; True (and one log line) if it changed."""
        if not self.ring.update(ring_members(self.membership.members())):
            return False
        logger.info(
            "ring_changed nodes=%d version=%d members=%s", len(self.ring), self.ring.version,
            ",".join(sorted(self.ring.nodes)),
        )
        return True

    async def follow_members(self) -> None:
        """Keep the ring in step with membership (every event may change who owns what)."""
        events = self.membership.subscribe()
        self.refresh_ring()
        async for _event in events:
            while True:  # a burst of events (a join storm) costs one rebuild
                try:
                    events.receive_nowait()
                except trio.WouldBlock:
                    break
            self.refresh_ring()


async def run_node(
    config: Config,
    *,
    keyring: Keyring | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = config.with_node_tags()
    async with trio.open_nursery() as nursery:
        membership = await nursery.start(
            lambda task_status: serve_membership(
                config, keyring=keyring, rng=rng, task_status=task_status
            )
        )
        node = Node(config, membership)
        nursery.start_soon(node.follow_members)
        if config.client_port is not None:
            server = ClientServer(config, config.name, node.clients)
            node.client_address = await nursery.start(server.serve)
        api_done = trio.Event()
        if config.api_port is not None:
            node.api_address = await nursery.start(_serve_api, node, api_done)
        else:
            api_done.set()
        if config.data_dir:
            _write_node_file(config.data_dir, node)
        logger.info("node_started name=%s", config.name)
        task_status.started(node)
        await node.wait_stop_requested()
        logger.info("node_leaving name=%s timeout=%s", config.name, config.leave_timeout)
        with trio.move_on_after(config.leave_timeout) as scope:
            await membership.leave()
        if scope.cancelled_caught:
            logger.warning("leave_timed_out name=%s", config.name)
        with trio.move_on_after(2.0):
            await api_done.wait()  # the API answers what it was asked before we stop
        logger.info("node_stopped name=%s", config.name)
        nursery.cancel_scope.cancel()


async def _serve_api(
    node: Node, done: trio.Event, *, task_status: trio.TaskStatus[Address]
) -> None:
    try:
        await serve_http_api(node, node.config.api_addr, node.config.api_port or 0,
                             task_status=task_status)
    finally:
        done.set()


def _write_node_file(data_dir: str, node: Node) -> None:
    """``node.json`` in the data dir: who runs here and where (read by tooling)."""
    os.makedirs(data_dir, exist_ok=True)
    api = node.api_address
    info = {
        "name": node.config.name,
        "pid": os.getpid(),
        "gossip": "{}:{}".format(*node.membership.address),
        "api": None if api is None else "{}:{}".format(*api),
        "client": None if node.client_address is None else "{}:{}".format(*node.client_address),
    }
    path = os.path.join(data_dir, "node.json")
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(info, handle)
    os.replace(temporary, path)
