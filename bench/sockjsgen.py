"""A compact SockJS client for load generators: xhr-streaming or xhr-polling, many per process.

What sockjs-client 1.x does over those transports: a receiving POST always open
(``xhr_streaming``: one long chunked answer carrying frame after frame, reopened when the
server ends it at its response limit; ``xhr``: one frame per answer, asked again at once),
and ``xhr_send`` POSTs for what it sends, one at a time, queued messages joined into one
JSON array. Frames: ``o`` open, ``h`` heartbeat, ``a[...]`` messages, ``c[...]`` close.

    http = RawHTTP("127.0.0.1", port)
    client = SockJSClient(http, "xhr_streaming", on_message=lambda c, text, now: ...)
    await client.open()
    client.send('{"type":"auth","auth":{}}')
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
import time
from collections.abc import Callable

from rawhttp import RawHTTP

TRANSPORTS = ("xhr_streaming", "xhr")


def _session_id() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=12))


class SockJSClient:
    def __init__(self, http: RawHTTP, transport: str, *, prefix: str = "/sockjs",
                 on_message: Callable[[SockJSClient, str, float], None] | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}")
        self.http = http
        self.transport = transport
        self.base = f"{prefix}/{random.randint(0, 999):03d}/{_session_id()}/"
        self.on_message = on_message
        self.received = 0
        self.errors = 0
        self.closed = False
        self._pending = b""
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox: list[str] = []
        self._sending: asyncio.Task[None] | None = None
        self._receiving: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Until the server's ``o`` frame."""
        self._receiving = asyncio.get_running_loop().create_task(self._receive_loop())
        await self._opened

    async def _receive_loop(self) -> None:
        url = self.base + self.transport
        streaming = self.transport == "xhr_streaming"
        try:
            while not self.closed:
                if streaming:
                    self._pending = b""
                    status, _ = await self.http.request("POST", url, on_chunk=self._chunk)
                else:
                    status, body = await self.http.request("POST", url)
                    if status == 200:
                        self._frame(body.decode().rstrip("\n"), time.perf_counter())
                if status != 200:
                    self._fail()
                    return
        except OSError:
            self._fail()

    def _fail(self) -> None:
        self.errors += 1
        self.closed = True
        if not self._opened.done():
            self._opened.set_exception(ConnectionError(f"{self.base}: receiving request failed"))

    def _chunk(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        now = time.perf_counter()
        for line in lines:
            self._frame(line.decode(), now)

    def _frame(self, frame: str, now: float) -> None:
        kind = frame[:1]
        if kind == "a":
            for message in json.loads(frame[1:]):
                self.received += 1
                if self.on_message is not None:
                    self.on_message(self, message, now)
        elif kind == "o":
            if not self._opened.done():
                self._opened.set_result(None)
        elif kind == "c":
            self.closed = True

    def send(self, message: str) -> None:
        """Queue a message; it goes out with the next ``xhr_send`` (one in flight)."""
        self._outbox.append(message)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send_loop())

    async def _send_loop(self) -> None:
        url = self.base + "xhr_send"
        while self._outbox and not self.closed:
            batch, self._outbox = self._outbox, []
            try:
                status, _ = await self.http.request("POST", url, json.dumps(batch).encode())
                if status not in (200, 204):
                    self.errors += 1
            except OSError:
                self.errors += 1

    async def flushed(self) -> None:
        while self._sending is not None and not self._sending.done():
            await asyncio.shield(self._sending)

    async def close(self) -> None:
        self.closed = True
        for task in (self._receiving, self._sending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
