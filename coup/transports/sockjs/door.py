"""SockJS xhr-streaming, xhr polling and xhr_send without Tornado: the front door serves them for
local sessions.

Through Tornado every flush of a stream was `RequestHandler.flush` → `HTTP1Connection.write`
→ `IOStream.write`, a `Future` each (a getpid() each on CPython 3.11): 35 % of the server's
samples at 15k xhr-streaming deliveries/s. Here a stream is a `DoorStream`, a stand-in for the
library's transport handler that the session (`SockJSSession`) drives exactly as it drives
`XhrStreamingHandler`, writing each frame as one chunk with one `transport.write`; a poll is a
`DoorPoll`, its answer one `transport.write`.

Only what those handlers would serve is taken, with their bytes on the wire (headers, CORS,
prelude, frames, the response limit, close frames); anything else (refusals, OPTIONS, cookies,
sessions of other nodes, a session a cluster must claim first, other transports) is declined
(None) before anything is done, and Tornado answers it as before.
"""

from __future__ import annotations

import asyncio
import http.cookies
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sockjs.tornado.session import ConnectionInfo
from tornado.escape import parse_qs_bytes
from tornado.httputil import HTTPHeaders, parse_cookie

from coup.logs import AccessLog
from coup.metrics import Metrics
from coup.transports.http1 import LAST_CHUNK, FrontRequest, chunk, chunked_head, empty_head, response
from coup.transports.proxies import TrustedProxies
from coup.transports.sockjs.handlers import (
    JAVASCRIPT,
    NO_CACHE,
    TEXT,
    XHR_STREAMING_PRELUDE,
    cors_headers,
    deliver_messages,
    parse_messages,
)

if TYPE_CHECKING:
    from coup.transports.sockjs.router import SockJSRouter

log = logging.getLogger(__name__)

#: what `StreamEnded` is told: whether the connection may serve another request
StreamEnded = Callable[[bool], None]


class DoorRequest:
    """What the session and the bridge read of the request that opened a session
    (`get_conn_info`, `on_open`): the parts of Tornado's `HTTPServerRequest` they use."""

    __slots__ = ("arguments", "cookies", "headers", "path", "protocol", "remote_ip")

    def __init__(self, request: FrontRequest, proxies: TrustedProxies) -> None:
        ip, secure = request.client(proxies)
        self.remote_ip = ip
        self.protocol = "https" if secure else "http"
        self.path = request.path
        self.headers = HTTPHeaders(request.headers)
        self.arguments = parse_qs_bytes(request.target.partition("?")[2], keep_blank_values=True)
        cookies: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        header = request.headers.get("cookie")
        if header:
            for name, value in parse_cookie(header).items():
                try:
                    cookies[name] = value
                except http.cookies.CookieError:
                    pass  # as Tornado's `HTTPServerRequest.cookies`
        self.cookies = cookies


