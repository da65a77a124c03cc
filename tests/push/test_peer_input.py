"""Requests from an authenticated peer that no grapevine node would send — values a store
cannot hold, numbers out of range — get an error answer; the node goes on storing.

(Found in review: a ``replicate`` copy with a seq of 2**63 or more made the store raise an
OverflowError that ended the request's worker task, and with it the node.)
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import pytest
import trio

from tests.fuzzing import Values, fuzz_seeds
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


KINDS = ["route", "deliver", "register", "unregister", "store", "stores", "replicate",
         "replicate", "replicate", "ack", "acked", "devices", "presence", "park", "unpark",
         "resync", "publish", "broadcast", "reply", "nonsense"]
FIELDS = ["user", "msg", "session", "device", "body", "ttl", "from", "items", "msgs",
          "devices", "seqs", "topics", "until", "written", "read", "topic", "rid"]
TEXTS = ["", "u1", "x" * 300, "é", "\x00", "$presence", "\U0001f600"]
NUMBERS = [0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0.5, math.inf, -math.inf,
           math.nan, 1e308, True, None]


value = Values(TEXTS, NUMBERS, keys=[*FIELDS, "seq", "id", "ts", "expires", "attempts", "t",
                                     "qos"], depth=3)  # maps keyed like the real ones


def frame(rng: random.Random) -> dict[str, Any]:
    obj: dict[str, Any] = {"t": rng.choice(KINDS)}
    for name in rng.sample(FIELDS, rng.randrange(6)):
        obj[name] = value(rng)
    if obj["t"] == "replicate" and rng.random() < 0.8:  # copies right but for one number
        obj["msgs"] = [{**GOOD, rng.choice(["seq", "ts", "expires", "attempts"]):
                        rng.choice(NUMBERS)} for _ in range(2)]
        obj["devices"] = [["u1", "phone", rng.choice(NUMBERS)]]
    return obj


@pytest.mark.fuzz
@pytest.mark.parametrize("fuzz_seed", fuzz_seeds(1, 2, 3))
async def test_random_frames_from_a_peer_never_stop_the_node(
        fuzz_seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever an authenticated peer sends, the node answers its requests (or not) and
    goes on serving and storing, and no handler fails on the way — seeded, bounded."""
    rng = random.Random(fuzz_seed)
    async with cluster(["a", "b"]) as (a, b):
        user = next(u for u in (f"u{i}" for i in range(1000)) if a.ring.owner(u) == "b")
        for round_ in range(6):
            for _ in range(40):
                if rng.random() < 0.5:
                    a.links.send("b", frame(rng))
                else:  # a request: its answer (or none) is not what is tested
                    a.links.request_soon("b", frame(rng), lambda _reply: None, 5.0)
            with trio.fail_after(5):  # same link, after the frames: b is still serving
                sent = await a.delivery.send(user, f"round {round_}", None, None)
            assert sent["seq"] > 0
        assert b.links.connected() == ["a"]  # and never broken on the way:
        assert b.links.counters["peer_links_opened"] == 1
        assert b.links.counters["peer_frames_failed"] == 0  # no handler raised
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
