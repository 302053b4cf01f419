"""Every metric a node exposes, in one place: what the layers count, and how it is exported.

The layers report to one `Metrics` object per node (``EngineServer.metrics``; None when the
node counts nothing). Counting costs a field increment where it happens, never a lock or a
call into prometheus_client: the hot paths count once per loop turn or per broadcast, not
per delivery (the WebSocket flush adds up the frames it wrote; a broadcast records its
number of receivers). Values that already live somewhere (connections, the cluster's
counters) are not counted twice: their owner sets a reader that the export calls at scrape
time. Prometheus text comes from `MetricsExport` (prometheus_client's own registry and
encoder), built only when `/metrics` is served.

This module imports no other part of CoUp, so the engine, core, cluster and domain can all
report here without importing each other.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

#: label values -> value, as a reader returns them (label values in the metric's label order)
Values = Mapping[tuple[str, ...], float]
Reader = Callable[[], Values]

#: seconds: event handlers, database queries, Redis round trips
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: receivers of one broadcast on this node
RECEIVER_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Histogram:
    """Fixed buckets; observed on the loop thread only, so it needs no lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # Prometheus buckets are "<= bound"
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else _number(bound), running))
        return out


class HistogramFamily:
    """One histogram per label value (an event name, a query name)."""

    __slots__ = ("bounds", "children")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.children: dict[str, Histogram] = {}

    def observe(self, label: str, value: float) -> None:
        child = self.children.get(label)
        if child is None:
            child = self.children[label] = Histogram(self.bounds)
        child.counts[bisect_left(child.bounds, value)] += 1  # `Histogram.observe` inlined: once per event
        child.total += value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """What one node counts. Fields are public so hot paths can add to them directly."""

    __slots__ = (
        "broadcast_receivers",
        "bytes_received",
        "bytes_sent",
        "closed",
        "connect_refusals",
        "connects",
        "db_errors",
        "db_queries",
        "disconnects",
        "event_seconds",
        "opened",
        "packets_received",
        "packets_sent",
        "presence_transitions",
        "pubsub_lag",
        "queue_drops",
        "rate_limited",
        "readers",
        "recoveries",
        "redis_roundtrip",
        "slow_consumers",
        "ws_compression",
    )

    def __init__(self) -> None:
        # per transport ("websocket", "polling"): added to once per read / per flush
        self.packets_received: defaultdict[str, int] = defaultdict(int)
        self.bytes_received: defaultdict[str, int] = defaultdict(int)
        self.packets_sent: defaultdict[str, int] = defaultdict(int)
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)
        #: Engine.IO connections opened, by transport; closed, by reason
        self.opened: defaultdict[str, int] = defaultdict(int)
        self.closed: defaultdict[str, int] = defaultdict(int)
        #: Socket.IO: (namespace,) connected; (namespace, reason) refused / disconnected
        self.connects: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.connect_refusals: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.disconnects: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.broadcast_receivers = Histogram(RECEIVER_BUCKETS)
        self.event_seconds = HistogramFamily(LATENCY_BUCKETS)
        #: packets dropped by a bounded queue ("polling", "connecting", "inbox")
        self.queue_drops: defaultdict[str, int] = defaultdict(int)
        #: connections cut off for not reading fast enough, by transport
        self.slow_consumers: defaultdict[str, int] = defaultdict(int)
        #: WebSocket upgrades that offered permessage-deflate: "negotiated" or "declined"
        self.ws_compression: defaultdict[str, int] = defaultdict(int)
        #: connection state recovery asked for: "hit" (restored) or "miss"
        self.recoveries: defaultdict[str, int] = defaultdict(int)
        self.rate_limited: defaultdict[str, int] = defaultdict(int)
        #: (kind, direction): ("user", "online"), ("study_member", "offline"), ...
        self.presence_transitions: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.db_queries = HistogramFamily(LATENCY_BUCKETS)
        self.db_errors: defaultdict[str, int] = defaultdict(int)
        self.redis_roundtrip = Histogram(LATENCY_BUCKETS)
        self.pubsub_lag = Histogram(LATENCY_BUCKETS)
        #: metric name -> reader, for values their owner keeps (set when the node is wired)
        self.readers: dict[str, Reader] = {}

    # ------------------------------------------------------------------ reports (not per delivery)

    def disconnected(self, namespace: str, reason: str) -> None:
        self.disconnects[namespace, reason] += 1

    def dropped(self, queue: str, packets: int = 1) -> None:
        self.queue_drops[queue] += packets

    def slow_consumer(self, transport: str) -> None:
        self.slow_consumers[transport] += 1

    def refused_by_limit(self, limit: str) -> None:
        self.rate_limited[limit] += 1

    def presence(self, kind: str, direction: str) -> None:
        self.presence_transitions[kind, direction] += 1

    def db_query(self, query: str, seconds: float, *, failed: bool = False) -> None:
        self.db_queries.observe(query, seconds)
        if failed:
            self.db_errors[query] += 1

    def read(self, name: str, reader: Reader) -> None:
        """Export `name` (declared in `METRICS`) from `reader()` at scrape time."""
        if name not in METRICS:
            raise KeyError(f"metric {name!r} is not declared in coup.metrics.METRICS")
        self.readers[name] = reader

    # ------------------------------------------------------------------ export

    def samples(self) -> Iterator[tuple[str, Values | Histogram | HistogramFamily]]:
        """(metric name, its current values) for every declared metric that has some."""
        counted: dict[str, Values | Histogram | HistogramFamily] = {
            "coup_packets_received_total": _one_label(self.packets_received),
            "coup_bytes_received_total": _one_label(self.bytes_received),
            "coup_packets_sent_total": _one_label(self.packets_sent),
            "coup_bytes_sent_total": _one_label(self.bytes_sent),
            "coup_engine_connections_opened_total": _one_label(self.opened),
            "coup_engine_connections_closed_total": _one_label(self.closed),
            "coup_connects_total": self.connects,
            "coup_connect_refusals_total": self.connect_refusals,
            "coup_disconnects_total": self.disconnects,
            "coup_broadcast_receivers": self.broadcast_receivers,
            "coup_event_handler_seconds": self.event_seconds,
            "coup_queue_drops_total": _one_label(self.queue_drops),
            "coup_slow_consumer_cutoffs_total": _one_label(self.slow_consumers),
            "coup_recoveries_total": _one_label(self.recoveries),
            "coup_websocket_compression_total": _one_label(self.ws_compression),
            "coup_rate_limited_total": _one_label(self.rate_limited),
            "coup_presence_transitions_total": self.presence_transitions,
            "coup_db_query_seconds": self.db_queries,
            "coup_db_errors_total": _one_label(self.db_errors),
        }
        if "coup_redis_up" in self.readers:  # a cluster node: it measures Redis
            counted["coup_redis_roundtrip_seconds"] = self.redis_roundtrip
            counted["coup_pubsub_lag_seconds"] = self.pubsub_lag
        for name in METRICS:
            reader = self.readers.get(name)
            if reader is not None:
                yield name, reader()
            elif name in counted:
                yield name, counted[name]

    def totals(self) -> dict[str, float]:
        """A few sums, for views that show rates (the admin UI's dashboard)."""
        return {
            "packetsIn": sum(self.packets_received.values()),
            "packetsOut": sum(self.packets_sent.values()),
            "bytesIn": sum(self.bytes_received.values()),
            "bytesOut": sum(self.bytes_sent.values()),
            "rawConnection": sum(self.opened.values()),
        }


