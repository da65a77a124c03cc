"""Where a user's messages go: the session register at the owner, and the send path.

Pure: the shell feeds what happens (a client connected here, a frame from a peer, the
ring changed, a node died) and executes the actions that come back.

* The node holding a connection **registers** it with ``ring.owner(user)`` and
  remembers with whom, so the unregister goes to the same node. When the ring changes,
  every local session whose owner changed registers again with the new owner.
* The owner keeps ``user -> {node: {session, ...}}``. It forgets a node's entries when the
  node dies or leaves, and forgets users it no longer owns when the ring changes (their
  holders register with the new owner).
* A message handed to any node goes to the owner (one hop, or none), and from the owner
  to every node holding a session of the user (one more hop, or none).
* A QoS 0 message travels **packed**: the node that takes it packs it once (msgpack
  bytes) and every hop after passes those bytes on unread, to the owner, to the holders
  and into the client's binary frame (unpacked only for a JSON client, or for a peer of
  an older version that did not say it takes them: ``peer_proto.FEATURES``). The owner
  needs the user, which travels beside the message.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, NamedTuple

from .frames import is_message
from .names import is_device, is_user

Message = dict[str, Any] | bytes  # bytes: packed (a QoS 0 message, see above)


class Unavailable(Exception):
    """The cluster cannot take a message now (the reason is for the sender)."""


class MessageIds:
    """Message ids unique in the cluster: the node's name, a per-process random part
    (a restarted node must not repeat its ids), a counter."""

    def __init__(self, node: str) -> None:
        self._prefix = f"{node}.{secrets.token_hex(4)}."
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


def qos0_message(message_id: str, body: Any, now: float, **extra: Any) -> dict[str, Any]:
    """A message that is routed now and never stored (QoS 0: ``seq`` 0)."""
    return {"t": "msg", "id": message_id, "seq": 0, "qos": 0, "body": body,
            "ts": round(now, 3), **extra}


class Parked(NamedTuple):
    """A dropped session kept for a resume: its topics, the QoS 1 messages its connection
    wrote and the client did not ack (in order), the last ones the client read there."""

    topics: list[str]
    written: list[int]
    read: list[int]


class DeliverLocal(NamedTuple):
    user: str
    message: Message


class SendPeer(NamedTuple):
    node: str
    frame: dict[str, Any]


class Registered(NamedTuple):
    """A session of ``user`` registered here, its owner: send it what is waiting."""

    user: str
    device: str


class NoOwner(NamedTuple):
    """No node owns the user right now (an empty ring); the message was not taken."""

    user: str


#: what the shell is to do (named tuples: immutable, and made several times per message;
#: a frozen dataclass cost four times as much to make)
Action = DeliverLocal | SendPeer | NoOwner | Registered


class Router:
    def __init__(self, me: str, owner_of: Callable[[str], str | None]) -> None:
        self.me = me
        self._owner_of = owner_of
        #: at the owner: user -> node -> sessions
        self.register: dict[str, dict[str, set[str]]] = {}
        #: here: session -> (user, the owner we registered it with)
        self.local: dict[str, tuple[str, str]] = {}
        #: here: session -> its device name (sent along with every registration)
        self.local_devices: dict[str, str] = {}
        #: at the owner: sessions that dropped and may resume:
        #: session -> (user, until, what was kept for a resume)
        self.parked: dict[str, tuple[str, float, Parked]] = {}
        self._park_order: deque[tuple[float, str]] = deque()
        self.counters: Counter[str] = Counter()

    # ---- sessions on this node --------------------------------------------------------

    def connected(self, user: str, session: str, device: str = "") -> list[Action]:
        self.local_devices[session] = device
        owner = self._owner_of(user)
        if owner is None:
            self.local[session] = (user, "")
            return []
        self.local[session] = (user, owner)
        return self._register(owner, user, session)

    def disconnected(self, session: str) -> list[Action]:
        self.local_devices.pop(session, None)
        user, owner = self.local.pop(session, ("", ""))
        if not owner:
            return []
        if owner == self.me:
            self._unregister(user, self.me, session)
            return []
        return [SendPeer(owner, {"t": "unregister", "user": user, "session": session})]

    def _register(self, owner: str, user: str, session: str) -> list[Action]:
        device = self.local_devices.get(session, "")
        if owner == self.me:
            return self._add(user, self.me, session, device)
        return [SendPeer(owner, {"t": "register", "user": user, "session": session,
                                 "device": device})]

    def _add(self, user: str, node: str, session: str, device: str) -> list[Action]:
        self.register.setdefault(user, {}).setdefault(node, set()).add(session)
        return [Registered(user, device)]

    def _unregister(self, user: str, node: str, session: str) -> None:
        nodes = self.register.get(user)
        if nodes is None:
            return
        sessions = nodes.get(node)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del nodes[node]
        if not nodes:
            del self.register[user]

    # ---- flash disconnects ----------------------------------------------------------------

    def park(self, user: str, session: str, topics: list[str], until: float, now: float,
             *, written: list[int] | None = None, read: list[int] | None = None) -> None:
        """A session of ``user`` dropped; keep its topics, the QoS 1 messages its
        connection wrote and the client did not ack, and the last ones the client read
        there, until ``until`` for a resume."""
        self._expire_parked(now)
        self.parked[session] = (user, until, Parked(topics, list(written or ()),
                                                    list(read or ())))
        self._park_order.append((until, session))

    def unpark(self, user: str, session: str, now: float) -> Parked | None:
        """What was kept of a parked session of ``user`` (and forget it), or None."""
        self._expire_parked(now)
        parked = self.parked.get(session)
        if parked is None or parked[0] != user:
            self.counters["resumes_unknown"] += 1
            return None
        del self.parked[session]
        self.counters["resumes"] += 1
        return parked[2]

    def _expire_parked(self, now: float) -> None:
        while self._park_order and self._park_order[0][0] <= now:
            _until, session = self._park_order.popleft()
            parked = self.parked.get(session)
            if parked is not None and parked[1] <= now:
                del self.parked[session]

    # ---- messages ---------------------------------------------------------------------

    def send(self, user: str, message: Message) -> list[Action]:
        """A message for ``user`` entered the cluster here."""
        owner = self._owner_of(user)
        if owner is None:
            self.counters["no_owner"] += 1
            return [NoOwner(user)]
        if owner != self.me:
            self.counters["routed_to_owner"] += 1
            return [SendPeer(owner, {"t": "route", "user": user, "msg": message})]
        return self._fan_out(user, message)

    def _fan_out(self, user: str, message: Message) -> list[Action]:
        actions: list[Action] = []
        for node in sorted(self.register.get(user, {})):
            if node == self.me:
                actions.append(DeliverLocal(user, message))
            else:
                actions.append(SendPeer(node, {"t": "deliver", "user": user, "msg": message}))
        if not actions:
            self.counters["offline_drops"] += 1
        self.counters["fanned_out"] += len(actions)
        return actions

    # ---- peers ------------------------------------------------------------------------

    def from_peer(self, node: str, frame: dict[str, Any]) -> list[Action]:
        """A routing frame from ``node``; malformed ones are counted and dropped."""
        kind, user = frame.get("t"), frame.get("user")
        if not is_user(user):
            self.counters["bad_peer_frames"] += 1
            return []
        if kind == "register" and isinstance(frame.get("session"), str):
            device = frame.get("device") if is_device(frame.get("device")) else ""
            return self._add(user, node, frame["session"], device)
        if kind == "unregister" and isinstance(frame.get("session"), str):
            self._unregister(user, node, frame["session"])
            return []
        message = frame.get("msg")
        if not is_message(message):
            self.counters["bad_peer_frames"] += 1
            return []
        if kind == "route":
            owner = self._owner_of(user)
            hops = frame.get("hops", 0)
            if owner is not None and owner != self.me and not (type(hops) is int and hops >= 1):
                # the sender's ring and ours disagree for a moment: pass it on, once
                self.counters["rerouted"] += 1
                return [SendPeer(owner, {**frame, "hops": 1})]
            return self._fan_out(user, message)
        if kind == "deliver":
            return [DeliverLocal(user, message)]
        self.counters["bad_peer_frames"] += 1
        return []

    def holders(self, user: str) -> list[str]:
        """The nodes holding sessions of ``user``, as its owner knows them."""
        return sorted(self.register.get(user, {}))

    def sessions_at_owner(self, user: str) -> dict[str, int]:
        """What this node, as the owner, knows of ``user``: node -> number of sessions."""
        return {node: len(s) for node, s in sorted(self.register.get(user, {}).items())}

    # ---- membership -------------------------------------------------------------------

    def ring_changed(self) -> list[Action]:
        """Register sessions whose owner moved; forget users this node no longer owns."""
        actions: list[Action] = []
        for user in [u for u in self.register if self._owner_of(u) != self.me]:
            del self.register[user]
        for session in [s for s, p in self.parked.items() if self._owner_of(p[0]) != self.me]:
            del self.parked[session]
        for session, (user, old) in sorted(self.local.items()):
            owner = self._owner_of(user) or ""
            if owner != old:
                self.local[session] = (user, owner)
                if owner:
                    actions += self._register(owner, user, session)
        return actions

    def node_gone(self, node: str) -> None:
        """``node`` died or left: its sessions are gone with it."""
        for user in list(self.register):
            nodes = self.register[user]
            nodes.pop(node, None)
            if not nodes:
                del self.register[user]

    def peer_connected(self, node: str) -> list[Action]:
        """A (new) link to ``node``: it may have restarted and lost what we registered."""
        return [SendPeer(node, {"t": "register", "user": user, "session": session,
                                "device": self.local_devices.get(session, "")})
                for session, (user, owner) in sorted(self.local.items()) if owner == node]
