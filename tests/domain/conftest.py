"""Fixtures for the CoUp domain: a real node with the domain installed, on a real database
(a SQLite file, and PostgreSQL when COUP_TEST_POSTGRES_URL is set), and real clients.

Every test that uses `domain_node` runs once per database. The PostgreSQL runs use a schema
of their own (created for the session, dropped at its end), so parallel runs never collide.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from tornado.testing import bind_unused_port

from coup.app import CoupNode, coup_node
from coup.domain.database import Database
from coup.domain.demo import seed_demo
from tests.conftest import require
from tests.domain.support import Client, ClientFactory, DomainNode, NodeFactory, domain_settings
from tests.postgres import POSTGRES_ENV, postgres_base_url, postgres_schema


@pytest.fixture(autouse=True)
def no_errors_logged(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Bad input must never show up as a crash: fail any test that logged an ERROR.

    A test that provokes a real failure on purpose marks itself `errors_logged`.
    """
    caplog.set_level(logging.INFO)
    yield
    if request.node.get_closest_marker("errors_logged") is None:
        errors = [r for r in caplog.get_records("call") + caplog.get_records("teardown") if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]


# ---------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A PostgreSQL URL whose search_path is a fresh schema; None when no URL is configured."""
    base = postgres_base_url()
    if not base:
        yield None
        return
    with postgres_schema(base) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_url: str | None) -> str:
    """A database with the schema and exactly the demo data."""
    if request.param == "postgres":
        require(postgres_url is not None, f"PostgreSQL ({POSTGRES_ENV})")
        assert postgres_url is not None
        url = postgres_url
    else:
        url = f"sqlite:///{tmp_path / 'coup.db'}"
    reset_database(url)
    return url


def reset_database(url: str) -> None:
    database = Database(url, workers=1)
    try:
        database.create_schema()
        with database.db.connection_context():
            seed_demo(reset=True)
    finally:
        database.close()


# ---------------------------------------------------------------------- nodes


@pytest_asyncio.fixture
async def make_node(database_url: str) -> AsyncIterator[NodeFactory]:
    """Start CoUp nodes on free ports (settings overridable); all stopped at the end."""
    started: list[CoupNode] = []

    async def make(**overrides: Any) -> DomainNode:
        sock, port = bind_unused_port()
        node = coup_node(domain_settings(database_url, **overrides))
        await node.start([sock])
        started.append(node)
        return DomainNode(node, port)

    try:
        yield make
    finally:
        for node in reversed(started):
            await node.stop()


@pytest_asyncio.fixture
async def domain_node(make_node: NodeFactory) -> DomainNode:
    return await make_node()


# ---------------------------------------------------------------------- clients


@pytest.fixture(params=["websocket", "polling"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def connect(domain_node: DomainNode, transport: str) -> AsyncIterator[ClientFactory]:
    """``await connect(user_id)``: a signed-in client on this test's transport."""
    clients: list[Client] = []

    async def make(user_id: int, *, join: tuple[int, ...] = (), transport_: str | None = None) -> Client:
        client = Client(domain_node, transport_ or transport)
        clients.append(client)
        await client.connect(user_id)
        for study_id in join:
            ack = await client.call("join-study", {"studyId": study_id})
            assert ack["ok"] is True, ack
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "errors_logged: the test provokes a logged ERROR on purpose")
