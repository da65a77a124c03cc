"""In-process nodes on 127.0.0.1 with ephemeral ports, and a tiny HTTP client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from membership.member import MemberState
from node.app import run_node
from node.clients import LocalClients
from node.config import Config
from node.delivery import Delivery
from node.node import Node
from node.ring import HashRing
from node.routing import MessageIds, Router
from node.store import Store


def local_config(name: str, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "bind_addr": "127.0.0.1", "bind_port": 0, "api_addr": "127.0.0.1", "api_port": 0,
        "leave_timeout": 2.0,
    }
    values.update(overrides)
    return Config.local(name, **values)


def delivery_of(me: str, ring: HashRing, links: object, store: Store) -> Delivery:
    """A node's QoS 1 shell alone: no router traffic, no client sessions."""
    return Delivery(local_config(me), ring=ring, router=Router(me, ring.owner),
                    clients=LocalClients(), links=links, store=store,  # type: ignore[arg-type]
                    ids=MessageIds(me), carry_out=lambda actions: None)


async def start_node(nursery: trio.Nursery, config: Config, **kwargs: Any) -> Node:
    return await nursery.start(
        lambda task_status: run_node(config, task_status=task_status, **kwargs)
    )


async def wait_until(nodes: list[Node], predicate: Callable[[], bool]) -> None:
    """Wait, step by step of the nodes' own machines, until ``predicate()`` holds.

    Event-driven: wakes whenever any node's membership owner has run a step or its router
    has taken an input. The caller bounds it with ``trio.fail_after``.
    """
    while not predicate():
        async with trio.open_nursery() as nursery:
            for node in nodes:
                for changed in (node.membership.wait_changed, node.wait_routing_changed):
                    async def wake(changed: Callable[[], Any] = changed) -> None:
                        await changed()
                        nursery.cancel_scope.cancel()
                    nursery.start_soon(wake)


def states(node: Node) -> dict[str, MemberState]:
    return {m.name: m.state for m in node.membership.members()}


async def http(
    address: tuple[str, int], method: str, path: str, body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP/1.1 request over a fresh connection; returns (status, JSON or text)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address[0]}", "Connection: close",
             f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, _sep, content = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(content)
    except ValueError:
        return status, content.decode()
