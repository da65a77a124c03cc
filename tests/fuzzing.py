"""Random values for the seeded fuzz tests (client socket, peer links, HTTP API): a
string or a number from the test's own pools, or lists and maps of such, nested a few
levels. Each test says what its pools are; the shape of the draw is the same for all."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
