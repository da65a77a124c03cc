"""``grapevine token``: mint a client token (HS256 JWT) as an application server would."""

from __future__ import annotations

import argparse
import time

from .common import EXIT_OK, CliError, EXIT_USAGE, env


def add_parser(sub: argparse._SubParsersAction) -> None:
    token = sub.add_parser(
        "token", help="mint a client token for a user",
        description="Print an HS256 JWT whose subject is the user id, signed with the "
        "cluster's token secret (the nodes' --token-secret).",
    )
    token.add_argument("--secret", default=env("TOKEN_SECRET"),
                       help="the token secret (or $GRAPEVINE_TOKEN_SECRET)")
    token.add_argument("--user", required=True, help="the user id (the token's subject)")
    token.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS",
                       help="lifetime in seconds (default 3600); 0 for a token without exp, "
                       "which never expires: nodes refuse it unless started with "
                       "--allow-tokens-without-exp")
    token.add_argument("--service", action="store_true",
                       help="an application server's token: may hear $presence and $upstream")
    token.set_defaults(run=run_token)


def run_token(args: argparse.Namespace) -> int:
    if not args.secret:
        raise CliError("--secret is required (or $GRAPEVINE_TOKEN_SECRET)", EXIT_USAGE)
    if args.ttl < 0:
        raise CliError(f"--ttl: {args.ttl:g} is negative", EXIT_USAGE)
    from node.token import mint

    try:
        token = mint(args.secret.encode(), args.user, time.time(), args.ttl or None,
                     service=args.service)
    except ValueError as exc:
        raise CliError(f"--user: {exc}", EXIT_USAGE) from None
    print(token)
    return EXIT_OK
