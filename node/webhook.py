"""Events for the application (upstream frames, presence) POSTed to its webhook.

``--webhook URL``: every event goes into a bounded queue (when it is full the oldest
event is dropped and counted: a dead webhook must not grow the node's memory); one
worker POSTs them in order, up to 100 per request, as ``{"node": NAME, "events": [...]}``
(JSON). A failure (no connection, a timeout, a status other than 2xx) is retried with
exponential backoff from 0.5 s to 30 s; the batch is kept until it is delivered.

HTTP/1.1 by h11 (python-hyper's sans-IO HTTP, already under hypercorn) over a trio
stream, TLS for ``https://`` URLs.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections import Counter, deque
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

logger = logging.getLogger(__name__)

BATCH = 100
TIMEOUT = 10.0
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, target) of an http(s) URL, or ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


class Webhook:
    def __init__(self, url: str, node: str, capacity: int = 10_000) -> None:
        self.scheme, self.host, self.port, self.target = parse_url(url)
        self.url = url
        self.node = node
        self._queue: deque[dict[str, Any]] = deque()
        self._capacity = capacity
        self._wake = trio.Event()
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._queue)

    def enqueue(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= self._capacity:
            self._queue.popleft()
            self.counters["webhook_dropped"] += 1
        self._queue.append(event)
        self._wake.set()

    async def run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                with trio.fail_after(TIMEOUT):
                    status = await self._post({"node": self.node, "events": batch})
                failure = None if 200 <= status < 300 else f"status {status}"
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError,
                    ssl.SSLError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            if failure is None:
                for _ in batch:
                    if self._queue:
                        self._queue.popleft()
                self.counters["webhook_delivered"] += len(batch)
                delay = BACKOFF_MIN
                continue
            self.counters["webhook_failures"] += 1
            logger.warning("webhook_failed url=%s reason=%r retry_in=%.1f queued=%d",
                           self.url, failure, delay, len(self._queue))
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _post(self, payload: dict[str, Any]) -> int:
        body = json.dumps(payload, separators=(",", ":")).encode()
        stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
        if self.scheme == "https":
            stream = trio.SSLStream(stream, ssl.create_default_context(),
                                    server_hostname=self.host)
        async with stream:
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(method="POST", target=self.target, headers=[
                ("Host", self.host), ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))), ("Connection", "close"),
                ("User-Agent", "grapevine"),
            ])
            await stream.send_all(connection.send(request) + connection.send(h11.Data(data=body))
                                  + connection.send(h11.EndOfMessage()))
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    return event.status_code
                if isinstance(event, h11.ConnectionClosed):
                    raise trio.BrokenResourceError("the webhook closed without an answer")
