"""Three `coup serve` processes that cannot reach each other, behind a router without affinity.

As on a PaaS with isolated instances: each node's `COUP_PUBLIC_ADDRESS` leads nowhere (one
address refuses connections, another accepts and never answers; both count who tried), so
every request that lands on the wrong node must be served through Redis. Clients are the
stock ones: raw Engine.IO polling, npm socket.io-client (polling only, and polling then
upgrade), npm sockjs-client (xhr-polling, xhr-streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.clients.jsclient import JsClient, node_available
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import NodeProcess, RedisServer, api, wait_until
from tests.cluster.roundrobin import RoundRobinRouter
from tests.cluster.test_domain_nodes import token
from tests.cluster.test_no_sticky import RoundRobinPoller
from tests.conftest import require
from tests.sockjs.conftest import NodeClient, node_modules_ready

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


class DeadEnd:
    """A loopback address no node may use: it counts connections, then refuses or swallows them."""

    def __init__(self, *, answer: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.refuse = not answer
        self.connections = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.refuse:  # a reset at once, as a closed port answers
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
            else:
                self._held.append(conn)  # accepted, never read, never answered

    def close(self) -> None:
        self.listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="module")
def dead_ends() -> Iterator[tuple[DeadEnd, DeadEnd]]:
    refusing, hanging = DeadEnd(answer=False), DeadEnd(answer=True)
    try:
        yield refusing, hanging
    finally:
        refusing.close()
        hanging.close()


def _start_cluster(redis: RedisServer, logs: Path, addresses: list[str]) -> list[NodeProcess]:
    prefix = "rr" + secrets.token_hex(3)
    nodes = [NodeProcess(redis.url, prefix, f"n{i}", logs, COUP_PUBLIC_ADDRESS=address)
             for i, address in enumerate(addresses)]
    nodes[0].start()  # creates and seeds the shared database
    asyncio.run(nodes[0].wait_ready())
    for node in nodes[1:]:
        node.start()
    asyncio.run(_ready(nodes))
    return nodes


async def _ready(nodes: list[NodeProcess]) -> None:
    await asyncio.gather(*(n.wait_ready() for n in nodes))

    async def full_ring() -> bool:
        for node in nodes:
            _, info = await api(node, "/api/cluster")
            if len(info["nodes"]) != len(nodes):
                return False
        return True

    await wait_until(full_ring, timeout=10, what="the nodes seeing each other", poll=0.1)


@pytest.fixture(scope="module")
def isolated(redis_server: RedisServer, dead_ends: tuple[DeadEnd, DeadEnd],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    refusing, hanging = dead_ends
    nodes = _start_cluster(redis_server, tmp_path_factory.mktemp("isolated"),
                           [refusing.address, hanging.address, refusing.address])
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest_asyncio.fixture
async def router(isolated: list[NodeProcess]) -> AsyncIterator[RoundRobinRouter]:
    made = RoundRobinRouter({n.node_id: n.url for n in isolated})
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


async def _cluster_info(nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    return [(await api(n, "/api/cluster"))[1] for n in nodes]


def _no_peer_connection(dead_ends: tuple[DeadEnd, DeadEnd]) -> None:
    assert [d.connections for d in dead_ends] == [0, 0], "a node tried to reach another node directly"


class Member:
    """A python-socketio client on one node, in room "r" of the test namespace."""

    def __init__(self) -> None:
        import socketio

        self.sio = socketio.AsyncClient(reconnection=False)

    async def start(self, url: str) -> Member:
        await self.sio.connect(url, transports=["websocket"], auth={"user": "member"}, namespaces=[NAMESPACE],
                               wait_timeout=10)
        await self.sio.call("join", {"room": "r"}, namespace=NAMESPACE, timeout=10)
        return self

    async def say(self, data: Any, event: str = "hello") -> None:
        await self.sio.call("emit", {"rooms": ["r"], "event": event, "data": data}, namespace=NAMESPACE, timeout=10)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


@pytest_asyncio.fixture
async def member(isolated: list[NodeProcess]) -> AsyncIterator[Member]:
    made = await Member().start(isolated[2].url)
    try:
        yield made
    finally:
        await made.close()


# ---------------------------------------------------------------------------- Engine.IO polling


async def test_raw_polling_spread_over_every_node(isolated, router, member, dead_ends):
    poller = RoundRobinPoller([n.url for n in isolated])
    try:
        await poller.open()
        await poller.post(f'40{NAMESPACE},{{"user":"poller"}}')
        await poller.until(lambda p: p.startswith(f"40{NAMESPACE},{{"), "CONNECT")
        await poller.post(f'42{NAMESPACE},1["join",{{"room":"r"}}]')
        await poller.until(lambda p: p.startswith(f"43{NAMESPACE},1["), "the join ack")
        for i in range(5):
            await member.say(i)
        await poller.until(lambda p: p.startswith(f'42{NAMESPACE},["hello",4'), "the last broadcast")
        got = [int(p.split(",")[2]) for p in poller.packets if p.startswith(f'42{NAMESPACE},["hello",')]
        assert got == [0, 1, 2, 3, 4]
    finally:
        await poller.session.close()
    served = sum(info["relay"]["served"] for info in await _cluster_info(isolated))
    assert served >= 4  # two of every three requests landed away from the session's node
    _no_peer_connection(dead_ends)


async def test_socket_io_client_polling_only_through_the_router(isolated, router, member, dead_ends):
    require(node_available(), "node and npm socket.io-client (npm ci --prefix tests/js)")
    js = await JsClient.start()
    try:
        connected = await js.connect("a", router.url, namespace=NAMESPACE, transports=["polling"],
                                     auth={"user": "js"}, reconnection=False)
        assert connected["type"] == "connect"
        assert await js.emit_with_ack("a", "join", {"room": "r"}) != []
        for i in range(10):
            await member.say(i)
        await wait_until(lambda: len(js.events("a", "hello")) >= 10, timeout=10, what="ten broadcasts")
        assert [e["args"][0] for e in js.events("a", "hello")] == list(range(10))
        assert await js.emit_with_ack("a", "whoami") != []
        assert js.seen("disconnect") == []
        assert len(router.hits) == 3 and min(router.hits.values()) >= 2  # every node took requests
    finally:
        await js.close()
    _no_peer_connection(dead_ends)


async def test_default_client_upgrades_on_another_node_without_losing_a_packet(isolated, router, member,
                                                                              dead_ends):
    """Polling, then the WebSocket lands on a node that does not hold the session: it moves there."""
    require(node_available(), "node and npm socket.io-client (npm ci --prefix tests/js)")
    before = sum(info["moves"]["moved_in"] for info in await _cluster_info(isolated))
    stop = asyncio.Event()
    sent: list[int] = []

    async def stream() -> None:  # room messages all through the connect and the upgrade
        i = 0
        while not stop.is_set():
            await member.say(i, event="tick")
            sent.append(i)
            i += 1
            await asyncio.sleep(0.01)

    js = await JsClient.start()
    streamer = asyncio.create_task(stream())
    try:
        connected = await js.connect("a", router.url, namespace=NAMESPACE, auth={"user": "js"},
                                     reconnection=False)
        # the engine opened on polling; its upgrade may finish before the namespace's CONNECT
        # reply comes back through the router, so the transport at "connect" is either one.
        # The upgrade event below is what proves polling came first.
        assert connected["type"] == "connect" and connected["transport"] in ("polling", "websocket")
        assert await js.emit_with_ack("a", "join", {"room": "r"}) != []
        upgraded = await js.expect("upgrade", timeout=10)
        assert upgraded["transport"] == "websocket"
        await wait_until(lambda: len(js.events("a", "tick")) >= 30, timeout=10, what="ticks after the upgrade")
        stop.set()
        await streamer
        await member.say("end", event="tick")
        await wait_until(lambda: any(e["args"][0] == "end" for e in js.events("a", "tick")), timeout=10,
                         what="the last tick")
        ticks = [e["args"][0] for e in js.events("a", "tick")][:-1]
        # joined mid-stream: from its first tick on, every one exactly once and in order
        assert ticks == list(range(ticks[0], sent[-1] + 1)), ticks
        state = await js.state("a")
        assert state["connected"] and state["transport"] == "websocket"
        assert await js.emit_with_ack("a", "whoami") != []  # its socket answers on the new node
        assert js.seen("disconnect") == []
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await streamer
        await js.close()
    after = sum(info["moves"]["moved_in"] for info in await _cluster_info(isolated))
    assert after == before + 1
    _no_peer_connection(dead_ends)


# ---------------------------------------------------------------------------- SockJS


@pytest.mark.parametrize("transport", ["xhr-polling", "xhr-streaming"])
async def test_sockjs_http_transports_through_the_router(isolated, router, dead_ends, transport):
    require(node_modules_ready(), "npm sockjs-client (npm ci --prefix tests/sockjs/js)")
    node = require_node()
    alice = await NodeClient.start(node, router.url + "/sockjs", transport)
    try:
        alice.send(cmd="connect", auth={"userId": 1, "token": token(1)})
        assert (await alice.expect("connect"))["transport"] == transport
        alice.send(cmd="emit", event="join-study", args=[{"studyId": 1}], ack=1)
        assert (await alice.expect("ack", id=1))["args"][0]["ok"] is True
        contents = [f"{transport} {i} {secrets.token_hex(2)}" for i in range(5)]
        for i, content in enumerate(contents):
            alice.send(cmd="emit", event="message", args=[{"studyId": 1, "content": content}], ack=10 + i)
        for i in range(5):
            assert (await alice.expect("ack", id=10 + i))["args"][0]["ok"] is True
        seen = [(await alice.expect("event", event="message"))["args"][0]["content"] for _ in contents]
        assert seen == contents
    finally:
        await alice.close()
    assert router.hits and len(router.hits) == 3
    _no_peer_connection(dead_ends)


def require_node() -> str:
    import shutil

    node = shutil.which("node")
    require(node is not None, "node")
    assert node is not None
    return node


# ---------------------------------------------------------------------------- the home node dies


@pytest.fixture
def doomed(own_redis: RedisServer, dead_ends: tuple[DeadEnd, DeadEnd],
           tmp_path: Path) -> Iterator[list[NodeProcess]]:
    refusing, hanging = dead_ends
    nodes = _start_cluster(own_redis, tmp_path, [refusing.address, hanging.address, refusing.address])
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def test_a_home_killed_during_a_relayed_poll_gives_the_client_its_error_at_once(doomed, dead_ends):
    poller = RoundRobinPoller([doomed[0].url])  # the session lives on n0
    try:
        await poller.open()
        await poller.post(f'40{NAMESPACE},{{"user":"poller"}}')
        await poller.until(lambda p: p.startswith(f"40{NAMESPACE},{{"), "CONNECT")
        relayed = f"{doomed[1].url}/socket.io/?EIO=4&transport=polling&sid={poller.sid}"
        async def poll_elsewhere() -> tuple[int, str, float]:
            async with poller.session.get(relayed) as response:
                return response.status, await response.text(), time.monotonic()

        for _ in range(20):  # until a poll finds nothing queued and is held at n0
            held = asyncio.create_task(poll_elsewhere())
            with contextlib.suppress(AssertionError):
                await wait_until(lambda held=held: held.done() or _serving(doomed[0]) == 1, what="a held poll")
            if not held.done():
                break
            assert (await held)[0] == 200
        assert not held.done()
        killed = time.monotonic()
        doomed[0].signal(signal.SIGKILL)
        status, body, answered = await held
        waited = answered - killed
        assert status == 400 and json.loads(body) == {"code": 1, "message": "Session ID unknown"}
        # the home is declared dead after ~3 s; the client hears it then, not at its 45 s ping timeout
        assert waited < 10, waited
        _, info = await api(doomed[1], "/api/cluster")
        assert info["failures"].get("relay_home_gone") == 1
        assert "relay_home_gone" in doomed[1].log_text() and "WARNING" in doomed[1].log_text()
        # a new session through a survivor works at once
        again = RoundRobinPoller([doomed[1].url, doomed[2].url])
        try:
            await again.open()
            await again.post(f'40{NAMESPACE},{{"user":"again"}}')
            await again.until(lambda p: p.startswith(f"40{NAMESPACE},{{"), "CONNECT on a survivor")
        finally:
            await again.session.close()
    finally:
        await poller.session.close()
    _no_peer_connection(dead_ends)


def _serving(node: NodeProcess) -> int:
    import urllib.request

    from tests.cluster.conftest import SERVICE_TOKEN

    request = urllib.request.Request(f"{node.url}/api/cluster", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.load(response)["relay"]["serving"])


async def test_polling_requests_never_wait_for_an_unreachable_peer(isolated, dead_ends):
    """A sid of a node that is not in the cluster: the error at once, counted, no connection tried."""
    async with aiohttp.ClientSession() as session, session.get(
            isolated[0].url + "/socket.io/?EIO=4&transport=polling&sid=n9.abc") as response:
        assert response.status == 400
        assert await response.json() == {"code": 1, "message": "Session ID unknown"}
    _, info = await api(isolated[0], "/api/cluster")
    assert info["failures"].get("relay_home_unknown", 0) >= 1
    _no_peer_connection(dead_ends)

