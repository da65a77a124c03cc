"""``grapevine send`` and ``grapevine listen``: push a message, and be a client that gets it."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any

from .common import (
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, add_api_arguments, api_request, env,
    host_port_arg, print_json,
)

if TYPE_CHECKING:  # listen's client is imported when it runs: send stays cheap
    from .client import Session

SEEN_IDS = 10_000  # message ids remembered to drop duplicates, like a client SDK would


def add_parser(sub: argparse._SubParsersAction) -> None:
    send = sub.add_parser("send", help="send a message to a user through a node")
    add_api_arguments(send)
    send.add_argument("--to", required=True, metavar="USER", help="the receiving user")
    send.add_argument("--qos", type=int, choices=[0, 1], default=0,
                      help="0: at most once (default); 1: at least once, stored")
    send.add_argument("--ttl", type=float, metavar="SECONDS", help="drop it after this long")
    send.add_argument("--json", action="store_true", help="print the answer as JSON")
    send.add_argument("text", help="the message body")
    send.set_defaults(run=run_send)

    publish = sub.add_parser("publish", help="publish to a topic (every subscriber, QoS 0)")
    add_api_arguments(publish)
    publish.add_argument("--topic", required=True)
    publish.add_argument("text", help="the message body")
    publish.set_defaults(run=lambda args: _post_and_print(
        args, "/v1/publish", {"topic": args.topic, "body": args.text}, "id"))

    broadcast = sub.add_parser("broadcast", help="send to every connected client (paced)")
    add_api_arguments(broadcast)
    broadcast.add_argument("text", help="the message body")
    broadcast.set_defaults(run=lambda args: _post_and_print(
        args, "/v1/broadcast", {"body": args.text}, "id"))

    kick = sub.add_parser("kick", help="disconnect every session of a user")
    add_api_arguments(kick)
    kick.add_argument("user", metavar="USER")
    kick.add_argument("--reason", default="kicked by an operator")
    kick.set_defaults(run=lambda args: _post_and_print(
        args, "/v1/kick", {"user": args.user, "reason": args.reason}, "kicked"))

    listen = sub.add_parser(
        "listen", help="connect as a user's client and print each message as a JSON line",
        description="Hold a client connection like an app would: print every message as "
        "one JSON line, acknowledge QoS 1 messages, drop duplicates by id, and on losing "
        "the node fail over to the next --client with backoff.",
    )
    listen.add_argument("--client", action="append", type=host_port_arg, required=True,
                        metavar="HOST:PORT", help="a node's client address (repeatable)")
    listen.add_argument("--token", default=env("TOKEN"), help="a client token")
    listen.add_argument("--user", help="mint a token for this user (needs --secret)")
    listen.add_argument("--secret", default=env("TOKEN_SECRET"),
                        help="the token secret, to mint with --user")
    listen.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    listen.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="exit with status 1 if --count messages have not come by then")
    listen.add_argument("--device", default="cli", help="this device's name")
    listen.add_argument("--sub", action="append", default=[], metavar="TOPIC",
                        help="also receive what is published to TOPIC (repeatable)")
    listen.set_defaults(run=run_listen)


def run_send(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to, "body": args.text, "qos": args.qos}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    data = api_request(args.api, "POST", "/v1/send", body, api_key=args.api_key)
    if args.json:
        print_json(data)
    else:
        print(data["id"])
    return EXIT_OK


def _post_and_print(args: argparse.Namespace, path: str, body: dict[str, Any], key: str
                    ) -> int:
    data = api_request(args.api, "POST", path, body, api_key=args.api_key)
    print(data[key])
    return EXIT_OK


def run_listen(args: argparse.Namespace) -> int:
    import trio

    from node.token import mint

    if args.token:
        token = args.token
    elif args.user and args.secret:
        try:
            token = mint(args.secret.encode(), args.user, time.time())
        except ValueError as exc:
            raise CliError(f"--user: {exc}", EXIT_USAGE) from None
    else:
        raise CliError("give --token, or --user with --secret", EXIT_USAGE)
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", EXIT_USAGE)
    try:
        return trio.run(_listen, args, token)
    except KeyboardInterrupt:
        return EXIT_OK


class _Done(Exception):
    pass


async def _listen(args: argparse.Namespace, token: str) -> int:
    import trio

    from .client import CONNECTION_LOST, Session, hold

    state: dict[str, Any] = {"count": 0, "seen": OrderedDict()}
    session = Session(token, args.device)
    handle = partial(_frame, args=args, state=state, session=session)
    frame_done = partial(_ack, state=state)
    with trio.move_on_after(args.timeout if args.timeout else float("inf")):
        delay = 0.1
        for attempt in range(1_000_000):
            host, port = args.client[attempt % len(args.client)]
            try:
                await hold(host, port, session, handle, frame_done=frame_done)
            except _Done:
                return EXIT_OK
            except CONNECTION_LOST as exc:
                print(f"listen: lost {host}:{port} ({type(exc).__name__}); trying the next "
                      f"node in {delay:.1f} s", file=sys.stderr, flush=True)
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)
    print(f"listen: {state['count']} of {args.count} messages before the timeout",
          file=sys.stderr)
    return EXIT_FAILED


async def _frame(ws: Any, obj: dict[str, Any], *, args: argparse.Namespace,
                 state: dict[str, Any], session: Session) -> None:
    kind = obj.get("t")
    if kind == "welcome":
        print(f"listen: connected to {obj.get('node')} as {obj.get('user')} "
              f"(session {session.session})", file=sys.stderr, flush=True)
        if args.sub:
            await ws.send_message(json.dumps({"t": "sub", "topics": args.sub}))
    elif kind == "msg":
        await _message(ws, obj, args, state, session)
    elif kind == "error":
        print(f"listen: error {obj.get('code')}: {obj.get('reason')}",
              file=sys.stderr, flush=True)
        if obj.get("code") == "unauthorized":
            raise CliError(f"refused: {obj.get('reason')}")
    elif kind == "kick":
        raise CliError(f"kicked: {obj.get('reason')}")


async def _message(ws: Any, obj: dict[str, Any], args: argparse.Namespace,
                   state: dict[str, Any], session: Session) -> None:
    """Print a message (once per id); a QoS 1 one is read only once printed (a resume
    names the last one read: naming one not printed yet would lose it), and acked with
    the last of its frame (``_ack``: one ack per frame, as docs/protocol.md allows, keeps
    a backlog within the node's objects per second)."""
    seen: OrderedDict[str, None] = state["seen"]
    new = obj.get("id") not in seen
    if new:
        seen[obj.get("id")] = None
        if len(seen) > SEEN_IDS:
            seen.popitem(last=False)
        print(json.dumps(obj, ensure_ascii=False), flush=True)
        state["count"] += 1
    if obj.get("qos") == 1 and isinstance(obj.get("seq"), int):
        session.saw(obj["seq"])
        state["unacked"] = obj["seq"]
    if new and args.count is not None and state["count"] >= args.count:
        await _ack(ws, state)
        raise _Done


async def _ack(ws: Any, state: dict[str, Any]) -> None:
    """Ack the last QoS 1 message read, if it is not acked yet."""
    seq = state.pop("unacked", None)
    if seq is not None:
        await ws.send_message(json.dumps({"t": "ack", "seq": seq}))

