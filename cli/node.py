"""``grapevine node``: run one node in the foreground.

Flags fall back to ``GRAPEVINE_*`` environment variables. SIGINT or SIGTERM leaves the
cluster gracefully (a second signal stops at once). A bad flag or a port in use prints
one line and exits 2.
"""

from __future__ import annotations

import argparse
import errno
import functools
import gc
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from membership.config import PROFILES

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, env, host_port

if TYPE_CHECKING:  # the node itself is imported when it runs, not to parse flags
    import trio

    from gossip.keyring import Keyring
    from node.node import Node
    from node.config import Config

def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("node", help="run one node", description=__doc__)
    parser.add_argument("--name", default=env("NAME"), help="unique node name (default: hostname)")
    parser.add_argument(
        "--bind", default=env("BIND", "0.0.0.0:7946"), metavar="HOST:PORT",
        help="gossip address, UDP and TCP (default 0.0.0.0:7946; port 0 picks one)",
    )
    parser.add_argument(
        "--advertise", default=env("ADVERTISE"), metavar="HOST[:PORT]",
        help="address peers should use, when it differs from --bind",
    )
    parser.add_argument(
        "--join", action="append", default=_env_list("JOIN"), metavar="HOST:PORT",
        help="a seed to join (repeatable); retried with backoff until one answers",
    )
    parser.add_argument(
        "--api", default=env("API", "127.0.0.1:8080"), metavar="HOST:PORT|off",
        help="HTTP API address (default 127.0.0.1:8080; 'off' disables it)",
    )
    parser.add_argument("--api-key", default=env("API_KEY"), help="bearer key for the HTTP API")
    parser.add_argument(
        "--client", default=env("CLIENT", "off"), metavar="HOST:PORT|off",
        help="client WebSocket address (default off; needs --token-secret)",
    )
    parser.add_argument(
        "--peer", default=env("PEER"), metavar="HOST:PORT",
        help="TCP address of the links between nodes (default: the --bind host, any port)",
    )
    parser.add_argument(
        "--replicas", type=int, default=env("REPLICAS") or "2", metavar="R",
        help="nodes that hold each QoS 1 message on disk before it is acknowledged (default 2)",
    )
    parser.add_argument(
        "--webhook", default=env("WEBHOOK"), metavar="URL",
        help="where upstream frames and presence events are POSTed (JSON)",
    )
    parser.add_argument(
        "--broadcast-rate", type=float, default=env("BROADCAST_RATE") or "10000",
        metavar="N", help="client deliveries per second of a broadcast, per node (10000)",
    )
    parser.add_argument(
        "--resume-window", type=float, default=env("RESUME_WINDOW") or "30",
        metavar="SECONDS", help="how long a dropped client may resume its session (30)",
    )
    parser.add_argument(
        "--default-ttl", type=float, default=env("DEFAULT_TTL") or "259200",
        metavar="SECONDS", help="how long a QoS 1 message sent without a ttl is kept (3 days)",
    )
    parser.add_argument(
        "--max-ttl", type=float, default=env("MAX_TTL") or "2592000",
        metavar="SECONDS", help="the longest ttl a send may ask for (30 days)",
    )
    parser.add_argument(
        "--token-secret", default=env("TOKEN_SECRET"), metavar="SECRET",
        help="HS256 secret of client tokens (grapevine token --secret mints them)",
    )
    parser.add_argument(
        "--allow-tokens-without-exp", action="store_true",
        default=env("ALLOW_TOKENS_WITHOUT_EXP", "") not in ("", "0", "false"),
        help="take client tokens that have no exp claim (they never expire; refused "
        "by default)",
    )
    parser.add_argument(
        "--profile", default=env("PROFILE", "lan"), choices=PROFILES,
        help="timing profile, as memberlist's (default lan)",
    )
    parser.add_argument(
        "--encrypt", action="append", default=_env_list("ENCRYPT"), metavar="BASE64KEY",
        help="gossip key (serf's format, 16/24/32 bytes); repeat for rotation, first is primary",
    )
    parser.add_argument("--label", default=env("LABEL", ""), help="memberlist packet label")
    parser.add_argument(
        "--tag", action="append", default=_env_list("TAGS"), metavar="KEY=VALUE",
        help="node metadata gossiped to everyone (repeatable)",
    )
    parser.add_argument("--data-dir", default=env("DATA_DIR"), help="where the node keeps state")
    parser.add_argument(
        "--log-level", default=env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    parser.set_defaults(run=run)


def _env_list(name: str) -> list[str]:
    value = env(name)
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


def config_from_args(args: argparse.Namespace) -> tuple[Config, Keyring | None]:
    """Build the one Config; raise ValueError with a message naming the flag."""
    from gossip.keyring import Keyring, parse_key
    from node.config import Config

    import socket

    name = args.name or socket.gethostname()
    try:
        bind_host, bind_port = host_port(args.bind, default_host="0.0.0.0")
    except ValueError as exc:
        raise ValueError(f"--bind: {exc}") from None
    advertise_host, advertise_port = None, None
    if args.advertise:
        if ":" in args.advertise and not args.advertise.startswith("["):
            try:
                advertise_host, advertise_port = host_port(args.advertise)
            except ValueError as exc:
                raise ValueError(f"--advertise: {exc}") from None
        else:
            advertise_host = args.advertise.strip("[]")
    api_host, api_port = "127.0.0.1", None
    if args.api != "off":
        try:
            api_host, api_port = host_port(args.api, default_host="127.0.0.1")
        except ValueError as exc:
            raise ValueError(f"--api: {exc}") from None
    client_host, client_port = "127.0.0.1", None
    if args.client != "off":
        try:
            client_host, client_port = host_port(args.client, default_host="127.0.0.1")
        except ValueError as exc:
            raise ValueError(f"--client: {exc}") from None
    peer_host, peer_port = None, 0
    if args.peer:
        try:
            peer_host, peer_port = host_port(args.peer, default_host=bind_host)
        except ValueError as exc:
            raise ValueError(f"--peer: {exc}") from None
    for seed in args.join:
        try:
            host_port(seed)
        except ValueError as exc:
            raise ValueError(f"--join: {exc}") from None
    tags = []
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag: {item!r} is not KEY=VALUE")
        tags.append((key, value))
    keys = []
    for text in args.encrypt:
        try:
            keys.append(parse_key(text))
        except ValueError as exc:
            raise ValueError(f"--encrypt: {exc}") from None
    try:
        config = Config.for_profile(
            args.profile, name, bind_addr=bind_host, bind_port=bind_port,
            advertise_addr=advertise_host, advertise_port=advertise_port,
            join=tuple(args.join), api_addr=api_host, api_port=api_port,
            api_key=args.api_key or None, client_addr=client_host, client_port=client_port,
            peer_addr=peer_host, peer_port=peer_port, replicas=args.replicas,
            webhook=args.webhook or None, broadcast_rate=args.broadcast_rate,
            resume_window=args.resume_window, default_ttl=args.default_ttl,
            max_ttl=args.max_ttl,
            token_secret=args.token_secret or None, data_dir=args.data_dir, label=args.label,
            allow_tokens_without_exp=args.allow_tokens_without_exp,
            tags=tuple(tags), keys=tuple(keys),
        )
    except ValueError as exc:
        raise ValueError(_flag_for(str(exc))) from None
    return config, (Keyring(keys) if keys else None)


_FLAG_OF_FIELD = {
    "name": "--name", "api_key": "--api-key", "label": "--label", "tags": "--tag",
    "token_secret": "--token-secret", "client_port": "--client", "replicas": "--replicas",
    "webhook": "--webhook", "broadcast_rate": "--broadcast-rate",
    "resume_window": "--resume-window", "default_ttl": "--default-ttl", "max_ttl": "--max-ttl",
}


def _flag_for(message: str) -> str:
    field = message.partition(":")[0]
    flag = _FLAG_OF_FIELD.get(field)
    return f"{flag}: {message.partition(':')[2].strip()}" if flag else message


def configure_logging(level: str, name: str) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        f"ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s node={name} logger=%(name)s "
        "event=%(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def serve(config: Config, keyring: Keyring | None) -> None:
    import logging

    import trio

    from node.app import run_node

    logger = logging.getLogger("cli.node")
    async with trio.open_nursery() as nursery:

        async def run_then_stop(task_status: trio.TaskStatus[Node]) -> None:
            await run_node(config, keyring=keyring, task_status=task_status)
            nursery.cancel_scope.cancel()

        node = await nursery.start(run_then_stop)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if node._stop.is_set():
                    logger.warning("stopping_now signal=%s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return
                logger.info("signal_received signal=%s action=leave", signal.Signals(signum).name)
                node.request_stop()


def _tune_gc() -> None:
    """A node keeps many long-lived objects (sessions, mailboxes, the ring) and makes
    many short-lived ones per message: at the default thresholds (700, 10, 10) the
    collector ran every few hundred allocations. Young collections are rarer, and what
    exists at start-up (modules, the parsed config) is left out of all of them.
    Measured once on the bench cluster (within its ±15 % noise): QoS 1 closed loop
    6.5 -> 6.7 k msgs/s, p99 210 -> 165 ms."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def show_as_grapevine() -> None:
    """Show this process as ``grapevine node ...`` in ps and top, however it was started
    (the console script runs as ``python .../bin/grapevine``, ``cluster up`` as ``python
    -m cli``; an argv[0] of ``grapevine`` would make Python look itself up on PATH and
    lose its venv). Linux reads a command line from the memory the arguments came in,
    which the process may overwrite within their length, and the name from
    /proc/self/comm. Only for a process started as ``... node`` (not a test calling
    ``main``); where /proc will not have it, the title stays as it was."""
    if sys.argv[1:2] != ["node"]:
        return
    words = ["grapevine", *sys.argv[1:]]
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat 48, 49)
        title = "\0".join(words).encode()[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(title.ljust(end - start, b"\0"))
        Path("/proc/self/comm").write_text(words[0])
    except (OSError, ValueError, IndexError):
        pass


def run(args: argparse.Namespace) -> int:
    show_as_grapevine()
    try:
        config, keyring = config_from_args(args)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    configure_logging(args.log_level, config.name)
    failure: OSError | None = None
    import trio

    import node.app  # noqa: F401  (before the collector freezes what start-up made)

    _tune_gc()
    try:
        trio.run(functools.partial(serve, config, keyring))
    except* OSError as group:
        failure = _first(group)
    if failure is None:
        return EXIT_OK
    if failure.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        raise CliError(f"cannot bind: {failure.strerror} ({_which_bind(config)})", EXIT_USAGE)
    raise CliError(f"node failed: {failure}", EXIT_FAILED)


def _first(group: BaseExceptionGroup) -> OSError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, OSError)
    return exc


def _which_bind(config: Config) -> str:
    api = f", api {config.api_addr}:{config.api_port}" if config.api_port is not None else ""
    return f"gossip {config.bind_addr}:{config.bind_port}{api}"
