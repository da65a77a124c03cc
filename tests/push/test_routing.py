"""The router as a pure core: several routers wired by a loop that carries their frames."""

from __future__ import annotations

import random

import msgpack

from node.ring import HashRing
from node.routing import DeliverLocal, NoOwner, Router, SendPeer


class Mesh:
    """Routers sharing one ring; ``run`` carries SendPeer frames until none are left."""

    def __init__(self, names: list[str]) -> None:
        self.ring = HashRing(64, dict.fromkeys(names, 1.0))
        self.routers = {n: Router(n, self.ring.owner) for n in names}
        self.delivered: list[tuple[str, str, str]] = []  # (node, user, id)
        self.peer_frames = 0

    def run(self, origin: str, actions: list) -> None:
        queue = [(origin, a) for a in actions]
        while queue:
            node, action = queue.pop(0)
            if isinstance(action, DeliverLocal):
                self.delivered.append((node, action.user, action.message["id"]))
            elif isinstance(action, SendPeer):
                self.peer_frames += 1
                if action.node in self.routers:  # a frame to a dead node is lost
                    queue += [(action.node, a)
                              for a in self.routers[action.node].from_peer(node, action.frame)]

    def connect(self, node: str, user: str, session: str) -> None:
        self.run(node, self.routers[node].connected(user, session))

    def send(self, via: str, user: str, msg_id: str) -> None:
        self.run(via, self.routers[via].send(user, {"id": msg_id}))

    def set_nodes(self, names: list[str]) -> None:
        for gone in set(self.routers) - set(names):
            del self.routers[gone]
            for router in self.routers.values():
                router.node_gone(gone)
        self.ring.update(dict.fromkeys(names, 1.0))
        for name in names:
            self.routers.setdefault(name, Router(name, self.ring.owner))
        for name, router in list(self.routers.items()):
            self.run(name, router.ring_changed())


NAMES = ["a", "b", "c", "d", "e"]


def test_a_message_through_any_node_reaches_every_device_once() -> None:
    mesh = Mesh(NAMES)
    users = [f"user-{i}" for i in range(40)]
    rnd = random.Random(1)
    devices = {u: rnd.sample(NAMES, rnd.randint(1, 3)) for u in users}
    for user, nodes in devices.items():
        for i, node in enumerate(nodes):
            mesh.connect(node, user, f"{user}/{i}")
    for user in users:
        via = rnd.choice(NAMES)
        mesh.send(via, user, f"m-{user}")
        got = sorted(n for n, u, _ in mesh.delivered if u == user)
        assert got == sorted(devices[user]), (user, via)
    # at most two hops: entry -> owner -> holder
    assert mesh.peer_frames <= sum(len(d) for d in devices.values()) * 2 + len(users) * 2


def test_an_offline_user_gets_nothing_and_it_is_counted() -> None:
    mesh = Mesh(NAMES)
    mesh.send("a", "ghost", "m1")
    assert mesh.delivered == []
    owner = mesh.ring.owner("ghost")
    assert mesh.routers[owner].counters["offline_drops"] == 1


def test_sessions_follow_their_owner_when_the_ring_changes() -> None:
    mesh = Mesh(NAMES)
    users = [f"u{i}" for i in range(60)]
    for i, user in enumerate(users):
        mesh.connect(NAMES[i % 5], user, f"s{i}")
    mesh.set_nodes([*NAMES, "f", "g"])  # joins take over some users
    mesh.set_nodes(["a", "b", "c", "f", "g"])  # d and e die with their sessions
    for i, user in enumerate(users):
        mesh.delivered.clear()
        mesh.send("a", user, "m")
        holder = NAMES[i % 5]
        expected = [] if holder in ("d", "e") else [holder]
        assert [n for n, _, _ in mesh.delivered] == expected, (user, holder)
    for name, router in mesh.routers.items():  # owners keep only what they own
        assert all(mesh.ring.owner(user) == name for user in router.register)


def test_disconnect_unregisters_at_the_owner_it_registered_with() -> None:
    mesh = Mesh(NAMES)
    mesh.connect("b", "alice", "s1")
    mesh.connect("c", "alice", "s2")
    mesh.run("b", mesh.routers["b"].disconnected("s1"))
    mesh.send("e", "alice", "m")
    assert [n for n, _, _ in mesh.delivered] == ["c"]
    assert mesh.routers["b"].disconnected("unknown") == []


def test_a_restarted_peer_gets_our_registrations_again() -> None:
    mesh = Mesh(NAMES)
    user = next(u for u in (f"u{i}" for i in range(100)) if mesh.ring.owner(u) == "d")
    mesh.connect("a", user, "s")
    mesh.routers["d"] = Router("d", mesh.ring.owner)  # d restarted: its register is empty
    mesh.send("b", user, "lost")
    assert mesh.delivered == []
    mesh.run("a", mesh.routers["a"].peer_connected("d"))
    mesh.send("b", user, "found")
    assert [(n, i) for n, _, i in mesh.delivered] == [("a", "found")]


def test_stale_rings_are_corrected_by_one_reroute_and_no_more() -> None:
    ring = HashRing(64, dict.fromkeys(NAMES, 1.0))
    user = next(u for u in (f"u{i}" for i in range(100)) if ring.owner(u) == "c")
    b = Router("b", ring.owner)
    assert b.from_peer("a", {"t": "route", "user": user, "msg": {"id": "1"}}) == [
        SendPeer("c", {"t": "route", "user": user, "msg": {"id": "1"}, "hops": 1})
    ]
    assert b.from_peer("a", {"t": "route", "user": user, "msg": {"id": "1"}, "hops": 1}) == []
    assert b.counters["offline_drops"] == 1


def test_junk_from_peers_is_counted_and_dropped() -> None:
    router = Router("a", HashRing(8, {"a": 1.0}).owner)
    for frame in ({"t": "route"}, {"t": "route", "user": "u", "msg": "x"},
                  {"t": "what", "user": "u", "msg": {}}, {"t": "register", "user": 5},
                  {"t": "deliver", "user": "u", "msg": msgpack.packb([1, 2])},  # not a map
                  {"t": "deliver", "user": "u", "msg": b""}):
        assert router.from_peer("b", frame) == []
    assert router.counters["bad_peer_frames"] == 6


def test_a_packed_message_is_passed_on_as_it_came() -> None:
    """A QoS 0 message travels as the bytes its first node packed: the owner and the
    holders pass them on without unpacking them."""
    packed = msgpack.packb({"t": "msg", "id": "a.1", "seq": 0, "body": "hi"})
    ring = HashRing(8, {"a": 1.0, "b": 1.0})
    user = next(f"u{i}" for i in range(100) if ring.owner(f"u{i}") == "a")
    owner = Router("a", ring.owner)
    owner.from_peer("b", {"t": "register", "user": user, "session": "s1"})
    assert Router("b", ring.owner).send(user, packed) == [
        SendPeer("a", {"t": "route", "user": user, "msg": packed})]
    assert owner.from_peer("b", {"t": "route", "user": user, "msg": packed}) == [
        SendPeer("b", {"t": "deliver", "user": user, "msg": packed})]
    holder = Router("b", ring.owner)
    assert holder.from_peer("a", {"t": "deliver", "user": user, "msg": packed}) == [
        DeliverLocal(user, packed)]


def test_no_owner_on_an_empty_ring() -> None:
    router = Router("a", HashRing().owner)
    assert router.send("u", {"id": "1"}) == [NoOwner("u")]
    assert router.connected("u", "s") == [] and router.disconnected("s") == []
