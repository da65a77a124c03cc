"""Long loops over every user, in slices: between two slices the node's other tasks get
a turn. A node with a million users' mailboxes has seconds of work in such a loop (the
start-up load, a handover round), and a node whose gossip goes unanswered for ~0.5 s is
suspected by the others — which, once it is declared dead, changes the ring again on
every node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import trio

T = TypeVar("T")

#: items handled between two turns of the other tasks (a few ms of work each)
SLICE = 1000


async def in_slices(items: Iterable[T], size: int = SLICE) -> AsyncIterator[T]:
    """``items``, with a turn for the other tasks after every ``size`` of them."""
    for index, item in enumerate(items):
        if index and index % size == 0:
            await trio.lowlevel.checkpoint()
        yield item
