"""A whole node under one nursery: membership, peer links, clients, the API.

``run_node(config, *, task_status)`` makes a :class:`~node.node.Node` and starts its
services in dependency order with ``nursery.start``, and reports the node once everything
listens, so tests can bind port 0 and read the real addresses. ``Node.request_stop()``
(SIGINT/SIGTERM in the CLI, ``POST /v1/leave`` in the API) leaves the cluster gracefully,
waiting at most ``config.leave_timeout`` for the goodbye to spread, then cancels
everything.
"""

from __future__ import annotations

import logging
import os
import random

import trio

from gossip.keyring import Keyring
from gossip.transport import advertise_address
from membership.member import Address
from membership.service import serve_membership

from .client_server import ClientServer
from .config import Config
from .http_api import serve_http_api
from .node import Node, write_json
from .views import format_address

logger = logging.getLogger(__name__)


async def run_node(
    config: Config,
    *,
    keyring: Keyring | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    peer_host = config.peer_addr or config.bind_addr
    listeners = await trio.open_tcp_listeners(config.peer_port, host=peer_host)
    port = listeners[0].socket.getsockname()[1]
    peer_address = (advertise_address(peer_host, config.advertise_addr), port)
    config = config.with_node_tags(peer=format_address(peer_address))
    async with trio.open_nursery() as nursery:
        membership = await nursery.start(
            lambda task_status: serve_membership(
                config, keyring=keyring, rng=rng, task_status=task_status
            )
        )
        node = Node(config, membership, peer_address)
        await nursery.start(node.delivery.run)
        await nursery.start(node.fanout.run)
        await nursery.start(node.links.serve, listeners)
        logger.info("peer_listening address=%s:%d", *peer_address)
        nursery.start_soon(node.follow_members)
        nursery.start_soon(node.stalls.run)
        if config.client_port is not None:
            node.client_server = ClientServer(config, node.clients, node._client_request,
                                              node.resumes.resume, node._client_send_durable)
            node.client_address = await nursery.start(node.client_server.serve)
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
    write_json(data_dir, "node.json", {
        "name": node.config.name,
        "pid": os.getpid(),
        "gossip": format_address(node.membership.address),
        "api": format_address(node.api_address),
        "client": format_address(node.client_address),
        "peer": format_address(node.peer_address),
    })
