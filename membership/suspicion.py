"""Lifeguard suspicion: a timeout that shrinks as independent peers confirm it.

The maths follows memberlist ``suspicion.go`` and ``util.go``: the timer starts at
``max`` (or ``min`` when no confirmations can be expected) and after ``c`` distinct
confirmations is cut to ``max - log(c+1)/log(k+1) * (max-min)``, never below ``min``,
counted from the start of the suspicion.
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """``mult * max(1, log10(max(1, n))) * interval`` (the node scale kept to 1/1000)."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * math.floor(node_scale * 1000) * interval / 1000


def remaining_suspicion_time(
    n: int, k: int, elapsed: float, minimum: float, maximum: float
) -> float:
    """Time left after ``n`` of ``k`` expected confirmations, ``elapsed`` into it."""
    fraction = math.log(n + 1.0) / math.log(k + 1.0)
    raw = maximum - fraction * (maximum - minimum)
    timeout = max(math.floor(1000.0 * raw) / 1000.0, minimum)
    return timeout - elapsed


class Suspicion:
    """One running suspicion of one member."""

    def __init__(
        self, accuser: str, k: int, minimum: float, maximum: float, start: float
    ) -> None:
        self.k = k
        self.minimum = minimum
        self.maximum = maximum
        self.start = start
        self.confirmations = 0
        # the accuser's own word is not a confirmation
        self._heard_from = {accuser}
        self.deadline = start + (maximum if k >= 1 else minimum)

    def confirm(self, sender: str, now: float) -> bool:
        """Count ``sender``'s independent accusation; True if it was new (re-gossip it)."""
        if self.confirmations >= self.k or sender in self._heard_from:
            return False
        self._heard_from.add(sender)
        self.confirmations += 1
        elapsed = now - self.start
        remaining = remaining_suspicion_time(
            self.confirmations, self.k, elapsed, self.minimum, self.maximum
        )
        self.deadline = now + max(remaining, 0.0)
        return True
