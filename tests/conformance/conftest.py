"""The conformance server in-process on a free port, and an HTTP/WebSocket client session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from tornado.testing import bind_unused_port

from tests.conformance.client import Polling
from tests.conformance.server import ConformanceServer


class Running:
    def __init__(self, server: ConformanceServer, port: int, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.port = port
        self.http = http

    def engineio(self) -> Polling:
        """A client of the Engine.IO-only echo endpoint (/engine.io/)."""
        return Polling(self.http, self.port, "engine.io")

    def socketio(self) -> Polling:
        """A client of the Socket.IO endpoint (/socket.io/)."""
        return Polling(self.http, self.port, "socket.io")


@pytest_asyncio.fixture
async def conformance() -> AsyncIterator[Running]:
    sock, port = bind_unused_port()
    server = ConformanceServer()
    await server.start([sock])
    try:
        async with aiohttp.ClientSession() as http:
            yield Running(server, port, http)
    finally:
        await server.stop()
