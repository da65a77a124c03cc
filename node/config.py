"""The one configuration object of a grapevine node.

``Config`` is a :class:`~membership.config.MembershipConfig` (the
gossip settings, memberlist's names, and the ``lan``/``local``/``wan`` profiles, which
live in membership/) plus what the node adds: its HTTP API, client server, links between
nodes, QoS 1 delivery and ownership. ``Config.lan(name, ...)`` and the other profiles
build one; durations are float seconds.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from membership.config import MembershipConfig

#: Every grapevine node gossips ``role=grapevine``: only such members own users, so agents
#: that merely share the gossip layer (serf, other memberlist programs) never do.
ROLE = "grapevine"
#: Largest weight a node may claim (its share of the ring scales with it).
MAX_WEIGHT = 100.0


def parse_weight(text: str | None) -> float:
    """A node's ``weight`` tag: a positive number (default 1), at most ``MAX_WEIGHT``."""
    if text is None or text == "":
        return 1.0
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"weight: {text!r} is not a number") from None
    if not 0 < weight <= MAX_WEIGHT:  # also false for nan
        raise ValueError(f"weight: {text!r} must be > 0 and <= {MAX_WEIGHT:g}")
    return weight


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
#: an API key: what an Authorization header carries intact
_API_KEY_RE = re.compile(r"[\x21-\x7e]+\Z")
#: the shortest API key taken when the API listens beyond loopback (``grapevine cluster``
#: makes keys of 48 hex digits)
MIN_API_KEY = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Config(MembershipConfig):
    """Everything a node needs to run. Build with :meth:`lan`, :meth:`local` or :meth:`wan`."""

    # HTTP API; api_port None means no API.
    api_addr: str = "127.0.0.1"
    api_port: int | None = 8080
    #: bearer token for the HTTP API; required when the API is bound beyond loopback
    api_key: str | None = None
    data_dir: str | None = None
    # Links between nodes (TCP); peer_addr None means the gossip bind address, port 0 any
    peer_addr: str | None = None
    peer_port: int = 0
    # Client WebSocket server (docs/protocol.md); client_port None means no client server.
    client_addr: str = "127.0.0.1"
    client_port: int | None = None
    #: HS256 secret that signs client tokens; required with a client server
    token_secret: str | None = None
    #: take client tokens without an ``exp`` claim (they never expire)
    allow_tokens_without_exp: bool = False
    max_frame: int = 64 * 1024
    client_rate: float = 50.0
    client_burst: int = 100
    max_subscriptions: int = 100
    heartbeat: float = 30.0
    #: objects queued for one client before QoS 0 messages are dropped for it
    client_queue: int = 1024
    #: how long a dropped session may come back and resume (its topics kept)
    resume_window: float = 30.0
    #: client deliveries per second of a broadcast, per node
    broadcast_rate: float = 10_000.0
    #: where upstream frames and presence events are POSTed (None: nowhere)
    webhook: str | None = None
    # QoS 1 delivery (docs/push.md).
    ack_timeout: float = 10.0
    max_attempts: int = 10
    default_ttl: float = 3 * 24 * 3600.0
    #: the longest TTL a send may ask for
    max_ttl: float = 30 * 24 * 3600.0
    max_pending: int = 10_000
    replicate_timeout: float = 5.0
    #: seconds a node with seeds (or with peers in a past run) waits to see another
    #: member before it stores messages as an owner on its own
    join_grace: float = 30.0
    # Ownership (node/ring).
    ring_vnodes: int = 128
    replicas: int = 2

    def __post_init__(self) -> None:
        MembershipConfig.__post_init__(self)  # slots=True: no zero-argument super()
        for port_field in ("api_port", "client_port", "peer_port"):
            port = getattr(self, port_field)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{port_field}: {port} is not a port number (0-65535)")
        for positive in (
            "client_rate", "heartbeat", "ack_timeout", "default_ttl", "max_ttl",
            "broadcast_rate", "replicate_timeout", "resume_window", "join_grace",
        ):
            if not getattr(self, positive) > 0:
                raise ValueError(f"{positive}: must be > 0, got {getattr(self, positive)}")
        if not self.default_ttl <= self.max_ttl < math.inf:
            raise ValueError(f"max_ttl: {self.max_ttl:g} must be finite and at least "
                             f"default_ttl {self.default_ttl:g}")
        for at_least_one in (
            "ring_vnodes", "replicas", "client_burst", "max_subscriptions", "client_queue",
            "max_attempts", "max_pending",
        ):
            if getattr(self, at_least_one) < 1:
                raise ValueError(f"{at_least_one}: must be >= 1, got {getattr(self, at_least_one)}")
        if self.api_key is not None and not _API_KEY_RE.match(self.api_key):
            raise ValueError("api_key: printable ASCII without spaces (it travels in an "
                             "Authorization header, which drops blanks at its ends)")
        if self.api_port is not None and not is_loopback(self.api_addr):
            if not self.api_key:
                raise ValueError(
                    f"api_key: required when the API listens beyond loopback ({self.api_addr})")
            if len(self.api_key) < MIN_API_KEY:
                raise ValueError(f"api_key: at least {MIN_API_KEY} characters when the API "
                                 f"listens beyond loopback ({self.api_addr})")
        if self.client_port is not None and not self.token_secret:
            raise ValueError("token_secret: required with a client server (clients need tokens)")
        if self.webhook is not None and not re.match(r"^https?://[^/]+", self.webhook):
            raise ValueError(f"webhook: {self.webhook!r} is not an http:// or https:// URL")
        if not 1024 <= self.max_frame <= 1024 * 1024:
            raise ValueError(f"max_frame: {self.max_frame} outside 1024..1048576")
        tags = dict(self.tags)
        try:
            parse_weight(tags.get("weight"))
        except ValueError as exc:
            raise ValueError(f"tags: {exc}") from None
        if tags.get("role", ROLE) != ROLE:
            raise ValueError(f"tags: 'role' is reserved (grapevine nodes gossip role={ROLE})")

    def with_node_tags(self, **system: str) -> Config:
        """The tags a running node gossips: the operator's, ``role=grapevine`` and
        ``system`` ones (the node's own addresses), which replace any of the same name."""
        tags = {**dict(self.tags), "role": ROLE, **system}
        return self.replace(tags=tuple(tags.items()))
