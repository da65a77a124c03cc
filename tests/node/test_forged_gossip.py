"""Forged gossip by UDP against whole nodes in one trio process on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from gossip.codec import encode
from gossip.wire import Dead, Suspect
from membership.member import MemberState
from membership.merge import INCARNATION_SLACK, MAX_INCARNATION
from node.node import Node

from .helpers import local_config, start_node, states, wait_until

A = MemberState.ALIVE


def counter(node: Node, name: str) -> int:
    return node.membership.statistics().counters.get(name, 0)


@pytest.mark.parametrize("kind", ["suspect", "dead"])
async def test_one_forged_datagram_at_the_top_incarnation_excludes_nobody(kind: str) -> None:
    """The attack of issue #17: one datagram about b at 2^32-1 sent to a and c."""
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, local_config("a"))
        seed = "{}:{}".format(*a.membership.address)
        b = await start_node(nursery, local_config("b", join=(seed,)))
        c = await start_node(nursery, local_config("c", join=(seed,)))
        nodes = [a, b, c]
        everyone = {"a": A, "b": A, "c": A}
        with trio.fail_after(10):
            await wait_until(nodes, lambda: all(states(n) == everyone for n in nodes))
        before = b.membership.local_member().incarnation
        message = Suspect if kind == "suspect" else Dead
        datagram = encode(message(MAX_INCARNATION, "b", "a"))
        attacker = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with attacker:
            await attacker.bind(("127.0.0.1", 0))
            for target in (a, c):
                await attacker.sendto(datagram, target.membership.address)
        targets = [a, c]
        with trio.fail_after(10):
            # either the forgery is judged, or (before the fix) b is already given up
            await wait_until(targets, lambda: all(
                counter(n, "implausible_accusations") >= 1 or states(n)["b"] is not A
                for n in targets
            ))
        assert all(states(n) == everyone for n in nodes), [states(n) for n in nodes]
        probes = counter(a, "probes") + counter(c, "probes")
        with trio.fail_after(20):
            # a few probe rounds later nothing has changed
            await wait_until(
                targets, lambda: counter(a, "probes") + counter(c, "probes") >= probes + 6
            )
        assert all(states(n) == everyone for n in nodes), [states(n) for n in nodes]
        assert before <= b.membership.local_member().incarnation <= before + INCARNATION_SLACK + 1
        nursery.cancel_scope.cancel()
