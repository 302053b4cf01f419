"""Raw protocol clients for the conformance tests: plain HTTP and a plain WebSocket (aiohttp).

Nothing here speaks Socket.IO for the test: every request and frame is written out by the
test itself, as the official suites do, so the assertions are about bytes on the wire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

PING_INTERVAL = 0.3
PING_TIMEOUT = 0.2


@dataclass
class Reply:
    status: int
    text: str
    headers: Any

    def json(self) -> Any:
        return json.loads(self.text)


class Polling:
    """HTTP long-polling requests against ``http://127.0.0.1:PORT/<path>/``."""

    def __init__(self, http: aiohttp.ClientSession, port: int, path: str) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}/{path}/"
        self.ws_base = f"ws://127.0.0.1:{port}/{path}/"
        self.sid = ""

    def url(self, query: str = "EIO=4&transport=polling", *, with_sid: bool = True) -> str:
        if with_sid and self.sid:
            query += f"&sid={self.sid}"
        return self.base + "?" + query

    async def request(self, method: str, url: str, body: str | bytes | None = None,
                      headers: dict[str, str] | None = None) -> Reply:
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            return Reply(resp.status, await resp.text(), resp.headers)

    async def open(self) -> dict[str, Any]:
        """The handshake: returns the OPEN packet's data and remembers the sid."""
        reply = await self.request("GET", self.url(with_sid=False))
        assert reply.status == 200, reply
        assert reply.text[0] == "0"
        info: dict[str, Any] = json.loads(reply.text[1:])
        self.sid = info["sid"]
        return info

    async def get(self) -> Reply:
        return await self.request("GET", self.url())

    async def post(self, body: str | bytes) -> Reply:
        return await self.request("POST", self.url(), body)

    async def websocket(self, *, with_sid: bool = True) -> aiohttp.ClientWebSocketResponse:
        query = "EIO=4&transport=websocket" + (f"&sid={self.sid}" if with_sid and self.sid else "")
        return await self.http.ws_connect(self.ws_base + "?" + query, autoping=True)


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0, *,
               skip_pings: bool = True) -> aiohttp.WSMessage:
    """The next data message (text or binary), skipping Engine.IO pings unless told not to."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if skip_pings and msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
            continue
        return msg


async def recv_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0, *, skip_pings: bool = True) -> str:
    msg = await recv(ws, timeout, skip_pings=skip_pings)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return str(msg.data)


async def recv_binary(ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0) -> bytes:
    msg = await recv(ws, timeout)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    return bytes(msg.data)


async def closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0) -> bool:
    """True once the server closes the WebSocket (pings and noops before that are skipped)."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return True
        if msg.type == aiohttp.WSMsgType.TEXT and msg.data in ("2", "6"):
            continue
        raise AssertionError(f"expected the server to close, got {msg}")


async def open_socketio(polling: Polling, connect: str = "40") -> aiohttp.ClientWebSocketResponse:
    """A WebSocket session connected to a namespace, past the CONNECT reply and the "auth" event."""
    ws = await polling.websocket(with_sid=False)
    assert (await recv_text(ws))[0] == "0"
    await ws.send_str(connect)
    assert (await recv_text(ws)).startswith(connect.rstrip(","))
    assert (await recv_text(ws)).startswith("42")
    return ws
