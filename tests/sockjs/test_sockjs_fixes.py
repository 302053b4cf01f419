"""What we fix in sockjs-tornado 1.0.7, each shown on our classes (and, where cheap, on the library's).

Run against SockJS test services built like tests/sockjs/conformance_server.py, with
short heartbeat and expiry delays so the timers can be observed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sockjs.tornado import SockJSConnection
from sockjs.tornado.transports import WebSocketTransport as LibraryWebSocketTransport
from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import WebSocketClosedError, websocket_connect

from coup.transports.origins import OriginPolicy
from coup.transports.sockjs.router import SockJSRouter
from tests.sockjs.conftest import read_until

pytestmark = pytest.mark.asyncio

FAST = {"heartbeat_delay": 0.1, "session_check_interval": 0.05, "disconnect_delay": 0.3, "response_limit": 4096}


class Echo(SockJSConnection):  # type: ignore[misc]
    opened: list[Echo] = []
    closed: list[Echo] = []
    any_closed = asyncio.Event()

    def on_open(self, info: Any) -> None:
        Echo.opened.append(self)

    def on_message(self, message: Any) -> None:
        self.send(message)

    def on_close(self) -> None:
        Echo.closed.append(self)
        Echo.any_closed.set()


class Services:
    def __init__(self, url: str, routers: list[SockJSRouter]) -> None:
        self.url = url
        self.routers = routers


@pytest_asyncio.fixture
async def services() -> AsyncIterator[Services]:
    Echo.opened.clear()
    Echo.closed.clear()
    Echo.any_closed = asyncio.Event()
    routers = [
        SockJSRouter(Echo, "/echo", FAST),
        SockJSRouter(Echo, "/strict", FAST, origins=OriginPolicy(["http://good.example"])),
    ]
    sock, port = bind_unused_port()
    server = HTTPServer(Application([rule for router in routers for rule in router.urls]))
    server.add_sockets([sock])
    try:
        yield Services(f"http://127.0.0.1:{port}", routers)
    finally:
        server.stop()
        for router in routers:
            router.close()
        await server.close_all_connections()


# ---------------------------------------------------------------------- the router and its loop


async def test_router_refuses_to_be_built_outside_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="inside the running event loop"):
        await asyncio.to_thread(SockJSRouter, Echo, "/echo")  # a thread has no running loop


async def test_abandoned_polling_session_expires_on_the_running_loop(
        services: Services, http: aiohttp.ClientSession) -> None:
    async with http.post(services.url + "/echo/000/abandoned/xhr") as r:
        assert await r.text() == "o\n"
    assert len(Echo.opened) == 1
    await asyncio.wait_for(Echo.any_closed.wait(), 3)  # expiry runs on the router's PeriodicCallback
    assert Echo.closed == Echo.opened


# ---------------------------------------------------------------------- heartbeats


@pytest.mark.parametrize(("method", "suffix", "frame"), [
    ("POST", "xhr_streaming", b"h\n"),
    ("GET", "eventsource", b"data: h\r\n\r\n"),
    ("GET", "htmlfile?c=cb", b'<script>\np("h");\n</script>\r\n'),
])
async def test_streaming_transports_send_heartbeats(
        services: Services, http: aiohttp.ClientSession, method: str, suffix: str, frame: bytes) -> None:
    url = f"{services.url}/echo/000/{suffix.split('?')[0]}-hb/{suffix}"
    async with http.request(method, url) as r:
        assert r.status == 200
        opened = await read_until(r, b"o")
        started = time.monotonic()
        data = await read_until(r, frame, limit=2.0)
        assert frame in data, data
        assert time.monotonic() - started < 1.5
        # and they keep coming
        data = await read_until(r, frame, limit=2.0)
        assert frame in data
    assert opened


async def test_websocket_and_polling_heartbeats_use_the_loop_clock(
        services: Services, http: aiohttp.ClientSession) -> None:
    ws = await websocket_connect(services.url.replace("http", "ws") + "/echo/000/ws-hb/websocket")
    try:
        assert await asyncio.wait_for(ws.read_message(), 2) == "o"
        assert await asyncio.wait_for(ws.read_message(), 2) == "h"
    finally:
        ws.close()
    async with http.post(services.url + "/echo/000/poll-hb/xhr") as r:
        assert await r.text() == "o\n"
    async with http.post(services.url + "/echo/000/poll-hb/xhr") as r:
        assert await r.text() == "h\n"  # an idle poll is answered by a heartbeat, not held forever


# ---------------------------------------------------------------------- htmlfile


async def test_htmlfile_frames_cannot_close_the_script_element(
        services: Services, http: aiohttp.ClientSession) -> None:
    base = services.url + "/echo/000/html-xss"
    async with http.get(base + "/htmlfile", params={"c": "cb"}) as r:
        await read_until(r, b'p("o")')
        payload = "</script><script>alert(1)</script>"
        async with http.post(base + "/xhr_send", data=json.dumps([payload])) as sent:
            assert sent.status == 204
        data = await read_until(r, b"p(\"a[")
        frame = data[data.index(b"<script>\np(\"a["):]
        assert b"</script><script>" not in frame
        assert b"\\u003c/script\\u003e" in frame


# ---------------------------------------------------------------------- origins


async def test_post_to_a_websocket_url_is_a_bare_405(services: Services, http: aiohttp.ClientSession) -> None:
    async with http.post(services.url + "/echo/000/x/websocket") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "GET"
        assert "Content-Type" not in r.headers
        assert await r.read() == b""


async def test_foreign_origins_are_refused_when_a_policy_is_set(
        services: Services, http: aiohttp.ClientSession) -> None:
    evil = {"Origin": "http://evil.example"}
    async with http.options(services.url + "/strict/000/o/xhr", headers=evil) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.post(services.url + "/strict/000/o/xhr", headers=evil) as r:
        assert r.status == 403
    with pytest.raises(Exception, match="403"):
        await websocket_connect(HTTPRequest(services.url.replace("http", "ws") + "/strict/000/o/websocket",
                                            headers=evil))
    async with http.post(services.url + "/strict/000/o/xhr", headers={"Origin": "http://good.example"}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "http://good.example"
        assert await r.text() == "o\n"
    assert len(Echo.opened) == 1


# ---------------------------------------------------------------------- WebSocket


async def test_send_on_a_closing_websocket_does_not_raise(services: Services) -> None:
    ws = await websocket_connect(services.url.replace("http", "ws") + "/echo/000/closing/websocket")
    assert await asyncio.wait_for(ws.read_message(), 2) == "o"
    connection = Echo.opened[-1]
    handler = connection.session.handler
    handler.close()  # the server starts closing: Tornado now refuses writes
    # the library's send_pack lets Tornado 6's WebSocketClosedError escape to the sender ...
    with pytest.raises(WebSocketClosedError):
        LibraryWebSocketTransport.send_pack(handler, 'a["lost"]')
    # ... ours does not, whoever sends (a broadcast loop, a heartbeat)
    handler.send_pack('a["lost"]')
    connection.send("still fine")
    ws.close()
    await asyncio.wait_for(Echo.any_closed.wait(), 2)
    assert Echo.closed == [connection]


async def test_hybi_08_handshake_is_accepted(services: Services) -> None:
    host, port = services.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /echo/000/h8/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 8\r\n"
                 b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    writer.close()
    assert head.startswith(b"HTTP/1.1 101")
    assert b"Sec-Websocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=" in head


class Closer(SockJSConnection):  # type: ignore[misc]
    def on_open(self, info: Any) -> None:
        self.close()


@pytest_asyncio.fixture
async def close_service() -> AsyncIterator[int]:
    """The protocol's /close service: every session is closed as soon as it opens."""
    router = SockJSRouter(Closer, "/close", FAST)
    sock, port = bind_unused_port()
    server = HTTPServer(Application(router.urls))
    server.add_sockets([sock])
    try:
        yield port
    finally:
        server.stop()
        router.close()
        await server.close_all_connections()


async def test_streaming_to_http_1_0_ends_with_the_connection(close_service: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", close_service)
    writer.write(b"POST /close/000/h10/xhr_streaming HTTP/1.0\r\nConnection: Keep-Alive\r\n"
                 b"Content-Length: 0\r\n\r\n")
    body = await asyncio.wait_for(reader.read(), 3)  # returns only when the server closes
    writer.close()
    assert body.endswith(b'o\nc[3000,"Go away!"]\n')
    assert b"Transfer-Encoding" not in body


async def test_close_frame_waits_for_the_next_poll(close_service: int, http: aiohttp.ClientSession) -> None:
    """Closing while the open frame is on its way must not glue a close frame onto that answer."""
    base = f"http://127.0.0.1:{close_service}/close/000/poll-close"
    for expected in ("o\n", 'c[3000,"Go away!"]\n', 'c[3000,"Go away!"]\n'):
        async with http.post(base + "/xhr") as r:
            assert await r.text() == expected
