"""Loops over every user give the node's other tasks (gossip above all) a turn every
SLICE items: the start-up load of the mailboxes (the handover round's test is in
test_handover.py)."""

from __future__ import annotations

from pathlib import Path

import trio

from node.mailbox import Stored
from node.ring import HashRing
from node.slices import SLICE, in_slices
from node.store import Store
from tests.node.helpers import delivery_of
from tests.push.test_handover import Turns


async def test_in_slices_gives_a_turn_after_every_slice_and_keeps_every_item() -> None:
    turns = Turns()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(turns.take)
        await trio.lowlevel.checkpoint()
        seen, at = [], []
        async for item in in_slices(range(10), size=3):
            seen.append(item)
            at.append(turns.count)
        nursery.cancel_scope.cancel()
    assert seen == list(range(10))
    assert at[0] == at[1] == at[2]  # no turn within a slice
    assert at[9] - at[0] >= 2  # three turns; the last may come after the last item


async def test_loading_many_mailboxes_at_start_lets_the_other_tasks_run(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "m.sqlite3"
    store = Store(str(path))
    await store.open()
    count = 5 * SLICE
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.write([Stored(f"u{n}", n + 1, f"m{n}", "b", 1.0, 4e9) for n in range(count)],
                          devices=[(f"u{n}", "phone", 1.0) for n in range(count)])
        nursery.cancel_scope.cancel()
    delivery = delivery_of("a", HashRing(nodes={"a": 1.0}), None, Store(str(path)))
    turns = Turns()
    at_put: list[int] = []
    put = delivery.mailboxes.put

    def counted_put(stored: Stored) -> bool:
        at_put.append(turns.count)
        return put(stored)
    delivery.mailboxes.put = counted_put  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(turns.take)
        await nursery.start(delivery.run)
        assert delivery.mailboxes.pending_count() == count
        assert at_put[-1] - at_put[0] >= 3  # turns while the mailboxes were filled
        nursery.cancel_scope.cancel()
