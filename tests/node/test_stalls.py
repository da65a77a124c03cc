"""The node's own pauses: the event loop's lag and the garbage collector's time."""

from __future__ import annotations

import gc
import logging

import pytest
import trio
import trio.testing

from node.stalls import GcWatch, LoopWatch, stall_for


def test_a_collection_is_counted_and_timed_while_installed_only() -> None:
    ticks = iter(range(0, 10_000, 3))  # each reading of the clock 3 s after the one before
    watch = GcWatch(clock=lambda: float(next(ticks)))
    watch.install()
    watch.install()  # once only
    try:
        gc.collect()
    finally:
        watch.remove()
    assert watch.collections == [0, 0, 1]
    assert watch.seconds == [0.0, 0.0, 3.0] and watch.longest == 3.0 and watch.total() == 3.0
    gc.collect()
    assert watch.collections == [0, 0, 1]


async def test_a_held_loop_is_one_stall_logged_with_the_collectors_share(
        mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    watch = LoopWatch(GcWatch(), every=0.1, stall=0.25)
    caplog.set_level(logging.WARNING, logger="node.stalls")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        await trio.testing.wait_all_tasks_blocked()
        assert watch.collector._callback in gc.callbacks
        for _ in range(5):  # on time: the loop answers within its period
            mock_clock.jump(0.1)
            await trio.testing.wait_all_tasks_blocked()
        assert watch.stalls == 0 and watch.recent_max() == 0.0
        watch.collector.seconds[2] += 0.4  # as if a collection took 0.4 s meanwhile
        mock_clock.jump(1.1)  # something held the loop a second past the watch's timer
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert watch.stalls == 1
    assert watch.recent_max() == pytest.approx(1.0) and watch.longest == pytest.approx(1.0)
    assert [r.getMessage() for r in caplog.records] == ["event_loop_stalled ms=1000 gc_ms=400"]
    view = watch.view()
    assert view["loop_stalls"] == 1 and view["loop_lag_max_ms"] == 1000.0
    assert watch.collector._callback not in gc.callbacks  # removed when the watch ends


def test_the_recent_maximum_forgets_a_lag_after_one_to_two_windows() -> None:
    watch = LoopWatch(GcWatch(), stall=10.0, window=60.0)
    watch.note(0.5, 0.0, now=0.0)
    watch.note(0.01, 0.0, now=30.0)
    assert watch.recent_max() == 0.5
    watch.note(0.02, 0.0, now=70.0)  # a new window: the one before still counts
    assert watch.recent_max() == 0.5
    watch.note(0.03, 0.0, now=130.0)
    assert watch.recent_max() == 0.03  # max(0.02 of the window before, 0.03 of this one)
    assert watch.longest == 0.5 and watch.stalls == 0
    watch.note(-0.001, 0.0, now=131.0)  # a timer that fired early is no lag
    assert watch.recent_max() == 0.03


def test_a_stall_is_half_the_probe_timeout_and_at_most_a_quarter_second() -> None:
    """A node of the local profile (probes time out after 0.2 s) can be suspected after
    a stall the lan threshold of 0.25 s would not log; a wan node's clients wait no
    longer than a lan node's."""
    assert stall_for(0.2) == pytest.approx(0.1)
    assert stall_for(0.5) == pytest.approx(0.25)
    assert stall_for(3.0) == pytest.approx(0.25)


def test_the_watch_wakes_once_per_stall_threshold() -> None:
    """A stall of twice the threshold always covers a wake-up and makes it a threshold
    late; waking more often would only cost an idle node wake-ups."""
    assert LoopWatch(GcWatch(), stall=stall_for(0.2)).every == pytest.approx(0.1)
    assert LoopWatch(GcWatch(), stall=stall_for(0.5)).every == pytest.approx(0.25)
