"""Metrics primitives: the supervision tree as Prometheus metrics, without user ids.

Domain counters (events, rejections, notifications, 429s) are module-level
prometheus-client objects in the actors that own them; this module adds what the
runtime knows: restarts, mailbox depth and messages processed per actor. Children of
dynamic supervisors (one per user) are summed under their supervisor's path with
``/*`` so no user id ever becomes a label.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from messages.status import ActorStatus
from runtime.system import ActorSystem


def _rows(node: ActorStatus, label: str, out: dict[str, list[ActorStatus]]) -> None:
    out[label].append(node)
    dynamic = node.kind == "dynamic_supervisor"
    for child in node.children:
        _rows(child, f"{node.path}/*" if dynamic else child.path, out)


class TreeCollector(Collector):
    """Reads the status snapshot at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, system: ActorSystem, root: str = "root") -> None:
        self.system = system
        self.root = root

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshot = self.system.status(self.root)
        restarts = CounterMetricFamily(
            "callwatch_actor_restarts", "Restarts of supervised actors", labels=["actor"]
        )
        processed = CounterMetricFamily(
            "callwatch_actor_messages_processed", "Messages handled", labels=["actor"]
        )
        depth = GaugeMetricFamily("callwatch_mailbox_depth", "Queued messages", labels=["actor"])
        capacity = GaugeMetricFamily(
            "callwatch_mailbox_capacity", "Mailbox capacity", labels=["actor"]
        )
        running = GaugeMetricFamily("callwatch_actors_running", "Running actors", labels=["actor"])
        dead = CounterMetricFamily(
            "callwatch_dead_letters", "Undeliverable messages by reason", labels=["reason"]
        )
        if snapshot is not None:
            groups: dict[str, list[ActorStatus]] = defaultdict(list)
            _rows(snapshot, snapshot.path, groups)
            for label, nodes in sorted(groups.items()):
                restarts.add_metric([label], sum(n.restarts_total for n in nodes))
                processed.add_metric([label], sum(n.processed for n in nodes))
                depth.add_metric([label], sum(n.mailbox_depth for n in nodes))
                capacity.add_metric([label], sum(n.mailbox_capacity for n in nodes))
                running.add_metric([label], sum(1 for n in nodes if n.state == "running"))
        for reason, count in sorted(self.system.dead_letters.by_reason.items()):
            dead.add_metric([reason], count)
        yield from (restarts, processed, depth, capacity, running, dead)
