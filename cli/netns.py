"""Network namespaces that make a local cluster look like separate hosts (root only).

A *lab* is one bridge in the root namespace holding ``198.18.K.1/24`` and, per node, a
namespace ``gv<tag>-<i>`` joined to the bridge by a veth pair: ``eth0`` inside with
``198.18.K.(10+i)/24`` and no other route, the host end ``gv<tag>h<i>`` on the bridge.
198.18.0.0/15 is reserved for network benchmarks (RFC 2544); the lab takes the first
/24 of it that no interface of this machine uses, so the addresses live only inside the
namespaces and the bridge made here and no route leads anywhere else.

A partition takes a node's host end down (the node keeps running and keeps its
connections open, but no packet crosses); healing brings it back up. :func:`teardown`
removes everything a lab made and is safe to call twice or on a half-built lab.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .common import EXIT_USAGE, CliError

def _pyroute2() -> Any:
    """pyroute2, imported on first use: 0.15 s that only --netns clusters should pay."""
    import pyroute2.netns

    return pyroute2


BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")
FIRST_HOST = 10  # node i gets .10+i; .1 is the bridge


def require_root() -> None:
    if os.geteuid() != 0:
        raise CliError("--netns needs root (it makes network namespaces, veth pairs and a "
                       "bridge); run it as root, or without --netns", EXIT_USAGE)


@dataclass
class Lab:
    tag: str
    subnet: str  # 198.18.K.0/24
    count: int

    @property
    def bridge(self) -> str:
        return f"gv{self.tag}br"

    def namespace(self, index: int) -> str:
        return f"gv{self.tag}-{index}"

    def host_end(self, index: int) -> str:
        return f"gv{self.tag}h{index}"

    def address(self, index: int) -> str:
        return str(ipaddress.ip_network(self.subnet)[FIRST_HOST + index])

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lab:
        return cls(str(data["tag"]), str(data["subnet"]), int(data["count"]))


def plan(count: int) -> Lab:
    """A lab for ``count`` nodes on a /24 of 198.18.0.0/15 unused on this machine."""
    if not 1 <= count <= 200:
        raise CliError("a netns cluster holds 1 to 200 nodes", EXIT_USAGE)
    with _pyroute2().IPRoute() as ipr:
        used = {ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
                for a in ipr.get_addr(family=2)}
    for subnet in BENCHMARK_NET.subnets(new_prefix=24):
        if not any(subnet.overlaps(net) for net in used):
            return Lab(secrets.token_hex(2), str(subnet), count)
    raise CliError("every /24 of 198.18.0.0/15 is in use on this machine")


def build(lab: Lab) -> None:
    """Make the bridge and one namespace per node; on any failure undo it all."""
    try:
        with _pyroute2().IPRoute() as ipr:
            ipr.link("add", ifname=lab.bridge, kind="bridge")
            bridge = ipr.link_lookup(ifname=lab.bridge)[0]
            ipr.addr("add", index=bridge, address=lab.gateway, prefixlen=24)
            ipr.link("set", index=bridge, state="up")
            for index in range(lab.count):
                name = lab.namespace(index)
                _pyroute2().netns.create(name)
                ipr.link("add", ifname=lab.host_end(index), kind="veth",
                         peer={"ifname": f"gv{lab.tag}n{index}", "net_ns_fd": name})
                host_end = ipr.link_lookup(ifname=lab.host_end(index))[0]
                ipr.link("set", index=host_end, master=bridge, state="up")
                with _pyroute2().NetNS(name) as ns:
                    inner = ns.link_lookup(ifname=f"gv{lab.tag}n{index}")[0]
                    ns.link("set", index=inner, ifname="eth0")
                    ns.addr("add", index=inner, address=lab.address(index), prefixlen=24)
                    ns.link("set", index=inner, state="up")
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    except Exception as exc:
        teardown(lab)
        raise CliError(f"could not build the network namespaces: {exc}") from None


def set_link(lab: Lab, index: int, up: bool) -> None:
    """Partition node ``index`` off the bridge (``up=False``) or heal it."""
    with _pyroute2().IPRoute() as ipr:
        found = ipr.link_lookup(ifname=lab.host_end(index))
        if not found:
            raise CliError(f"no link {lab.host_end(index)} (was the lab torn down?)")
        ipr.link("set", index=found[0], state="up" if up else "down")


def link_up(lab: Lab, index: int) -> bool | None:
    """Whether node ``index``'s link is up (None when it does not exist)."""
    with _pyroute2().IPRoute() as ipr:
        found = ipr.link_lookup(ifname=lab.host_end(index))
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
    return bool(link["flags"] & 1)  # IFF_UP


def enter(lab: Lab, index: int) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child process into node ``index``'s namespace."""
    name = lab.namespace(index)

    def move() -> None:
        _pyroute2().netns.setns(name, flags=0)

    return move


def teardown(lab: Lab) -> None:
    """Remove the lab's veth pairs, namespaces and bridge; whatever of them exists."""
    present = set(_pyroute2().netns.listnetns())
    with _pyroute2().IPRoute() as ipr:
        for index in range(lab.count):
            for found in ipr.link_lookup(ifname=lab.host_end(index)):
                ipr.link("del", index=found)  # takes the inner end with it
            if lab.namespace(index) in present:
                _pyroute2().netns.remove(lab.namespace(index))
        for found in ipr.link_lookup(ifname=lab.bridge):
            ipr.link("del", index=found)


def leftovers(lab: Lab) -> list[str]:
    """What of the lab still exists (empty after a clean teardown)."""
    names = [lab.namespace(i) for i in range(lab.count) if lab.namespace(i) in
             set(_pyroute2().netns.listnetns())]
    with _pyroute2().IPRoute() as ipr:
        links = [n for n in [lab.bridge, *(lab.host_end(i) for i in range(lab.count))]
                 if ipr.link_lookup(ifname=n)]
    return names + links
