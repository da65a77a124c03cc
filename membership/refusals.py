"""What the gossip shell refuses, and how it says so: counters by cause, a log line per
cause and interval (:class:`Refusals`), the byte budget all inbound streams share
(:class:`Inbound`, one :class:`Hold` per stream) and the outcome of a join round
(:class:`JoinRound`: when every seed failed, one line that says why)."""

from __future__ import annotations

import logging
from collections import Counter

import trio

from gossip.errors import DecodeError

from .member import Address

logger = logging.getLogger("membership.service")

#: a refusal's cause is logged at most once per this many seconds
REFUSAL_LOG_EVERY = 60.0
#: causes that are a config mismatch, and what to check
HINTS = {
    "key": "no key of ours opens it: the peer's --encrypt key differs?",
    "label": "the peer's --label differs?",
}


class Refusals:
    """Counts what the node refuses and logs the first of each cause per interval.

    A log line says the peer of the first refusal and how many were not logged since
    the last line (``suppressed=``); config mismatches say what to check (``hint=``)."""

    def __init__(self, counters: Counter[str], every: float = REFUSAL_LOG_EVERY) -> None:
        self._counters = counters
        self._every = every
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    def note(self, event: str, reason: str, peer: Address, *, counter: str = "",
             detail: str = "", log: bool = True) -> None:
        """Count ``counter_reason`` (if ``counter``) and log ``event`` once an interval."""
        if counter:
            self._counters[f"{counter}_{reason}"] += 1
        if not log:
            return
        key = (event, reason)
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        hint = HINTS.get(reason)
        logger.warning(
            "%s reason=%s peer=%s:%d suppressed=%d%s%s", event, reason, peer[0], peer[1],
            self._suppressed.pop(key, 0), f" {detail}" if detail else "",
            f' hint="{hint}"' if hint else "",
        )


class Inbound:
    """Inbound streams being served, and the bytes they hold."""

    def __init__(self, max_streams: int, max_bytes: int) -> None:
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.active = 0
        self.held = 0


class Hold:
    """One stream's share of :class:`Inbound`'s bytes; released when it ends."""

    def __init__(self, inbound: Inbound) -> None:
        self._inbound = inbound
        self.bytes = 0

    def take(self, n: int) -> None:
        if self._inbound.held + n > self._inbound.max_bytes:
            raise DecodeError(
                f"inbound streams hold {self._inbound.held} bytes already", "memory"
            )
        self._inbound.held += n
        self.bytes += n

    def release(self) -> None:
        self._inbound.held -= self.bytes
        self.bytes = 0


class JoinRound:
    """Outcomes of the join streams under way: when all failed, says why once."""

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals
        self._pending = 0
        self._answered = False
        self._failures: dict[Address, str] = {}

    def started(self) -> None:
        self._pending += 1

    def finished(self, seed: Address, failure: str | None) -> None:
        self._pending -= 1
        if failure is None:
            self._answered = True
        else:
            self._failures[seed] = failure
        if self._pending > 0:
            return
        if not self._answered and self._failures:
            reasons = sorted(set(self._failures.values()))
            seeds = ",".join(f"{host}:{port}" for host, port in self._failures)
            if reasons == ["key"]:
                error = ("no seed's reply opens with our --encrypt key: "
                         "the seed's key differs?")
            else:
                error = "no seed answered; retrying with backoff"
            first = next(iter(self._failures))
            self.refusals.note(
                "join_failed", "+".join(reasons), first,
                detail=f'seeds={seeds} error="{error}"',
            )
        self._answered = False
        self._failures = {}
