"""JSON views of members and of the node, shared by the HTTP API and the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gossip.codec import decode_tags
from gossip.errors import DecodeError
from membership.member import Member

from .ring import HashRing

if TYPE_CHECKING:
    from .node import Node

VERSION = "0.1.0"


def format_address(address: tuple[str, int] | None) -> str | None:
    """``host:port`` for the JSON views and files, None for a service that is off."""
    return None if address is None else f"{address[0]}:{address[1]}"


def member_tags(member: Member) -> dict[str, str]:
    try:
        return decode_tags(member.meta)
    except DecodeError:
        return {}


def member_json(member: Member, now: float) -> dict[str, Any]:
    return {
        "name": member.name,
        "address": format_address(member.address),
        "state": member.state.label,
        "incarnation": member.incarnation,
        "tags": member_tags(member),
        "protocol": list(member.vsn[:3]),
        "delegate": list(member.vsn[3:]),
        "since": round(max(now - member.state_change, 0.0), 3),
    }


def status_json(node: Node) -> dict[str, Any]:
    stats = node.membership.statistics()
    return {
        "name": stats.name,
        "version": VERSION,
        "profile": node.config.profile,
        "gossip": format_address(node.membership.address),
        "api": format_address(node.api_address),
        "client": format_address(node.client_address),
        "push": node.push_gauges(),
        "stalls": node.stalls.view(),
        "latency": {"qos1_send": node.delivery.send_seconds.recent(),
                    "store_commit": node.delivery.store.commit_seconds.recent()},
        "incarnation": stats.incarnation,
        "health_score": stats.health_score,
        "joined": stats.joined,
        "leaving": stats.leaving,
        "encrypted": node.membership.keyring is not None,
        "members": {
            "total": stats.members, "alive": stats.alive, "suspect": stats.suspect,
            "dead": stats.dead, "left": stats.left,
        },
        "gossip_queue": stats.queue_depth,
        "uptime_seconds": round(node.uptime(), 3),
        "counters": dict(sorted({**stats.counters, **node.membership.counters,
                                 **node.membership.transport.counters,
                                 **node.push_counters()}.items())),
    }


def ring_json(ring: HashRing, replicas: int) -> dict[str, Any]:
    shares = ring.shares()
    return {
        "version": ring.version,
        "vnodes": ring.vnodes,
        "points": ring.points,
        "replicas": replicas,
        "nodes": [
            {"name": name, "weight": weight, "share": round(shares.get(name, 0.0), 4)}
            for name, weight in sorted(ring.nodes.items())
        ],
    }
