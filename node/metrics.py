"""Prometheus metrics computed on scrape from the machines' ``statistics()``.

prometheus_client is imported at the first scrape, not at start-up (it and the
http.server it brings are 30-40 ms of a node's start before it answers ``/healthz``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from membership.member import MemberState

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .node import Node
    from .stalls import LoopWatch


def exposition(node: Node) -> bytes:
    """``/metrics`` in the Prometheus text format."""
    from prometheus_client import generate_latest  # noqa: PLC0415
    from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return generate_latest(registry)


class NodeCollector:
    """A Prometheus collector (anything with ``collect``) of one node."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        membership = self._node.membership
        stats = membership.statistics()
        members = GaugeMetricFamily(
            "grapevine_members", "Members this node knows, by state", labels=["state"]
        )
        for state in MemberState:
            members.add_metric([state.label], getattr(stats, state.label))
        yield members
        yield GaugeMetricFamily(
            "grapevine_health_score", "Lifeguard local health score (0 is healthy)",
            value=stats.health_score,
        )
        yield GaugeMetricFamily(
            "grapevine_incarnation", "This node's incarnation number", value=stats.incarnation
        )
        yield GaugeMetricFamily(
            "grapevine_gossip_queue_depth", "Broadcasts waiting to be gossiped",
            value=stats.queue_depth,
        )
        yield GaugeMetricFamily(
            "grapevine_uptime_seconds", "Seconds since the node started", value=self._node.uptime()
        )
        events = CounterMetricFamily(
            "grapevine_membership_events", "Membership protocol counters", labels=["event"]
        )
        merged = {**stats.counters, **membership.counters, **membership.transport.counters}
        for name, value in sorted(merged.items()):
            events.add_metric([name], value)
        yield events
        push = CounterMetricFamily(
            "grapevine_push_events", "Sessions, routing, peer link and mailbox counters",
            labels=["event"],
        )
        for name, value in sorted(self._node.push_counters().items()):
            push.add_metric([name], value)
        yield push
        gauges = GaugeMetricFamily("grapevine_push", "Push state right now", labels=["what"])
        for name, value in sorted(self._node.push_gauges().items()):
            gauges.add_metric([name], value)
        yield gauges
        yield from _stalls(self._node.stalls)
        delivery = self._node.delivery
        yield delivery.send_seconds.family(
            "grapevine_qos1_send_seconds",
            "QoS 1 sends that came in through this node: time until durable on R nodes")
        yield delivery.store.commit_seconds.family(
            "grapevine_store_commit_seconds", "Commits of the mailbox store, fsync included")


def _stalls(watch: LoopWatch) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

    yield GaugeMetricFamily(
        "grapevine_loop_lag_max_seconds",
        "The longest the event loop was late for a timer, over the last 1-2 minutes",
        value=watch.recent_max(),
    )
    yield CounterMetricFamily(
        "grapevine_loop_stalls", f"Times the event loop was {watch.stall} s or more late",
        value=watch.stalls,
    )
    collections = CounterMetricFamily(
        "grapevine_gc_collections", "Garbage collections, by generation", labels=["generation"])
    seconds = CounterMetricFamily(
        "grapevine_gc_seconds", "Time spent in garbage collections, by generation",
        labels=["generation"])
    for generation, (count, spent) in enumerate(
            zip(watch.collector.collections, watch.collector.seconds, strict=True)):
        collections.add_metric([str(generation)], count)
        seconds.add_metric([str(generation)], spent)
    yield collections
    yield seconds
