"""A whole node under one nursery: peer links, membership, the ring, clients, the API.

The :class:`Node` is also where the pieces meet: the router (``routing.py``) decides,
the node carries out its actions on the peer links and the local clients.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from gossip.keyring import Keyring
from gossip.transport import advertise_address
from membership.member import Address, EventKind
from membership.service import Membership, serve_membership, split_host_port

from .client_proto import Ack, Request, SendTo, Upstream
from .client_server import ClientServer
from .clients import ClientSession, LocalClients
from .config import Config
from .delivery import Delivery
from .fanout import Fanout
from .frames import is_seq, pack_message
from .http_api import serve_http_api
from .peer_link import PeerLinks
from .resume import Resumes
from .ring import HashRing, live_nodes, ring_members
from .routing import (
    Action, DeliverLocal, MessageIds, NoOwner, Registered, Router, SendPeer, Unavailable,
    qos0_message,
)
from .stalls import GcWatch, LoopWatch, stall_for
from .store import Store
from .views import format_address

logger = logging.getLogger(__name__)
#: peer frames that go straight to the router, or to QoS 1 delivery (the others are
#: asked in turn)
_ROUTED = frozenset({"route", "deliver", "register", "unregister"})
_DURABLE = frozenset({"store", "stores", "replicate", "ack", "acked", "devices", "hold",
                      "resend", "tried"})


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    gossip: Address
    api: Address | None
    client: Address | None
    peer: Address


class Node:
    def __init__(self, config: Config, membership: Membership, peer_address: Address) -> None:
        self.config = config
        self.membership = membership
        self.peer_address = peer_address
        self.ring = HashRing(config.ring_vnodes)
        self.router = Router(config.name, self.ring.owner)
        self.clients = LocalClients(on_open=self._session_opened, on_close=self._session_closed,
                                    on_read=self._read_already, on_full=self._missing,
                                    on_room=self._room_for)
        self.links = PeerLinks(config.name, self._keys, self._peer_frame, self._peer_connected)
        self._ids = MessageIds(config.name)
        self.delivery = Delivery(
            config, ring=self.ring, router=self.router, clients=self.clients, links=self.links,
            store=Store.in_dir(config.data_dir), ids=self._ids, carry_out=self._carry_out,
        )
        self.fanout = Fanout(config, ring=self.ring, clients=self.clients, links=self.links,
                             ids=self._ids)
        self.resumes = Resumes(config, ring=self.ring, router=self.router, links=self.links,
                               delivery=self.delivery, clients=self.clients)
        self.api_address: Address | None = None
        #: the HTTP API's counters (``http_api.HttpApi.counters``), once it serves
        self.api_counters: dict[str, int] = {}
        self.client_address: Address | None = None
        self.client_server: ClientServer | None = None  # with --client
        self._routing_changed = trio.Event()
        self._routing_waiters = 0
        self.stalls = LoopWatch(GcWatch(), stall=stall_for(config.probe_timeout))
        self._started = trio.current_time()
        self._stop = trio.Event()
        self._joined_once = False
        self._had_peers = bool(_read_peers(config.data_dir))
        self.delivery.ready = self._joined

    @property
    def addresses(self) -> NodeAddresses:
        return NodeAddresses(
            self.membership.address, self.api_address, self.client_address, self.peer_address
        )

    def uptime(self) -> float:
        return trio.current_time() - self._started

    def request_stop(self) -> None:
        """Leave gracefully and stop (idempotent)."""
        self._stop.set()

    async def wait_stop_requested(self) -> None:
        await self._stop.wait()

    # ---- messages ---------------------------------------------------------------------

    async def send(self, user: str, body: str, *, qos: int = 0, ttl: float | None = None,
                   sender: str | None = None) -> dict[str, Any]:
        """Hand a message for ``user`` to the cluster; ``{"id", "seq"}`` once it is taken:
        at once for QoS 0, once durable on R nodes for QoS 1 (:class:`Unavailable` if not)."""
        if qos == 1:
            return await self.delivery.send(user, body, ttl, sender)
        return self.send_message(user, body, ttl=ttl, sender=sender)

    def send_message(self, user: str, body: str, *, ttl: float | None = None,
                     sender: str | None = None) -> dict[str, Any]:
        """A QoS 0 message: routed now, never stored."""
        message = qos0_message(self._ids(), body, time.time())
        if sender is not None:
            message["from"] = sender
        if ttl is not None:
            message["ttl"] = ttl
        self._carry_out(self.router.send(user, pack_message(message)))
        return {"id": message["id"], "seq": 0}

    def push_counters(self) -> dict[str, int]:
        """Counters of sessions, routing, links and mailboxes (for status and metrics)."""
        webhook = self.fanout.webhook
        return {**self.clients.counters, **self.router.counters, **self.links.counters,
                **self.delivery.mailboxes.counters, **self.delivery.store.counters,
                **self.api_counters,
                **self.fanout.counters,
                **(webhook.counters if webhook else {})}

    def push_gauges(self) -> dict[str, float]:
        return {"sessions": len(self.clients), "users_connected": self.clients.users(),
                "links": len(self.links.connected()), "ring_nodes": len(self.ring),
                "pending_messages": self.delivery.mailboxes.pending_count(),
                "topics": self.clients.topics(),
                "webhook_queue": len(self.fanout.webhook) if self.fanout.webhook else 0,
                "store_commits": self.delivery.store.commits}

    async def wait_routing_changed(self) -> None:
        """Wait until the router has taken one more input (sessions, peer frames, ring)."""
        self._routing_waiters += 1
        try:
            await self._routing_changed.wait()
        finally:
            self._routing_waiters -= 1

    def _changed(self) -> None:
        if self._routing_waiters:  # only tests and tools wait: free on the hot path
            self._routing_changed.set()
            self._routing_changed = trio.Event()

    def _carry_out(self, actions: list[Action]) -> None:
        self._changed()
        for action in actions:
            if isinstance(action, DeliverLocal):
                self.clients.deliver(action.user, action.message)
            elif isinstance(action, SendPeer):
                self.links.send(action.node, action.frame)
            elif isinstance(action, Registered):
                self.delivery.registered(action.user, action.device)
            elif isinstance(action, NoOwner):
                raise Unavailable("no grapevine node is alive to own this user")

    def _client_request(self, session: ClientSession, request: Request
                        ) -> dict[str, Any] | None:
        """A client's request, answered at once (QoS 1 sends go to _client_send_durable)."""
        if isinstance(request, Ack):
            self.delivery.client_ack(session.user, session.acked_through(request.seq),
                                     session.device)
            self._changed()
            return None
        if isinstance(request, Upstream):
            self.fanout.upstream(session, request.body, request.ref)
            return None
        if not isinstance(request, SendTo):
            return None
        assert request.qos == 0, "the client server hands QoS 1 sends to send_durable"
        try:
            sent = self.send_message(request.to, request.body, ttl=request.ttl,
                                     sender=session.user)
        except Unavailable as exc:
            return _sent_frame(request, exc)
        return _sent_frame(request, sent)

    def _client_send_durable(self, session: ClientSession, request: SendTo,
                             answer: Callable[[dict[str, Any]], None]) -> None:
        """A client's QoS 1 send: ``answer`` gets its ``sent`` (or error) frame once the
        message is durable on R nodes (or cannot be)."""
        self.delivery.send_soon(request.to, request.body, request.ttl, session.user,
                                lambda result: answer(_sent_frame(request, result)))

    def _session_opened(self, session: ClientSession) -> None:
        self._carry_out(self.router.connected(session.user, session.session, session.device))
        self.fanout.presence(session, online=True)

    def _read_already(self, session: ClientSession, seqs: list[int]) -> None:
        self.resumes.read_already(session, seqs)

    def _missing(self, session: ClientSession) -> None:
        self.delivery.redelivery.full(session.user)

    def _room_for(self, session: ClientSession, seqs: list[int], more: bool) -> None:
        self.delivery.redelivery.room(session.user, seqs, more)

    def _session_closed(self, session: ClientSession) -> None:
        self.delivery.redelivery.closed(session.user, list(session.written or ()),
                                        session.closed_reason)
        self._carry_out(self.router.disconnected(session.session))
        self.fanout.presence(session, online=False)
        self.resumes.park(session)

    def kick(self, user: str, reason: str) -> None:
        """Close every session of ``user`` in the cluster, with a ``kick`` frame first."""
        self._carry_out(self.router.send(user, {"t": "kick", "reason": reason}))

    async def user_presence(self, user: str) -> dict[str, Any]:
        """Where ``user`` is connected, as the user's owner knows it (asked over a link)."""
        owner = self.ring.owner(user)
        if owner is None:
            raise Unavailable("no grapevine node is alive to own this user")
        if owner == self.config.name:
            known = self._presence_here(user)
        else:
            known = await self.links.request(owner, {"t": "presence", "user": user})
        # the owner's answer, as far as it makes sense (a count is an int in range)
        raw = known.get("nodes") if isinstance(known.get("nodes"), dict) else {}
        nodes = {n: c for n, c in raw.items() if isinstance(n, str) and is_seq(c)}
        pending = known.get("pending", 0)
        return {"user": user, "online": bool(nodes), "devices": sum(nodes.values()),
                "nodes": sorted(nodes), "owner": owner,
                "pending": pending if is_seq(pending) else 0}

    def _presence_here(self, user: str) -> dict[str, Any]:
        """What this node, as the owner, knows of ``user``: sessions per node, pending."""
        return {"nodes": self.router.sessions_at_owner(user),
                "pending": self.delivery.mailboxes.pending_count(user)}

    def _peer_frame(self, node: str, frame: dict[str, Any]) -> None:
        self._changed()
        kind = frame.get("t")
        if kind in _ROUTED:  # most frames of a busy node: straight to the router
            self._carry_out(self.router.from_peer(node, frame))
            return
        if kind in _DURABLE:
            if not self.delivery.from_peer(node, frame):
                self.router.counters["bad_peer_frames"] += 1
            return
        if kind == "presence" and isinstance(frame.get("user"), str):
            self.links.reply(node, frame, self._presence_here(frame["user"]))
            return
        if self.resumes.from_peer(node, frame):
            return
        if kind == "resync":
            self.router.counters["resyncs"] += 1
            self._carry_out(self.router.peer_connected(node))
            return
        if not self.fanout.from_peer(frame):  # the router counts what nobody knows
            self._carry_out(self.router.from_peer(node, frame))

    def _peer_connected(self, node: str) -> None:
        self._carry_out(self.router.peer_connected(node))

    def _joined(self) -> str | None:
        """None once this node may own users' messages; else why not yet.

        A node given seeds, or one that had peers before it restarted (its data dir
        remembers them), is alone in its member table until its join (or the others'
        reconnect) succeeds: owning every user then, it would acknowledge messages on one
        copy, for devices it has never heard of. So until it sees another member alive —
        or ``join_grace`` has passed (the seeds may all be gone: it is then a cluster of
        its own) — it refuses to store as owner."""
        if self._joined_once:
            return None
        if any(m.name != self.config.name and not m.dead_or_left
               for m in self.membership.members()):
            self._joined_once = True
            return None
        alone_is_fine = not self.config.join and not self._had_peers
        if alone_is_fine or trio.current_time() - self._started >= self.config.join_grace:
            self._joined_once = True
            return None
        return f"{self.config.name} is still joining the cluster; try another node"

    def _keys(self) -> list[bytes]:
        keyring = self.membership.keyring
        return list(keyring.keys) if keyring is not None else []

    # ---- membership -------------------------------------------------------------------

    def refresh_ring(self) -> bool:
        """Rebuild the ring from the member table; True (and one log line) if it changed."""
        members = self.membership.members()
        self.links.set_peers(peer_addresses(members))
        if not self.ring.update(ring_members(members)):
            return False
        logger.info(
            "ring_changed nodes=%d version=%d members=%s", len(self.ring), self.ring.version,
            ",".join(sorted(self.ring.nodes)),
        )
        self._carry_out(self.router.ring_changed())
        self.delivery.ring_changed()
        others = sorted(set(self.ring.nodes) - {self.config.name})
        if others and self.config.data_dir:
            _write_peers(self.config.data_dir, others)
        return True

    async def follow_members(self) -> None:
        """Keep the ring and the links in step with membership."""
        events = self.membership.subscribe()
        self.refresh_ring()
        async for event in events:
            burst = [event]
            while True:  # a burst of events (a join storm) costs one rebuild
                try:
                    burst.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
            back = []
            for change in burst:
                name = change.member.name
                if change.kind in (EventKind.FAILED, EventKind.LEFT, EventKind.REAPED):
                    self.router.node_gone(name)
                elif change.kind is EventKind.JOINED:
                    back.append(name)
            self.refresh_ring()
            for name in back:
                self.resync_with(name)

    def resync_with(self, node: str) -> None:
        """Ask ``node`` to register again its sessions of users we own.

        A node we took for dead may never have noticed (a false accusation, a healed
        partition): its clients are still connected, but we forgot their sessions."""
        if node in self.ring and node != self.config.name:
            self.links.send(node, {"t": "resync"})


