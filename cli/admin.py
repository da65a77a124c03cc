"""``grapevine join``, ``leave``, ``keys`` and ``keygen``: operate one node."""

from __future__ import annotations

import argparse
import base64
import os

from .common import EXIT_OK, add_api_arguments, api_request, host_port_arg, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    join = sub.add_parser("join", help="ask a node to join others")
    add_api_arguments(join)
    join.add_argument("addresses", nargs="+", metavar="HOST:PORT", type=host_port_arg)
    join.set_defaults(run=run_join)
    leave = sub.add_parser("leave", help="make a node leave the cluster gracefully and stop")
    add_api_arguments(leave)
    leave.set_defaults(run=run_leave)
    keys = sub.add_parser("keys", help="list or change a node's gossip keyring")
    add_api_arguments(keys)
    group = keys.add_mutually_exclusive_group()
    group.add_argument("--install", metavar="KEY", help="add a key (tried when opening)")
    group.add_argument("--use", metavar="KEY", help="make an installed key the primary")
    group.add_argument("--remove", metavar="KEY", help="remove a key that is not primary")
    keys.add_argument("--json", action="store_true", help="print JSON")
    keys.set_defaults(run=run_keys)
    keygen = sub.add_parser("keygen", help="print a new random 32-byte gossip key")
    keygen.set_defaults(run=lambda args: print(base64.b64encode(os.urandom(32)).decode()) or 0)


def run_join(args: argparse.Namespace) -> int:
    addresses = [f"{host}:{port}" for host, port in args.addresses]
    data = api_request(args.api, "POST", "/v1/join", {"addresses": addresses}, api_key=args.api_key)
    print("joining " + ", ".join(data["joining"]))
    return EXIT_OK


def run_leave(args: argparse.Namespace) -> int:
    data = api_request(args.api, "POST", "/v1/leave", {}, api_key=args.api_key)
    print(f"{data['leaving']} is leaving")
    return EXIT_OK


def run_keys(args: argparse.Namespace) -> int:
    change = {op: getattr(args, op) for op in ("install", "use", "remove") if getattr(args, op)}
    if change:
        data = api_request(args.api, "POST", "/v1/keyring", change, api_key=args.api_key)
    else:
        data = api_request(args.api, "GET", "/v1/keyring", api_key=args.api_key)
    if args.json:
        print_json(data)
    elif not data["encrypted"]:
        print("gossip encryption is off on this node")
    else:
        for key in data["keys"]:
            print(f"{key}{'  (primary)' if key == data['primary'] else ''}")
    return EXIT_OK
