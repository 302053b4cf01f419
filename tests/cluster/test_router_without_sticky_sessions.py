"""The stock npm socket.io-client, long-polling only, behind a router that sends every HTTP
request to the next node in turn (a PaaS router without sticky sessions)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from tornado.testing import bind_unused_port

from tests.clients.jsclient import JsClient, node_available
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import Node
from tests.conftest import require

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}


class RoundRobinRouter:
    """Every request to the next backend, whatever connection it came on."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = itertools.cycle(backends)
        self.hits: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock, port = bind_unused_port()
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{port}"

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        backend = next(self.backends)
        self.hits[backend] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self.session.request(request.method, backend + request.path_qs, headers=headers,
                                        data=await request.read()) as upstream:
            body = await upstream.read()
            reply = web.Response(status=upstream.status, body=body)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding":
                    reply.headers[name] = value
            return reply

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


@pytest_asyncio.fixture
async def router(redis_nodes: list[Node]) -> AsyncIterator[RoundRobinRouter]:
    made = RoundRobinRouter([n.url for n in redis_nodes])
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


async def test_socket_io_client_polls_through_a_router_without_sticky_sessions(redis_nodes, router, peers):
    require(node_available(), "node and npm socket.io-client (npm ci --prefix tests/js)")
    member = await peers("direct").connect(redis_nodes[2].url)
    await member.call("join", {"room": "r"})
    js = await JsClient.start()
    try:
        connected = await js.connect("a", router.url, namespace=NAMESPACE, transports=["polling"],
                                     auth={"user": "js"}, reconnection=False)
        assert connected["type"] == "connect"
        assert await js.emit_with_ack("a", "join", {"room": "r"}) != []
        await member.call("emit", {"rooms": ["r"], "event": "hello", "data": "polling"})
        record = await js.expect_event("a", "hello")
        assert record["args"][0] == "polling"
        await js.emit_with_ack("a", "emit", {"rooms": ["r"], "event": "back", "data": 1})
        assert await member.wait_for("back") == [1]
        assert len(router.hits) == 3 and min(router.hits.values()) >= 2  # every node took requests
    finally:
        await js.close()
