"""The front door: accepts TCP connections and serves WebSocket upgrades without Tornado's HTTP stack.

Profiled at 2000 connects/s, Tornado's HTTP/1.1 machinery (stream reads with timeouts, header
parsing, routing, a RequestHandler, then detaching the stream, duplicating the descriptor and
registering it again with the loop) was most of the server's time per WebSocket connection.
Here the first request of a connection is read by a small asyncio protocol: when it is a plain
upgrade at the Engine.IO path that `check_upgrade` accepts, the same loop transport switches to
`WebSocketTransport` (no second registration, no descriptor copy). Everything else (polling,
static files, the API, any upgrade that would be refused, anything unusual in the request) goes
to Tornado's `HTTPServer` with the bytes already read, so it gets exactly Tornado's answer.
Figures: docs/transports.md, "The front door", and bench/README.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import cast

from tornado.escape import parse_qs_bytes
from tornado.httpserver import HTTPServer

from coup.engine.errors import EngineRequestError
from coup.engine.handshake import HandshakeInfo
from coup.engine.server import EngineServer
from coup.transports.arrival import ArrivalIOStream
from coup.transports.origins import OriginPolicy
from coup.transports.proxies import TrustedProxies
from coup.transports.websocket import UpgradeRequired, check_upgrade, start_websocket

log = logging.getLogger(__name__)

#: a request head larger than this is not a plain upgrade: Tornado answers it
MAX_HEAD = 16 * 1024
#: the answer to a connection that did not finish its request head in time (as Node's headersTimeout)
_HEAD_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _NotFast(Exception):
    """This request is not for the fast path: hand it to Tornado."""


class FrontDoor:
    """What the front-door protocols of one node share."""

    __slots__ = ("engine", "head_timeout", "http_server", "origins", "path", "proxies")

    def __init__(self, engine: EngineServer, origins: OriginPolicy, http_server: HTTPServer,
                 path: str, *, proxies: TrustedProxies | None = None, head_timeout: float = 10.0) -> None:
        self.engine = engine
        self.origins = origins
        self.http_server = http_server
        self.path = path.rstrip("/") + "/"
        #: whose forwarded headers to believe (`coup.transports.proxies`); nobody's by default
        self.proxies = proxies or TrustedProxies()
        #: seconds a new connection has to send its first request head; then 408 and close
        self.head_timeout = head_timeout

    def protocol(self) -> FrontDoorProtocol:
        return FrontDoorProtocol(self)

    async def serve(self, sockets: list[socket.socket], backlog: int = 1024) -> list[asyncio.base_events.Server]:
        """Accept connections on listening `sockets` (already bound).

        asyncio listens again with its own backlog (100 unless told), so it is passed here too.
        """
        loop = asyncio.get_running_loop()
        return [await loop.create_server(self.protocol, sock=sock, backlog=backlog) for sock in sockets]

    def _matches_path(self, path: str) -> bool:
        return path == self.path or path == self.path[:-1] or path.startswith(self.path)

    def try_upgrade(self, head: bytes, transport: asyncio.Transport, rest: bytes) -> bool:
        """Serve `head` as a WebSocket upgrade if it is a plain one; False hands it to Tornado."""
        try:
            text = head.decode("latin-1")
            request_line, _, header_block = text.partition("\r\n")
            method, target, version = request_line.split(" ")
            if method != "GET" or version != "HTTP/1.1":
                raise _NotFast()
            path, _, query_text = target.partition("?")
            if not self._matches_path(path):
                raise _NotFast()
            headers: dict[str, str] = {}
            for line in header_block.split("\r\n"):
                name, colon, value = line.partition(":")
                lower = name.lower()
                if not colon or not name or name[0] in " \t" or name != name.strip() or lower in headers:
                    raise _NotFast()  # folded, malformed or repeated header: Tornado's rules apply
                headers[lower] = value.strip()
            if "content-length" in headers or "transfer-encoding" in headers:
                raise _NotFast()
            arguments = parse_qs_bytes(query_text, keep_blank_values=True)
            query = {k: v[-1].decode("utf-8", "replace") for k, v in arguments.items()}
            if query.get("transport") != "websocket":
                raise _NotFast()
            key, probe = check_upgrade(self.engine, self.origins, query,
                                       lambda name: headers.get(name.lower()))
        except (_NotFast, ValueError, UpgradeRequired, EngineRequestError):
            return False  # Tornado answers it, refusals included, exactly as it always does

        def handshake() -> HandshakeInfo:
            address, secure = self._client_address(transport, headers)
            return HandshakeInfo(headers=headers, query=query, address=address, url=target,
                                 secure=secure, issued=time.time(), xdomain="origin" in headers)

        ws = start_websocket(self.engine, key, probe, handshake)
        transport.set_protocol(ws)
        ws.connection_made(transport)
        if rest:
            ws.data_received(rest)
        return True

    def _client_address(self, transport: asyncio.Transport, headers: dict[str, str]) -> tuple[str, bool]:
        """The client's IP and whether it came over TLS, believing forwarded headers only from
        trusted proxies (the same rule as Tornado's side, `ArrivalHTTPServer`)."""
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else "0.0.0.0"
        ip, scheme = self.proxies.client(ip, lambda name: headers.get(name.lower()))
        return ip, scheme == "https"

    def to_tornado(self, transport: asyncio.Transport, data: bytes) -> None:
        """Give the connection, with the bytes read so far, to Tornado's HTTP server."""
        raw = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if raw is None:
            transport.abort()
            return
        try:
            fd = os.dup(raw.fileno())
        except OSError as exc:
            log.info("front door: cannot hand a connection to Tornado: %s", exc)
            transport.abort()
            return
        transport.pause_reading()
        transport.close()  # closes the loop's descriptor only; the duplicate keeps the connection
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        server = self.http_server
        stream = ArrivalIOStream(sock, max_buffer_size=server.max_buffer_size,
                                 read_chunk_size=server.read_chunk_size)
        if data:
            stream._read_buffer += data  # what we read already comes first
            stream._read_buffer_size += len(data)
            stream.mark_arrival()  # read just now, by data_received: this is its place in line
        server.handle_stream(stream, peer)


class FrontDoorProtocol(asyncio.Protocol):
    """Reads a connection's first request head, then becomes a WebSocket or hands over."""

    __slots__ = ("_buffer", "_deadline", "_door", "_transport")

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # a connection that never finishes its head would otherwise be held open for ever
        self._deadline = asyncio.get_running_loop().call_later(self._door.head_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._release()
                self._door.to_tornado(transport, buffer)
            else:
                self._buffer = buffer
            return
        self._release()
        if not self._door.try_upgrade(buffer[:end], transport, buffer[end + 4:]):
            self._door.to_tornado(transport, buffer)

    def _release(self) -> None:
        """The head is read (or handed on): this protocol is done with the connection."""
        self._buffer = b""
        self._transport = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        transport = self._transport
        if transport is None:
            return
        log.info("front door: no complete request head from %s within %.1f s; closing",
                 transport.get_extra_info("peername"), self._door.head_timeout)
        self._release()
        transport.write(_HEAD_TIMED_OUT)
        transport.close()

    def eof_received(self) -> bool | None:
        transport = self._transport
        if transport is not None:
            self._release()
            transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
