"""The cluster's counters as metrics: read from where the cluster keeps them, at scrape time.

The bus, the room router and the registry already count what an operator needs (their
``stats`` dicts, also shown by ``GET /api/cluster``); this maps them onto the names declared
in `coup.metrics`, so nothing is counted twice and the cluster code needs no metrics calls
beyond the self-probe's timings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coup.metrics import Metrics, Values

if TYPE_CHECKING:
    from coup.cluster.node import Cluster


def export_cluster_metrics(cluster: Cluster, metrics: Metrics) -> None:
    bus, registry = cluster.bus, cluster.registry
    bus.metrics = metrics

    def redis_up() -> Values:
        return {(): 1.0 if cluster.ready else 0.0}

    def redis_errors() -> Values:
        return {("publish_failed",): bus.stats["publish_failed"], ("deaf_repairs",): bus.stats["deaf_repairs"],
                ("reconnects",): max(0, bus.connections - 1)}

    def messages() -> Values:
        return {("published",): bus.stats["published_messages"], ("received",): bus.stats["received_messages"]}

    metrics.read("coup_redis_up", redis_up)
    metrics.read("coup_redis_errors_total", redis_errors)
    metrics.read("coup_redis_publishes_total", lambda: {(): bus.stats["published"]})
    metrics.read("coup_redis_messages_total", messages)
    metrics.read("coup_relayed_requests_total", lambda: {
        (direction,): cluster.tunnel.stats[direction] for direction in ("relayed", "served")})
    metrics.read("coup_session_moves_total", lambda: {(result,): n for result, n in cluster.moves.stats.items()})
    metrics.read("coup_session_failures_total", lambda: {(reason,): count
                                                          for reason, count in cluster.alarms.snapshot().items()})
    metrics.read("coup_cluster_nodes", lambda: {(): len(registry.ring.nodes)})
    metrics.read("coup_ring_epoch", lambda: {(): registry.ring.epoch})