PEERS_FILE = "peers.json"


def _read_peers(data_dir: str | None) -> list[str]:
    """The other nodes this node's last run saw (empty for a new node)."""
    if not data_dir:
        return []
    try:
        names = json.loads(Path(data_dir, PEERS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _write_peers(data_dir: str, names: list[str]) -> None:
    try:
        _write_json(data_dir, PEERS_FILE, names)
    except OSError as exc:
        logger.warning("peers_file_not_written dir=%s reason=%r", data_dir, str(exc))


def _write_json(data_dir: str, name: str, data: Any) -> None:
    """``data`` as ``name`` in the data dir, atomically (readers never see half a file)."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, name)
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def peer_addresses(members: Any) -> dict[str, Address]:
    """Live grapevine members and their link addresses (the ``peer`` tag)."""
    found: dict[str, Address] = {}
    for member, tags in live_nodes(members):
        try:
            found[member.name] = split_host_port(tags.get("peer", ""))
        except ValueError:
            continue
    return found


def _sent_frame(request: SendTo, result: dict[str, Any] | Unavailable) -> dict[str, Any]:
    """The client's answer to its send: ``sent`` with the id and seq, or why not."""
    ref = {"ref": request.ref} if request.ref else {}
    if isinstance(result, Unavailable):
        return {"t": "error", "code": "unavailable", "reason": str(result), **ref}
    return {"t": "sent", **result, **ref}


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
    _write_json(data_dir, "node.json", {
        "name": node.config.name,
        "pid": os.getpid(),
        "gossip": format_address(node.membership.address),
        "api": format_address(node.api_address),
        "client": format_address(node.client_address),
        "peer": format_address(node.peer_address),
    })
