"""memberlist's rules for news about a member, as pure verdicts (``memberlist-wire.md`` §7).

Kept apart from the machine so that each rule is a case table in the tests, as
memberlist tests ``suspicion.go``'s maths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from gossip.wire import Alive, PushNodeState

from .member import Address, Member, MemberState


class AliveVerdict(Enum):
    #: stale or already known
    IGNORE = "ignore"
    #: its protocol range is nonsense (pmin 0, pmax 0 or pmin > pmax)
    BAD_VERSION = "bad_version"
    #: another address claims a known name and cannot take it over
    CONFLICT = "conflict"
    #: it is about us and contradicts us: answer with a higher incarnation
    REFUTE = "refute"
    #: store it and re-gossip it
    ACCEPT = "accept"


def judge_alive(
    known: Member | None,
    alive: Alive,
    address: Address,
    *,
    is_me: bool,
    now: float,
    reclaim_time: float,
    local_meta: bytes,
    local_vsn: bytes,
) -> AliveVerdict:
    vsn = alive.vsn
    if len(vsn) >= 3 and (vsn[0] == 0 or vsn[1] == 0 or vsn[0] > vsn[1]):
        return AliveVerdict.BAD_VERSION
    if known is None:
        return AliveVerdict.ACCEPT
    if is_me:
        if alive.incarnation < known.incarnation:
            return AliveVerdict.IGNORE
        same = (
            alive.incarnation == known.incarnation and alive.meta == local_meta
            and bytes(vsn) == local_vsn and address == known.address
        )
        return AliveVerdict.IGNORE if same else AliveVerdict.REFUTE
    if address != known.address:
        reclaimable = (
            known.state is MemberState.DEAD and reclaim_time > 0
            and now - known.state_change > reclaim_time
        )
        # memberlist lets a left (or long dead) node come back at a new address; beyond
        # memberlist, a higher incarnation also wins at once: the node restarted elsewhere
        # and refuted its old self, so its new address is the truth.
        if known.state is MemberState.LEFT or reclaimable or alive.incarnation > known.incarnation:
            return AliveVerdict.ACCEPT
        return AliveVerdict.CONFLICT
    if alive.incarnation <= known.incarnation:
        return AliveVerdict.IGNORE
    return AliveVerdict.ACCEPT


def _versions(vsn: bytes | tuple[int, ...]) -> tuple[int, ...] | None:
    if len(vsn) == 0:
        return (0,) * 6
    if len(vsn) < 6:
        return None  # Go peers would crash indexing it; refuse the merge
    return tuple(vsn[:6])


def compatible(remote: Sequence[PushNodeState], local: Iterable[Member]) -> bool:
    """memberlist ``verifyProtocol``: every node's current versions fit everyone's range."""
    local_members = list(local)
    everyone: list[tuple[tuple[int, ...], bool]] = []
    for state in remote:
        versions = _versions(state.vsn)
        if versions is None:
            return False
        everyone.append((versions, state.state == MemberState.ALIVE and len(state.vsn) > 0))
    everyone.extend((tuple(m.vsn), m.state is MemberState.ALIVE) for m in local_members)
    ranged = [versions for versions, counts in everyone if counts]
    if not ranged:
        return True
    max_pmin = max(v[0] for v in ranged)
    min_pmax = min(v[1] for v in ranged)
    max_dmin = max(v[3] for v in ranged)
    min_dmax = min(v[4] for v in ranged)
    return all(
        max_pmin <= v[2] <= min_pmax and max_dmin <= v[5] <= min_dmax for v, _counts in everyone
    )
