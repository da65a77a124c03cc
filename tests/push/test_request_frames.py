"""Requests that carry messages stay within a peer frame, and a withdrawn copy is never
kept by a replica.

Found by review: one client with a valid token named 11,000 devices in its hellos, and
the replicate request of one message for its user packed to 4.4 MB, over the 4 MiB a
link carries: the replica's reader ended the link and every group sharing those
replicas failed. Requests were cut by the characters of their bodies, devices left out.
And a copy withdrawn while its replicate request waited at a replica (a slow disk) was
kept when more than 4,096 other messages were withdrawn meanwhile.
"""

from __future__ import annotations

from typing import Any

import trio

from node.delivery import _chunks
from node.frames import pack
from node.mailbox import MAX_DEVICES, Stored
from node.peer_proto import MAX_PEER_FRAME, REQUEST_BYTES
from node.replication import GONE
from node.ring import HashRing
from node.store import Store
from node.store_requests import StoreRequests
from tests.node.helpers import delivery_of

NOW = 1_800_000_000.0
LONG_USER = "u" * 250


def message(user: str, seq: int, body: str) -> Stored:
    return Stored(user, seq, f"id-{seq}", body, NOW, NOW + 60, "sender")


class Links:
    """Peer links that keep what was sent and answered."""

    def __init__(self) -> None:
        self.replies: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.replied = trio.Event()
        self.requests: list[dict[str, Any]] = []

    def reply(self, node: str, request: dict[str, Any], answer: dict[str, Any]) -> None:
        self.replies.append((request, answer))
        self.replied.set()

    def send(self, node: str, frame: dict[str, Any]) -> int:
        return 0

    send_later = send

    def request_soon(self, node: str, frame: dict[str, Any], on_reply: Any,
                     timeout: float) -> int:
        self.requests.append(frame)
        return 0

    def queued(self, node: str, ticket: int) -> bool:
        return True


def test_a_client_naming_thousands_of_devices_keeps_its_replicate_frames_small() -> None:
    """The review's probe: 11,000 hellos with different devices for one user."""
    delivery = delivery_of("a", HashRing(nodes={"a": 1.0}), Links(), Store(None))
    boxes = delivery.mailboxes
    for i in range(11_000):
        boxes.see_device(LONG_USER, f"{i:0128d}", NOW + i)
    assert len(boxes.devices(LONG_USER)) == MAX_DEVICES
    frame = delivery.replication.frame([message(LONG_USER, 1, "hello")])
    assert len(pack(frame)) < REQUEST_BYTES


def test_replicate_requests_count_utf8_bytes_and_devices() -> None:
    """48 messages of 20,000 four-byte characters for users with 64 long-named devices:
    counted in characters without devices they were one request of 4.3 MB."""
    delivery = delivery_of("a", HashRing(nodes={"a": 1.0}), Links(), Store(None))
    users = [f"{i:03d}" + "u" * 250 for i in range(48)]
    for user in users:
        for d in range(MAX_DEVICES):
            delivery.mailboxes.see_device(user, f"{d:0128d}", NOW)
    messages = [message(user, 1, "\U0001f600" * 20_000) for user in users]
    chunks = _chunks(messages, delivery.replication.devices_bytes)
    assert [s for chunk in chunks for s in chunk] == messages
    for chunk in chunks:
        assert len(pack(delivery.replication.frame(chunk))) <= REQUEST_BYTES


async def test_handover_requests_count_utf8_bytes_and_devices() -> None:
    """500 users to a request: with 64 devices each, the devices alone were 14 MB."""
    sent: list[int] = []

    class Copying(Links):
        async def request(self, node: str, frame: dict[str, Any]) -> dict[str, Any]:
            sent.append(len(pack(frame)))
            await trio.lowlevel.checkpoint()
            return {"ok": True}
    ring = HashRing(nodes={"old": 1.0})
    delivery = delivery_of("old", ring, Copying(), Store(None))
    boxes = delivery.mailboxes
    for i in range(500):
        user = f"{i:03d}" + "u" * 250
        for d in range(MAX_DEVICES):
            boxes.see_device(user, f"{d:0128d}", NOW)
        if i % 50 == 0:
            boxes.put(message(user, 1, "\u20ac" * 100_000))
    async with trio.open_nursery() as nursery:
        await delivery.store.open()
        await nursery.start(delivery.store.run)
        ring.update({"new": 1.0})
        with trio.fail_after(30):
            assert await delivery.handover.once()
        nursery.cancel_scope.cancel()
    assert len(sent) > 1 and max(sent) <= REQUEST_BYTES
    assert not boxes.known_users()  # all handed over


