"""The node's HTTP API: a small ASGI app served by hypercorn's trio worker.

Routes (JSON unless noted; ``docs/http-api.md`` documents each):

    GET  /healthz            "ok" (text)
    GET  /v1/members         every member with state, incarnation and tags
    GET  /v1/status          this node: name, addresses, health, counts, uptime
    POST /v1/send            {"to", "body", "qos"?, "ttl"?} -> {"id", "seq"}
    POST /v1/publish         {"topic", "body"} -> {"id"}: every subscriber, every node (QoS 0)
    POST /v1/broadcast       {"body"} -> {"id"}: every connected client, paced per node
    POST /v1/kick            {"user", "reason"?}: close every session of the user
    GET  /v1/users/{id}      online, devices, nodes, owner, pending (asked of the owner)
    GET  /v1/ring[?key=K]    the ring's nodes, weights and shares; for K its owner+replicas
    POST /v1/join            {"addresses": ["host:port", ...]}
    POST /v1/leave           leave the cluster gracefully and stop the node
    GET  /v1/keyring         installed keys (base64) and the primary
    POST /v1/keyring         {"install" | "use" | "remove": "<base64 key>"}
    GET  /metrics            Prometheus text format

With an API key configured, every route but ``/healthz`` and ``/metrics`` wants
``Authorization: Bearer <key>``.

Bounds (``docs/http-api.md``): hypercorn takes a request's head within its keep-alive
timeout (5 s) and 16 KiB; the API takes a body within ``BODY_TIMEOUT`` and ``MAX_BODY``
bytes, and serves ``MAX_REQUESTS`` requests at once (more are answered 503 at once):
a client that trickles its body, or opens thousands of requests, holds at most that.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from gossip.keyring import format_key, parse_key

from .client_proto import send_problem
from .frames import LONE_SURROGATE, lone_surrogate
from .metrics import exposition
from .names import MAX_TOPIC_SIZE, check_topic, check_user
from .routing import Unavailable
from .views import member_json, ring_json, status_json

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
#: seconds a request's whole body may take to arrive (a trickled body is a 408)
BODY_TIMEOUT = 10.0
#: requests served at once; one more is refused with 503 (``api_requests_shed``)
MAX_REQUESTS = 256
#: connections open at once (idle keep-alive ones included); one more is closed at once
MAX_CONNECTIONS = 512
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Query = dict[str, str]
Handler = Callable[[bytes, Query], Awaitable[tuple[int, Any]]]


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpApi:
    """The ASGI application. Handlers return (status, JSON-able body)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        #: ``api_requests_shed`` (over ``MAX_REQUESTS``), ``api_slow_bodies`` (408)
        self.counters: dict[str, int] = {"api_requests_shed": 0, "api_slow_bodies": 0,
                                         "api_connections_shed": 0, "api_connection_errors": 0}
        self._serving = 0
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/v1/members"): self._members,
            ("GET", "/v1/status"): self._status,
            ("GET", "/v1/ring"): self._ring,
            ("POST", "/v1/send"): self._send,
            ("POST", "/v1/publish"): self._publish,
            ("POST", "/v1/broadcast"): self._broadcast,
            ("POST", "/v1/kick"): self._kick,
            ("POST", "/v1/join"): self._join,
            ("POST", "/v1/leave"): self._leave,
            ("GET", "/v1/keyring"): self._keyring,
            ("POST", "/v1/keyring"): self._keyring_change,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            await _respond(send, 200, b"ok\n", b"text/plain")
            return
        if path == "/metrics" and method == "GET":
            body = exposition(self._node)
            await _respond(send, 200, body, b"text/plain; version=0.0.4")
            return
        if self._serving >= MAX_REQUESTS:
            self._refused("api_requests_shed", "api_requests_shed limit=%d", MAX_REQUESTS)
            await _respond(send, 503, _json_body(
                {"error": f"the API serves {MAX_REQUESTS} requests at once; try again"}))
            return
        self._serving += 1
        try:
            await self._serve(scope, method, path, receive, send)
        finally:
            self._serving -= 1

    def _refused(self, counter: str, message: str, *args: object) -> None:
        """Count a refusal; log the first of its kind (then the counter tells)."""
        self.counters[counter] += 1
        if self.counters[counter] == 1:
            logger.warning(message, *args)

    async def _serve(self, scope: Scope, method: str, path: str, receive: Receive,
                     send: Send) -> None:
        try:
            handler = self._routes.get((method, path))
            if path.startswith("/v1/users/") and method == "GET":
                handler = self._user
            if handler is None:
                if any(route_path == path for _method, route_path in self._routes):
                    raise HttpError(405, f"{method} is not allowed on {path}")
                raise HttpError(404, f"no route {path}")
            self._authorize(scope)
            query = _query(scope.get("query_string", b""))
            query["_path"] = path
            body = b""
            with trio.move_on_after(BODY_TIMEOUT) as reading:
                body = await _read_body(receive)
            if reading.cancelled_caught:
                self._refused("api_slow_bodies", "api_slow_body timeout=%g", BODY_TIMEOUT)
                raise HttpError(408, f"the body did not arrive within {BODY_TIMEOUT:g} s")
            status, payload = await handler(body, query)
        except HttpError as exc:
            status, payload = exc.status, {"error": exc.reason}
        await _respond(send, status, _json_body(payload))

    def _authorize(self, scope: Scope) -> None:
        key = self._node.config.api_key
        if not key:
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, b"Bearer " + key.encode()):
            raise HttpError(401, "missing or wrong API key (Authorization: Bearer <key>)")

    async def _members(self, _body: bytes, _query: Query) -> tuple[int, Any]:
        now = trio.current_time()
        members = self._node.membership.members()
        return 200, {"members": [member_json(m, now) for m in members]}

    async def _status(self, _body: bytes, _query: Query) -> tuple[int, Any]:
        return 200, status_json(self._node)

    async def _ring(self, _body: bytes, query: Query) -> tuple[int, Any]:
        key = query.get("key")
        ring = self._node.ring
        if key is None:
            return 200, ring_json(ring, self._node.config.replicas)
        _user(key, "key")
        if not len(ring):
            raise HttpError(503, "the ring is empty: no grapevine node is alive yet")
        replicas = ring.replicas(key, self._node.config.replicas)
        return 200, {"owner": replicas[0], "replicas": replicas}

    async def _send(self, body: bytes, _query: Query) -> tuple[int, Any]:
        request = _json(body)
        to, text = _field(request, "to", str), self._body_field(request)
        qos, ttl = request.get("qos", 0), request.get("ttl")
        problem = send_problem(to, qos, ttl, self._node.config.max_ttl)
        if problem:
            raise HttpError(400, problem)
        try:
            sent = await self._node.send(to, text, qos=qos, ttl=ttl)
        except Unavailable as exc:
            raise HttpError(503, str(exc)) from None
        return 202, sent

    def _body_field(self, request: dict[str, Any]) -> str:
        text = _field(request, "body", str)
        if len(text.encode()) > self._node.config.max_frame:
            raise HttpError(413, f"body: longer than {self._node.config.max_frame} bytes")
        return text

    async def _publish(self, body: bytes, _query: Query) -> tuple[int, Any]:
        request = _json(body)
        topic = _field(request, "topic", str)
        try:
            check_topic(topic)
        except ValueError as exc:
            raise HttpError(400, f"topic: {exc}") from None
        if topic.startswith("$"):
            raise HttpError(400, f"topic: 1 to {MAX_TOPIC_SIZE} bytes, not starting with $ "
                            "(reserved)")
        return 202, self._node.fanout.publish(topic, self._body_field(request))

    async def _broadcast(self, body: bytes, _query: Query) -> tuple[int, Any]:
        text = self._body_field(_json(body))
        try:
            return 202, self._node.fanout.broadcast(text)
        except Unavailable as exc:
            raise HttpError(503, str(exc)) from None

    async def _kick(self, body: bytes, _query: Query) -> tuple[int, Any]:
        request = _json(body)
        user = _user(request.get("user"), "user")
        reason = request.get("reason", "kicked by the application")
        if not isinstance(reason, str):
            raise HttpError(400, "reason: a string")
        try:
            self._node.kick(user, reason[:200])
        except Unavailable as exc:
            raise HttpError(503, str(exc)) from None
        return 202, {"kicked": user}

    async def _user(self, _body: bytes, query: Query) -> tuple[int, Any]:
        user = _user(query["_path"][len("/v1/users/"):],  # ASGI paths arrive
                     "/v1/users/{id}")  # percent-decoded
        try:
            with trio.fail_after(self._node.config.tcp_timeout):
                return 200, await self._node.user_presence(user)
        except Unavailable as exc:
            raise HttpError(503, str(exc)) from None
        except trio.TooSlowError:
            raise HttpError(504, "the user's owner did not answer in time") from None

    async def _join(self, body: bytes, _query: Query) -> tuple[int, Any]:
        addresses = _field(_json(body), "addresses", list)
        if not addresses or not all(isinstance(a, str) for a in addresses):
            raise HttpError(400, "addresses: give a non-empty list of \"host:port\" strings")
        failed = await self._node.membership.join(addresses)
        if len(failed) == len(addresses):
            raise HttpError(400, f"no address could be resolved: {', '.join(failed)}")
        return 202, {"joining": [a for a in addresses if a not in failed], "unresolved": failed}

    async def _leave(self, _body: bytes, _query: Query) -> tuple[int, Any]:
        self._node.request_stop()
        return 202, {"leaving": self._node.config.name}

    async def _keyring(self, _body: bytes, _query: Query) -> tuple[int, Any]:
        keyring = self._node.membership.keyring
        if keyring is None:
            return 200, {"encrypted": False, "keys": [], "primary": None}
        keys = [format_key(key) for key in keyring.keys]
        return 200, {"encrypted": True, "keys": keys, "primary": keys[0]}

    async def _keyring_change(self, body: bytes, _query: Query) -> tuple[int, Any]:
        keyring = self._node.membership.keyring
        if keyring is None:
            raise HttpError(409, "gossip encryption is off on this node; start it with --encrypt")
        request = _json(body)
        ops = [op for op in ("install", "use", "remove") if op in request]
        if len(ops) != 1:
            raise HttpError(400, "give exactly one of install, use, remove")
        op = ops[0]
        try:
            key = parse_key(_field(request, op, str))
            getattr(keyring, op)(key)
        except ValueError as exc:
            raise HttpError(400, f"{op}: {exc}") from None
        logger.info("keyring_changed op=%s keys=%d", op, len(keyring.keys))
        return await self._keyring(b"", {})


