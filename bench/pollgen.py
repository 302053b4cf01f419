"""A compact Engine.IO v4 long-polling load generator: many stock-behaving clients per process.

Each `PollingClient` does what engine.io-client does over polling: a handshake GET, then
one GET always outstanding (held by the server until it has packets), POSTs for what it
sends (one at a time, queued packets joined with the record separator), PONG for every
PING. Where each request goes is the `route` callable's choice, so the same clients can
hit their session's own node or a round-robin router's next node.

Reusable for other benchmarks (e.g. against Node socket.io: same wire protocol):

    clients = [PollingClient(session, route, on_packet=count) for _ in range(100)]
    await asyncio.gather(*(c.open() for c in clients))
    await asyncio.gather(*(c.send('40') for c in clients))     # Socket.IO CONNECT to "/"
    ... c.send('42["join-study",{"studyId":1}]') ...
    await asyncio.gather(*(c.close() for c in clients))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import aiohttp

RS = "\x1e"

#: (request kind "get"|"post", the session's home node id or "") -> base URL of the node to use
Route = Callable[[str, str], str]


class PollingClient:
    def __init__(self, http: aiohttp.ClientSession, route: Route, *, path: str = "/socket.io/",
                 on_packet: Callable[[PollingClient, str, float], None] | None = None) -> None:
        self.http = http
        self.route = route
        self.path = path
        self.on_packet = on_packet
        self.sid = ""
        self.home = ""
        self.received = 0
        self.errors = 0
        self._outbox: list[str] = []
        self._sending: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()
        self.open_info: dict[str, object] = {}

    def _url(self, kind: str) -> str:
        base = self.route(kind, self.home)
        return f"{base}{self.path}?EIO=4&transport=polling" + (f"&sid={self.sid}" if self.sid else "")

    async def open(self) -> None:
        async with self.http.get(self._url("get")) as response:
            text = await response.text()
        if not text.startswith("0"):
            raise RuntimeError(f"handshake failed: {text[:200]}")
        self.open_info = json.loads(text[1:])
        self.sid = str(self.open_info["sid"])
        self.home = self.sid.partition(".")[0] if "." in self.sid else ""
        self._polling = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while True:
            try:
                async with self.http.get(self._url("get")) as response:
                    text = await response.text()
                    if response.status != 200:
                        self.errors += 1
                        return
            except (aiohttp.ClientError, OSError):
                self.errors += 1
                return
            now = time.perf_counter()
            for packet in text.split(RS):
                if packet == "2":
                    self.send("3")
                elif packet == "1":
                    return
                elif packet != "6":
                    self.received += 1
                    if self.on_packet is not None:
                        self.on_packet(self, packet, now)

    def send(self, packet: str) -> None:
        """Queue a packet; it goes out with the next POST (one POST in flight, as engine.io-client)."""
        self._outbox.append(packet)
        if self._sending is None or self._sending.done():
            self._flushed.clear()
            self._sending = asyncio.get_running_loop().create_task(self._send_loop())

    async def _send_loop(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                async with self.http.post(self._url("post"), data=RS.join(batch).encode()) as response:
                    await response.read()
                    if response.status != 200:
                        self.errors += 1
            except (aiohttp.ClientError, OSError):
                self.errors += 1
        self._flushed.set()

    async def flushed(self) -> None:
        """Until every queued packet was POSTed."""
        if self._outbox or (self._sending is not None and not self._sending.done()):
            await self._flushed.wait()

    async def close(self) -> None:
        if self._polling is not None:
            self._polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._polling
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending
