"""Requests from an authenticated peer that no grapevine node would send — values a store
cannot hold, numbers out of range — get an error answer; the node goes on storing.

(Found in review: a ``replicate`` copy with a seq of 2**63 or more made the store raise an
OverflowError that ended the request's worker task, and with it the node.)
"""

from __future__ import annotations

import math

import trio

from tests.push.test_push_nodes import cluster

GOOD = {"user": "u1", "seq": 1, "id": "a.1", "body": "x", "ts": 1.0, "expires": 4e9}


async def test_copies_no_node_would_send_are_refused_and_the_node_goes_on() -> None:
    async with cluster(["a", "b"]) as (a, b):
        for bad in ({"seq": 2**64 - 1}, {"seq": 2**63}, {"seq": 0}, {"seq": -5},
                    {"expires": math.nan}, {"ts": math.inf}, {"attempts": 2**64 - 1}):
            with trio.fail_after(5):
                reply = await a.links.request(
                    "b", {"t": "replicate", "msgs": [{**GOOD, **bad}], "devices": []})
            assert "out of range" in reply.get("error", ""), bad
        assert b.delivery.mailboxes.pending_count("u1") == 0
        a.links.send("b", {"t": "devices", "devices": [["u1", "phone", math.nan]]})
        stores = {"t": "stores", "items": [["u1", "x", math.nan, None],
                                           ["u1", "x", math.inf, None]]}
        with trio.fail_after(5):
            results = (await a.links.request("b", stores))["results"]
        assert all("finite" in r["error"] for r in results)
        user = next(u for u in (f"u{i}" for i in range(1000)) if a.ring.owner(u) == "b")
        with trio.fail_after(5):
            sent = await a.delivery.send(user, "still storing", None, None)
        assert sent["seq"] > 0 and b.delivery.mailboxes.pending_count(user) == 1
        assert b.delivery.mailboxes.devices("u1") == {}  # the device seen at NaN: skipped


async def test_a_session_parked_until_no_time_at_all_is_not_kept() -> None:
    async with cluster(["a", "b"]) as (a, _b):
        a.links.send("b", {"t": "park", "user": "u2", "session": "s1", "topics": ["t"],
                           "until": math.nan})  # NaN would never expire (nor sort in a heap)
        with trio.fail_after(5):  # same link, so answered after the park was taken
            reply = await a.links.request("b", {"t": "unpark", "user": "u2", "session": "s1"})
        assert reply["topics"] is None