def _one_label(values: Mapping[str, int]) -> Values:
    return {(key,): value for key, value in values.items()}


#: name -> (type, help, label names). The one list of what a node exposes.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "coup_connections": ("gauge", "Socket.IO connections (sockets) now, by namespace and transport",
                         ("namespace", "transport")),
    "coup_engine_sessions": ("gauge", "Engine.IO sessions (client connections) now, by transport", ("transport",)),
    "coup_rooms": ("gauge", "Rooms with a member on this node, by namespace", ("namespace",)),
    "coup_engine_connections_opened_total": ("counter", "Engine.IO connections opened, by first transport",
                                             ("transport",)),
    "coup_engine_connections_closed_total": ("counter", "Engine.IO connections closed, by reason", ("reason",)),
    "coup_connects_total": ("counter", "Sockets connected to a namespace", ("namespace",)),
    "coup_connect_refusals_total": ("counter", "Namespace connections refused, by reason",
                                    ("namespace", "reason")),
    "coup_disconnects_total": ("counter", "Sockets disconnected, by namespace and reason", ("namespace", "reason")),
    "coup_packets_received_total": ("counter", "Engine.IO packets received, by transport", ("transport",)),
    "coup_bytes_received_total": ("counter", "Bytes received from clients, by transport", ("transport",)),
    "coup_packets_sent_total": ("counter", "Engine.IO packets sent, by transport", ("transport",)),
    "coup_bytes_sent_total": ("counter", "Bytes sent to clients, by transport", ("transport",)),
    "coup_broadcast_receivers": ("histogram", "Receivers on this node of one broadcast", ()),
    "coup_event_handler_seconds": ("histogram", "Time to handle one client event, by event", ("event",)),
    "coup_queue_drops_total": ("counter", "Packets dropped by a bounded queue, by queue", ("queue",)),
    "coup_slow_consumer_cutoffs_total": ("counter", "Connections closed for not reading fast enough",
                                         ("transport",)),
    "coup_websocket_compression_total": ("counter", "WebSocket upgrades offering permessage-deflate, by result: "
                                         "negotiated, declined (off, or no offer we accept)", ("result",)),
    "coup_recoveries_total": ("counter", "Connection state recoveries asked for, by result", ("result",)),
    "coup_rate_limited_total": ("counter", "Requests refused or dropped by a rate limit, by limit", ("limit",)),
    "coup_room_commands_total": ("counter", "Room commands by where they ran: local (we own the room), routed "
                                 "(to the owner node), fallback (owner unreachable, run here), served (for "
                                 "another node)", ("where",)),
    "coup_room_command_timeouts_total": ("counter", "Room commands whose owner node did not answer in time", ()),
    "coup_redis_up": ("gauge", "1 when the Redis link is up and subscribed", ()),
    "coup_redis_roundtrip_seconds": ("histogram", "Redis round trip of the self-probe PUBLISH", ()),
    "coup_pubsub_lag_seconds": ("histogram", "From publishing the self-probe to hearing it back on the "
                                "subscription", ()),
    "coup_redis_errors_total": ("counter", "Redis trouble, by kind: publish_failed (message dropped), "
                                "reconnects, deaf_repairs", ("kind",)),
    "coup_redis_publishes_total": ("counter", "PUBLISH commands sent (one may carry several messages)", ()),
    "coup_redis_messages_total": ("counter", "Cluster messages, by direction", ("direction",)),
    "coup_relayed_requests_total": ("counter", "HTTP requests for another node's session carried through Redis: "
                                    "relayed (sent from here), served (for another node)", ("direction",)),
    "coup_session_moves_total": ("counter", "Sessions moved between nodes on upgrade: moved_in, moved_out, "
                                 "move_failed", ("result",)),
    "coup_session_failures_total": ("counter", "Sessions that could not be served (mis-routed, moved, relayed), by "
                                    "reason", ("reason",)),
    "coup_cluster_nodes": ("gauge", "Live nodes on this node's ring", ()),
    "coup_ring_epoch": ("gauge", "Membership version of this node's ring", ()),
    "coup_db_query_seconds": ("histogram", "Database query time on a database thread, by query", ("query",)),
    "coup_db_errors_total": ("counter", "Database queries that raised, by query", ("query",)),
    "coup_presence_transitions_total": ("counter", "Presence transitions, by kind and direction",
                                        ("kind", "direction")),
}


