"""A Socket.IO server on a free loopback port, built with exactly the options a test needs.

`CoupNode` takes its settings from the environment model; engine and core tests need knobs
it does not expose (outbound buffer limit, connect timeout, recovery buffer size), so they
assemble the same parts here: EngineServer + SocketServer + the transports' routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from coup.core.adapter import MemoryAdapter
from coup.core.options import ServerOptions
from coup.core.server import AdapterFactory, SocketServer
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.transports.origins import OriginPolicy
from coup.transports.routing import engine_rules
from tests.wsclient import RawWebSocket

WS_PATH = "/socket.io/?EIO=4&transport=websocket"
POLLING_PATH = "/socket.io/?EIO=4&transport=polling"


@dataclass
class RunningServer:
    engine: EngineServer
    sio: SocketServer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def websocket(self, path: str = WS_PATH, *, origin: str | None = None,
                        receive_buffer: int | None = None, extensions: str | None = None) -> RawWebSocket:
        return await RawWebSocket.connect(self.port, path, origin=origin, receive_buffer=receive_buffer,
                                          extensions=extensions)


@asynccontextmanager
async def serve(engine_options: EngineOptions | None = None, server_options: ServerOptions | None = None, *,
                origins: Sequence[str] = (), adapter_factory: AdapterFactory = MemoryAdapter,
                ) -> AsyncIterator[RunningServer]:
    """Start a server (recovery off unless `server_options` turns it on); stop it afterwards."""
    engine = EngineServer(engine_options or EngineOptions())
    sio = SocketServer(engine, server_options or ServerOptions(), adapter_factory=adapter_factory)
    sock, port = bind_unused_port()
    http = HTTPServer(Application(engine_rules("/socket.io/", engine, OriginPolicy(origins))))
    http.add_sockets([sock])
    await sio.start()
    try:
        yield RunningServer(engine, sio, port)
    finally:
        http.stop()
        await sio.close()
        await http.close_all_connections()
