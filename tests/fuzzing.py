"""Random values for the seeded fuzz tests (client socket, peer links, HTTP API): a
string or a number from the test's own pools, or lists and maps of such, nested a few
levels. Each test says what its pools are; the shape of the draw is the same for all."""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


#: seeds for every fuzzer instead of its own, comma-separated (``.ci/run`` runs the
#: fuzzers once more with seeds the suite does not use; try others by hand)
SEEDS_VARIABLE = "GRAPEVINE_FUZZ_SEEDS"


def fuzz_seeds(*default: int) -> list[int]:
    """The seeds a fuzzer runs with: ``default``, or those of ``$GRAPEVINE_FUZZ_SEEDS``."""
    chosen = os.environ.get(SEEDS_VARIABLE, "").strip()
    return [int(seed) for seed in chosen.split(",")] if chosen else list(default)


@dataclass(frozen=True)
class Values:
    texts: Sequence[str]
    numbers: Sequence[Any]
    #: what maps are keyed by (real field names reach further into the code)
    keys: Sequence[str]
    depth: int = 2
    #: drawn when nothing else was: bytes, where the encoding can carry them
    leaf: Any = b"\x00\xff"

    def __call__(self, rng: random.Random, depth: int = 0) -> Any:
        roll = rng.random()
        if roll < 0.3:
            return rng.choice(self.texts)
        if roll < 0.6:
            return rng.choice(self.numbers)
        if roll < 0.75 and depth < self.depth:
            return [self(rng, depth + 1) for _ in range(rng.randrange(4))]
        if roll < 0.95 and depth < self.depth:
            return {rng.choice(self.keys): self(rng, depth + 1)
                    for _ in range(rng.randrange(5))}
        return self.leaf


class Budget:
    """The CPU time and memory one fuzz input may cost the process (the node runs in it),
    checked after each input as a generous safety net: a cost far beyond any sane
    handling of one input (a quadratic re-parse, an unbounded buffer) fails the test
    with the input that caused it. Process CPU time, not wall time: the machine may be
    busy; peak RSS, which only grows: a step of ``memory`` bytes in one input."""

    def __init__(self, cpu: float = 2.0, memory: int = 64 * 1024 * 1024) -> None:
        self.cpu, self.memory = cpu, memory
        self._cpu, self._rss = time.process_time(), _peak_rss()

    def check(self, what: object) -> None:
        cpu, rss = time.process_time(), _peak_rss()
        assert cpu - self._cpu <= self.cpu, f"{cpu - self._cpu:.2f} s of CPU for {what!r:.300}"
        assert rss - self._rss <= self.memory, f"+{rss - self._rss} bytes RSS for {what!r:.300}"
        self._cpu, self._rss = cpu, rss


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