class MetricsExport:
    """`Metrics` as prometheus_client sees it: a collector in a registry of the node's own.

    A registry per node (not prometheus_client's global one): tests run several nodes in one
    process, and each must expose only its own counts. Process metrics (CPU, memory, open
    files) come with it.
    """

    def __init__(self, metrics: Metrics) -> None:
        from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

        self.metrics = metrics
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for name, values in self.metrics.samples():
            kind, help_text, labels = METRICS[name]
            if kind == "histogram":
                family = HistogramMetricFamily(name, help_text, labels=labels)
                children = values.children if isinstance(values, HistogramFamily) else {"": values}
                for label, histogram in sorted(children.items()):
                    assert isinstance(histogram, Histogram)
                    family.add_metric([label] if labels else [], histogram.cumulative(), histogram.total)
                yield family
                continue
            assert isinstance(values, Mapping)
            base = name[:-6] if kind == "counter" and name.endswith("_total") else name
            metric: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(base, help_text, labels=labels) if kind == "counter"
                else GaugeMetricFamily(name, help_text, labels=labels))
            for label_values, value in sorted(values.items()):
                metric.add_metric(list(label_values), value)
            yield metric

    def text(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


__all__ = ["METRICS", "Histogram", "HistogramFamily", "Metrics", "MetricsExport"]