def test_stores_requests_count_utf8_bytes_and_their_answers_stay_small() -> None:
    """Bodies of four-byte characters were counted as one byte each; tiny items were
    gathered by the ten thousand, and an answer lists an error of each."""
    links = Links()
    requests = StoreRequests(links, 1.0)  # type: ignore[arg-type]
    for _ in range(40):
        requests.store_soon("owner", ["u", "\U0001f600" * 100_000, None, "s"], lambda _: None)
    for _ in range(10_000):
        requests.store_soon("owner", ["u", "b", None, None], lambda _: None)
    error = {"error": "stored on 1 of 3 nodes; not acknowledged (a: " + "x" * 200 + ")"}
    for frame in links.requests:
        assert len(pack(frame)) <= REQUEST_BYTES
        answer = {"t": "reply", "rid": 1, "results": [error] * len(frame["items"])}
        assert len(pack(answer)) <= MAX_PEER_FRAME
    assert sum(len(frame["items"]) for frame in links.requests) == 10_040


class GatedStore(Store):
    """A disk that takes writes only once ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__(None)
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def write(self, puts: Any = (), deletes: Any = (), devices: Any = ()) -> None:
        self.waiting.set()
        await self.gate.wait()
        await super().write(puts, deletes, devices)


async def test_a_copy_withdrawn_while_its_request_waits_is_not_kept() -> None:
    """The owner withdraws a group (under R) with an ``acked`` to each replica: one whose
    request still waits for the disk must drop the copy when written, however many
    other messages were withdrawn meanwhile (more than ``GONE``, shared by all users)."""
    links = Links()
    store = GatedStore()
    ring = HashRing(nodes={"owner": 1.0, "replica": 1.0})
    delivery = delivery_of("replica", ring, links, store)
    replication = delivery.replication
    kept = message("user1", 7, "withdrawn")
    async with trio.open_nursery() as nursery:
        await store.open()
        await nursery.start(store.run)
        nursery.start_soon(replication.run)
        request = {"t": "replicate", "rid": 1, "msgs": [kept.to_wire()], "devices": []}
        assert replication.from_peer("owner", request)
        with trio.fail_after(10):
            await store.waiting.wait()
        assert replication.from_peer("owner", {"t": "acked", "user": "user1", "seqs": [7]})
        assert replication.from_peer(  # other groups withdrawn meanwhile
            "owner", {"t": "acked", "user": "user2", "seqs": list(range(1, GONE + 2))})
        store.gate.set()
        with trio.fail_after(10):
            await links.replied.wait()
        assert delivery.mailboxes.pending_count("user1") == 0
        # what it remembered lived as long as the request: nothing is left of it
        assert not replication._in_flight and not replication._gone_in_flight
        nursery.cancel_scope.cancel()


async def test_a_request_resent_by_a_broken_link_does_not_bring_a_withdrawn_copy_back(
) -> None:
    """A link that broke in the middle of a write sends its batch again: the replica got
    the request twice. The first copy was written and then withdrawn (found and removed);
    the second, still waiting for the disk, must not put it back."""
    links = Links()
    store = GatedStore()
    delivery = delivery_of("replica", HashRing(nodes={"owner": 1.0, "replica": 1.0}),
                           links, store)
    replication = delivery.replication
    kept = message("user1", 7, "withdrawn")
    request = {"t": "replicate", "rid": 1, "msgs": [kept.to_wire()], "devices": []}
    async with trio.open_nursery() as nursery:
        await store.open()
        await nursery.start(store.run)
        nursery.start_soon(replication.run)
        store.gate.set()
        assert replication.from_peer("owner", request)
        with trio.fail_after(10):
            await links.replied.wait()
        assert delivery.mailboxes.pending_count("user1") == 1
        store.gate, store.waiting, links.replied = trio.Event(), trio.Event(), trio.Event()
        assert replication.from_peer("owner", request)  # again, on the new link
        with trio.fail_after(10):
            await store.waiting.wait()
        assert replication.from_peer("owner", {"t": "acked", "user": "user1", "seqs": [7]})
        assert delivery.mailboxes.pending_count("user1") == 0
        store.gate.set()
        with trio.fail_after(10):
            await links.replied.wait()
        assert delivery.mailboxes.pending_count("user1") == 0
        assert not replication._in_flight and not replication._gone_in_flight
        nursery.cancel_scope.cancel()


def test_the_withdrawn_copies_a_replica_remembers_are_only_those_on_their_way() -> None:
    """An ``acked`` for messages no request here carries leaves nothing behind but the
    bounded ``GONE`` of recent ones."""
    delivery = delivery_of("replica", HashRing(nodes={"replica": 1.0}), Links(), Store(None))
    replication = delivery.replication
    for user in range(3):
        replication.from_peer("owner", {"t": "acked", "user": f"u{user}",
                                        "seqs": list(range(GONE))})
    assert not replication._gone_in_flight and len(replication._gone_recently) == GONE
