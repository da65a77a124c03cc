"""News about members: memberlist's merge rules acting on the machine.

The rules of ``docs/gossip-wire.md`` §7 (alive, suspect, dead, refutation, the push-pull
merge) and, beyond memberlist, the bounds on incarnations argued in
``docs/membership.md`` ("Incarnations at their bounds"): an accusation or a relayed
alive far above what a member has itself announced is not believed, the member's own
word is, and our refutation never leaves the u32. The verdicts are pure functions in
:mod:`membership.merge`; this module holds the state they need (running suspicions, the
highest incarnation each member announced) and acts on the owning :class:`Swim`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from gossip.codec import META_MAX_SIZE, encode, ip_from_bytes
from gossip.errors import DecodeError
from gossip.wire import Alive, Dead, PushNodeState, Suspect

from .awareness import Awareness
from .config import MembershipConfig
from .member import Address, Member, MemberState, NodeName
from .merge import (
    MAX_INCARNATION, AliveVerdict, compatible, judge_alive, plausible_about_me,
    plausible_accusation, refutation,
)
from .suspicion import Suspicion, suspicion_timeout
from .table import MemberTable
from .timers import Deadlines

logger = logging.getLogger(__name__)

SUSPICION = "suspicion"
#: at most one ``incarnation_implausible`` line per member this often (seconds, our clock)
IMPLAUSIBLE_LOG_EVERY = 60.0


class NewsHost(Protocol):
    """What the rules need from the machine that owns them."""

    config: MembershipConfig
    table: MemberTable
    timers: Deadlines
    awareness: Awareness
    name: NodeName
    leaving: bool

    @property
    def local_meta(self) -> bytes: ...
    def count(self, name: str, n: int = 1) -> None: ...
    def broadcast(self, now: float, subject: str, message: bytes) -> None: ...
    def store(self, now: float, member: Member, accuser: str | None = None) -> None: ...
    def queue_alive(self, now: float, member: Member) -> None: ...
    def alive_bytes(self, member: Member) -> bytes: ...
    def send_messages(self, dst: Address, parts: list[bytes], to: Member | None) -> None: ...
    def check_with(self, now: float, address: Address) -> None: ...


class News:
    """Alive, suspect and dead news and push-pull tables, judged and applied."""

    def __init__(self, host: NewsHost) -> None:
        self._host = host
        self._suspicions: dict[NodeName, Suspicion] = {}
        #: per member, the highest incarnation it has itself announced (an accepted alive)
        self._announced: dict[NodeName, int] = {}
        #: per member, when we last logged implausible news about it, or dialed it to check
        self._implausible_at: dict[NodeName, float] = {}
        self._checked_at: dict[NodeName, float] = {}

    def forget(self, name: NodeName) -> None:
        """``name`` was reaped from the table."""
        self._suspicions.pop(name, None)
        self._announced.pop(name, None)
        self._implausible_at.pop(name, None)
        self._checked_at.pop(name, None)

    def on_alive(
        self, now: float, alive: Alive, src: Address | None, *, synced: bool = False
    ) -> None:
        """``src``: who sent it (the datagram's source, or the peer we dialed for a
        push-pull); ``synced``: it came in a push-pull."""
        is_me = alive.node == self._host.name
        if self._host.leaving and is_me:
            return
        known = self._host.table.get(alive.node)
        if alive.port == 0 or len(alive.meta) > META_MAX_SIZE:
            # nobody can be reached at port 0; memberlist never sends meta above 512 bytes
            self._host.count("alives_malformed")
            return
        if (
            known is not None and alive.incarnation <= known.incarnation and not is_me
            and known.state in (MemberState.ALIVE, MemberState.SUSPECT)
            and alive.incarnation != MAX_INCARNATION
        ):
            return  # old news, the common case in gossip: decided before decoding anything
        address = (ip_from_bytes(alive.addr), alive.port)
        name = NodeName(alive.node)
        # the member's own word: sent from the address we know it by, claiming that address
        # (an alive claiming its sender's address proves nothing: anyone can send one)
        direct = src is not None and known is not None and src == address == known.address
        verdict = judge_alive(
            known, alive, address, is_me=is_me, now=now,
            reclaim_time=self._host.config.dead_node_reclaim_time,
            local_meta=self._host.local_meta, local_vsn=bytes(self._host.config.vsn),
            announced=self._announced.get(name), direct=direct, synced=synced,
        )
        if verdict is AliveVerdict.IGNORE:
            return
        if verdict is AliveVerdict.IMPLAUSIBLE:
            assert known is not None
            self._implausible(now, known, "alive", alive.incarnation, None)
            if not is_me:
                self._check(now, known)
            return
        if verdict is AliveVerdict.UNPROVEN:
            assert known is not None
            self._host.count("alives_at_max_incarnation_unproven")
            self._check(now, known)
            return
        if verdict is AliveVerdict.BAD_VERSION:
            self._host.count("alive_bad_version")
            return
        if verdict is AliveVerdict.CONFLICT:
            self._host.count("address_conflicts")
            return
        if verdict is AliveVerdict.REFUTE:
            self._refute(now, alive.incarnation)
            return
        self._host.broadcast(now, alive.node, encode(alive))
        self._cancel_suspicion(name)
        self._announced[name] = alive.incarnation
        vsn = tuple(alive.vsn) if len(alive.vsn) == 6 else (known.vsn if known else (0,) * 6)
        change = known is None or known.state is not MemberState.ALIVE
        self._host.store(now, Member(
            NodeName(alive.node), address, alive.incarnation, MemberState.ALIVE, alive.meta,
            vsn, now if change else known.state_change,  # type: ignore[union-attr, arg-type]
        ))

    def on_suspect(self, now: float, suspect: Suspect, *, gossip: bool = False) -> None:
        known = self._host.table.get(suspect.node)
        if known is None or suspect.incarnation < known.incarnation:
            return
        if not self._believable(
            now, known, suspect.incarnation, "suspect", suspect.from_, gossip=gossip
        ):
            return
        running = self._suspicions.get(known.name)
        if running is not None:
            if running.confirm(suspect.from_, now):
                self._host.count("suspicion_confirmations")
                self._host.broadcast(now, suspect.node, encode(suspect))
                self._host.timers.schedule((SUSPICION, known.name), running.deadline)
            return
        if known.state is not MemberState.ALIVE:
            return
        if known.name == self._host.name:
            self._host.count("refuted_suspicions")
            self._refute(now, suspect.incarnation)
            return
        self._host.broadcast(now, suspect.node, encode(suspect))
        self._host.store(now, replace(
            known, incarnation=suspect.incarnation, state=MemberState.SUSPECT, state_change=now
        ), suspect.from_)
        config = self._host.config
        n = len(self._host.table)
        k = config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        minimum = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
        maximum = config.suspicion_max_timeout_mult * minimum
        suspicion = Suspicion(suspect.from_, k, minimum, maximum, now)
        self._suspicions[known.name] = suspicion
        self._host.timers.schedule((SUSPICION, known.name), suspicion.deadline)

    def suspicion_expired(self, now: float, name: NodeName) -> None:
        suspicion = self._suspicions.pop(name, None)
        member = self._host.table.get(name)
        if suspicion is None or member is None or member.state is not MemberState.SUSPECT:
            return
        self.on_dead(now, Dead(member.incarnation, member.name, self._host.name))

    def on_dead(self, now: float, dead: Dead, *, gossip: bool = False) -> None:
        known = self._host.table.get(dead.node)
        if known is None or dead.incarnation < known.incarnation:
            return
        if not self._believable(now, known, dead.incarnation, "dead", dead.from_, gossip=gossip):
            return
        self._cancel_suspicion(known.name)
        if known.dead_or_left:
            return
        if known.name == self._host.name:
            if not self._host.leaving:
                self._host.count("refuted_deaths")
                self._refute(now, dead.incarnation)
            return
        self._host.broadcast(now, dead.node, encode(dead))
        state = MemberState.LEFT if dead.from_ == dead.node else MemberState.DEAD
        self._host.store(now, replace(
            known, incarnation=dead.incarnation, state=state, state_change=now
        ), dead.from_)

    def _refute(self, now: float, accused: int) -> None:
        me = self._host.table.local
        incarnation = refutation(me.incarnation, accused)
        if incarnation == me.incarnation:
            self._host.count("refutations_at_max_incarnation")
        self._host.awareness.apply_delta(1)
        updated = replace(me, incarnation=incarnation)
        self._host.store(now, updated)
        self._host.queue_alive(now, updated)
        if incarnation == MAX_INCARNATION:
            # at the top only our own word wins (merge.judge_alive): say it to everyone
            # ourselves rather than only to the few the epidemic reaches first-hand
            alive = self._host.alive_bytes(updated)
            for member in self._host.table:
                if member.name != self._host.name and not member.dead_or_left:
                    self._host.send_messages(member.address, [alive], member)

    # ---- incarnations at their bounds (docs/membership.md) -----------------------------

    def _believable(
        self, now: float, known: Member, incarnation: int, kind: str, accuser: str, *,
        gossip: bool,
    ) -> bool:
        """Whether an accusation at ``incarnation`` about ``known`` may be believed.

        About another member: not above what it has itself announced plus the slack,
        whoever says it (gossip or push-pull). About us: gossip beyond what any peer may
        believe (``plausible_about_me``) is not chased; a push-pull is the cluster's view
        (after a restart ours starts again at 1) and is answered whatever it says.
        """
        if known.name == self._host.name:
            if not gossip or plausible_about_me(incarnation, known.incarnation):
                return True
        elif plausible_accusation(
            incarnation, self._announced.get(known.name, known.incarnation)
        ):
            return True
        self._implausible(now, known, kind, incarnation, accuser)
        return False

    def _implausible(
        self, now: float, known: Member, kind: str, incarnation: int, accuser: str | None
    ) -> None:
        self._host.count("implausible_alives" if kind == "alive" else "implausible_accusations")
        last = self._implausible_at.get(known.name)
        if last is not None and now - last < IMPLAUSIBLE_LOG_EVERY:
            return
        self._implausible_at[known.name] = now
        announced = (
            known.incarnation if known.name == self._host.name
            else self._announced.get(known.name, known.incarnation)
        )
        logger.warning(
            "incarnation_implausible member=%s news=%s incarnation=%d announced=%d accuser=%s",
            known.name, kind, incarnation, announced, accuser or "none",
        )

    def _check(self, now: float, known: Member) -> None:
        """Ask the member itself (a push-pull to its address): its own entry in the
        reply is evidence. At most once per member per ``reconnect_interval``."""
        last = self._checked_at.get(known.name)
        if last is not None and now - last < self._host.config.reconnect_interval:
            return
        self._checked_at[known.name] = now
        self._host.count("implausible_checks")
        self._host.check_with(now, known.address)

    def _cancel_suspicion(self, name: NodeName) -> None:
        if self._suspicions.pop(name, None) is not None:
            self._host.timers.cancel((SUSPICION, name))

    # ---- push-pull ------------------------------------------------------------------

    def merge(
        self, now: float, states: Sequence[PushNodeState], source: Address | None
    ) -> bool:
        """Merge a remote member table (push-pull), after memberlist's version check.

        ``source``: the address we dialed for it (None for a push-pull we were sent);
        the entry of the member at that address is its own word.
        """
        if not compatible(states, self._host.table):
            self._host.count("push_pulls_incompatible")
            return False
        for state in states:
            try:
                if state.state == MemberState.ALIVE:
                    self.on_alive(now, Alive(
                        state.incarnation, state.name, state.addr, state.port, state.meta,
                        state.vsn,
                    ), source, synced=True)
                elif state.state == MemberState.LEFT:
                    self.on_dead(now, Dead(state.incarnation, state.name, state.name))
                elif state.state in (MemberState.DEAD, MemberState.SUSPECT):
                    self.on_suspect(now, Suspect(state.incarnation, state.name, self._host.name))
                else:
                    self._host.count("push_pull_unknown_states")
            except DecodeError:
                self._host.count("dropped_malformed")
        return True
