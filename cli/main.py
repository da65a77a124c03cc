"""The ``grapevine`` command: one sub-command per module, each with ``add_parser``/``run``."""

from __future__ import annotations

import sys

from . import admin, chaos, cluster, inspect, node, send, token
from .common import EXIT_FAILED, CliError, Parser


def build_parser() -> Parser:
    parser = Parser(
        prog="grapevine",
        description="A cluster of identical push nodes that find each other by SWIM gossip.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in (node, send, inspect, admin, cluster, chaos, token):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as exc:
        print(f"grapevine: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
