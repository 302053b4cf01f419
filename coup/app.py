"""Assemble one node: Engine.IO + Socket.IO + HTTP routes on a Tornado application."""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from coup.config import Settings
from coup.core.options import RecoveryOptions, ServerOptions
from coup.core.presence import MemoryPresence
from coup.core.server import SocketServer
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.logs import AccessLog
from coup.metrics import Metrics, MetricsExport, Values
from coup.transports.arrival import ArrivalHTTPServer
from coup.transports.front_door import FrontDoor
from coup.transports.metrics import metrics_application, metrics_rule
from coup.transports.origins import OriginPolicy
from coup.transports.proxies import TrustedProxies
from coup.transports.routing import engine_rules
from coup.transports.sockjs import SockJSEndpoint
from coup.transports.sockjs.door import SockJSDoor
from coup.transports.static import PageFileHandler, SecurityHeaders
from coup.transports.websocket import native_unmask

if TYPE_CHECKING:
    from coup.admin import AdminView
    from coup.cluster.node import Cluster
    from coup.domain.sequence import SequenceSource
    from coup.domain.service import CoupDomain

log = logging.getLogger(__name__)


def _static_dir() -> Path:
    """The demo page: shipped inside the package by a wheel (see setup.py), else the checkout's."""
    packaged = Path(__file__).resolve().parent / "static"
    return packaged if packaged.is_dir() else packaged.parent.parent / "static"


STATIC_DIR = _static_dir()
SOCKET_IO_PATH = "/socket.io/"
#: SockJS clients (restrictive proxies) reach the same core here; see coup.transports.sockjs
SOCKJS_PATH = "/sockjs"
#: how long a drain waits for polling clients to fetch their last packets once every
#: connection was closed: a live one has its GET outstanding or re-polls within a round
#: trip; one silent that long is gone (its router stopped, its laptop shut), its session is
#: saved for recovery already, and waiting for its ping timeout (20 s) only delays the exit
LAST_FETCH_WAIT = 2.0


class HealthHandler(RequestHandler):
    """``GET /healthz``: the process is up and its loop answers."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok"})


#: a readiness check for ``GET /readyz``: True when the part it checks can serve
ReadinessCheck = Callable[[], Awaitable[bool]]


class NodeService(Protocol):
    """A part of the node with its own lifecycle (the CoUp domain, a cluster)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ReadyHandler(RequestHandler):
    """``GET /readyz``: 200 when every readiness check passes (database reachable, ...), else 503."""

    def initialize(self, checks: dict[str, ReadinessCheck]) -> None:
        self.checks = checks

    async def get(self) -> None:
        names = list(self.checks)
        results = await asyncio.gather(*(self.checks[n]() for n in names), return_exceptions=True)
        checks = {name: result is True for name, result in zip(names, results, strict=True)}
        ready = all(checks.values())
        self.set_header("Cache-Control", "no-store")
        self.set_status(200 if ready else 503)
        self.finish({"status": "ready" if ready else "not ready", "checks": checks})


def _public_address(settings: Settings, sock: socket.socket) -> str:
    """How other nodes reach this one: COUP_PUBLIC_ADDRESS, else the bound address.

    Bound to every interface, the node takes the address of the interface that leads to
    Redis: the other nodes reach Redis, so they are most likely on that network too.
    """
    if settings.public_address:
        return settings.public_address
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::", ""):
        host = _interface_towards(settings.redis_url) or socket.gethostbyname(socket.gethostname())
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _interface_towards(url: str | None) -> str | None:
    from coup.redis_endpoint import redis_endpoint

    endpoint = redis_endpoint(url) if url else None
    if endpoint is None or endpoint.path is not None:
        return None
    # the sentinels' or the cluster's network
    seeds = endpoint.sentinels or endpoint.cluster_seeds
    target = seeds[0][0] if seeds else endpoint.host
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))  # a UDP connect only picks a route; nothing is sent
            return str(probe.getsockname()[0])
    except OSError:
        return None


