"""An in-memory network for simulations: loss, duplication, delay, partitions, crashes.

It carries nothing itself; it decides, from its own seeded ``random.Random``, what
happens to each datagram or stream between two addresses (like trio's ``FakeNet``
``route_packet`` hook). The cluster simulator asks it and schedules the deliveries on
its virtual clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LinkProfile:
    #: probability a datagram is lost
    loss: float = 0.0
    #: probability a datagram arrives twice
    duplicate: float = 0.0
    #: one-way delay range in seconds (uniform)
    delay: tuple[float, float] = (0.0002, 0.002)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0 or not 0.0 <= self.duplicate <= 1.0:
            raise ValueError("loss and duplicate are probabilities in [0, 1]")
        if not 0.0 <= self.delay[0] <= self.delay[1]:
            raise ValueError("delay must be a range (low, high) with 0 <= low <= high")


class SimNetwork:
    def __init__(self, rng: random.Random, default: LinkProfile | None = None) -> None:
        self._rng = rng
        self.default = default or LinkProfile()
        self._links: dict[tuple[Address, Address], LinkProfile] = {}
        self._group_of: dict[Address, int] | None = None
        self._down: set[Address] = set()
        self._paused_until: dict[Address, float] = {}

    # ---- faults ---------------------------------------------------------------------

    def set_link(self, a: Address, b: Address, profile: LinkProfile) -> None:
        """Override the profile of the link between ``a`` and ``b`` (both directions)."""
        self._links[(a, b)] = profile
        self._links[(b, a)] = profile

    def partition(self, *groups: Iterable[Address]) -> None:
        """Only addresses in the same group reach each other; the unlisted form one group."""
        self._group_of = {}
        for index, group in enumerate(groups, start=1):
            for address in group:
                self._group_of[address] = index

    def heal(self) -> None:
        self._group_of = None

    def crash(self, address: Address) -> None:
        self._down.add(address)

    def restart(self, address: Address) -> None:
        self._down.discard(address)

    def pause(self, address: Address, until: float) -> None:
        """The host at ``address`` runs nothing until ``until`` (CPU starvation, SIGSTOP)."""
        self._paused_until[address] = max(until, self._paused_until.get(address, 0.0))

    def paused_until(self, address: Address, now: float) -> float | None:
        until = self._paused_until.get(address)
        return until if until is not None and until > now else None

    def is_down(self, address: Address) -> bool:
        return address in self._down

    # ---- what happens to traffic -----------------------------------------------------

    def connected(self, src: Address, dst: Address) -> bool:
        if self._group_of is None:
            return True
        return self._group_of.get(src, 0) == self._group_of.get(dst, 0)

    def datagram_delays(self, src: Address, dst: Address) -> list[float]:
        """One-way delays of the copies of one datagram that arrive (0, 1 or 2)."""
        if not self.connected(src, dst) or dst in self._down:
            return []
        profile = self._links.get((src, dst), self.default)
        rng = self._rng
        if profile.loss and rng.random() < profile.loss:
            return []
        copies = 2 if profile.duplicate and rng.random() < profile.duplicate else 1
        return [rng.uniform(*profile.delay) for _ in range(copies)]

    def stream_delay(self, src: Address, dst: Address) -> float | None:
        """One-way delay of a reliable stream, or None when it cannot connect."""
        if not self.connected(src, dst):
            return None
        profile = self._links.get((src, dst), self.default)
        return self._rng.uniform(*profile.delay)
