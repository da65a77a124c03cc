"""The HTTP API below JSON: raw requests at a real node's API port — methods, paths with
percent-encoded NUL and newlines and overlong segments, query strings, huge, many and
duplicated headers, bad Content-Length, chunked bodies with bad sizes, trickled heads
and bodies, Authorization variants. Every answer is a 4xx (or a success, or 503) —
never a 500 — with a reason whenever it reaches the API (hypercorn answers what HTTP
itself cannot parse with a bare status); a body that trickles is cut off; requests
beyond the cap are refused at once; and the node goes on serving. Seeded, bounded."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
import trio

from node import http_api
from tests.fuzzing import Budget, fuzz_seeds
from tests.node.helpers import http
from tests.push.test_client_server import client_node

KEY = "k" * 24
Address = tuple[str, int]


async def exchange(address: Address, data: bytes, *, trickle: int = 0,
                   finish: bool = True) -> tuple[int | None, bytes]:
    """Send ``data`` (the first ``trickle`` bytes one at a time), half-close unless not
    ``finish``, read the answer to its end: (status or None if none came, body)."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        try:
            for index in range(min(trickle, len(data))):
                await stream.send_all(data[index:index + 1])
                await trio.sleep(0.001)  # what is tested: bytes that come slowly
            await stream.send_all(data[trickle:])
            if finish:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass  # the node closed first (it answered already, or refused the head)
        raw = b""
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                raw += chunk
                if _complete(raw):
                    break
        except trio.BrokenResourceError:
            pass
    if not raw.startswith(b"HTTP/1.1 "):
        return None, raw
    head, _sep, body = raw.partition(b"\r\n\r\n")
    if data.startswith(b"HEAD "):
        body = b""  # an answer to HEAD has no body, whatever its length says
    length = _length(head)  # what follows it answers the next request (bytes past a body)
    return int(head.split(b" ", 2)[1]), body if length is None else body[:length]


def _length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _colon, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    length = _length(head) if sep else None
    return length is not None and len(body) >= length


def request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
            body: bytes = b"") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_clean(status: int | None, body: bytes, what: object) -> None:
    """A status below 500 (or 503, or hypercorn's bare 501), with a reason when the API
    answered."""
    assert status is not None, f"no answer to {what!r:.300}"
    # 501: hypercorn's own answer to a transfer coding HTTP/1.1 does not have (gzip)
    assert status < 500 or status == 503 or (status == 501 and not body), (
        status, body[:300], what)
    if status >= 400 and body:  # the API's answer (hypercorn's own has no body)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        assert isinstance(answer, dict) and answer.get("error"), (status, body[:300], what)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Bodies must come within 0.5 s and 4 requests are served at once (for tests)."""
    monkeypatch.setattr(http_api, "BODY_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(http_api, "MAX_REQUESTS", 4, raising=False)
    yield


async def test_a_trickled_body_is_cut_off_with_408(quick: None) -> None:
    async with client_node() as node:
        head = request(b"POST", b"/v1/send", [(b"Content-Length", b"100")], b'{"to": ')
        with trio.fail_after(5):
            status, body = await exchange(node.api_address, head, finish=False)
        assert status == 408 and "did not arrive" in json.loads(body)["error"]
        assert node.push_counters()["api_slow_bodies"] == 1


async def test_requests_beyond_the_cap_are_refused_at_once_and_served_after(
        quick: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_api, "BODY_TIMEOUT", 60.0, raising=False)  # the four wait
    async with client_node() as node:
        api = node.api_address
        head = request(b"POST", b"/v1/send", [(b"Content-Length", b"100")], b"{")
        async with trio.open_nursery() as nursery:
            streams = []
            for _ in range(4):  # four requests whose bodies never come
                stream = await trio.open_tcp_stream(*api)
                await stream.send_all(head)
                streams.append(stream)
            with trio.fail_after(5):
                while node.push_counters().get("api_requests_shed", 0) == 0:
                    status, body = await exchange(api, request(b"GET", b"/v1/status", []))
                    if status == 200:  # the four are not all being served yet
                        await trio.sleep(0.01)
                        continue
                    assert status == 503 and "at once" in json.loads(body)["error"]
            for stream in streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            assert (await http(api, "GET", "/v1/status"))[0] == 200


async def test_a_malformed_chunked_body_while_the_api_answers_ends_only_its_connection(
        ) -> None:
    """Hypercorn answers the broken chunk (400) while the API answers the request (405)
    and the socket is being closed: its ``serve`` let the ``BusyResourceError`` of that
    race end the server, and the node with it (by the third such request)."""
    data = request(b"PATCH", b"/v1/kick", [(b"Transfer-Encoding", b"chunked")],
                   b"5\r\nab\r\n0\r\n\r\n")
    async with client_node() as node:
        for _ in range(30):
            with trio.fail_after(5):
                await exchange(node.api_address, data)  # an answer, or the socket closed
        with trio.fail_after(5):
            assert (await http(node.api_address, "GET", "/v1/status"))[0] == 200


METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE",
           b"get", b"G\x00T", b"X" * 300, b"", b"POST /v1/send"]
PATHS = [b"/v1/send", b"/v1/status", b"/v1/members", b"/v1/publish", b"/v1/broadcast",
         b"/v1/kick", b"/v1/ring", b"/v1/keyring", b"/metrics", b"/healthz", b"/v1/users/",
         b"*", b"http://127.0.0.1/v1/status", b"", b"v1/status", b"/v1//send"]
