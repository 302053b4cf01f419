"""maxPayload on both transports, the bounded outbound queue, and one origin list for CORS and
the WebSocket `Origin` header."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from coup.engine.options import EngineOptions
from coup.engine.polling import PollingTransport
from coup.engine.websocket import WebSocketTransport
from tests.servers import POLLING_PATH, WS_PATH, RunningServer, serve
from tests.sioclient import SioClient, sio_connect
from tests.waiting import eventually
from tests.wsclient import OP_BINARY, HandshakeRefused, client_frame, text

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

MAX_PAYLOAD = 50_000


async def open_polling(http: aiohttp.ClientSession, server: RunningServer, *,
                       origin: str | None = None) -> tuple[str, aiohttp.ClientResponse]:
    headers = {"Origin": origin} if origin else {}
    async with http.get(server.url + POLLING_PATH, headers=headers) as resp:
        body = await resp.text()
        sid = json.loads(body[1:])["sid"] if resp.status == 200 else ""
        return sid, resp


# ---------------------------------------------------------------------------- maxPayload


async def test_websocket_message_up_to_max_payload_passes_and_one_more_byte_closes_1009(
        caplog: pytest.LogCaptureFixture) -> None:
    async with serve(EngineOptions(max_payload=MAX_PAYLOAD)) as server:
        got: list[int] = []
        server.sio.main.on("blob", lambda socket, args: got.append(len(args[0])))
        client = await sio_connect(server)
        body = '42["blob","' + "x" * (MAX_PAYLOAD - 13) + '"]'
        assert len(body) == MAX_PAYLOAD
        client.ws.send(text(body))
        client.emit("blob", "small")  # processed after the big one: the session is fine
        await eventually(lambda: len(got) == 2, "both messages handled")
        assert got == [MAX_PAYLOAD - 13, 5]
        with caplog.at_level(logging.INFO, logger="coup"):
            client.ws.send(client_frame(OP_BINARY, b"y" * (MAX_PAYLOAD + 1)))
            assert await client.closed() == 1009
        assert "exceeds" in caplog.text and client.engine_sid in caplog.text
        assert client.engine_sid not in server.engine.sessions


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_polling_post_over_max_payload_is_400_and_closes_the_session(
        chunked: bool, caplog: pytest.LogCaptureFixture) -> None:
    async with serve(EngineOptions(max_payload=MAX_PAYLOAD)) as server, aiohttp.ClientSession() as http:
        sid, _ = await open_polling(http, server)
        url = f"{server.url}{POLLING_PATH}&sid={sid}"
        async with http.post(url, data="40") as resp:
            assert resp.status == 200
        exactly_max = '42["pad","' + "x" * (MAX_PAYLOAD - 12) + '"]'
        assert len(exactly_max) == MAX_PAYLOAD
        async with http.post(url, data=exactly_max) as resp:
            assert resp.status == 200  # exactly maxPayload is fine
        assert sid in server.engine.sessions
        body = b"4" + b"x" * MAX_PAYLOAD

        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 8192):
                yield body[i:i + 8192]

        with caplog.at_level(logging.INFO, logger="coup"):
            async with http.post(url, data=stream() if chunked else body) as resp:
                assert resp.status == 400
                assert (await resp.json())["code"] == 3
        assert f"closing session {sid}: parse error" in caplog.text
        assert sid not in server.engine.sessions
        async with http.get(url) as resp:
            assert resp.status == 400


async def test_polling_post_far_over_the_limit_is_refused_without_reading_it_all() -> None:
    async with serve(EngineOptions(max_payload=MAX_PAYLOAD)) as server, aiohttp.ClientSession() as http:
        sid, _ = await open_polling(http, server)
        async with http.post(f"{server.url}{POLLING_PATH}&sid={sid}", data=b"4" * 5_000_000) as resp:
            assert resp.status == 400
        assert sid not in server.engine.sessions


# ---------------------------------------------------------------------------- slow consumers


async def test_websocket_client_that_stops_reading_is_disconnected_and_memory_stays_bounded(
        caplog: pytest.LogCaptureFixture) -> None:
    limit = 256 * 1024
    async with serve(EngineOptions(max_buffered_bytes=limit, ping_interval=60, ping_timeout=60)) as server:
        reader = await sio_connect(server)
        slow = SioClient(await server.websocket(receive_buffer=4096), "")
        slow.engine_sid = json.loads((await slow.ws.recv_text())[1:])["sid"]
        await slow.connect()
        session = server.engine.sessions[slow.engine_sid]
        transport = session.transport
        assert isinstance(transport, WebSocketTransport)
        chunk = "z" * 16 * 1024
        high_water = 0
        with caplog.at_level(logging.WARNING, logger="coup"):
            for i in range(2000):  # up to 32 MB if nothing stopped it
                server.sio.main.emit("flood", i, chunk)
                await asyncio.sleep(0)
                raw = transport._transport
                if raw is not None and not raw.is_closing():
                    high_water = max(high_water, raw.get_write_buffer_size())
                if not session.open:
                    break
            assert not session.open, "the slow consumer was never disconnected"
        assert "slow consumer" in caplog.text and slow.engine_sid in caplog.text
        assert i < 1000  # long before the flood ended (kernel socket buffers absorb the first MBs)
        assert high_water <= limit + 64 * 1024  # one loop turn of writes beyond the limit at most
        # the reading client got every event in order and is still connected
        for n in range(i + 1):
            event = await reader.event()
            assert event[:2] == ["flood", n]
        reader.emit("ping-check")
        assert reader.engine_sid in server.engine.sessions
        await reader.close()
        await slow.close()


async def test_polling_client_that_stops_fetching_is_disconnected(caplog: pytest.LogCaptureFixture) -> None:
    limit = 64 * 1024
    async with serve(EngineOptions(max_buffered_bytes=limit)) as server, aiohttp.ClientSession() as http:
        sid, _ = await open_polling(http, server)
        async with http.post(f"{server.url}{POLLING_PATH}&sid={sid}", data="40"):
            pass
        await eventually(lambda: server.sio.main.sockets, "the socket joined the namespace")
        session = server.engine.sessions[sid]
        transport = session.transport
        assert isinstance(transport, PollingTransport)
        with caplog.at_level(logging.WARNING, logger="coup"):
            for i in range(100):
                server.sio.main.emit("flood", i, "p" * 4096)
                await asyncio.sleep(0)
                assert transport._queued_bytes <= limit + 5000
                if not session.open:
                    break
        assert not session.open
        assert i < 20
        assert f"session {sid}: slow consumer" in caplog.text
        async with http.get(f"{server.url}{POLLING_PATH}&sid={sid}") as resp:
            assert resp.status == 400


# ---------------------------------------------------------------------------- origins


ALLOWED = "https://app.example.org"
FOREIGN = "https://evil.example.com"


async def test_cors_for_a_configured_origin_with_credentials() -> None:
    async with serve(origins=[ALLOWED]) as server, aiohttp.ClientSession() as http:
        sid, resp = await open_polling(http, server, origin=ALLOWED)
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in resp.headers.getall("Vary")
        async with http.post(f"{server.url}{POLLING_PATH}&sid={sid}", data="40",
                             headers={"Origin": ALLOWED}) as post:
            assert post.status == 200
            assert post.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_cors_preflight() -> None:
    async with serve(origins=[ALLOWED]) as server, aiohttp.ClientSession() as http:
        headers = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "content-type"}
        async with http.options(server.url + POLLING_PATH, headers=headers) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert set(resp.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) >= {"GET", "POST"}
            assert resp.headers["Access-Control-Allow-Headers"] == "content-type"
        headers["Origin"] = FOREIGN
        async with http.options(server.url + POLLING_PATH, headers=headers) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("origin", [FOREIGN, "null", "https://app.example.org.evil.com", "http://app.example.org"])
async def test_foreign_origins_are_refused_on_polling(origin: str) -> None:
    async with serve(origins=[ALLOWED]) as server, aiohttp.ClientSession() as http:
        _, resp = await open_polling(http, server, origin=origin)
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert server.engine.sessions == {}


async def test_same_origin_and_non_browser_requests_are_allowed() -> None:
    async with serve(origins=[ALLOWED]) as server, aiohttp.ClientSession() as http:
        _, resp = await open_polling(http, server, origin=f"http://127.0.0.1:{server.port}")
        assert resp.status == 200
        _, resp = await open_polling(http, server)  # no Origin header at all
        assert resp.status == 200


async def test_websocket_origin_is_checked_against_the_same_list(caplog: pytest.LogCaptureFixture) -> None:
    async with serve(origins=[ALLOWED]) as server:
        ok = SioClient(await server.websocket(origin=ALLOWED), "")
        assert (await ok.ws.recv_text())[0] == "0"
        with caplog.at_level(logging.INFO, logger="coup"), pytest.raises(HandshakeRefused) as info:
            await server.websocket(origin=FOREIGN)
        assert info.value.status == 403
        assert json.loads(info.value.body) == {"code": 4, "message": "Forbidden"}
        assert FOREIGN in caplog.text
        assert len(server.engine.sessions) == 1
        await ok.close()


async def test_wildcard_allows_any_origin() -> None:
    async with serve(origins=["*"]) as server, aiohttp.ClientSession() as http:
        _, resp = await open_polling(http, server, origin=FOREIGN)
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == FOREIGN
        ws = await server.websocket(WS_PATH, origin=FOREIGN)
        await ws.close()
