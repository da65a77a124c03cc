"""How long things take, as operators ask it: histograms of durations with fixed buckets.

The node keeps two: how long a QoS 1 send waited until it was durable on R nodes (as its
sender waited, at the node it came in through) and how long each commit of the mailbox
store took (its fsync included: a slow disk shows here first). ``/metrics`` exposes them
as Prometheus histograms (cumulative since start); ``/v1/status`` and ``grapevine
status`` give their p50 and p99 over the last one to two minutes.

An observation is a ``bisect`` and two additions: cheap enough for every message. Only the
current window is written; when it is over, it becomes the previous one and the one
before that is added to the totals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported at the first scrape (metrics.py)
    from prometheus_client.core import HistogramMetricFamily

#: upper bounds of the buckets, seconds: 0.25 ms (an fsync of a fast disk) to 10 s
BOUNDS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
          0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
WINDOW = 60.0  # seconds: recent quantiles cover the last one to two of these


class _Counts:
    __slots__ = ("buckets", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size  # the last one: beyond every bound
        self.sum = 0.0

    def add(self, other: _Counts) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.sum += other.sum


class Histogram:
    """Durations in buckets; ``clock`` (seconds) says when a window is over."""

    def __init__(self, clock: Callable[[], float], bounds: tuple[float, ...] = BOUNDS, *,
                 window: float = WINDOW) -> None:
        self.bounds = bounds
        self.window = window
        self._clock = clock
        size = len(bounds) + 1
        self._now = _Counts(size)  # the current window
        self._before = _Counts(size)  # the one before it
        self._total = _Counts(size)  # everything older
        self._ends = clock() + window

    def observe(self, seconds: float) -> None:
        if self._clock() >= self._ends:
            self._rotate()
        now = self._now
        now.buckets[bisect_left(self.bounds, seconds)] += 1
        now.sum += seconds

    def _rotate(self) -> None:
        clock = self._clock()
        self._total.add(self._before)
        if clock >= self._ends + self.window:  # a whole window without an observation
            self._total.add(self._now)
            self._before = _Counts(len(self.bounds) + 1)
        else:
            self._before = self._now
        self._now = _Counts(len(self.bounds) + 1)
        self._ends = clock + self.window

    def _recent(self) -> list[int]:
        if self._clock() >= self._ends:
            self._rotate()
        return [a + b for a, b in zip(self._before.buckets, self._now.buckets, strict=True)]

    def recent(self) -> dict[str, float | int | None]:
        """For ``/v1/status``: how many in the last one to two windows, and their p50 and
        p99 in milliseconds (None with nothing to go by)."""
        counts = self._recent()
        return {"count": sum(counts), "p50_ms": self._quantile(counts, 0.5),
                "p99_ms": self._quantile(counts, 0.99)}

    def _quantile(self, counts: list[int], q: float) -> float | None:
        """Estimated as Prometheus' ``histogram_quantile`` does: linearly within the
        bucket the quantile falls in; beyond the last bound, that bound."""
        total = sum(counts)
        if not total:
            return None
        cumulative = list(accumulate(counts))
        rank = q * total
        index = bisect_left(cumulative, rank)
        if index >= len(self.bounds):
            return round(self.bounds[-1] * 1000, 3)
        lower = self.bounds[index - 1] if index else 0.0
        before = cumulative[index - 1] if index else 0
        share = (rank - before) / counts[index]
        return round((lower + (self.bounds[index] - lower) * share) * 1000, 3)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """Everything since start, as a Prometheus histogram."""
        from prometheus_client.core import HistogramMetricFamily  # noqa: PLC0415

        counts = self._recent()
        counts = [a + b for a, b in zip(self._total.buckets, counts, strict=True)]
        seconds = self._total.sum + self._before.sum + self._now.sum
        family = HistogramMetricFamily(name, documentation)
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([], buckets, sum_value=seconds)
        return family