def _json_body(payload: Any) -> bytes:
    return json.dumps(payload, indent=1).encode() + b"\n"


def _query(raw: bytes) -> Query:
    try:
        parsed = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise HttpError(400, "the query string is not UTF-8") from None
    return {name: values[-1] for name, values in parsed.items()}


def _user(value: object, where: str) -> str:
    """``value`` if it is a user id (``names.check_user``), else a 400 naming ``where``."""
    try:
        return check_user(value)
    except ValueError as exc:
        raise HttpError(400, f"{where}: {exc}") from None


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise HttpError(400, "body is not valid JSON") from None
    if lone_surrogate(body, value):
        raise HttpError(400, f"body: {LONE_SURROGATE}")
    if not isinstance(value, dict):
        raise HttpError(400, "body must be a JSON object")
    return value


def _field(request: dict[str, Any], name: str, kind: type) -> Any:
    value = request.get(name)
    if not isinstance(value, kind):
        raise HttpError(400, f"{name}: expected a {kind.__name__}")
    return value


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HttpError(413, f"body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
        pass  # the client went away, or hypercorn is closing the socket: nobody to answer


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_http_api(
    node: Node, host: str, port: int,
    *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``host:port`` (port 0 picks one); reports the bound address.

    Each connection is hypercorn's HTTP/1.1 protocol on a stream of ours, in a task of
    its own whose failure ends that connection only: hypercorn's own ``serve`` let an
    error of one connection (a race between its error answer to a malformed chunked
    body and its closing of the socket: ``BusyResourceError``) end the server, and
    with it the node. At most ``MAX_CONNECTIONS`` are open at once; one more is closed
    at once (``api_connections_shed``).

    Once the node is asked to stop, the server stops accepting and finishes the
    requests in flight (at most ``graceful_timeout``), then returns: a ``POST /v1/leave``
    gets its answer before the process goes away.
    """
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("node.http.server")
    config.graceful_timeout = 1.0
    api = HttpApi(node)
    node.api_counters = api.counters
    app, context = ASGIWrapper(api), WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)
    open_now = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal open_now
        if open_now >= MAX_CONNECTIONS:
            api._refused("api_connections_shed", "api_connections_shed limit=%d",
                         MAX_CONNECTIONS)
            await stream.aclose()
            return
        open_now += 1
        try:
            await TCPServer(app, config, context, ConnectionState({}), stream)
        except Exception as exc:  # the connection's boundary: it alone ends
            api._refused("api_connection_errors", "api_connection_failed error=%r",
                         f"{type(exc).__name__}: {exc}")
        finally:
            open_now -= 1

    address = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(partial(trio.serve_listeners, connection, listeners,
                                         handler_nursery=handlers))
            logger.info("api_listening address=%s:%d", *address)
            task_status.started(address)
            await node.wait_stop_requested()
            accepting.cancel_scope.cancel()
        await context.terminated.set()  # idle keep-alive connections close now
        handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
    logger.info("api_stopped")