class CoupNode:
    """Everything one process serves. Build it inside the running event loop."""

    def __init__(self, settings: Settings, *, extra_rules: Sequence[Any] = (), front_door: bool = True) -> None:
        self.settings = settings
        #: accept connections through `FrontDoor` (fast WebSocket upgrades); False: Tornado only
        self.front_door = front_door
        self._listeners: list[asyncio.base_events.Server] = []
        self.origins = OriginPolicy(settings.allowed_origins)
        self.proxies = TrustedProxies(settings.trusted_proxies)
        #: what every layer counts, when anything reads it (`/metrics`, the admin view)
        self.metrics: Metrics | None = Metrics() if settings.counts_metrics else None
        #: the port `/metrics` is served on without a token (COUP_METRICS_PORT), once started
        self.metrics_port: int | None = None
        self._metrics_server: HTTPServer | None = None
        self._export: MetricsExport | None = None
        self._stats_reporter: NodeService | None = None
        node_id = settings.node_id or secrets.token_hex(4)
        #: with REDIS_URL: the Redis-backed adapter, presence and room router (coup.cluster)
        self.cluster: Cluster | None = None
        if settings.redis_url:
            from coup.cluster.node import Cluster
            from coup.cluster.options import ClusterOptions

            options = ClusterOptions(prefix=settings.redis_prefix, presence_grace=settings.presence_grace,
                                     room_leases=settings.room_leases, log_groups=settings.recovery_log_groups,
                                     request_timeout=settings.request_timeout)
            self.cluster = Cluster(settings.redis_url, node_id, options)
        self.engine = EngineServer(EngineOptions(
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_payload=settings.max_payload,
            ws_compression=settings.ws_compression,
            ws_compression_threshold=settings.ws_compression_threshold,
            sid_prefix=self.cluster.sid_prefix if self.cluster else "",
            ws_unmask=native_unmask(),
        ), metrics=self.metrics)
        recovery = RecoveryOptions(max_disconnection_duration=settings.recovery_window,
                                   max_bytes=settings.recovery_max_bytes) if settings.recovery_window > 0 else None
        cluster_parts: dict[str, Any] = {"presence": MemoryPresence(settings.presence_grace)}
        if self.cluster is not None:
            cluster_parts = {"adapter_factory": self.cluster.adapter_factory, "presence": self.cluster.presence,
                             "rooms": self.cluster.rooms}
        self.sio = SocketServer(self.engine, ServerOptions(
            recovery=recovery, max_connections_per_address=settings.max_connections_per_address),
            node_id=node_id, **cluster_parts)
        self.extra_rules: list[Any] = list(extra_rules)
        #: routes matched before the Engine.IO ones (the cluster forwards other nodes' sessions)
        self._front_rules: list[Any] = []
        self.http_server: HTTPServer | None = None
        #: accepts the connections (when `front_door`); serves WebSocket upgrades and polling itself
        self._front_door: FrontDoor | None = None
        #: built by `application()`, inside the running loop (sockjs-tornado needs that)
        self.sockjs: SockJSEndpoint | None = None
        #: started (in order) before the Socket.IO server, stopped after it
        self.services: list[NodeService] = []
        #: the CoUp domain, when installed (`coup_node`)
        self.domain: CoupDomain | None = None
        self.readiness: dict[str, ReadinessCheck] = {}
        #: on its way out (`drain`): /readyz answers 503, no new session starts here
        self.draining = False

        async def serving() -> bool:
            return not self.draining

        self.readiness["serving"] = serving
        #: the Socket.IO Admin UI's `/admin` namespace, when COUP_ADMIN_USER is set
        self.admin: AdminView | None = None
        if self.cluster is not None:
            self._install_cluster(self.cluster)
        if self.metrics is not None:
            self._export_metrics(self.metrics)
        if settings.admin_user is not None and settings.admin_password_hash is not None:
            from coup.admin import AdminView

            self.admin = AdminView(self.sio, settings.admin_user, settings.admin_password_hash.reveal(),
                                   readonly=settings.admin_readonly, metrics=self.metrics)
            self.services.append(self.admin)
        for name in settings.plugins:
            importlib.import_module(name).setup(self)

    def _install_cluster(self, cluster: Cluster) -> None:
        from coup.cluster.http import cluster_rules

        cluster.bind(self.sio)
        self.engine.adopter = cluster.moves  # an upgrade that lands here takes its session over

        async def linked() -> bool:
            return cluster.ready

        self.readiness["redis"] = linked
        from coup.cluster.status import StatsReporter

        #: this node's connection counts in Redis, for `coup status`
        self._stats_reporter = StatsReporter(cluster.redis, cluster.node_id, cluster.options,
                                             self.connection_report)
        if self.metrics is not None:
            from coup.cluster.metrics import export_cluster_metrics

            export_cluster_metrics(cluster, self.metrics)
        front, api = cluster_rules(cluster, self.engine, SOCKET_IO_PATH, SOCKJS_PATH, self.settings.service_token)
        self._front_rules += front
        self.extra_rules += api

    def connection_report(self) -> dict[str, Any]:
        """Connections by transport and sockets by namespace, now."""
        connections: dict[str, int] = {}
        for session in self.engine.sessions.values():
            connections[session.transport.name] = connections.get(session.transport.name, 0) + 1
        return {"connections": connections,
                "sockets": {nsp.name: len(nsp.sockets) for nsp in self.sio.namespaces.values()}}

    def _export_metrics(self, metrics: Metrics) -> None:
        """Values the node keeps anyway, read when scraped: nothing is counted twice."""
        transports = (*self.engine.options.transports, "sockjs")

        def sessions() -> Values:
            counts: dict[tuple[str, ...], float] = {(t,): 0 for t in transports}
            for session in self.engine.sessions.values():
                counts[(session.transport.name,)] = counts.get((session.transport.name,), 0) + 1
            return counts

        def connections() -> Values:
            counts: defaultdict[tuple[str, ...], float] = defaultdict(float)
            for nsp in self.sio.namespaces.values():
                for transport in transports:
                    counts[nsp.name, transport] += 0
                for sock in nsp.sockets.values():
                    counts[nsp.name, sock.session.transport.name] += 1
            return counts

        def rooms() -> Values:
            counts: dict[tuple[str, ...], float] = {}
            for nsp in self.sio.namespaces.values():
                local = nsp.adapter.local  # a socket's own room is not counted
                counts[(nsp.name,)] = sum(1 for room in local.rooms if room not in local.sids)
            return counts

        def room_commands() -> Values:
            stats = self.sio.rooms.stats
            names = {"local": "local", "remote": "routed", "fallback": "fallback", "served": "served"}
            return {(label,): stats[key] for key, label in names.items() if key in stats}

        metrics.read("coup_engine_sessions", sessions)
        metrics.read("coup_connections", connections)
        metrics.read("coup_rooms", rooms)
        metrics.read("coup_room_commands_total", room_commands)
        metrics.read("coup_room_command_timeouts_total", lambda: {(): self.sio.rooms.stats.get("timeout", 0)})

    def application(self) -> Application:
        static = Path(self.settings.static_dir) if self.settings.static_dir else STATIC_DIR
        if self.sockjs is None:
            self.sockjs = SockJSEndpoint(self.engine, self.origins, SOCKJS_PATH,
                                         max_message_size=self.settings.max_payload)
            if self.cluster is not None:
                router = self.sockjs.router
                self.cluster.sockjs_homes.is_local = lambda session: router.get_session(session) is not None
        rules: list[Any] = [
            *self._front_rules,
            *engine_rules(SOCKET_IO_PATH, self.engine, self.origins),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"checks": self.readiness}),
            *self.sockjs.rules,
            *self.extra_rules,
        ]
        if self.metrics is not None and self.settings.metrics_token is not None:
            rules.append(metrics_rule(self.metrics_export(), self.settings.metrics_token.reveal()))
        rules.append((r"/(.*)", PageFileHandler, {"path": str(static), "default_filename": "index.html"}))
        app = Application(rules, log_function=self.access_log())
        app.add_transform(SecurityHeaders)
        return app

    def access_log(self) -> AccessLog:
        """API calls and pages at INFO; transport requests (each long-poll) and probes at DEBUG."""
        return AccessLog((SOCKET_IO_PATH, SOCKJS_PATH), ("/healthz", "/readyz", "/metrics"))

    def metrics_export(self) -> MetricsExport:
        assert self.metrics is not None
        if self._export is None:
            self._export = MetricsExport(self.metrics)
        return self._export

    async def start(self, sockets: list[socket.socket] | None = None) -> HTTPServer:
        """Start serving on `sockets`, or on the configured host and port."""
        if sockets is None:
            sockets = bind_sockets(self.settings.port, self.settings.host, backlog=self.settings.listen_backlog)
        if self.cluster is not None:
            await self.cluster.start(_public_address(self.settings, sockets[0]))
            if self._stats_reporter is not None:
                await self._stats_reporter.start()
        for service in self.services:
            await service.start()
        await self.sio.start()
        # Tornado has one limit for an idle keep-alive connection and its next request head
        # (idle_connection_timeout), so a connection handed on to it gets the longer of the
        # two; a body must be in within body_timeout of its head, or the connection is closed
        application = self.application()
        if self.cluster is not None:  # relayed requests run through the same routes
            self.cluster.tunnel.bind(application, self.origins)
        server = ArrivalHTTPServer(application, xheaders=False,
                                   max_body_size=self.settings.max_payload + 64 * 1024,
                                   idle_connection_timeout=max(self.settings.head_timeout,
                                                               self.settings.keepalive_timeout),
                                   body_timeout=self.settings.body_timeout)
        server.proxies = self.proxies
        if self.front_door:
            access = self.access_log()
            assert self.sockjs is not None
            sockjs = SockJSDoor(self.sockjs.router, self.proxies, access, creates=self.cluster is None,
                                max_buffer=self.engine.options.max_buffered_bytes, metrics=self.metrics)
            door = FrontDoor(self.engine, self.origins, server, SOCKET_IO_PATH, proxies=self.proxies,
                             head_timeout=self.settings.head_timeout, body_timeout=self.settings.body_timeout,
                             keepalive_timeout=self.settings.keepalive_timeout,
                             access=access, sockjs=sockjs)
            self._front_door = door
            self._listeners = await door.serve(sockets, backlog=self.settings.listen_backlog)
        else:
            for sock in sockets:
                sock.listen(self.settings.listen_backlog)  # sockets passed in keep their owner's backlog otherwise
            server.add_sockets(sockets)
        self.http_server = server
        if self.metrics is not None and self.settings.metrics_port is not None:
            metric_sockets = bind_sockets(self.settings.metrics_port, self.settings.host)
            self._metrics_server = HTTPServer(metrics_application(self.metrics_export(),
                                                                  log_function=self.access_log()))
            self._metrics_server.add_sockets(metric_sockets)
            self.metrics_port = metric_sockets[0].getsockname()[1]
        return server

    async def drain(self) -> float:
        """Leave without losing what a client was told, and without a presence flap (SIGTERM).

        In order: /readyz answers 503 and handshakes get 503 (the router and the clients'
        reconnection go elsewhere); the others own our rooms from now on; the room commands
        we took finish; every session is saved for recovery on any node; every connection is
        closed once its handlers have sent their acks, spread over COUP_DRAIN_SPREAD seconds,
        so its client reconnects elsewhere and recovers its session there; polling clients
        fetch their last packets; a dropped user who is not back within the presence grace is
        announced offline. All within COUP_DRAIN_TIMEOUT seconds. Returns the seconds it
        took. `stop()` comes next.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.drain_timeout

        def left() -> float:
            return max(0.0, deadline - loop.time())

        self.draining = True
        self.engine.draining = True
        log.info("draining: %d connections to close over %.1f s (at most %.0f s in all)",
                 len(self.engine.sessions), self.settings.drain_spread, self.settings.drain_timeout)
        if self.cluster is not None:
            await self.cluster.drain(left())
        for nsp in list(self.sio.namespaces.values()):  # every session restorable on any node from now
            try:
                async with asyncio.timeout(left()):
                    await nsp.adapter.persist_sockets()
            except Exception as exc:
                log.warning("draining: sessions of %s not all saved for recovery (%r)", nsp.name, exc)
        closed = await self.sio.drain_clients(min(self.settings.drain_spread, left()), deadline)
        fetched_by = min(deadline, loop.time() + LAST_FETCH_WAIT)
        while self.engine.sessions:  # polling clients fetch their last packets
            if loop.time() >= fetched_by:
                break
            await asyncio.sleep(0.02)
        if self.engine.sessions:
            log.info("draining: %d polling clients did not fetch their last packets (gone?)",
                     len(self.engine.sessions))
        await self.sio.wait_tasks(left())  # disconnect handlers, sessions kept for recovery
        # the grace of the dropped sockets runs out and their offline is announced to the users
        # on the other nodes; alone, nobody is left to hear it (every client here was closed)
        if self.cluster is not None and not await self.sio.presence.settle(left()):
            log.warning("draining: presence grace not over in time; leaving reports the rest offline")
        took = loop.time() - started
        log.info("drained in %.2f s: %d connections closed, %d sessions left", took, closed,
                 len(self.engine.sessions))
        return took

    async def stop(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            await self._metrics_server.close_all_connections()
            self._metrics_server = None
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        if self.http_server is not None:
            self.http_server.stop()
        await self.sio.close()
        if self.sockjs is not None:
            self.sockjs.close()
        if self.cluster is not None:  # before the services: its leave may announce users offline
            if self._stats_reporter is not None:
                await self._stats_reporter.stop()
            await self.cluster.stop()
        if self._front_door is not None:
            self._front_door.close_idle()
        if self.http_server is not None:
            await self.http_server.close_all_connections()
            self.http_server = None
        for service in reversed(self.services):
            await service.stop()


def coup_node(settings: Settings, *, sequence: SequenceSource | None = None, **kwargs: Any) -> CoupNode:
    """The CoUp server: a node with the CoUp domain (auth, events, models, HTTP API) installed.

    `sequence`: where per-study message numbers come from (default: the database).
    """
    from coup.domain.service import CoupDomain

    node = CoupNode(settings, **kwargs)
    if sequence is None and node.cluster is not None:
        from coup.domain import queries

        async def stored_max(study_id: int) -> int:
            return await domain.db.run(queries.max_seq, study_id)

        # numbers live in Redis, so a study's numbering survives a change of owner node
        sequence = node.cluster.counter("study", stored_max)
    domain = CoupDomain(node.sio, settings, origin_allowed=node.origins.allows, sequence=sequence)
    node.domain = domain
    node.services.append(domain)
    node.extra_rules.extend(domain.http_rules())
    node.readiness["database"] = domain.ready
    return node
