"""The member table: the one mutable map of who is who, and the probe order.

Members are immutable values; the table replaces them and reports what the change means
as a :class:`MemberEvent`. It also keeps memberlist's probe order: new members are
inserted at a random position (so the failure-detection bound stays low on average),
the list is walked round-robin and reshuffled at every wrap-around, when members dead
or left for longer than ``gossip_to_the_dead_time`` are reaped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from .member import EventKind, Member, MemberEvent, MemberState, NodeName


def _event_kind(old: Member | None, new: Member) -> EventKind | None:
    if old is None or old.dead_or_left:
        if new.state is MemberState.ALIVE:
            return EventKind.JOINED
        if old is None:
            return None
    assert old is not None
    if new.state is old.state:
        return EventKind.UPDATED if new.meta != old.meta else None
    return {
        MemberState.ALIVE: EventKind.RECOVERED,
        MemberState.SUSPECT: EventKind.SUSPECTED,
        MemberState.DEAD: EventKind.FAILED,
        MemberState.LEFT: EventKind.LEFT,
    }[new.state]


class MemberTable:
    def __init__(self, me: Member, rng: random.Random) -> None:
        self.me = me.name
        self._rng = rng
        self._members: dict[NodeName, Member] = {me.name: me}
        self._order: list[NodeName] = [me.name]
        self._probe_index = 0

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def get(self, name: str) -> Member | None:
        return self._members.get(NodeName(name))

    @property
    def local(self) -> Member:
        return self._members[self.me]

    def count(self, state: MemberState) -> int:
        return sum(1 for member in self._members.values() if member.state is state)

    def apply(self, member: Member, accuser: str | None = None) -> MemberEvent | None:
        """Store ``member`` (replacing any older value); return the event it makes."""
        old = self._members.get(member.name)
        if old is None:
            # insert at a random place in the probe order
            offset = self._rng.randrange(len(self._order) + 1)
            self._order.insert(offset, member.name)
        self._members[member.name] = member
        kind = _event_kind(old, member)
        if kind is None:
            return None
        return MemberEvent(kind, member, None if old is None else old.state, accuser)

    def next_probe_target(
        self, now: float, reap_after: float
    ) -> tuple[Member | None, list[MemberEvent]]:
        """The next member to probe, round-robin; reshuffles and reaps at wrap-around."""
        reaped: list[MemberEvent] = []
        checked = 0
        while checked <= len(self._order):
            if self._probe_index >= len(self._order):
                reaped.extend(self._reset(now, reap_after))
                self._probe_index = 0
                checked += 1
                continue
            name = self._order[self._probe_index]
            self._probe_index += 1
            checked += 1
            member = self._members[name]
            if name != self.me and not member.dead_or_left:
                return member, reaped
        return None, reaped

    def _reset(self, now: float, reap_after: float) -> list[MemberEvent]:
        reaped = []
        for name in list(self._order):
            member = self._members[name]
            if name != self.me and member.dead_or_left and now - member.state_change > reap_after:
                del self._members[name]
                self._order.remove(name)
                reaped.append(MemberEvent(EventKind.REAPED, member, member.state))
        self._rng.shuffle(self._order)
        return reaped

    def random_members(self, k: int, keep: Callable[[Member], bool]) -> list[Member]:
        """Up to ``k`` distinct random members (never us) for which ``keep`` holds.

        Like memberlist's ``kRandomNodes``: random picks from the probe order, at most
        ``3 n`` of them, so a large table costs O(k) rather than O(n) per call.
        """
        order = self._order
        n = len(order)
        chosen: list[Member] = []
        seen: set[str] = set()
        for _ in range(3 * n):
            if len(chosen) >= k:
                break
            name = order[self._rng.randrange(n)]
            if name in seen or name == self.me:
                continue
            seen.add(name)
            member = self._members[name]
            if keep(member):
                chosen.append(member)
        return chosen

    def snapshot(self) -> tuple[Member, ...]:
        return tuple(sorted(self._members.values(), key=lambda m: m.name))
