"""A client that reads slowly, or not for a while, loses no acknowledged QoS 1 message,
and a backlog of larger messages reaches a client at its WebSocket library's defaults
(real nodes on 127.0.0.1; issue #17, findings 2 and 5)."""

from __future__ import annotations

from typing import Any

import trio

from node.app import Node
from tests.push.test_push_nodes import cluster

BODY = "x" * 4096


async def send_many(node: Node, user: str, count: int) -> set[str]:
    """``count`` QoS 1 messages of 4 KB for ``user`` through ``node``, all at once (no task
    each); the ids of those acknowledged to their sender (all, or the test fails)."""
    ids: set[str] = set()
    answered = 0
    done = trio.Event()

    def reply(result: Any) -> None:
        nonlocal answered
        answered += 1
        if isinstance(result, dict):
            ids.add(result["id"])
        if answered == count:
            done.set()
    for _ in range(count):
        node.delivery.send_soon(user, BODY, None, None, reply)
    with trio.fail_after(30):
        await done.wait()
    assert len(ids) == count, f"{count - len(ids)} sends refused"
    return ids


async def test_a_burst_of_4_kb_sends_is_copied_in_frames_a_peer_link_takes() -> None:
    """Found by the slow-reader script: 1,500 QoS 1 sends of 4 KB at once made one group
    at the owner, copied to its replica in one 6 MB request, over the 4 MiB a peer frame
    may hold: the replica refused it (and the link with it), and no sender was
    acknowledged. A group goes in requests of about 1 MiB of messages each."""
    async with cluster(["a", "b"]) as nodes:
        for node in nodes:  # the owner, and a node whose stores requests it gathers
            ids = await send_many(node, "cy", 1500)
            assert len(ids) == 1500
        for node in nodes:
            assert node.delivery.mailboxes.pending_count("cy") == 3000  # R = 2: both
        assert all(n.links.connected() for n in nodes)
