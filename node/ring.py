"""Consistent-hash ring: who owns which user, computed alike on every node.

Each node puts ``vnodes * weight`` points on a 64-bit circle (blake2b of
``"<name>#<i>"``, never the builtin ``hash()``, which is salted per process). A key's
owner is the node of the first point clockwise from the key's own hash; its replicas are
the next distinct nodes after that. A join or a death therefore moves only the keys
between the points it adds or removes: about 1/N of them.

The ring is pure data and is rebuilt only from the member table (:func:`ring_members`),
so every node that sees the same table computes the same owners. Two nodes landing on
the same point (a 64-bit collision) is resolved the same way everywhere: the smaller
name keeps the point.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from hashlib import blake2b

from sortedcontainers import SortedDict

from gossip.codec import decode_tags
from membership.member import Member, MemberState

from .config import ROLE, parse_weight


#: nodes looked up per key at once (the owner and replicas up to R = 3 in one walk)
WALK = 3
#: keys whose nodes are remembered until the ring changes (then all are forgotten)
REMEMBERED = 100_000


def hash64(data: str) -> int:
    return int.from_bytes(blake2b(data.encode(), digest_size=8).digest(), "big")


def live_nodes(members: Iterable[Member]) -> Iterator[tuple[Member, dict[str, str]]]:
    """Grapevine members alive or suspect, with their tags.

    A suspect keeps its keys and links (it may well be alive: Lifeguard exists because
    suspicions are often false); a dead or left member gives them up."""
    for member in members:
        if member.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            continue
        try:
            tags = decode_tags(member.meta)
        except ValueError:
            continue
        if tags.get("role") == ROLE:
            yield member, tags


def ring_members(members: Iterable[Member]) -> dict[str, float]:
    """Nodes that own keys, with their weights. A member whose weight tag is not a number
    counts with weight 1, so one bad tag cannot split the cluster's view."""
    nodes: dict[str, float] = {}
    for member, tags in live_nodes(members):
        try:
            nodes[member.name] = parse_weight(tags.get("weight"))
        except ValueError:
            nodes[member.name] = 1.0
    return nodes


class HashRing:
    """Points on a 64-bit circle mapping keys to node names."""

    def __init__(self, vnodes: int = 128, nodes: Mapping[str, float] | None = None) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes: must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        self._points: SortedDict[int, str] = SortedDict()
        self._weights: dict[str, float] = {}
        self._contested: set[int] = set()  # points two nodes hashed to
        self.version = 0  # bumped by every change, for caches and views
        #: key -> its nodes in ring order (owner first), as far as looked up: a message
        #: asks for its user's owner and replicas several times on every node it crosses
        self._found: dict[str, list[str]] = {}
        if nodes:
            self.update(nodes)

    # ---- reading ------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, float]:
        return dict(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, name: object) -> bool:
        return name in self._weights

    @property
    def points(self) -> int:
        return len(self._points)

    def owner(self, key: str) -> str | None:
        """The node that owns ``key``; None on an empty ring."""
        found = self._found.get(key)
        if found is None:
            found = self._walk(key, WALK)
        return found[0] if found else None

    def replicas(self, key: str, r: int) -> list[str]:
        """The owner and the next ``r - 1`` distinct nodes clockwise (fewer if the ring is)."""
        found = self._found.get(key)
        if found is None or (len(found) < r and len(found) < len(self._weights)):
            found = self._walk(key, max(r, WALK))
        return found[:r] if r > 0 else []

    def _walk(self, key: str, wanted: int) -> list[str]:
        """The first ``wanted`` distinct nodes clockwise from ``key`` (remembered)."""
        wanted = min(wanted, len(self._weights))
        found: list[str] = []
        count = len(self._points)
        if wanted > 0:
            index = self._points.bisect_left(hash64(key))
            values = self._points.values()
            for step in range(count):
                name = values[(index + step) % count]
                if name not in found:
                    found.append(name)
                    if len(found) == wanted:
                        break
        if len(self._found) >= REMEMBERED:
            self._found.clear()
        self._found[key] = found
        return found

    def shares(self) -> dict[str, float]:
        """Each node's fraction of the circle (sums to 1): how balanced the ring is."""
        if not self._points:
            return {}
        span = 1 << 64
        share = dict.fromkeys(self._weights, 0.0)
        keys = self._points.keys()
        previous = keys[-1] - span
        for point in keys:
            share[self._points[point]] += (point - previous) / span
            previous = point
        return share

    # ---- changing ---------------------------------------------------------------------

    def update(self, nodes: Mapping[str, float]) -> bool:
        """Make the ring hold exactly ``nodes`` (name → weight); True if anything changed."""
        changed = False
        for name in [n for n in self._weights if n not in nodes]:
            self._remove(name)
            changed = True
        for name, weight in nodes.items():
            if self._weights.get(name) != weight:
                if name in self._weights:
                    self._remove(name)
                self._add(name, weight)
                changed = True
        if changed:
            self.version += 1
            self._found.clear()
        return changed

    def _vnode_points(self, name: str, weight: float) -> list[int]:
        count = max(1, round(self.vnodes * weight))
        return [hash64(f"{name}#{i}") for i in range(count)]

    def _add(self, name: str, weight: float) -> None:
        self._weights[name] = weight
        for point in self._vnode_points(name, weight):
            holder = self._points.get(point)
            if holder is not None and holder != name:
                self._contested.add(point)
                if holder < name:
                    continue
            self._points[point] = name

    def _remove(self, name: str) -> None:
        points = self._vnode_points(name, self._weights.pop(name))
        for point in points:
            if self._points.get(point) == name:
                del self._points[point]
        if self._contested.intersection(points):
            # someone else also hashed to a point we held: rebuild so they get it back
            weights = self._weights
            self._points.clear()
            self._weights = {}
            self._contested.clear()
            for other in sorted(weights):
                self._add(other, weights[other])
