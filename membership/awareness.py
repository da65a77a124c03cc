"""Lifeguard local health awareness (memberlist ``awareness.go``).

A node that misses acks, fails to get expected nacks or has to refute accusations is
probably the one in trouble (overloaded, starved of CPU, losing packets). Its score
rises, and every probe interval and timeout it uses is stretched by ``score + 1``, so a
sick node slows down instead of accusing healthy peers.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be >= 1")
        self._max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        """Move the score by ``delta`` within ``[0, max_multiplier - 1]``; return it."""
        self.score = min(max(self.score + delta, 0), self._max - 1)
        return self.score

    def scale(self, interval: float) -> float:
        return interval * (self.score + 1)
