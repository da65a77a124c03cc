"""Histograms of QoS 1 sends and store commits: buckets, recent quantiles, /metrics."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from cli.main import main as cli_main
from node.latency import Histogram
from tests.node.helpers import http, local_config, start_node


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_recent_quantiles_are_estimated_within_their_buckets() -> None:
    histogram = Histogram(Clock(), (0.001, 0.01, 0.1))
    assert histogram.recent() == {"count": 0, "p50_ms": None, "p99_ms": None}
    for seconds in [0.0005] * 60 + [0.005] * 39 + [0.05]:
        histogram.observe(seconds)
    # p50: the 50th of 60 in (0, 1 ms]; p99: the 99th, the last of (1, 10 ms]
    assert histogram.recent() == {"count": 100, "p50_ms": 0.833, "p99_ms": 10.0}
    histogram.observe(0.05)  # 2 of 101 in (10, 100 ms]: p99 is 0.99 of one of them in
    assert histogram.recent()["p99_ms"] == pytest.approx(10 + 90 * 0.99 / 2, abs=0.001)
    histogram.observe(7.0)  # beyond every bound: counted
    assert histogram.recent()["count"] == 102


def test_beyond_the_last_bound_is_said_as_the_last_bound() -> None:
    histogram = Histogram(Clock(), (0.001, 0.01))
    histogram.observe(3.0)
    assert histogram.recent() == {"count": 1, "p50_ms": 10.0, "p99_ms": 10.0}


def test_recent_forgets_after_one_to_two_windows_and_the_totals_never_do() -> None:
    clock = Clock()
    histogram = Histogram(clock, (0.001, 0.01), window=60.0)
    histogram.observe(0.005)
    clock.now = 70.0  # the next window: the one before still counts
    histogram.observe(0.0005)
    assert histogram.recent()["count"] == 2
    clock.now = 130.0  # and the next: the first is out of the recent ones
    assert histogram.recent() == {"count": 1, "p50_ms": 0.5, "p99_ms": 0.99}
    clock.now = 1000.0  # long quiet: nothing recent
    assert histogram.recent()["count"] == 0
    [sample_set] = [histogram.family("t_seconds", "test").samples]
    buckets = {s.labels["le"]: s.value for s in sample_set if s.name == "t_seconds_bucket"}
    assert buckets == {"0.001": 1, "0.01": 2, "+Inf": 2}  # cumulative, since start
    totals = {s.name: s.value for s in sample_set if not s.labels}
    assert totals["t_seconds_count"] == 2
    assert totals["t_seconds_sum"] == pytest.approx(0.0055)


async def test_qos1_sends_and_store_commits_are_timed_for_status_metrics_and_cli(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, local_config("lat", data_dir=str(tmp_path)))
        api = node.api_address
        status, body = await http(api, "GET", "/v1/status")
        assert body["latency"]["qos1_send"] == {"count": 0, "p50_ms": None, "p99_ms": None}
        for i in range(3):
            status, answer = await http(api, "POST", "/v1/send",
                                        {"to": "ann", "body": f"m{i}", "qos": 1})
            assert status == 202, answer
        status, answer = await http(api, "POST", "/v1/send", {"to": "ann", "body": "q0"})
        assert status == 202, answer  # QoS 0: not stored, not timed
        status, body = await http(api, "GET", "/v1/status")
        sends, commits = body["latency"]["qos1_send"], body["latency"]["store_commit"]
        assert sends["count"] == 3 and sends["p50_ms"] > 0 and sends["p99_ms"] >= sends["p50_ms"]
        assert commits["count"] >= 3 and commits["p99_ms"] > 0
        status, text = await http(api, "GET", "/metrics")
        assert "grapevine_qos1_send_seconds_count 3.0" in text
        assert 'grapevine_store_commit_seconds_bucket{le="+Inf"}' in text
        code = await trio.to_thread.run_sync(
            cli_main, ["status", "--api", "{}:{}".format(*api)])
        assert code == 0
        [line] = [s for s in capsys.readouterr().out.splitlines() if s.startswith("latency:")]
        assert "qos1 send p50 " in line and " of 3;" in line and "store commit p50 " in line
        nursery.cancel_scope.cancel()
