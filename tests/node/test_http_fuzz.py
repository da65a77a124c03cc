"""Random requests at a real node's HTTP API: wrong methods, odd paths and query strings,
bodies that are not JSON, not UTF-8 or JSON of the wrong shape. Every answer is a 4xx
with a reason (or a success, or 503 when the cluster cannot take a message) — never a
500 — and the node goes on serving: seeded, bounded. ``/v1/join``, ``/v1/leave`` and
keyring changes are left out: they act on the cluster by design."""

from __future__ import annotations

import json
import random

import pytest
import trio

from tests.fuzzing import Values, fuzz_seeds
from tests.node.helpers import http
from tests.push.test_client_server import client_node

ROUTES = ["/v1/send", "/v1/send", "/v1/send", "/v1/publish", "/v1/broadcast", "/v1/kick",
          "/v1/users/{}", "/v1/ring?key={}", "/v1/ring?{}", "/v1/status", "/v1/members",
          "/v1/keyring", "/metrics", "/healthz", "/v1/{}", "/{}", "/v1/users/"]
METHODS = ["POST", "POST", "GET", "PUT", "DELETE"]
#: path and query pieces, percent-encoded as a client sends them (raw non-ASCII in a
#: request line is refused by the HTTP parser before the API sees it)
TEXTS = ["", "bob", "%00", "%ff", "%e9", "x" * 300, "a/b", "..", "%2F", "%C3%A9",
         "%F0%9F%98%80", "%ED%A0%80", "key=1&key=2", "key=%00", "?", "#"]
FIELDS = ["to", "body", "qos", "ttl", "topic", "user", "reason"]
NUMBERS = [0, 1, -1, 2, 2**63, 2**64, -(2**63), 0.5, 1e308, True, False, None]


value = Values(["", "bob", "x" * 300, "\x00", "é", "\U0001f600", "$presence"], NUMBERS,
               keys=FIELDS, leaf=None)  # JSON carries no bytes


def body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        return b""
    if roll < 0.2:
        return rng.choice([b"{", b"not json", b"\xff\xfe{}", b'{"to": "bob"', b"[]", b"null",
                           b'"\\ud800"', b"NaN", b'{"to": "bob", "body": "x", "ttl": NaN}'])
    if roll < 0.4:
        return json.dumps(value(rng)).encode()
    fields = {name: value(rng) for name in rng.sample(FIELDS, rng.randrange(5))}
    if rng.random() < 0.6:  # mostly requests that get far
        fields.setdefault("to", "bob")
        fields.setdefault("body", "x")
        fields.setdefault("topic", "t")
        fields.setdefault("user", "bob")
    return json.dumps(fields).encode()


@pytest.mark.fuzz
@pytest.mark.parametrize("fuzz_seed", fuzz_seeds(1, 2))
async def test_random_requests_get_a_reason_and_never_stop_the_node(fuzz_seed: int) -> None:
    rng = random.Random(fuzz_seed)
    async with client_node() as node:
        api = node.api_address
        statuses: dict[int, int] = {}
        for _ in range(150):
            path = rng.choice(ROUTES).format(rng.choice(TEXTS))
            with trio.fail_after(5):
                status, answer = await http(api, rng.choice(METHODS), path, body(rng))
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500 or status == 503, (path, answer)
            if 400 <= status < 500 and status != 404:
                assert isinstance(answer, dict) and answer.get("error"), (status, answer, path)
        assert statuses.get(400) and statuses.get(202)  # the fuzz got both far and nowhere
        with trio.fail_after(5):
            status, answer = await http(api, "POST", "/v1/send", {"to": "bob", "body": "ok",
                                                                 "qos": 1})
        assert status == 202 and answer["seq"] > 0
