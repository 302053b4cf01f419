"""A router without affinity (what a PaaS puts in front of web instances), for tests.

Every HTTP request goes to the next backend in turn, whatever connection it came on;
responses stream through as they come (SockJS xhr-streaming needs that); a WebSocket is
piped to a backend too. `avoid_home` sends an Engine.IO upgrade to a node other than the
one named in its sid, so a test knows the upgrade lands elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter

import aiohttp
from aiohttp import web
from tornado.testing import bind_unused_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length",
               "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"}


class RoundRobinRouter:
    def __init__(self, backends: dict[str, str], *, avoid_home: bool = True) -> None:
        """`backends`: node id -> base URL."""
        self.backends = backends
        self._cycle = itertools.cycle(list(backends))
        self.avoid_home = avoid_home
        self.hits: Counter[str] = Counter()
        self.websockets: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                                             auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        sock, port = bind_unused_port()
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{port}"

    def _pick(self, request: web.Request) -> str:
        node = next(self._cycle)
        sid = request.query.get("sid", "")
        if self.avoid_home and request.headers.get("Upgrade", "").lower() == "websocket" and sid:
            while sid.startswith(node + "."):
                node = next(self._cycle)
        self.hits[node] += 1
        return node

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        node = self._pick(request)
        target = self.backends[node] + request.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.websockets[node] += 1
            return await self._websocket(request, target, headers)
        async with self.session.request(request.method, target, headers=headers,
                                        data=await request.read()) as upstream:
            reply = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    reply.headers.add(name, value)
            if upstream.headers.get("Content-Length") is not None:
                reply.content_length = int(upstream.headers["Content-Length"])
            await reply.prepare(request)
            async for chunk in upstream.content.iter_any():
                await reply.write(chunk)
            await reply.write_eof()
            return reply

    async def _websocket(self, request: web.Request, target: str, headers: dict[str, str]) -> web.StreamResponse:
        assert self.session is not None
        down = web.WebSocketResponse(autoping=False)
        async with self.session.ws_connect(target.replace("http", "ws", 1), headers=headers,
                                           autoping=False) as up:
            await down.prepare(request)

            async def pipe(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                           dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
                async for message in src:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(message.data)
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(message.data)
                    else:
                        break
                await dst.close()

            tasks = [asyncio.ensure_future(pipe(down, up)), asyncio.ensure_future(pipe(up, down))]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return down

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()
