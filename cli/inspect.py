"""``grapevine members``, ``status`` and ``ring``: what a node sees."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from .common import EXIT_OK, add_api_arguments, api_request, print_json, print_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    members = sub.add_parser("members", help="list the members a node knows")
    add_api_arguments(members)
    members.add_argument("--json", action="store_true", help="print JSON")
    members.add_argument(
        "--state", choices=["alive", "suspect", "dead", "left"], help="only members in this state"
    )
    members.set_defaults(run=run_members)
    status = sub.add_parser("status", help="a node's own status")
    add_api_arguments(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=run_status)
    ring = sub.add_parser("ring", help="the hash ring: who owns which users")
    add_api_arguments(ring)
    ring.add_argument("--key", metavar="USER", help="show the owner and replicas of this key")
    ring.add_argument("--json", action="store_true", help="print JSON")
    ring.set_defaults(run=run_ring)
    user = sub.add_parser("user", help="where a user is connected (asked of its owner)")
    add_api_arguments(user)
    user.add_argument("user", metavar="USER")
    user.add_argument("--json", action="store_true", help="print JSON")
    user.set_defaults(run=run_user)


def run_members(args: argparse.Namespace) -> int:
    data = api_request(args.api, "GET", "/v1/members", api_key=args.api_key)
    members = [m for m in data["members"] if args.state in (None, m["state"])]
    if args.json:
        print_json({"members": members})
        return EXIT_OK
    rows = [
        [
            m["name"], m["address"], m["state"], str(m["incarnation"]),
            ",".join(f"{k}={v}" for k, v in sorted(m["tags"].items())),
        ]
        for m in members
    ]
    print_table(["NAME", "ADDRESS", "STATE", "INCARNATION", "TAGS"], rows)
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    data = api_request(args.api, "GET", "/v1/status", api_key=args.api_key)
    if args.json:
        print_json(data)
        return EXIT_OK
    members = data["members"]
    print(f"name:         {data['name']}  (grapevine {data['version']}, profile {data['profile']})")
    print(f"gossip:       {data['gossip']}  encrypted={str(data['encrypted']).lower()}")
    print(f"api:          {data['api']}")
    print(f"incarnation:  {data['incarnation']}  health_score={data['health_score']}")
    print(
        f"members:      {members['alive']} alive, {members['suspect']} suspect, "
        f"{members['dead']} dead, {members['left']} left"
    )
    print(f"joined:       {str(data['joined']).lower()}  leaving={str(data['leaving']).lower()}")
    print(f"uptime:       {data['uptime_seconds']:.0f} s")
    stalls = data.get("stalls")
    if stalls:  # a node older than the watch has none
        print(f"stalls:       loop lag up to {stalls['loop_lag_max_ms']} ms lately, "
              f"{stalls['loop_stalls']} stalls{_over(stalls)}; gc {sum(stalls['gc_ms']):.0f} ms in "
              f"{sum(stalls['gc_collections'])} collections (longest "
              f"{stalls['gc_longest_ms']} ms)")
    latency = data.get("latency")
    if latency:  # a node older than the histograms has none
        print("latency:      " + "; ".join(
            f"{what.replace('_', ' ')} {_quantiles(latency[what])}"
            for what in ("qos1_send", "store_commit")) + " (last 1-2 min)")
    return EXIT_OK


def _quantiles(recent: dict[str, Any]) -> str:
    if not recent["count"]:
        return "none"
    return (f"p50 {recent['p50_ms']:.3g} ms, p99 {recent['p99_ms']:.3g} ms "
            f"of {recent['count']}")


def _over(stalls: dict[str, Any]) -> str:
    """What counted as a stall (a node from before the threshold followed the probe
    timeout does not say)."""
    return f" (over {stalls['loop_stall_ms']:g} ms)" if "loop_stall_ms" in stalls else ""


def run_ring(args: argparse.Namespace) -> int:
    if args.key is not None:
        data = api_request(
            args.api, "GET", f"/v1/ring?key={quote(args.key, safe='')}", api_key=args.api_key
        )
        if args.json:
            print_json(data)
        else:
            print(f"owner:     {data['owner']}")
            print(f"replicas:  {', '.join(data['replicas'])}")
        return EXIT_OK
    data = api_request(args.api, "GET", "/v1/ring", api_key=args.api_key)
    if args.json:
        print_json(data)
        return EXIT_OK
    print(f"ring version {data['version']}: {len(data['nodes'])} nodes, {data['points']} points "
          f"({data['vnodes']} per unit of weight), {data['replicas']} replicas per key")
    rows = [[n["name"], f"{n['weight']:g}", f"{100 * n['share']:.1f}%"] for n in data["nodes"]]
    print_table(["NAME", "WEIGHT", "SHARE"], rows)
    return EXIT_OK


def run_user(args: argparse.Namespace) -> int:
    data = api_request(args.api, "GET", f"/v1/users/{quote(args.user, safe='')}",
                       api_key=args.api_key)
    if args.json:
        print_json(data)
        return EXIT_OK
    where = ", ".join(data["nodes"]) or "-"
    print(f"{data['user']}: {'online' if data['online'] else 'offline'}, "
          f"{data['devices']} device(s) on {where}; owner {data['owner']}, "
          f"{data['pending']} pending")
    return EXIT_OK
