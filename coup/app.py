"""Assemble one node: Engine.IO + Socket.IO + HTTP routes on a Tornado application."""

from __future__ import annotations

import importlib
import inspect
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, StaticFileHandler

from coup.config import Settings
from coup.core.options import RecoveryOptions, ServerOptions
from coup.core.server import SocketServer
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.transports.origins import OriginPolicy
from coup.transports.routing import engine_rules

if TYPE_CHECKING:
    from coup.cluster import Cluster

log = logging.getLogger(__name__)

#: a readiness check: True when that part of the node can serve (sync or async)
ReadyCheck = Callable[[], bool | Awaitable[bool]]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SOCKET_IO_PATH = "/socket.io/"


class HealthHandler(RequestHandler):
    """``GET /healthz``: the process is up and its loop answers."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok"})


class ReadyHandler(RequestHandler):
    """``GET /readyz``: 200 when every readiness check passes, else 503 naming the failing ones."""

    def initialize(self, checks: dict[str, ReadyCheck]) -> None:
        self.checks = checks

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        failing = []
        for name, check in self.checks.items():
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if not result:
                failing.append(name)
        if failing:
            self.set_status(503)
            self.finish({"status": "not ready", "failing": failing})
        else:
            self.finish({"status": "ready"})


def _public_address(settings: Settings, sock: socket.socket) -> str:
    """How other nodes reach this one: COUP_PUBLIC_ADDRESS, else the bound address."""
    if settings.public_address:
        return settings.public_address
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CoupNode:
    """Everything one process serves. Build it inside the running event loop."""

    def __init__(self, settings: Settings, *, extra_rules: Sequence[Any] = ()) -> None:
        self.settings = settings
        self.origins = OriginPolicy(settings.allowed_origins)
        node_id = settings.node_id or secrets.token_hex(4)
        #: with REDIS_URL: the Redis-backed adapter, presence and room router (coup.cluster)
        self.cluster: Cluster | None = None
        if settings.redis_url:
            from coup.cluster import Cluster, ClusterOptions

            self.cluster = Cluster(settings.redis_url, node_id, ClusterOptions(prefix=settings.redis_prefix))
        self.engine = EngineServer(EngineOptions(
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_payload=settings.max_payload,
            sid_prefix=self.cluster.sid_prefix if self.cluster else "",
        ))
        recovery = RecoveryOptions(max_disconnection_duration=settings.recovery_window) \
            if settings.recovery_window > 0 else None
        cluster_parts: dict[str, Any] = {}
        if self.cluster is not None:
            cluster_parts = {"adapter_factory": self.cluster.adapter_factory, "presence": self.cluster.presence,
                             "rooms": self.cluster.rooms}
        self.sio = SocketServer(self.engine, ServerOptions(recovery=recovery), node_id=node_id, **cluster_parts)
        self.extra_rules: list[Any] = list(extra_rules)
        #: what ``/readyz`` checks; parts add theirs (the cluster: its Redis link)
        self.ready_checks: dict[str, ReadyCheck] = {}
        self._front_rules: list[Any] = []
        if self.cluster is not None:
            from coup.cluster.http import cluster_rules

            self.cluster.bind(self.sio)
            cluster = self.cluster
            self.ready_checks["redis"] = lambda: cluster.ready
            front, api = cluster_rules(cluster, SOCKET_IO_PATH, settings.service_token)
            self._front_rules += front
            self.extra_rules += api
        self.http_server: HTTPServer | None = None
        for name in settings.plugins:
            importlib.import_module(name).setup(self)

    def application(self) -> Application:
        static = Path(self.settings.static_dir) if self.settings.static_dir else STATIC_DIR
        rules: list[Any] = [
            *self._front_rules,
            *engine_rules(SOCKET_IO_PATH, self.engine, self.origins),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"checks": self.ready_checks}),
            *self.extra_rules,
            (r"/(.*)", StaticFileHandler, {"path": str(static), "default_filename": "index.html"}),
        ]
        return Application(rules)

    async def start(self, sockets: list[socket.socket] | None = None) -> HTTPServer:
        """Start serving on `sockets`, or on the configured host and port."""
        if sockets is None:
            sockets = bind_sockets(self.settings.port, self.settings.host)
        if self.cluster is not None:
            await self.cluster.start(_public_address(self.settings, sockets[0]))
        await self.sio.start()
        server = HTTPServer(self.application(), xheaders=True,
                            max_body_size=self.settings.max_payload + 64 * 1024)
        server.add_sockets(sockets)
        self.http_server = server
        return server

    async def stop(self) -> None:
        if self.http_server is not None:
            self.http_server.stop()
        await self.sio.close()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.http_server is not None:
            await self.http_server.close_all_connections()
            self.http_server = None
