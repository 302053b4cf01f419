"""The front door: accepts TCP connections and serves WebSocket upgrades and Engine.IO
long-polling without Tornado's HTTP stack.

Profiled at 2000 connects/s, Tornado's HTTP/1.1 machinery (stream reads with timeouts, header
parsing, routing, a RequestHandler, then detaching the stream, duplicating the descriptor and
registering it again with the loop) was most of the server's time per WebSocket connection,
and 85-90 % of it per long-poll. Here each request head of a connection is read by a small
asyncio protocol: a plain upgrade at the Engine.IO path that `check_upgrade` accepts switches
the same loop transport to `WebSocketTransport` (no second registration, no descriptor copy);
a polling request of a local session is answered by `PollingDoor` on the same keep-alive
connection. Everything else (static files, the API, SockJS, any request that would be refused,
anything unusual in the request) goes, with the rest of the connection, to Tornado's
`HTTPServer` with the bytes already read, so it gets exactly Tornado's answer.
Figures: docs/transports.md, "The front door" and "Long-polling through the front door", and
bench/README.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time
from typing import cast

from tornado.httpserver import HTTPServer

from coup.engine.errors import EngineRequestError
from coup.engine.server import EngineServer
from coup.logs import AccessLog
from coup.transports.arrival import ArrivalIOStream
from coup.transports.http1 import FrontRequest, NotFast
from coup.transports.origins import OriginPolicy
from coup.transports.polling import HeldPoll, PollingDoor
from coup.transports.proxies import TrustedProxies
from coup.transports.sockjs.door import DoorAnswer, SockJSDoor
from coup.transports.websocket import UpgradeRequired, check_upgrade, start_websocket

log = logging.getLogger(__name__)

#: a request head larger than this is not a plain upgrade: Tornado answers it
MAX_HEAD = 16 * 1024
#: the answer to a connection that did not finish its request head in time (as Node's headersTimeout)
_HEAD_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class FrontDoor:
    """What the front-door protocols of one node share."""

    __slots__ = ("body_timeout", "closing", "connections", "engine", "head_timeout", "http_server",
                 "keepalive_timeout", "origins", "path", "polling", "proxies", "sockjs")

    def __init__(self, engine: EngineServer, origins: OriginPolicy, http_server: HTTPServer,
                 path: str, *, proxies: TrustedProxies | None = None, head_timeout: float = 10.0,
                 body_timeout: float = 10.0, keepalive_timeout: float = 10.0, access: AccessLog | None = None,
                 sockjs: SockJSDoor | None = None) -> None:
        self.engine = engine
        self.origins = origins
        self.http_server = http_server
        self.path = path.rstrip("/") + "/"
        #: whose forwarded headers to believe (`coup.transports.proxies`); nobody's by default
        self.proxies = proxies or TrustedProxies()
        #: seconds a request head has from its first byte (a new connection's first: from its opening)
        self.head_timeout = head_timeout
        #: seconds a connection may stay idle between two requests (Node's keepAliveTimeout)
        self.keepalive_timeout = keepalive_timeout
        #: seconds a POST's body has to arrive after its head
        self.body_timeout = body_timeout
        #: long-polling requests served here, not by Tornado
        self.polling = PollingDoor(engine, origins, self.proxies, access)
        #: SockJS xhr-streaming and xhr_send served here, not by Tornado (None: all to Tornado)
        self.sockjs = sockjs
        #: connections this door still serves (keep-alive polling; not yet handed on)
        self.connections: set[FrontDoorProtocol] = set()
        #: the node is stopping: each connection closes after its answer
        self.closing = False

    def protocol(self) -> FrontDoorProtocol:
        return FrontDoorProtocol(self)

    async def serve(self, sockets: list[socket.socket], backlog: int = 1024) -> list[asyncio.base_events.Server]:
        """Accept connections on listening `sockets` (already bound).

        asyncio listens again with its own backlog (100 unless told), so it is passed here too.
        """
        loop = asyncio.get_running_loop()
        return [await loop.create_server(self.protocol, sock=sock, backlog=backlog) for sock in sockets]

    def close_idle(self) -> None:
        """Close the connections between two requests (as Tornado's `close_all_connections`);
        a held poll's connection closes once it is answered."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()

    def matches_path(self, path: str) -> bool:
        return path == self.path or path == self.path[:-1] or path.startswith(self.path)

    def service(self, path: str) -> PollingDoor | SockJSDoor:
        """Who serves a request for `path` here; `NotFast`: nobody, Tornado does."""
        if self.matches_path(path):
            return self.polling
        sockjs = self.sockjs
        if sockjs is not None and sockjs.matches_path(path):
            return sockjs
        raise NotFast()

    def try_upgrade(self, request: FrontRequest, transport: asyncio.Transport, rest: bytes) -> bool:
        """Serve `request` as a WebSocket upgrade if it is a plain one; False hands it to Tornado."""
        headers = request.headers
        query = request.query
        try:
            if request.method != "GET" or query.get("transport") != "websocket":
                raise NotFast()
            if "content-length" in headers or "transfer-encoding" in headers:
                raise NotFast()
            key, probe = check_upgrade(self.engine, self.origins, query, request.header)
        except (NotFast, UpgradeRequired, EngineRequestError):
            return False  # Tornado answers it, refusals included, exactly as it always does
        proxies = self.proxies
        ws = start_websocket(self.engine, key, probe, lambda: request.handshake_info(proxies),
                             headers.get("sec-websocket-extensions"))
        transport.set_protocol(ws)
        ws.connection_made(transport)
        if rest:
            ws.data_received(rest)
        return True

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
    """Reads a connection's request heads: a WebSocket upgrade switches protocol, a polling
    request is served here (and the next head read, keep-alive), anything else goes to Tornado
    with the bytes read so far, and with it the rest of the connection.

    One request at a time, as HTTP/1.1 has it: bytes that come while a poll is held (or a
    SockJS stream runs) wait in the buffer for its answer. The read interest is never flipped
    (Tornado's was, per request).
    """

    __slots__ = (
        "_body_wait",
        "_buffer",
        "_deadline",
        "_door",
        "_due",
        "_held",
        "_idle",
        "_loop",
        "_paused",
        "_peer",
        "_served",
        "_serving",
        "_stream",
        "_transport",
    )

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        #: `loop.time()` by which the next request must be complete; 0: none due (`_arm`)
        self._due = 0.0
        self._peer = "0.0.0.0"
        #: the GET waiting for its session's packets, if any
        self._held: HeldPoll | None = None
        #: the SockJS stream or poll this connection is answering, if any
        self._stream: DoorAnswer | None = None
        #: inside `_serve`: an answer written now does not start the next request itself
        self._serving = False
        #: requests answered on this connection (after the first, a silent close on idle timeout)
        self._served = 0
        #: the deadline armed is the body's (`body_timeout`), not the head's
        self._body_wait = False
        #: the deadline armed is the keep-alive idle one: no byte of the next request yet
        self._idle = False
        #: reading paused: too much came behind a held poll
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # once per connection: on CPython 3.11 `get_running_loop` is a getpid() system call
        self._loop = asyncio.get_running_loop()
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = peer[0]
        self._door.connections.add(self)
        # a connection that never finishes its head would otherwise be held open for ever
        self._arm(self._door.head_timeout)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        buffer = self._buffer = self._buffer + data if self._buffer else data
        if self._held is None and self._stream is None and not self._serving:
            self._serve()
        elif len(buffer) > MAX_HEAD + self._door.polling.max_body and not self._paused:
            self._paused = True  # a client sending on and on behind its held poll: wait for its answer
            self._transport.pause_reading()

    def _serve(self) -> None:
        """Serve the requests complete in the buffer, until one is held or handed on."""
        self._serving = True
        try:
            while self._transport is not None and self._held is None and self._stream is None and self._buffer:
                if not self._next():
                    break
        finally:
            self._serving = False

    def _next(self) -> bool:
        """Serve the request at the start of the buffer; False: it is not all there yet."""
        transport = self._transport
        assert transport is not None
        door = self._door
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._hand_on(buffer)
            elif not self._due or self._idle:
                # a request has begun: its head gets its own head_timeout from its first
                # byte, not what was left of the idle time (as Node's keepAliveTimeout)
                self._arm(door.head_timeout)
            return False
        try:
            request = FrontRequest(buffer[:end], self._peer, time.monotonic())
            service = door.service(request.path)
            length = request.body_length()
        except (NotFast, ValueError):
            self._hand_on(buffer)
            return False
        if service is door.polling and request.query.get("transport") == "websocket":
            self._release()
            if not door.try_upgrade(request, transport, buffer[end + 4:]):
                door.to_tornado(transport, buffer)
            return False
        if length > service.max_body:
            self._hand_on(buffer)  # Tornado's handler refuses it and ends the session
            return False
        start = end + 4
        if len(buffer) < start + length:  # the body is still coming
            if not self._body_wait:
                self._arm(door.body_timeout)
                self._body_wait = True
            return False
        answer = service.serve(request, buffer[start:start + length])
        if answer is None:
            self._hand_on(buffer)
            return False
        self._disarm()
        self._buffer = buffer[start + length:]
        if isinstance(answer, DoorAnswer):
            self._stream = answer
            answer.start(transport, self._stream_ended)
            return True
        if isinstance(answer, HeldPoll):
            self._held = answer
            answer.waiter.add_done_callback(self._poll_released)
            return True
        self._answer(answer, request.keeps_alive())
        return True

    def _poll_released(self, waiter: asyncio.Future[None]) -> None:
        held = self._held
        if held is None or held.waiter is not waiter or waiter.cancelled():
            return  # the client hung up: what was queued waits for its next GET
        self._held = None
        if self._transport is not None:
            self._waited(self._door.polling.answer_held(held), held.request.keeps_alive())

    def _stream_ended(self, keep_alive: bool) -> None:
        """The SockJS stream wrote its last chunk: on to the next request, as after any answer."""
        self._stream = None
        if self._transport is not None:
            self._waited(None, keep_alive)

    def _waited(self, answer: bytes | None, keep_alive: bool) -> None:
        """The request that kept this connection waiting is answered (`answer` is written here;
        None: it was written already): reading resumes, and the next request is served."""
        transport = self._transport
        assert transport is not None
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if answer is not None:
            transport.write(answer)
        self._answered(keep_alive)
        if self._transport is not None and not self._serving:
            self._serve()

    def _answer(self, data: bytes, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(data)
        self._answered(keep_alive)

    def _answered(self, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        self._served += 1
        if not keep_alive or self._door.closing:
            self._release()
            transport.close()
        elif not self._buffer:
            self._arm(self._door.keepalive_timeout, idle=True)

    def _hand_on(self, buffer: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._release()
        self._door.to_tornado(transport, buffer)

    def _arm(self, seconds: float, *, idle: bool = False) -> None:
        """Close the connection unless a request is complete within `seconds` (`idle`: the
        connection is between two requests, and the next one's first byte re-arms it).

        Lazily: a request or answer per poll only moves `_due`; the loop timer behind it
        (one per connection) is created when none runs and, when it fires early, set again.
        """
        loop = self._loop
        due = self._due = loop.time() + seconds
        self._body_wait = False
        self._idle = idle
        timer = self._deadline
        if timer is not None and timer.when() > due:
            timer.cancel()
            timer = None
        if timer is None:
            self._deadline = loop.call_at(due, self._check_due)

    def _disarm(self) -> None:
        self._body_wait = False
        self._idle = False
        self._due = 0.0

    def _check_due(self) -> None:
        self._deadline = None
        if self._transport is None or not self._due:
            return
        loop = self._loop
        if loop.time() < self._due:
            self._deadline = loop.call_at(self._due, self._check_due)
            return
        self._timed_out()

    def _release(self) -> None:
        """This protocol is done with the connection (closed, upgraded or handed on)."""
        self._buffer = b""
        self._transport = None
        self._disarm()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._door.connections.discard(self)
        held, self._held = self._held, None
        if held is not None:
            held.transport.cancel_poll()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.hang_up()

    def close_if_idle(self) -> None:
        transport = self._transport
        if transport is not None and self._held is None and self._stream is None and not self._serving:
            self._release()
            transport.close()

    def _timed_out(self) -> None:
        transport = self._transport
        if transport is None or self._held is not None or self._stream is not None:
            return
        partial = bool(self._buffer) and not self._body_wait
        if not self._buffer and _unread(transport):
            # a request came in before its connection's deadline fired but after the loop
            # last looked (a loaded loop runs its timers late): closing now would drop a
            # request the client has sent, which it must not resend if it is a POST. The
            # loop reads it next; it gets a head deadline of its own
            self._arm(self._door.head_timeout)
            return
        log.info("front door: no complete request from %s within its time; closing", self._peer)
        self._release()
        if partial or not self._served:
            transport.write(_HEAD_TIMED_OUT)
        # else an idle keep-alive connection or a late body: closed without a word, as Tornado does
        transport.close()

    def eof_received(self) -> bool | None:
        transport = self._transport
        if transport is not None:
            self._release()  # a held poll is cancelled, as Tornado does when its stream closes
            transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()


def _unread(transport: asyncio.Transport) -> bool:
    """Whether the kernel holds bytes of this connection (or its peer's close) that the loop
    has not read yet (one poll system call: only when a deadline fires)."""
    raw = transport.get_extra_info("socket")
    fd = raw.fileno() if raw is not None else -1
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
