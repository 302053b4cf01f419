"""A minimal HTTP/1.1 keep-alive client for load generators: cheap enough to not be the bottleneck.

A long-poll generator makes one request per delivery, so what each request costs the
generator decides whether the run measures the server or the generator; this client does
only what the Engine.IO and SockJS polling clients need, with none of aiohttp's layers: GET and POST on one host,
keep-alive connections pooled (last in, first out), bodies with Content-Length or chunked
(a chunked answer can be read as it streams, for SockJS xhr-streaming), nothing else (no
redirects, cookies, compression or TLS).

It has aiohttp's shape where `bench/pollgen.py` uses it (``async with http.get(url) as r:
await r.text()``), so the same `PollingClient` runs on either.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any


class RequestFailed(ConnectionError):
    """The connection broke before the whole answer arrived."""


class _Connection(asyncio.Protocol):
    """One TCP connection, one request at a time; parses the answer as its bytes arrive."""

    def __init__(self, client: RawHTTP) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self._buf = b""
        self._future: asyncio.Future[tuple[int, bytes]] | None = None
        self._on_chunk: Callable[[bytes], None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._head_done = False
        self._status = 0
        self._keep = True
        self._chunked = False
        self._left = 0  # Content-Length bytes still to come, or the current chunk's
        self._chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: CRLF after last chunk
        self._body: list[bytes] = []
        self._got_any = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        future = self._future
        if future is not None and not future.done():
            future.set_exception(RequestFailed("connection closed" if self._got_any else "closed before answer"))

    def request(self, head: bytes, body: bytes, on_chunk: Callable[[bytes], None] | None
                ) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self._reset()
        self.used = True
        self._on_chunk = on_chunk
        future = self._future = self.client.loop.create_future()
        self.transport.write(head + body if body else head)
        return future

    def data_received(self, data: bytes) -> None:
        self._got_any = True
        buf = self._buf + data if self._buf else data
        self._buf = b""
        if not self._head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            head = buf[:end].lower()
            buf = buf[end + 4:]
            self._status = int(head[9:12])
            self._keep = b"\nconnection: close" not in head
            if b"\ntransfer-encoding: chunked" in head:
                self._chunked = True
            else:
                at = head.find(b"\ncontent-length:")
                stop = head.find(b"\r", at + 16)
                self._left = int(head[at + 16:stop if stop > 0 else len(head)]) if at >= 0 else 0
            self._head_done = True
            if not self._chunked and self._left == 0:
                self._finish()
                return
        if self._chunked:
            self._chunks(buf)
            return
        take = buf if len(buf) <= self._left else buf[:self._left]
        self._left -= len(take)
        self._deliver(take)
        if self._left == 0:
            self._finish()

    def _chunks(self, buf: bytes) -> None:
        at = 0
        size = len(buf)
        while at < size:
            state = self._chunk_state
            if state == 1:
                take = min(self._left, size - at)
                self._deliver(buf[at:at + take])
                at += take
                self._left -= take
                if self._left == 0:
                    self._chunk_state = 2
                continue
            end = buf.find(b"\r\n", at)
            if end < 0:
                self._buf = buf[at:]
                return
            if state == 0:
                self._left = int(buf[at:end].split(b";", 1)[0], 16)
                self._chunk_state = 1 if self._left else 3
            elif state == 2:
                self._chunk_state = 0
            else:  # the empty line after the last chunk (no trailers expected)
                at = end + 2
                self._finish()
                return
            at = end + 2

    def _deliver(self, data: bytes) -> None:
        if not data:
            return
        if self._on_chunk is not None:
            self._on_chunk(data)
        else:
            self._body.append(data)

    def _finish(self) -> None:
        future, self._future = self._future, None
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        if self._keep:
            self.client.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        if future is not None and not future.done():
            future.set_result((self._status, body))


class Response:
    """What `PollingClient` reads of an answer (aiohttp's names)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    async def text(self) -> str:
        return self.body.decode()

    async def read(self) -> bytes:
        return self.body


class _Request:
    __slots__ = ("client", "data", "method", "url")

    def __init__(self, client: RawHTTP, method: str, url: str, data: bytes) -> None:
        self.client, self.method, self.url, self.data = client, method, url, data

    async def __aenter__(self) -> Response:
        status, body = await self.client.request(self.method, self.url, self.data)
        return Response(status, body)

    async def __aexit__(self, *exc: Any) -> None:
        return None


class RawHTTP:
    """Keep-alive connections to one ``host:port``; URLs may be absolute or paths."""

    def __init__(self, host: str, port: int, *, content_type: str = "text/plain;charset=UTF-8") -> None:
        self.host = host
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.connections = 0
        self._host_line = f"Host: {host}:{port}\r\n".encode()
        self._content_type = f"Content-Type: {content_type}\r\n".encode()

    def get(self, url: str) -> _Request:
        return _Request(self, "GET", url, b"")

    def post(self, url: str, data: bytes = b"") -> _Request:
        return _Request(self, "POST", url, data)

    async def _connection(self) -> _Connection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
        _, protocol = await self.loop.create_connection(lambda: _Connection(self), self.host, self.port)
        self.connections += 1
        return protocol

    async def request(self, method: str, url: str, data: bytes = b"",
                      on_chunk: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        """(status, body); with `on_chunk` the body goes there piece by piece as it arrives."""
        if url.startswith("http"):
            url = "/" + url.split("/", 3)[3]
        head = f"{method} {url} HTTP/1.1\r\n".encode() + self._host_line
        if method == "POST":
            head += self._content_type + f"Content-Length: {len(data)}\r\n".encode()
        head += b"\r\n"
        for attempt in range(2):
            connection = await self._connection()
            reused = connection.used
            try:
                return await connection.request(head, data, on_chunk)
            except RequestFailed as exc:
                # a kept-alive connection the server closed while idle: once more on a new one
                if attempt or not reused or "before answer" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.idle.clear()
