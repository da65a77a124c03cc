"""How long the node stops answering: its event loop's lag and the garbage collector's
pauses, for operators (``/v1/status`` "stalls", ``/metrics``, one log line per stall).

A node whose event loop is held for about half a second leaves gossip unanswered long
enough for its peers to suspect it. A loop over every user, a slow callback, a garbage
collection over a large heap, the process being stopped (SIGSTOP, a paused VM) all look
the same from outside; from inside, :class:`LoopWatch` wakes every stall threshold (a
quarter of a second, less for the local profile) and measures how late it woke, and
:class:`GcWatch` times every collection, so a stall's log line says how much of it was
the collector.

Waking once per threshold is enough for the watch's purpose: a stall of length S that
covers one of its wake-ups makes it at least S minus the period late, so every stall of
twice the threshold (the probe timeout, for the lan and local profiles: the stall that
gets a node suspected) is logged, and shorter ones are when they cover a wake-up; an idle
node wakes for nothing else as often.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

logger = logging.getLogger(__name__)

#: this late is a stall, logged (a client waited that long for anything): a quarter of a
#: second, or half the probe timeout if that is shorter (``stall_for``)
STALL = 0.25
WINDOW = 60.0  # the longest lag is reported over the last one to two of these (seconds)
GENERATIONS = 3


def stall_for(probe_timeout: float) -> float:
    """The lag that counts as a stall for a node probed with ``probe_timeout``: at most
    half of it, so that the line comes before peers can suspect the node (the local
    profile probes within 0.2 s: a stall there is 0.1 s), and at most ``STALL`` (the wan
    profile waits 3 s for a probe, but clients do not)."""
    return min(STALL, probe_timeout / 2)


class GcWatch:
    """Collections and the time they took, per generation (``gc.callbacks``; one process
    has one collector, so every watch installed sees every collection)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.collections = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = 0.0
        self._clock = clock
        self._began: float | None = None

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def total(self) -> float:
        return sum(self.seconds)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = self._clock()
            return
        if self._began is None:  # installed during a collection
            return
        took = self._clock() - self._began
        self._began = None
        generation = min(int(info.get("generation", 0)), GENERATIONS - 1)
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)


class LoopWatch:
    """The event loop's lag: how late a timer fires. ``run`` in the node's nursery."""

    def __init__(self, collector: GcWatch, *, every: float | None = None,
                 stall: float = STALL, window: float = WINDOW) -> None:
        self.collector = collector
        self.every = stall if every is None else every  # seconds between wake-ups
        self.stall = stall
        self.window = window
        self.stalls = 0
        self.longest = 0.0  # since start
        self._bucket_start = -float("inf")
        self._max_now = 0.0  # the longest lag in the current bucket of ``window``
        self._max_before = 0.0  # and in the one before it

    async def run(self) -> None:
        self.collector.install()
        try:
            while True:
                due = trio.current_time() + self.every
                collected = self.collector.total()
                await trio.sleep_until(due)
                now = trio.current_time()
                self.note(now - due, self.collector.total() - collected, now)
        finally:
            self.collector.remove()

    def note(self, lag: float, gc_seconds: float, now: float) -> None:
        """One wake-up ``lag`` seconds late, ``gc_seconds`` of it (at most) collecting."""
        lag = max(lag, 0.0)
        if now - self._bucket_start >= self.window:
            self._bucket_start, self._max_before, self._max_now = now, self._max_now, 0.0
        self._max_now = max(self._max_now, lag)
        self.longest = max(self.longest, lag)
        if lag >= self.stall:
            self.stalls += 1
            logger.warning("event_loop_stalled ms=%d gc_ms=%d", round(lag * 1000),
                           round(min(gc_seconds, lag) * 1000))

    def recent_max(self) -> float:
        """The longest lag over the last one to two ``window``s."""
        return max(self._max_now, self._max_before)

    def view(self) -> dict[str, Any]:
        """For ``/v1/status``: milliseconds, rounded."""
        collector = self.collector
        return {
            "loop_lag_max_ms": round(self.recent_max() * 1000, 1),
            "loop_lag_longest_ms": round(self.longest * 1000, 1),
            "loop_stalls": self.stalls,
            "loop_stall_ms": round(self.stall * 1000, 1),
            "gc_collections": list(collector.collections),
            "gc_ms": [round(s * 1000, 1) for s in collector.seconds],
            "gc_longest_ms": round(collector.longest * 1000, 1),
        }
