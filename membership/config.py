"""What a member needs to know: memberlist's settings and its three timing profiles.

A stdlib-only leaf. Field names follow memberlist's ``Config`` so that operators can map
settings one to one; durations are float seconds on the trio clock (or the simulator's
virtual clock). A node's ``Config`` (node/config.py) is this plus what the node adds.

Three named profiles mirror memberlist's ``DefaultLANConfig``, ``DefaultLocalConfig`` and
``DefaultWANConfig``. Our ``lan`` profile is tuned (``docs/membership.md``): a probe every
0.8 s and ``suspicion_mult`` 3. Lifeguard's local health awareness, nack-based self-doubt
and suspicion confirmations let us time out a suspect sooner without accusing healthy
nodes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Self

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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def is_node_name(name: object) -> bool:
    """Whether ``name`` can be a node's name (``MembershipConfig.name``'s rule)."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipConfig:
    """A member's settings. Build with :meth:`lan`, :meth:`local` or :meth:`wan`."""

    name: str
    profile: str = "lan"
    # Gossip (UDP and TCP on the same port).
    bind_addr: str = "0.0.0.0"
    bind_port: int = 7946
    advertise_addr: str | None = None
    advertise_port: int | None = None
    #: seeds to join at start, as "host:port" (names are resolved by the shell)
    join: tuple[str, ...] = ()
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

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"name: {self.name!r} must be 1-128 characters of letters, digits, '_.:-'"
            )
        if self.profile not in PROFILES:
            raise ValueError(f"profile: {self.profile!r} is not one of {', '.join(PROFILES)}")
        for port_field in ("bind_port", "advertise_port"):
            port = getattr(self, port_field)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{port_field}: {port} is not a port number (0-65535)")
        for positive in (
            "probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval",
            "tcp_timeout", "leave_timeout", "join_retry_interval", "join_retry_max_interval",
            "reconnect_interval",
        ):
            if not getattr(self, positive) > 0:
                raise ValueError(f"{positive}: must be > 0, got {getattr(self, positive)}")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(
                f"probe_timeout: {self.probe_timeout} must be shorter than "
                f"probe_interval {self.probe_interval}"
            )
        for at_least_one in (
            "suspicion_mult", "suspicion_max_timeout_mult", "awareness_max_multiplier",
            "retransmit_mult",
        ):
            if getattr(self, at_least_one) < 1:
                raise ValueError(f"{at_least_one}: must be >= 1, got {getattr(self, at_least_one)}")
        for non_negative in ("indirect_checks", "gossip_nodes"):
            if getattr(self, non_negative) < 0:
                raise ValueError(f"{non_negative}: must be >= 0")
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

    # ---- profiles -------------------------------------------------------------------

    @classmethod
    def for_profile(cls, profile: str, name: str, **overrides: Any) -> Self:
        """The named profile's values (``PROFILE_VALUES``), then ``overrides``."""
        if profile not in PROFILE_VALUES:
            raise ValueError(f"profile: {profile!r} is not one of {', '.join(PROFILES)}")
        return cls(name=name, profile=profile, **{**PROFILE_VALUES[profile], **overrides})

    @classmethod
    def lan(cls, name: str, **overrides: Any) -> Self:
        return cls.for_profile("lan", name, **overrides)

    @classmethod
    def local(cls, name: str, **overrides: Any) -> Self:
        return cls.for_profile("local", name, **overrides)

    @classmethod
    def wan(cls, name: str, **overrides: Any) -> Self:
        return cls.for_profile("wan", name, **overrides)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    @property
    def vsn(self) -> tuple[int, int, int, int, int, int]:
        return (PROTOCOL_MIN, PROTOCOL_MAX, PROTOCOL_CUR, DELEGATE_MIN, DELEGATE_MAX, DELEGATE_CUR)
