"""Fixtures for tests that drive real clients (python-socketio and npm socket.io-client)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from coup.app import CoupNode
from coup.core.namespace import Namespace
from coup.core.socket import Socket
from tests.clients.jsclient import JsClient, node_available
from tests.clients.realclients import TRANSPORTS, NodeClient, PyClient, RealClient
from tests.clients.records import RecordLog
from tests.conftest import NodeStarter, RunningNode, require
from tests.waiting import eventually

CLIENT_KINDS = ("python", "node")


def install_handlers(node: CoupNode, log: RecordLog) -> None:
    """The test application: echo, rooms, per-namespace identity; lifecycle goes to `log`."""

    def echo(socket: Socket, args: list[Any]) -> tuple[Any, ...]:
        return tuple(args)

    def whoami(socket: Socket, args: list[Any]) -> dict[str, str]:
        return {"namespace": socket.nsp.name, "sid": socket.id}

    async def join(socket: Socket, args: list[Any]) -> list[str]:
        await socket.join(args[0])
        return sorted(socket.rooms - {socket.id})

    def shout(socket: Socket, args: list[Any]) -> None:
        """Tell a room, except the sender."""
        socket.to(args[0]).emit("shout", *args[1:])

    for nsp in (node.sio.main, node.sio.of("/custom")):
        nsp.on("echo", echo)
        nsp.on("whoami", whoami)
        nsp.on("join", join)
        nsp.on("shout", shout)
        _log_lifecycle(nsp, log)


def _log_lifecycle(nsp: Namespace, log: RecordLog) -> None:
    async def on_connect(socket: Socket) -> None:
        log.add({"type": "connect", "socket": nsp.name, "sid": socket.id, "recovered": socket.recovered})

    async def on_disconnect(socket: Socket, reason: str) -> None:
        log.add({"type": "disconnect", "socket": nsp.name, "sid": socket.id, "reason": reason})

    nsp.on_connect(on_connect)
    nsp.on_disconnect(on_disconnect)


@dataclass
class App:
    """A running node with the test application, and what its namespaces went through."""

    running: RunningNode
    log: RecordLog

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def node(self) -> CoupNode:
        return self.running.node

    @property
    def main(self) -> Namespace:
        return self.node.sio.main

    def socket(self, sid: str, namespace: str = "/") -> Socket:
        return self.node.sio.of(namespace).sockets[sid]


AppStarter = Callable[..., Awaitable[App]]


@pytest_asyncio.fixture
async def start_app(node_factory: NodeStarter) -> AppStarter:
    """``await start_app(port=None, **settings)``: a node serving the test application."""

    async def start(port: int | None = None, **overrides: object) -> App:
        log = RecordLog()
        running = await node_factory(port, setup=lambda node: install_handlers(node, log), **overrides)
        return App(running, log)

    return start


@pytest_asyncio.fixture
async def app(start_app: AppStarter) -> App:
    return await start_app()


@pytest.fixture(params=CLIENT_KINDS)
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(TRANSPORTS))
def transport_mode(request: pytest.FixtureRequest) -> str:
    """websocket only, polling only, or polling upgraded to websocket."""
    return str(request.param)


#: the `make_client` fixture: ``client = await make_client()``
MakeClient = Callable[[], Awaitable[RealClient]]


@pytest_asyncio.fixture
async def make_client(client_kind: str) -> AsyncIterator[MakeClient]:
    """``client = await make_client()``: a real client of the parametrized kind, not yet open."""
    if client_kind == "node":
        require(node_available(), "node with tests/js/node_modules (npm ci in tests/js)")
    made: list[RealClient] = []

    async def make() -> RealClient:
        client: RealClient = PyClient() if client_kind == "python" else NodeClient(await JsClient.start())
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


async def check_transport(client: RealClient, app: App, sid: str, mode: str) -> None:
    """The connection really uses the transport the test is about, on both ends."""
    session = app.socket(sid).session
    if mode == "upgrade":
        await eventually(lambda: session.upgraded, "the polling session upgraded to websocket")
        assert session.transport.name == "websocket"
        assert await client.transport() == "websocket"
    else:
        assert session.transport.name == mode
        assert not session.upgraded
        assert await client.transport() == mode
