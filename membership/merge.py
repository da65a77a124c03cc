"""memberlist's rules for news about a member, as pure verdicts (``docs/gossip-wire.md`` §7).

Kept apart from the machine so that each rule is a case table in the tests, as
memberlist tests ``suspicion.go``'s maths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from gossip.wire import Alive, PushNodeState

from .member import Address, Member, MemberState


#: Incarnations travel as u32 (memberlist ``Incarnation uint32``): nothing above this fits.
MAX_INCARNATION = 2**32 - 1
#: How far an accusation from others may go above the highest incarnation the member has
#: itself announced (``docs/membership.md``, "Incarnations at their bounds"). An alive from
#: others may go one further: it is the refutation of an accusation at that bound.
INCARNATION_SLACK = 16


def plausible_accusation(incarnation: int, announced: int) -> bool:
    """Whether a suspect or dead at ``incarnation`` is believable about a member whose
    highest announced incarnation is ``announced``."""
    return incarnation <= announced + INCARNATION_SLACK


def plausible_alive(incarnation: int, announced: int) -> bool:
    """Whether an alive relayed by others at ``incarnation`` is believable (see above)."""
    return incarnation <= announced + INCARNATION_SLACK + 1


def plausible_about_me(incarnation: int, mine: int) -> bool:
    """Whether gossip about us at ``incarnation`` may be believed by some peer, so that we
    must refute it: a peer may hold an alive about us we never heard (up to ``mine`` + 17)
    and believe news up to 17 above that."""
    return incarnation <= mine + 2 * (INCARNATION_SLACK + 1)


def refutation(current: int, accused: int) -> int:
    """Our incarnation after refuting an accusation at ``accused``: above both, but never
    above :data:`MAX_INCARNATION` (at the top, the rule for the top lets us win)."""
    return min(max(current + 1, accused + 1), MAX_INCARNATION)


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
    #: its incarnation is far beyond anything the member announced, and only others say it
    IMPLAUSIBLE = "implausible"
    #: at the top incarnation, others relay what only the member's own word may decide
    UNPROVEN = "unproven"


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
    announced: int | None = None,
    direct: bool = False,
    synced: bool = False,
) -> AliveVerdict:
    """The verdict on ``alive`` about a member we hold as ``known``.

    ``announced`` is the highest incarnation the member has itself announced (default:
    ``known.incarnation``); ``direct`` says the member itself sent it (a datagram from
    the address we know it by, naming that address, or its own entry in a push-pull we
    dialed it at); ``synced`` says it came in a push-pull (the cluster's view, which an
    alive about us must follow).
    """
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
        if same:
            return AliveVerdict.IGNORE
        if not synced and not plausible_about_me(alive.incarnation, known.incarnation):
            return AliveVerdict.IMPLAUSIBLE  # no peer believes it either: not worth chasing
        return AliveVerdict.REFUTE
    if announced is None:
        announced = known.incarnation
    if alive.incarnation == known.incarnation == MAX_INCARNATION:
        # the top has no higher incarnation: there the member's own word wins
        same = (
            known.state is MemberState.ALIVE and alive.meta == known.meta
            and address == known.address and (len(vsn) != 6 or tuple(vsn) == known.vsn)
        )
        if same:
            return AliveVerdict.IGNORE
        return AliveVerdict.ACCEPT if direct else AliveVerdict.UNPROVEN
    if (
        not direct and alive.incarnation > known.incarnation
        and not plausible_alive(alive.incarnation, announced)
    ):
        return AliveVerdict.IMPLAUSIBLE
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
