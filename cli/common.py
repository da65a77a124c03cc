"""What every command shares: one-line errors, exit codes, HOST:PORT, the API client."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

#: exit codes: 0 ok, 1 the operation failed, 2 the command line was wrong
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_API = "127.0.0.1:8080"


class CliError(Exception):
    """Printed as one line on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``"MODULE:FUNCTION"`` of ``cli``, imported only when its command runs:
    building the parser costs argparse, and ``grapevine --help`` or ``send`` never pay for
    the node, trio or hypercorn."""
    module, _, name = target.partition(":")

    def run(args: argparse.Namespace) -> int:
        handler: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"cli.{module}"), name)
        return handler(args)

    return run


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"GRAPEVINE_{name}", default)


def host_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT``; ``:PORT`` when a default host is given)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if not host:
        if default_host is None:
            raise ValueError(f"{text!r} has no host (HOST:PORT)")
        host = default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def host_port_arg(text: str) -> tuple[str, int]:
    try:
        return host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api", default=env("API", DEFAULT_API), type=host_port_arg, metavar="HOST:PORT",
        help=f"the node's HTTP API (default {DEFAULT_API}, or $GRAPEVINE_API)",
    )
    parser.add_argument(
        "--api-key", default=env("API_KEY"), metavar="KEY",
        help="bearer key for the API (or $GRAPEVINE_API_KEY)",
    )


def api_request(
    api: tuple[str, int], method: str, path: str, body: Any = None, *,
    api_key: str | None = None, timeout: float = 10.0,
) -> Any:
    """Call the node's HTTP API; return the decoded JSON or raise :class:`CliError`."""
    import http.client  # 40 ms of email parsing: only for the commands that call the API

    host, port = api
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    payload = None if body is None else json.dumps(body).encode()
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    except OSError as exc:
        raise CliError(f"cannot reach the API at {host}:{port}: {exc}") from None
    finally:
        connection.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        raise CliError(
            f"the API at {host}:{port} answered with non-JSON ({response.status})"
        ) from None
    if response.status >= 400:
        reason = data.get("error") if isinstance(data, dict) else raw.decode(errors="replace")
        raise CliError(f"{method} {path} failed ({response.status}): {reason}")
    return data


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
