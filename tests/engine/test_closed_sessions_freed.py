"""A closed connection is freed by reference counting, without the cyclic garbage collector.

A serving process rarely runs a full collection (`coup.heap`: the young generation is
collected every 10,000 allocations), so whatever a closed connection leaves in a reference
cycle stays in memory until one comes. That is how the soak's RSS climbed ~2.6 MB a minute:
every closed session and its transport referred to each other (bench/README.md, "the soak's
RSS climbs on main"). Here the collector is off while clients come and go over every
transport, closed by either side, and once they are gone no object of a connection is left.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio
import socketio
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from coup.core.client import Client
from coup.core.socket import Socket
from coup.engine.polling import PollingTransport
from coup.engine.session import Session
from coup.engine.websocket import WebSocketTransport
from coup.transports.sockjs.bridge import CoreBridge, SockJSLink
from coup.transports.sockjs.session import SockJSSession
from tests.conftest import RunningNode
from tests.conftest import test_settings as settings_for_tests
from tests.sioclient import SioClient
from tests.waiting import eventually
from tests.wsclient import RawWebSocket

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": ["polling", "websocket"]}
#: what one connection builds on the server, whatever its transport
CONNECTION_TYPES = (Session, Client, Socket, WebSocketTransport, PollingTransport, CoreBridge, SockJSLink,
                    SockJSSession)


@pytest_asyncio.fixture(params=["front door", "tornado only"])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[RunningNode]:
    """A node with its front door (connections start on our own protocol), or Tornado's server alone."""
    sock, port = bind_unused_port()
    coup_node = CoupNode(settings_for_tests(), front_door=request.param == "front door")
    await coup_node.start([sock])
    try:
        yield RunningNode(coup_node, port)
    finally:
        await coup_node.stop()


@pytest.fixture
def collector_off() -> Iterator[Counter[str]]:
    """The collector off; yields what was in memory of connections before (other tests' leftovers)."""
    gc.collect()
    gc.disable()
    try:
        yield connection_objects()
    finally:
        gc.enable()


def connection_objects() -> Counter[str]:
    return Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, CONNECTION_TYPES))


def close_all(node: RunningNode) -> None:
    """The server ends every session (in a function, so no local of the test holds one)."""
    for session in list(node.node.engine.sessions.values()):
        session.close("forced close")


async def nothing_left(node: RunningNode, before: Counter[str], opened: list[Counter[str]]) -> None:
    """`opened`: what was in memory while each of the 3 connections was open."""
    assert len(opened) == 3 and all(census["Session"] > before["Session"] for census in opened), opened
    await eventually(lambda: not node.node.engine.sessions, "every session closed")
    for _ in range(20):  # the transports' last callbacks (connection_lost) come a few loop turns later
        await asyncio.sleep(0.01)
    assert connection_objects() == before, "closed connections still in memory"


async def one_connection(node: RunningNode, transports: list[str], closed_by: str) -> Counter[str]:
    """Connect a python-socketio client, close it from `closed_by`'s side; what was in memory meanwhile."""
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(node.url, transports=transports, wait_timeout=5)
    await eventually(lambda: client.transport() == transports[-1], "the transport asked for")
    census = connection_objects()
    if closed_by == "client":
        await client.disconnect()
    else:
        close_all(node)
        await eventually(lambda: not client.connected, "the client saw the close")
    await client.shutdown()
    return census


@pytest.mark.asyncio
@pytest.mark.parametrize("closed_by", ["client", "server"])
@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_closed_connections_are_freed_without_the_collector(
        node: RunningNode, collector_off: Counter[str], transport: str, closed_by: str) -> None:
    opened = [await one_connection(node, TRANSPORTS[transport], closed_by) for _ in range(3)]
    await nothing_left(node, collector_off, opened)


@pytest.mark.asyncio
async def test_a_dropped_websocket_is_freed_without_the_collector(
        node: RunningNode, collector_off: Counter[str]) -> None:
    """A client that vanishes without a close frame (the common case on the internet)."""
    opened: list[Counter[str]] = []
    for _ in range(3):
        ws = await RawWebSocket.connect(node.port, "/socket.io/?EIO=4&transport=websocket")
        await (await SioClient.open(ws)).connect()
        opened.append(connection_objects())
        ws.writer.transport.abort()
    await nothing_left(node, collector_off, opened)


@pytest.mark.asyncio
async def test_a_closed_sockjs_connection_is_freed_without_the_collector(
        node: RunningNode, collector_off: Counter[str]) -> None:
    opened: list[Counter[str]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            async with http.ws_connect(f"{node.url}/sockjs/000/freed{i:03d}/websocket") as ws:
                assert (await ws.receive_str(timeout=5)) == "o"
                await eventually(lambda: len(node.node.engine.sessions) == 1, "the SockJS session's core session")
                opened.append(connection_objects())
    await nothing_left(node, collector_off, opened)