class DoorAnswer:
    """One answer of a session request on a front-door connection, attached to its session as
    the library's transport handler would be (`send_pack`, `active`, `session_closed`, ...)."""

    name = "override"
    #: when the server read the request (`coup.transports.arrival`): not known, so it never
    #: overtakes a waiting poll, and a poll waiting here is never overtaken
    arrival = None

    __slots__ = ("_door", "_ended", "_finished", "_keep_alive", "_session_id", "_started", "_transport",
                 "active", "front", "request", "session")

    def __init__(self, door: SockJSDoor, front: FrontRequest, session_id: str) -> None:
        self._door = door
        self.front = front
        self._session_id = session_id
        self.request = DoorRequest(front, door.proxies)
        self._keep_alive = front.keeps_alive()
        self._started = front.started
        self._transport: asyncio.Transport | None = None
        self._ended: StreamEnded | None = None
        self._finished = False
        self.session: Any = None
        #: the session may send now
        self.active = True

    def start(self, transport: asyncio.Transport, ended: StreamEnded) -> None:
        """Attach to (or open) the session, as the Tornado handler's `_attach_session` does."""
        self._transport = transport
        self._ended = ended
        router = self._door.router
        session = router.get_session(self._session_id)
        if session is None:
            session = router.create_session(self._session_id)
        if not session.set_handler(self, self.heartbeats):  # answered with a close frame
            self.finish()
            return
        self.session = session
        session.verify_state()
        if self.session is not None:  # not answered (an `o` frame answers a poll)
            self.attached(session)

    #: does the session send heartbeats from the start (streams), or only once idle (polls)?
    heartbeats = True

    def attached(self, session: Any) -> None:
        session.flush()

    # ------------------------------------------------------------------ what the session calls

    def get_conn_info(self) -> Any:
        request = self.request
        return ConnectionInfo(request.remote_ip, request.cookies, request.arguments, request.headers, request.path)

    def send_pack(self, message: str, binary: bool = False) -> None:
        raise NotImplementedError

    def can_send_close(self) -> bool:
        return self._transport is not None and not self._finished

    def session_closed(self) -> None:
        self._detach()
        self.finish()

    # ------------------------------------------------------------------ ending

    def _detach(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.remove_handler(self)

    def finish(self) -> None:
        """End the answer with nothing more to say (`ending`)."""
        self._end(self.ending())

    def ending(self) -> bytes:
        raise NotImplementedError

    def _end(self, data: bytes) -> None:
        """Write the answer's last bytes; the connection then serves its next request."""
        if self._finished:
            return
        self._finished = True
        self.active = False
        transport, self._transport = self._transport, None
        ended, self._ended = self._ended, None
        if transport is None:
            return
        transport.write(data)
        self._door.logged(self.front, 200, self._started)
        if ended is not None:
            ended(self._keep_alive)

    def hang_up(self) -> None:
        """The connection is gone (or was cut off): the session closes, as the library's
        `on_connection_close` closes it."""
        if self._finished:
            return
        self._finished = True
        self.active = False
        self._transport = None
        self._ended = None
        session = self.session
        if session is not None:
            session.close(1002, "Connection interrupted")
        self._detach()


class DoorStream(DoorAnswer):
    """An xhr-streaming answer: the prelude, then frame after frame, one chunk each, until
    `response_limit` bytes went out (`XhrStreamingHandler`)."""

    name = "xhr_streaming"

    __slots__ = ("amount_limit",)

    def __init__(self, door: SockJSDoor, front: FrontRequest, session_id: str) -> None:
        super().__init__(door, front, session_id)
        #: bytes of frames still allowed before the answer ends (the library's `response_limit`)
        self.amount_limit: int = door.router.settings["response_limit"]

    def start(self, transport: asyncio.Transport, ended: StreamEnded) -> None:
        transport.write(chunked_head(200, JAVASCRIPT, self._door.session_headers(self.front))
                        + chunk(XHR_STREAMING_PRELUDE.encode()))
        super().start(transport, ended)

    def send_pack(self, message: str, binary: bool = False) -> None:
        transport = self._transport
        if transport is None or self._finished:
            return
        data = message.encode()  # the frame is the message and "\n", written as one chunk
        transport.write(b"%x\r\n%s\n\r\n" % (len(data) + 1, data))
        self.amount_limit -= len(data) + 1
        if self.amount_limit <= 0 and self.active:
            # as the library: frames queued meanwhile wait for the next request, a close
            # frame still goes behind this one, and the answer ends once this turn is over
            self.active = False
            asyncio.get_running_loop().call_soon(self._limit_reached)
        elif transport.get_write_buffer_size() > self._door.max_buffer:
            self._slow_consumer(transport)

    def ending(self) -> bytes:
        return LAST_CHUNK

    def _limit_reached(self) -> None:
        self._detach()
        self.finish()

    def _slow_consumer(self, transport: asyncio.Transport) -> None:
        """More than `max_buffered_bytes` unsent: the client does not read; cut it off."""
        log.warning("sockjs session %s: slow consumer, %d bytes unsent on xhr_streaming; closing",
                    self._session_id, transport.get_write_buffer_size())
        metrics = self._door.metrics
        if metrics is not None:
            metrics.slow_consumer("sockjs")
        self.hang_up()
        transport.abort()


class DoorPoll(DoorAnswer):
    """An xhr-polling request: what is queued, or a wait for the next frame (`XhrPollingHandler`)."""

    name = "xhr"
    heartbeats = False

    __slots__ = ()

    def attached(self, session: Any) -> None:
        if session.send_queue:
            session.flush()
        else:
            session.start_heartbeat()

    def send_pack(self, message: str, binary: bool = False) -> None:
        if self._transport is None or self._finished:
            return
        # the session is free at once for the client's next poll (`_PollingMixin.write_frame`)
        self._detach()
        # chunked, as Tornado frames it (the handler flushes the frame, then finishes)
        self._end(chunked_head(200, JAVASCRIPT, self._door.session_headers(self.front))
                  + chunk((message + "\n").encode()) + LAST_CHUNK)

    def ending(self) -> bytes:
        # closed without a frame: Tornado's empty answer (its default type, no body)
        return response(200, "text/html; charset=UTF-8", self._door.session_headers(self.front), b"")


class SockJSDoor:
    """The SockJS requests the front door serves itself: ``xhr_streaming`` and ``xhr_send`` of
    sessions this node holds (or, without a cluster, opens)."""

    __slots__ = ("_session_url", "access", "creates", "max_buffer", "metrics", "prefix", "proxies", "router")

    def __init__(self, router: SockJSRouter, proxies: TrustedProxies, access: AccessLog | None, *,
                 creates: bool, max_buffer: int, metrics: Metrics | None = None) -> None:
        self.router = router
        self.proxies = proxies
        self.access = access
        #: may a new session be opened here? Not in a cluster: its home must be claimed first
        self.creates = creates
        #: bytes a stream may hold unsent before its client is cut off (a slow consumer)
        self.max_buffer = max_buffer
        self.metrics = metrics
        self.prefix = router.prefix
        # the routes of `SockJSRouter._routes`, session id as Tornado passes it (no escapes)
        self._session_url = re.compile(re.escape(self.prefix) + r"/[^/.]+/([^/.%]+)/(xhr_streaming|xhr_send|xhr)")

    @property
    def max_body(self) -> int:
        """A larger body goes to Tornado (its own limits and answers)."""
        return int(self.router.max_message_size)

    def matches_path(self, path: str) -> bool:
        return path.startswith(self.prefix + "/")

    def session_headers(self, request: FrontRequest) -> list[tuple[str, str]]:
        """`open_request`'s headers (CORS, then no caching) for an allowed origin."""
        headers = request.headers
        cors = cors_headers(headers.get("origin"), True, headers.get("access-control-request-headers"))
        cors.append(("Cache-Control", NO_CACHE))
        return cors

    def serve(self, request: FrontRequest, body: bytes) -> bytes | DoorAnswer | None:
        """An answer now, a stream to start, or None: Tornado's to serve."""
        if request.method != "POST":
            return None
        found = self._session_url.fullmatch(request.path)
        if found is None:
            return None
        router = self.router
        settings = router.settings
        if settings["jsessionid"] or not request.keeps_alive():
            return None
        headers = request.headers
        if not router.origin_allowed(headers.get("origin"), headers.get("host")):
            return None
        session_id, kind = found.group(1), found.group(2)
        session = router.get_session(session_id)
        if kind == "xhr_send":
            return self.send(request, session, body)
        if kind in settings["disabled_transports"] or body:
            return None
        if session is None and not self.creates:
            return None
        return DoorStream(self, request, session_id) if kind == "xhr_streaming" else DoorPoll(self, request, session_id)

    def send(self, request: FrontRequest, session: Any, body: bytes) -> bytes | None:
        """``xhr_send``: the body's messages to the session; refusals are Tornado's to give."""
        if session is None or session.is_closed:
            return None
        messages = parse_messages(body.decode("utf-8", "replace"))
        if isinstance(messages, str):
            return None
        failure = deliver_messages(session, messages)
        headers = self.session_headers(request)
        if failure is not None:
            self.logged(request, 500, request.started)
            return response(500, TEXT, headers, failure.encode())
        self.logged(request, 204, request.started)
        return empty_head(204, TEXT, headers)

    def logged(self, request: FrontRequest, status: int, started: float) -> None:
        if self.access is not None:
            self.access.entry(request.method, request.path, status, lambda: time.monotonic() - started,
                              request.client(self.proxies)[0])


__all__ = ["DoorAnswer", "DoorPoll", "DoorStream", "SockJSDoor"]
