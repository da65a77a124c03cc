"""The one configuration object of a grapevine node.

A stdlib-only leaf: the one ``node`` module that ``gossip/`` and ``membership/`` may
import. Field names follow memberlist's ``Config`` so that operators can map settings one
to one; durations are float seconds on the trio clock (or the simulator's virtual clock).

Three named profiles mirror memberlist's ``DefaultLANConfig``, ``DefaultLocalConfig`` and
``DefaultWANConfig``. Our ``lan`` profile is tuned (``docs/membership.md``): a probe every
0.8 s and ``suspicion_mult`` 3. Lifeguard's local health awareness, nack-based self-doubt
and suspicion confirmations let us time out a suspect sooner without accusing healthy
nodes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any

#: Memberlist protocol range we speak (pmin, pmax, pcur). pcur 2 is what Go memberlist
#: advertises by default (ProtocolVersion2Compatible); we implement every feature up to 5.
PROTOCOL_MIN, PROTOCOL_MAX, PROTOCOL_CUR = 1, 5, 2
#: Delegate (application) protocol range. serf's delegate range is 2..5 and its current
#: version is 5: every merge checks that each node's dcur lies inside everyone's range,
#: so we advertise the same triple to share a cluster with serf agents.
DELEGATE_MIN, DELEGATE_MAX, DELEGATE_CUR = 2, 5, 5

PROFILES = ("lan", "local", "wan")

#: What each profile changes from the field defaults (memberlist's DefaultLANConfig).
PROFILE_VALUES: dict[str, dict[str, Any]] = {
    # memberlist DefaultLANConfig, tuned: probe every 0.8 s, suspicion_mult 3
    "lan": {"suspicion_mult": 3, "probe_interval": 0.8},
    # memberlist DefaultLocalConfig for loopback clusters, probing as lan; memberlist's
    # retransmit_mult of 2 leaves so few transmissions per rumour that a 20-node join
    # waits for push-pull (serf measured 17 s), so we keep 4
    "local": {
        "tcp_timeout": 1.0, "indirect_checks": 1, "suspicion_mult": 3,
        "push_pull_interval": 15.0, "probe_timeout": 0.2, "probe_interval": 0.8,
        "gossip_interval": 0.1, "gossip_to_the_dead_time": 15.0, "reconnect_interval": 5.0,
    },
    # memberlist DefaultWANConfig
    "wan": {
        "tcp_timeout": 30.0, "suspicion_mult": 6, "push_pull_interval": 60.0,
        "probe_timeout": 3.0, "probe_interval": 5.0, "gossip_nodes": 4, "gossip_interval": 0.5,
        "gossip_to_the_dead_time": 60.0, "reconnect_interval": 30.0,
    },
}


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


def is_node_name(name: object) -> bool:
    """Whether ``name`` can be a node's name (``Config.name``'s rule)."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
