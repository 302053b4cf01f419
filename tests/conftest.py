"""Shared fixtures: a real node on a free loopback port, real clients."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from tornado.netutil import bind_sockets
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from coup.config import Settings

#: in CI every optional tool (redis-server, node, chromium, PostgreSQL) must be present:
#: a missing one fails the run instead of skipping tests
REQUIRE_ALL = os.environ.get("COUP_REQUIRE_ALL") == "1"


def require(condition: bool, what: str) -> None:
    """Skip locally when a tool is missing; fail in CI (COUP_REQUIRE_ALL=1)."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"{what} is required in CI (COUP_REQUIRE_ALL=1)")
    pytest.skip(f"{what} not available")


def test_settings(**overrides: object) -> Settings:
    # presence transitions at once unless a test asks for the grace (tests/domain/test_presence_grace.py)
    values: dict[str, object] = {"demo": True, "host": "127.0.0.1", "port": 0, "presence_grace": 0.0}
    values.update(overrides)
    return Settings(**values).validated()  # type: ignore[arg-type]


class RunningNode:
    def __init__(self, node: CoupNode, port: int) -> None:
        self.node = node
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stopped = False

    async def stop(self) -> None:
        """Stop serving (every client is disconnected); safe to call twice."""
        if not self.stopped:
            self.stopped = True
            await self.node.stop()


@pytest_asyncio.fixture
async def node() -> AsyncIterator[RunningNode]:
    """A CoupNode serving on a free port, with the default in-memory adapter."""
    sock, port = bind_unused_port()
    coup_node = CoupNode(test_settings())
    await coup_node.start([sock])
    try:
        yield RunningNode(coup_node, port)
    finally:
        await coup_node.stop()


#: ``await start_node(port=None, setup=None, **settings)``: see `node_factory`
NodeStarter = Callable[..., Awaitable[RunningNode]]


@pytest_asyncio.fixture
async def node_factory() -> AsyncIterator[NodeStarter]:
    """Start nodes on demand; every one still running is stopped at teardown.

    ``port=None`` takes a free port; a port given again starts a new node where a stopped
    one served (a server restart, as clients see it). `setup(node)` runs before the node
    starts (register handlers there); other keywords override `test_settings`.
    """
    started: list[RunningNode] = []

    async def start(port: int | None = None, setup: Callable[[CoupNode], Any] | None = None,
                    **overrides: object) -> RunningNode:
        if port is None:
            sock, port = bind_unused_port()
            sockets = [sock]
        else:
            sockets = bind_sockets(port, "127.0.0.1")
        coup_node = CoupNode(test_settings(**overrides))
        if setup is not None:
            setup(coup_node)
        await coup_node.start(sockets)
        running = RunningNode(coup_node, port)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            await running.stop()


@pytest_asyncio.fixture
async def js_client() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """``js = await js_client()``: a Node process running npm socket.io-client.

    See tests/clients/jsclient.py (`JsClient`) and the protocol at the top of
    tests/js/client.mjs. Requires node and ``npm ci`` in tests/js. Each process is ended by
    its PID at teardown.
    """
    from tests.clients.jsclient import JsClient, node_available

    require(node_available(), "node with tests/js/node_modules (npm ci in tests/js)")
    clients: list[JsClient] = []

    async def make() -> JsClient:
        client = await JsClient.start()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
