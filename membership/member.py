"""Members as immutable values, and the events their changes produce."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NewType

NodeName = NewType("NodeName", str)
#: (host, port) of a node's gossip endpoint; host is a textual IP address.
Address = tuple[str, int]
Vsn = tuple[int, int, int, int, int, int]
ZERO_VSN: Vsn = (0, 0, 0, 0, 0, 0)


class MemberState(IntEnum):
    """memberlist's node states; the values travel in push-pull (``State``)."""

    #: answering probes
    ALIVE = 0
    #: missed a probe; will be declared dead unless it refutes in time
    SUSPECT = 1
    #: failed: the suspicion timed out (or a peer said so)
    DEAD = 2
    #: left gracefully (``dead`` with ``From == Node``)
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Member:
    name: NodeName
    address: Address
    incarnation: int
    state: MemberState
    meta: bytes = b""
    vsn: Vsn = ZERO_VSN
    #: when ``state`` last changed (the owner's clock)
    state_change: float = 0.0

    @property
    def pmin(self) -> int:
        return self.vsn[0]

    @property
    def pmax(self) -> int:
        return self.vsn[1]

    @property
    def dead_or_left(self) -> bool:
        return self.state in (MemberState.DEAD, MemberState.LEFT)


_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 2}


def supersedes(new: tuple[int, MemberState], old: tuple[int, MemberState]) -> bool:
    """Whether news ``(incarnation, state)`` overrides what is known (SWIM's order).

    A higher incarnation always wins. At the same incarnation only worse news wins:
    suspect over alive, dead or left over both. memberlist's merge rules refine this
    (alive needs a strictly higher incarnation, a suspicion only applies to a live
    member); :mod:`membership.swim` follows them, and this ordering is what they keep.
    """
    new_inc, new_state = new
    old_inc, old_state = old
    if new_inc != old_inc:
        return new_inc > old_inc
    return _RANK[new_state] > _RANK[old_state]


class EventKind(Enum):
    """What happened to a member, as an operator would say it."""

    JOINED = "joined"
    UPDATED = "updated"
    SUSPECTED = "suspected"
    RECOVERED = "recovered"
    FAILED = "failed"
    LEFT = "left"
    REAPED = "reaped"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member
    #: state before the change; None for a member seen for the first time
    previous: MemberState | None = None
    #: who raised a suspicion or declared a death (the ``From`` of the news), if any
    accuser: str | None = None