#: an API key: what an Authorization header carries intact
_API_KEY_RE = re.compile(r"[\x21-\x7e]+\Z")
#: the shortest API key taken when the API listens beyond loopback (``grapevine cluster``
#: makes keys of 48 hex digits)
MIN_API_KEY = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything a node needs to run. Build with :meth:`lan`, :meth:`local` or :meth:`wan`."""

    name: str
    profile: str = "lan"
    # Gossip (UDP and TCP on the same port).
    bind_addr: str = "0.0.0.0"
    bind_port: int = 7946
    advertise_addr: str | None = None
    advertise_port: int | None = None
    #: seeds to join at start, as "host:port" (names are resolved by the shell)
    join: tuple[str, ...] = ()
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
    # Failure detection (memberlist names).
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    awareness_max_multiplier: int = 8
    disable_tcp_pings: bool = False
    # Dissemination.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    retransmit_mult: int = 4
    push_pull_interval: float = 30.0
    udp_buffer_size: int = 1400
    #: LZW-compress packets and push-pull streams when it saves bytes (as memberlist does
    #: by default: EnableCompression)
    enable_compression: bool = True
    tcp_timeout: float = 10.0
    # Leaving, joining, reconnecting (beyond memberlist: see docs/membership.md).
    leave_timeout: float = 5.0
    join_retry_interval: float = 1.0
    join_retry_max_interval: float = 30.0
    #: seconds a node with seeds (or with peers in a past run) waits to see another
    #: member before it stores messages as an owner on its own
    join_grace: float = 30.0
    reconnect_interval: float = 10.0
    reconnect_timeout: float = 24 * 3600.0
    dead_node_reclaim_time: float = 0.0
    # Security.
    label: str = ""
    keys: tuple[bytes, ...] = ()
    gossip_verify_incoming: bool = True
    gossip_verify_outgoing: bool = True
    # Metadata carried in Alive.Meta (serf's tag format).
    tags: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # Ownership (node/ring).
    ring_vnodes: int = 128
    replicas: int = 2

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"name: {self.name!r} must be 1-128 characters of letters, digits, '_.:-'"
            )
        if self.profile not in PROFILES:
            raise ValueError(f"profile: {self.profile!r} is not one of {', '.join(PROFILES)}")
        for port_field in ("bind_port", "advertise_port", "api_port", "client_port", "peer_port"):
            port = getattr(self, port_field)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{port_field}: {port} is not a port number (0-65535)")
        for positive in (
            "probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval",
            "tcp_timeout", "leave_timeout", "join_retry_interval", "join_retry_max_interval",
            "reconnect_interval", "client_rate", "heartbeat", "ack_timeout", "default_ttl",
            "max_ttl", "broadcast_rate", "replicate_timeout", "resume_window", "join_grace",
        ):
            if not getattr(self, positive) > 0:
                raise ValueError(f"{positive}: must be > 0, got {getattr(self, positive)}")
        if not self.default_ttl <= self.max_ttl < math.inf:
            raise ValueError(f"max_ttl: {self.max_ttl:g} must be finite and at least "
                             f"default_ttl {self.default_ttl:g}")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(
                f"probe_timeout: {self.probe_timeout} must be shorter than "
                f"probe_interval {self.probe_interval}"
            )
        for at_least_one in (
            "suspicion_mult", "suspicion_max_timeout_mult", "awareness_max_multiplier",
            "retransmit_mult", "ring_vnodes", "replicas", "client_burst", "max_subscriptions",
            "client_queue", "max_attempts", "max_pending",
        ):
            if getattr(self, at_least_one) < 1:
                raise ValueError(f"{at_least_one}: must be >= 1, got {getattr(self, at_least_one)}")
        for non_negative in ("indirect_checks", "gossip_nodes"):
            if getattr(self, non_negative) < 0:
                raise ValueError(f"{non_negative}: must be >= 0")
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
        if not 512 <= self.udp_buffer_size <= 65000:
            raise ValueError(f"udp_buffer_size: {self.udp_buffer_size} outside 512..65000")
        if len(self.label.encode()) > 255:
            raise ValueError("label: longer than 255 bytes")
        for key in self.keys:
            if len(key) not in (16, 24, 32):
                raise ValueError(f"keys: a key is {len(key)} bytes, must be 16, 24 or 32")
        for tag_key, tag_value in self.tags:
            if not tag_key:
                raise ValueError("tags: empty tag name")
            if not isinstance(tag_value, str):
                raise ValueError(f"tags: value of {tag_key!r} is not a string")
        tags = dict(self.tags)
        try:
            parse_weight(tags.get("weight"))
        except ValueError as exc:
            raise ValueError(f"tags: {exc}") from None
        if tags.get("role", ROLE) != ROLE:
            raise ValueError(f"tags: 'role' is reserved (grapevine nodes gossip role={ROLE})")

    # ---- profiles -------------------------------------------------------------------

    @classmethod
    def for_profile(cls, profile: str, name: str, **overrides: Any) -> Config:
        """The named profile's values (``PROFILE_VALUES``), then ``overrides``."""
        if profile not in PROFILE_VALUES:
            raise ValueError(f"profile: {profile!r} is not one of {', '.join(PROFILES)}")
        return cls(name=name, profile=profile, **{**PROFILE_VALUES[profile], **overrides})

    @classmethod
    def lan(cls, name: str, **overrides: Any) -> Config:
        return cls.for_profile("lan", name, **overrides)

    @classmethod
    def local(cls, name: str, **overrides: Any) -> Config:
        return cls.for_profile("local", name, **overrides)

    @classmethod
    def wan(cls, name: str, **overrides: Any) -> Config:
        return cls.for_profile("wan", name, **overrides)

    def with_node_tags(self, **system: str) -> Config:
        """The tags a running node gossips: the operator's, ``role=grapevine`` and
        ``system`` ones (the node's own addresses), which replace any of the same name."""
        tags = {**dict(self.tags), "role": ROLE, **system}
        return self.replace(tags=tuple(tags.items()))

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def vsn(self) -> tuple[int, int, int, int, int, int]:
        return (PROTOCOL_MIN, PROTOCOL_MAX, PROTOCOL_CUR, DELEGATE_MIN, DELEGATE_MAX, DELEGATE_CUR)
