"""QoS 1 sends from a node that does not own the user: gathered into ``stores`` requests.

Every QoS 1 message goes to its user's owner to be stored (``delivery.py``). A node that
is not the owner gathers the messages for one owner that arrive within one turn of the
scheduler into one request, so under load one peer frame and one reply carry many
messages. Requests do not wait for each other: an owner slow to answer one (a replica
it waits for is gone) holds up only that one. Each sender gets its own answer:
``{"id", "seq"}`` or :class:`Unavailable` with the owner's reason.
"""

from __future__ import annotations

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
        self._gathering: dict[str, _Batch] = {}  # owner -> the batch not yet sent

    async def store(self, owner: str, user: str, body: str, ttl: float | None,
                    sender: str | None) -> dict[str, Any]:
        """Have ``owner`` store the message on R nodes; its ``{"id", "seq"}``."""
        batch = self._gathering.get(owner)
        if batch is None or batch.bytes >= STORES_BYTES:
            batch = self._gathering[owner] = _Batch()
            assert self.nursery is not None, "Delivery.run() first"
            self.nursery.start_soon(self._request, owner, batch)
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

    async def _request(self, owner: str, batch: _Batch) -> None:
        try:
            await trio.lowlevel.checkpoint()  # the senders ready now join this batch
            if self._gathering.get(owner) is batch:
                del self._gathering[owner]
            with trio.move_on_after(self.timeout):
                reply = await self.links.request(owner, {"t": "stores", "items": batch.items})
                results = reply.get("results")
                if isinstance(results, list):
                    batch.results = results
                elif "error" in reply:
                    batch.results = [{"error": reply["error"]}] * len(batch.items)
        finally:
            if self._gathering.get(owner) is batch:
                del self._gathering[owner]
            batch.done.set()
