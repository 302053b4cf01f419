"""The conformance server in-process on a free port, and an HTTP/WebSocket client session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from tornado.testing import bind_unused_port

from tests.conformance.client import Polling, Reply
from tests.conformance.server import ConformanceServer
from tests.waiting import eventually


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

    async def held_get(self, client: Polling) -> asyncio.Task[Reply]:
        """A GET of the echo endpoint's `client` that the server holds (it has nothing to send yet)."""
        get = asyncio.create_task(client.get())
        session = self.server.echo.sessions[client.sid]
        await eventually(lambda: getattr(session.transport, "waiting", False), "the GET waits at the server")
        return get


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
