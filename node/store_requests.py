"""QoS 1 sends from a node that does not own the user: gathered into ``stores`` requests.

Every QoS 1 message goes to its user's owner to be stored (``delivery.py``). A node that
is not the owner sends one request at a time to each owner: the messages that arrive
while it is answered gather into the next, so under load one peer frame and one reply
carry many messages, and the owner stores them in one group. Each sender still gets
its own answer: ``{"id", "seq"}`` or :class:`Unavailable` with the owner's reason.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from .routing import Unavailable

if TYPE_CHECKING:
    from .peer_link import PeerLinks

#: message data per request, about (peer frames are at most 4 MiB)
STORES_BYTES = 1 << 20
Frame = dict[str, Any]


class _Batch:
    def __init__(self) -> None:
        self.items: list[list[Any]] = []  # [user, body, ttl, sender]
        self.bytes = 0
        self.results: list[Any] = []
        self.done = trio.Event()


class StoreRequests:
    def __init__(self, links: PeerLinks, timeout: float) -> None:
        self.links = links
        self.timeout = timeout
        self.nursery: trio.Nursery | None = None  # set by the delivery's run()
        self._batches: dict[str, deque[_Batch]] = {}  # owner -> gathering, in order

    async def store(self, owner: str, user: str, body: str, ttl: float | None,
                    sender: str | None) -> dict[str, Any]:
        """Have ``owner`` store the message on R nodes; its ``{"id", "seq"}``."""
        batches = self._batches.get(owner)
        if batches is None:  # nothing under way to this owner: a request starts soon
            batches = self._batches[owner] = deque()
            assert self.nursery is not None, "Delivery.run() first"
            self.nursery.start_soon(self._requests, owner, batches)
        if not batches or batches[-1].bytes >= STORES_BYTES:
            batches.append(_Batch())
        batch = batches[-1]
        index = len(batch.items)
        batch.items.append([user, body, ttl, sender])
        batch.bytes += len(body) + len(user)
        with trio.move_on_after(self.timeout):
            await batch.done.wait()
        result = batch.results[index] if index < len(batch.results) else None
        if not isinstance(result, dict):
            raise Unavailable(f"the owner {owner} did not confirm in time")
        if "error" in result or not {"id", "seq"} <= result.keys():
            raise Unavailable(str(result.get("error", "the owner's answer made no sense")))
        return {"id": result["id"], "seq": result["seq"]}

    async def _requests(self, owner: str, batches: deque[_Batch]) -> None:
        """One request at a time to ``owner``; the next batch gathers meanwhile."""
        try:
            while batches:
                await trio.lowlevel.checkpoint()  # the senders ready now join this batch
                batch = batches.popleft()
                with trio.move_on_after(self.timeout):
                    reply = await self.links.request(owner, {"t": "stores",
                                                             "items": batch.items})
                    results = reply.get("results")
                    if isinstance(results, list):
                        batch.results = results
                    elif "error" in reply:
                        batch.results = [{"error": reply["error"]}] * len(batch.items)
                batch.done.set()
        finally:
            self._batches.pop(owner, None)
            for batch in batches:  # cancelled: nobody will answer these
                batch.done.set()
