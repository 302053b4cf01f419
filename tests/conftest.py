"""Shared fixtures: a real node on a free loopback port, real clients."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
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
    values: dict[str, object] = {"demo": True, "host": "127.0.0.1", "port": 0}
    values.update(overrides)
    return Settings(**values).validated()  # type: ignore[arg-type]


class RunningNode:
    def __init__(self, node: CoupNode, port: int) -> None:
        self.node = node
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


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
