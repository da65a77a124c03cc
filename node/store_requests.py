"""QoS 1 sends from a node that does not own the user: gathered into ``stores`` requests
(and, at the owner, the answer to one).

Every QoS 1 message goes to its user's owner to be stored (``delivery.py``). A node that
is not the owner gathers the messages for one owner into one request until the link's
writer takes its frame, so under load one peer frame and one reply carry many messages.
Requests do not wait for each other: an owner slow to answer one (a replica it waits for
is gone) holds up only that one. Each sender gets its own answer, by a callback and
without a task of its own: ``{"id", "seq"}`` or :class:`Unavailable` with the owner's
reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from .frames import is_seq
from .names import check_user
from .peer_proto import Budget, text_bytes
from .routing import Unavailable

if TYPE_CHECKING:
    from .peer_link import PeerLinks

#: messages per request at most (besides its ``peer_proto.Budget`` of packed bytes): the
#: answer lists a result for each, an error of up to a few hundred bytes
STORES_ITEMS = 4096
Frame = dict[str, Any]


#: called once with a message's ``{"id", "seq"}`` or why it was not stored
Reply = Callable[["dict[str, Any] | Unavailable"], None]


class _Batch:
    def __init__(self) -> None:
        self.items: list[list[Any]] = []  # [user, body, ttl, sender]
        self.replies: list[Reply] = []  # one per item
        self.budget = Budget()
        self.ticket = -1  # of its frame in the owner's link queue


class StoreRequests:
    def __init__(self, links: PeerLinks, timeout: float) -> None:
        self.links = links
        self.timeout = timeout
        self._gathering: dict[str, _Batch] = {}  # owner -> the batch not yet sent

    def store_soon(self, owner: str, item: list[Any], reply: Reply) -> None:
        """Have ``owner`` store the message ``[user, body, ttl, sender]`` on R nodes;
        ``reply`` gets the outcome.

        The message joins the request for ``owner`` whose frame still waits in the link's
        queue, unpacked (so no task and no timer of its own); if there is none, it starts
        one."""
        batch = self._gathering.get(owner)
        size = text_bytes(*(part for part in item if isinstance(part, str)))
        if (batch is None or not batch.budget.room(size) or len(batch.items) >= STORES_ITEMS
                or not self.links.queued(owner, batch.ticket)):
            batch = self._gathering[owner] = _Batch()
            batch.ticket = self.links.request_soon(
                owner, {"t": "stores", "items": batch.items},
                partial(self._answered, owner, batch), self.timeout)
        batch.items.append(item)
        batch.replies.append(reply)
        batch.budget.add(size)

    def _answered(self, owner: str, batch: _Batch, reply: Frame | None) -> None:
        if self._gathering.get(owner) is batch:
            del self._gathering[owner]
        results: list[Any] = []
        if reply is not None and isinstance(reply.get("results"), list):
            results = reply["results"]
        elif reply is not None and "error" in reply:
            results = [{"error": reply["error"]}] * len(batch.items)
        for index, reply_to in enumerate(batch.replies):
            reply_to(_outcome(owner, results[index] if index < len(results) else None))


def _outcome(owner: str, result: object) -> dict[str, Any] | Unavailable:
    if not isinstance(result, dict):
        return Unavailable(f"the owner {owner} did not confirm in time")
    if "error" in result:
        return Unavailable(str(result["error"])[:500])
    if not (isinstance(result.get("id"), str) and is_seq(result.get("seq"))):
        return Unavailable("the owner's answer made no sense")
    return {"id": result["id"], "seq": result["seq"]}


# ---- the owner's side ---------------------------------------------------------------------

def parse_item(item: object) -> tuple[str, str, float | None, str | None]:
    """``[user, body, ttl, sender]`` of a stores request; ValueError if it is not one."""
    if not isinstance(item, list) or len(item) != 4:
        raise ValueError("an item is [user, body, ttl, sender]")
    user, body, ttl, sender = item
    check_user(user)
    if not isinstance(body, str):
        raise ValueError("store needs a user and a body")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                            or not 0 < ttl < math.inf):  # NaN fails too
        raise ValueError("ttl must be a finite number of seconds above 0")
    return user, body, ttl, sender if isinstance(sender, str) else None


class Answer:
    """The results of one stores request, handed to ``done`` when the last is in."""

    __slots__ = ("done", "left", "results")

    def __init__(self, count: int, done: Callable[[list[Frame]], None]) -> None:
        self.done = done
        self.results: list[Frame] = [{}] * count
        self.left = count
        if not count:
            done([])

    def set(self, index: int, result: dict[str, Any] | Exception) -> None:
        self.results[index] = {"error": str(result)} if isinstance(result, Exception) else result
        self.left -= 1
        if self.left == 0:
            self.done(self.results)