SEGMENTS = [b"bob", b"%00", b"%0A", b"%0D%0A", b"%ff", b"%e9", b"%2e%2e", b"%2F",
            b"a" * 10_000, b"%ED%A0%80", b"%F0%9F%98%80", b"\xff", b"a b", b"%"]
QUERIES = [b"", b"?key=%00", b"?key=%0A", b"?key=" + b"a" * 5000, b"?&&&", b"?key=a&key=b",
           b"?%zz", b"?key", b"?" + b"k=v&" * 500]
LENGTHS = [b"-1", b"abc", b"99999999999999999999", b"1, 2", b" 5", b"0", b"5", b"65537",
           b"18446744073709551616", b"0x10"]
CHUNKS = [b"zz\r\n", b"FFFFFFFFFFFFFFFF\r\nx\r\n", b"-1\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n",
          b"0\r\n\r\n", b"3\r\n{}\n\r\n0\r\n\r\n", b"1;ext=\xff\r\n{\r\n0\r\n\r\n",
          b"10000000\r\n" + b"x" * 1000]
AUTHS = [b"Bearer", b"Bearer ", b"bearer " + KEY.encode(), b"Bearer  " + KEY.encode(),
         b"Basic " + KEY.encode(), b"Bearer " + KEY.encode() + b"\x00", b"Bearer \xff",
         b"Bearer " + KEY.encode(), b"Bearer " + KEY.encode() + b" ", b"Bearer " + b"k" * 5000]
BODIES = [b"", b"{", b'{"to": "bob", "body": "x"}', b'{"to": "bob", "body": "x", "qos": 1}',
          b'{"topic": "t", "body": "x"}', b'{"user": "bob"}', b"\xff\xfe", b"x" * 70_000,
          b'{"body": "b"}']


def raw_request(rng: random.Random) -> tuple[bytes, bool]:
    """A request, and whether HTTP can frame it (else the node may just close: it cannot
    tell where the request ends, nor answer it in order)."""
    framed = True
    method = rng.choice(METHODS)
    path = rng.choice(PATHS)
    if path.endswith(b"/users/") or rng.random() < 0.2:
        path += rng.choice(SEGMENTS)
    target = path + rng.choice(QUERIES)
    headers: list[tuple[bytes, bytes]] = []
    body = rng.choice(BODIES)
    roll = rng.random()
    if roll < 0.3:
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif roll < 0.5:
        headers.append((b"Content-Length", rng.choice(LENGTHS)))
        if rng.random() < 0.3:  # duplicated, and maybe disagreeing
            headers.append((b"Content-Length", rng.choice(LENGTHS)))
        framed = False
    elif roll < 0.7:
        headers.append((b"Transfer-Encoding",
                        rng.choice([b"chunked", b"gzip, chunked", b"chunked, chunked",
                                    b"identity", b"Chunked"])))
        body = rng.choice(CHUNKS)
        framed = False
    if rng.random() < 0.5:
        headers.append((b"Authorization", rng.choice(AUTHS)))
        if rng.random() < 0.2:
            headers.append((b"Authorization", rng.choice(AUTHS)))
    roll = rng.random()
    if roll < 0.1:
        headers.append((b"X-Huge", b"h" * rng.choice([8_000, 20_000, 100_000])))
    elif roll < 0.2:
        headers += [(b"X-Many-%d" % i, b"v") for i in range(rng.choice([100, 500, 2000]))]
    elif roll < 0.3:
        headers.append(rng.choice([(b"No colon", b""), (b"X-Nul", b"a\x00b"),
                                   (b"X-Fold", b"a\r\n continued"), (b"Expect", b"100-continue"),
                                   (b"Connection", b"Upgrade"), (b"Upgrade", b"h2c"),
                                   (b"Upgrade", b"websocket"), (b"Host", b"other")]))
    data = request(method, target, headers, body)
    if rng.random() < 0.1:  # cut short anywhere
        data = data[:rng.randrange(len(data) + 1)]
        framed = False
    return data, framed


@pytest.mark.fuzz
@pytest.mark.parametrize(("fuzz_seed", "key"), [  # every other seed with an API key
    (seed, KEY if n % 2 else None) for n, seed in enumerate(fuzz_seeds(1, 2, 3))])
async def test_raw_requests_get_a_clean_answer_and_the_node_goes_on(
        fuzz_seed: int, key: str | None, quick: None) -> None:
    rng = random.Random(fuzz_seed)
    async with client_node(api_key=key) as node:
        api = node.api_address
        statuses: dict[int | None, int] = {}
        budget = Budget()
        for _ in range(120):
            data, framed = raw_request(rng)
            trickle = rng.choice([0] * 9 + [40])
            with trio.fail_after(10):
                status, body = await exchange(api, data, trickle=trickle)
            statuses[status] = statuses.get(status, 0) + 1
            if framed or status is not None:
                assert_clean(status, body, data[:200])
            budget.check(data[:200])
        assert len(statuses) >= 4, statuses  # the fuzz got far and nowhere
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with trio.fail_after(5):
            assert (await http(api, "GET", "/healthz"))[0] == 200
            status, answer = await http(api, "POST", "/v1/send",
                                        {"to": "bob", "body": "ok", "qos": 1}, headers)
        assert status == 202 and answer["seq"] > 0
