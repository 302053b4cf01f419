"""A bare Socket.IO-over-WebSocket client that can send a recovery handshake ({pid, offset}).

python-socketio's client does not implement connection state recovery, so recovery tests
speak the protocol directly (it is small): Engine.IO OPEN, Socket.IO CONNECT with auth,
events, acks, and pings answered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from coup.core.hold import OriginVector
from tests.cluster.cluster_testapp import NAMESPACE

_PREFIX = NAMESPACE + ","


def is_offset(value: object) -> bool:
    """A recovery offset as the last argument of an event: digits, with recovery log groups
    one number per group joined by dots (docs/cluster.md#redis-cluster), or with the log the
    nodes sequence a vector over origins (``EPOCH~ORIGIN-NUMBER...``, docs/recovery.md)."""
    if not isinstance(value, str) or not value:
        return False
    if "~" in value:
        return OriginVector.parse(value) is not None
    return all(part.isdigit() for part in value.split("."))


class RawClient:
    def __init__(self) -> None:
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sid = ""
        self.pid = ""
        self.events: list[tuple[str, list[Any]]] = []
        #: "connect" and the events' names, in the order they arrived (nothing may precede "connect")
        self.transcript: list[str] = []
        self.offset: str | None = None
        self._acks: dict[int, asyncio.Future[list[Any]]] = {}
        self._ack_ids = 0
        self._reader: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[dict[str, Any]] | None = None

    async def connect(self, url: str, auth: dict[str, Any]) -> dict[str, Any]:
        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.session.ws_connect(ws_url)
        opening = await self.ws.receive_str()
        assert opening.startswith("0"), opening
        self._connected = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.ws.send_str("40" + _PREFIX + json.dumps(auth))
        reply = await asyncio.wait_for(self._connected, 5)
        self.sid, self.pid = reply.get("sid", ""), reply.get("pid", "")
        return reply

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            text: str = msg.data
            if text == "2":
                await self.ws.send_str("3")
                continue
            kind, body = text[:2], text[2:]
            if not body.startswith(_PREFIX):
                continue
            body = body[len(_PREFIX):]
            if kind == "40" and self._connected is not None and not self._connected.done():
                self.transcript.append("connect")
                self._connected.set_result(json.loads(body))
            elif kind == "44" and self._connected is not None and not self._connected.done():
                self._connected.set_exception(AssertionError(text))
            elif kind == "42":
                args = json.loads(body)
                if args and is_offset(args[-1]):
                    self.offset = args[-1]
                    args = args[:-1]
                self.events.append((args[0], args[1:]))
                self.transcript.append(args[0])
            elif kind == "43":
                cut = body.index("[")
                future = self._acks.pop(int(body[:cut]), None)
                if future is not None:
                    future.set_result(json.loads(body[cut:]))

    async def call(self, event: str, data: Any) -> Any:
        assert self.ws is not None
        self._ack_ids += 1
        future = self._acks[self._ack_ids] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(f"42{_PREFIX}{self._ack_ids}" + json.dumps([event, data]))
        return (await asyncio.wait_for(future, 5))[0]

    def received(self, event: str) -> list[Any]:
        return [args[0] if len(args) == 1 else args for name, args in self.events if name == event]

    async def drop(self) -> None:
        """Lose the connection abruptly (no Socket.IO DISCONNECT): the session may be recovered."""
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()

    async def close(self) -> None:
        await self.drop()
        await self.session.close()
