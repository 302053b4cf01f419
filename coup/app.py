"""Assemble one node: Engine.IO + Socket.IO + HTTP routes on a Tornado application."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, StaticFileHandler

from coup.config import Settings
from coup.core.options import RecoveryOptions, ServerOptions
from coup.core.server import SocketServer
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.transports.front_door import FrontDoor
from coup.transports.origins import OriginPolicy
from coup.transports.routing import engine_rules

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SOCKET_IO_PATH = "/socket.io/"


class HealthHandler(RequestHandler):
    """``GET /healthz``: the process is up and its loop answers."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok"})


class CoupNode:
    """Everything one process serves. Build it inside the running event loop."""

    def __init__(self, settings: Settings, *, extra_rules: Sequence[Any] = (), front_door: bool = True) -> None:
        self.settings = settings
        #: accept connections through `FrontDoor` (fast WebSocket upgrades); False: Tornado only
        self.front_door = front_door
        self._listeners: list[asyncio.base_events.Server] = []
        self.origins = OriginPolicy(settings.allowed_origins)
        self.engine = EngineServer(EngineOptions(
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_payload=settings.max_payload,
        ))
        recovery = RecoveryOptions(max_disconnection_duration=settings.recovery_window) \
            if settings.recovery_window > 0 else None
        self.sio = SocketServer(self.engine, ServerOptions(recovery=recovery), node_id=settings.node_id)
        self.extra_rules: list[Any] = list(extra_rules)
        self.http_server: HTTPServer | None = None

    def application(self) -> Application:
        static = Path(self.settings.static_dir) if self.settings.static_dir else STATIC_DIR
        rules: list[Any] = [
            *engine_rules(SOCKET_IO_PATH, self.engine, self.origins),
            (r"/healthz", HealthHandler),
            *self.extra_rules,
            (r"/(.*)", StaticFileHandler, {"path": str(static), "default_filename": "index.html"}),
        ]
        return Application(rules)

    async def start(self, sockets: list[socket.socket] | None = None) -> HTTPServer:
        """Start serving on `sockets`, or on the configured host and port."""
        await self.sio.start()
        server = HTTPServer(self.application(), xheaders=True,
                            max_body_size=self.settings.max_payload + 64 * 1024)
        if sockets is None:
            sockets = bind_sockets(self.settings.port, self.settings.host)
        if self.front_door:
            door = FrontDoor(self.engine, self.origins, server, SOCKET_IO_PATH, xheaders=True)
            self._listeners = await door.serve(sockets)
        else:
            server.add_sockets(sockets)
        self.http_server = server
        return server

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        if self.http_server is not None:
            self.http_server.stop()
        await self.sio.close()
        if self.http_server is not None:
            await self.http_server.close_all_connections()
            self.http_server = None
