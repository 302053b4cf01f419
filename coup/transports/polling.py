"""HTTP long-polling: GET fetches packets (held until there are some), POST delivers them.

POSTs go to their own handler, which streams the body in (`stream_request_body`) so that
maxPayload is enforced here whatever the size: an oversized body gets our 400 and ends the
session, where a body over Tornado's own `max_body_size` would only have dropped the
connection. GETs stay on a plain handler: a streaming handler that answers before the body
is read makes Tornado close the keep-alive connection, which clients then trip over.
"""

from __future__ import annotations

import asyncio
import time

from tornado.web import stream_request_body

from coup.engine.errors import EngineErrorCode, EngineRequestError
from coup.engine.polling import PollingTransport
from coup.engine.server import EngineServer
from coup.engine.session import Session, SessionState
from coup.logs import AccessLog
from coup.protocol.errors import PayloadTooLarge
from coup.transports.arrival import hung_up
from coup.transports.base import EngineRequestHandler, log_refusal, refusal_body
from coup.transports.http1 import FrontRequest, response
from coup.transports.origins import OriginPolicy
from coup.transports.proxies import TrustedProxies


def request_error(engine: EngineServer, origins: OriginPolicy, method: str | None, query: dict[str, str],
                  origin: str | None, host: str | None) -> EngineRequestError | None:
    """Why a request at the Engine.IO path must be refused before it is served, if it must."""
    if method not in ("GET", "POST", "OPTIONS"):
        code = EngineErrorCode.BAD_REQUEST if "sid" in query else EngineErrorCode.BAD_HANDSHAKE_METHOD
        return EngineRequestError(code, f"method {method}")
    try:
        engine.check_request(query)
    except EngineRequestError as exc:
        return exc
    if method != "OPTIONS" and not origins.allows(origin, host):
        return EngineRequestError(EngineErrorCode.FORBIDDEN, f"origin {origin!r}")
    return None


def polling_transport(engine: EngineServer, sid: str, *, closing: bool = False) -> PollingTransport:
    session: Session = engine.get(sid, closing=closing)
    transport = session.transport
    if not isinstance(transport, PollingTransport):
        raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "session is not on polling")
    return transport


def _counted(engine: EngineServer, body: str) -> bytes:
    data = body.encode("utf-8")
    if engine.metrics is not None:
        engine.metrics.bytes_sent["polling"] += len(data)
    return data


class PollingHandler(EngineRequestHandler):
    """GET (the handshake and every poll), OPTIONS (CORS preflight); other methods get 400."""

    _transport: PollingTransport | None = None

    def prepare(self) -> None:
        error = self.request_error()
        if error is not None:
            self.refuse(error)

    def request_error(self) -> EngineRequestError | None:
        request = self.request
        return request_error(self.engine, self.origins, request.method, self.query(),
                             request.headers.get("Origin"), request.headers.get("Host"))

    def polling_transport(self, sid: str, *, closing: bool = False) -> PollingTransport:
        return polling_transport(self.engine, sid, closing=closing)

    def compute_etag(self) -> None:
        """No Etag: a long-poll's answer is never cached (``no-store``), and the front door's
        fast path (`PollingDoor`) answers the same without one."""
        return None

    async def get(self) -> None:
        if hung_up(self.request):
            return  # the client left before we ran: nobody to open a session for or hold a poll for
        sid = self.get_query_argument("sid", None)
        try:
            if sid is None:
                session = self.engine.open_polling(self.handshake_info())
                assert isinstance(session.transport, PollingTransport)
                transport = session.transport
            else:
                # a session closed by the server still hands its last packets to the next GET
                transport = self.polling_transport(sid, closing=True)
            self._transport = transport
            body = await transport.poll()
        except EngineRequestError as exc:
            self.refuse(exc)
            return
        except asyncio.CancelledError:
            return  # the client hung up; nothing to answer
        finally:
            self._transport = None
        self.set_cors_headers()
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(_counted(self.engine, body))

    def options(self) -> None:
        if not self.origin_allowed():
            self.refuse(EngineRequestError(EngineErrorCode.FORBIDDEN, "preflight from a foreign origin"))
            return
        self.set_cors_headers()
        self.set_header("Access-Control-Allow-Methods", "GET, POST")
        requested = self.request.headers.get("Access-Control-Request-Headers")
        if requested:
            self.set_header("Access-Control-Allow-Headers", requested)
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.finish()

    def on_connection_close(self) -> None:
        # Tornado's own handling first: for a streamed POST it ends the wait for the rest of
        # the body; without it a request cut off mid-body kept its handler (and the body read
        # so far) alive until the process exited
        super().on_connection_close()
        if self._transport is not None:
            self._transport.cancel_poll()


@stream_request_body
class PollingPostHandler(PollingHandler):
    """POST: packets from the client, at most maxPayload bytes per request."""

    _chunks: list[bytes]
    _size = 0
    _error: EngineRequestError | None = None

    def prepare(self) -> None:
        self._chunks = []
        self._size = 0
        # answered in post(), once the body is read, so the connection stays reusable
        self._error = self.request_error()
        length = self.request.headers.get("Content-Length", "")
        if self._error is None and length.isdigit() and int(length) > self.engine.options.max_payload:
            self._payload_too_large(int(length))

    def on_connection_close(self) -> None:
        self._chunks = []
        super().on_connection_close()

    def data_received(self, chunk: bytes) -> None:
        if self._finished or self._error is not None:
            return  # refused: Tornado still reads (and we drop) the rest of the body
        self._size += len(chunk)
        if self._size > self.engine.options.max_payload:
            self._payload_too_large(self._size)
            return
        self._chunks.append(chunk)

    def _payload_too_large(self, size: int) -> None:
        """A body over maxPayload ends the session, as any malformed input does."""
        self._chunks = []
        limit = self.engine.options.max_payload
        sid = self.get_query_argument("sid", None)
        session = self.engine.sessions.get(sid) if sid is not None else None
        if session is not None:
            session.protocol_error(PayloadTooLarge(f"POST body of {size} bytes exceeds maxPayload {limit}"))
        self.refuse(EngineRequestError(EngineErrorCode.BAD_REQUEST, f"POST body over maxPayload ({size} bytes)"))

    def post(self) -> None:
        sid = self.get_query_argument("sid", None)
        try:
            if self._error is not None:
                raise self._error
            if sid is None:
                raise EngineRequestError(EngineErrorCode.BAD_HANDSHAKE_METHOD, "POST without sid")
            self.polling_transport(sid).receive_payload(b"".join(self._chunks))
        except EngineRequestError as exc:
            self.refuse(exc)
            return
        self.set_cors_headers()
        self.set_header("Content-Type", "text/html")
        self.finish(b"ok")


class HeldPoll:
    """A GET the front door holds until its session has packets (`PollingDoor.answer_held`)."""

    __slots__ = ("request", "transport", "waiter")

    def __init__(self, request: FrontRequest, transport: PollingTransport, waiter: asyncio.Future[None]) -> None:
        self.request = request
        self.transport = transport
        self.waiter = waiter


class PollingDoor:
    """Long-polling without Tornado: the front door's keep-alive connections bring it each
    request of a local polling session (and each polling handshake).

    It serves only what `PollingHandler` / `PollingPostHandler` would serve, with their
    answers byte for byte (headers, CORS, refusals, access log, metrics); whatever they would
    refuse before touching a session, or anything else, it declines (None) before doing
    anything, and Tornado answers it.
    """

    __slots__ = ("access", "engine", "origins", "proxies")

    def __init__(self, engine: EngineServer, origins: OriginPolicy, proxies: TrustedProxies,
                 access: AccessLog | None) -> None:
        self.engine = engine
        self.origins = origins
        self.proxies = proxies
        self.access = access

    @property
    def max_body(self) -> int:
        """A POST body over this goes to Tornado (`PollingPostHandler` refuses it and ends the session)."""
        return self.engine.options.max_payload

    def serve(self, request: FrontRequest, body: bytes) -> bytes | HeldPoll | None:
        """The answer now, a held GET, or None: Tornado's to serve."""
        method = request.method
        query = request.query
        if method not in ("GET", "POST") or query.get("transport") != "polling":
            return None
        engine = self.engine
        headers = request.headers
        if request_error(engine, self.origins, method, query, headers.get("origin"), headers.get("host")):
            return None
        sid = query.get("sid")
        if sid is None:  # a handshake
            if method != "GET" or body:
                return None
            session = engine.open_polling(request.handshake_info(self.proxies))
            transport = session.transport
            assert isinstance(transport, PollingTransport)
        else:
            found = engine.sessions.get(sid)
            if found is None:
                return None
            session = found
            session.run_overdue_timer()  # as `engine.get` does: the deadline decides
            transport = session.transport
            if not isinstance(transport, PollingTransport) or transport.discarded:
                return None
            if method == "POST":
                if not session.open or len(body) > self.max_body:
                    return None
                try:
                    transport.receive_payload(body)
                except EngineRequestError as exc:
                    return self.refusal(request, exc)
                return self.answer(request, 200, "text/html", b"ok")
            if body or transport.waiting or not (session.open or session.state is SessionState.CLOSING):
                return None
        waiter = transport.begin_poll()
        if waiter is None:
            return self.poll_answer(request, transport.end_poll())
        return HeldPoll(request, transport, waiter)

    def answer_held(self, held: HeldPoll) -> bytes:
        """The answer to a held GET whose waiter is done (not cancelled)."""
        return self.poll_answer(held.request, held.transport.end_poll(held.waiter))

    def poll_answer(self, request: FrontRequest, text: str) -> bytes:
        return self.answer(request, 200, "text/plain; charset=UTF-8", _counted(self.engine, text),
                           (("Cache-Control", "no-store"),))

    def refusal(self, request: FrontRequest, error: EngineRequestError) -> bytes:
        log_refusal(request.method, request.target, error)
        return self.answer(request, error.status, "application/json", refusal_body(error))

    def answer(self, request: FrontRequest, status: int, content_type: str, body: bytes,
               extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        headers = request.headers
        data = response(status, content_type, self.origins.cors_headers(headers.get("origin"), headers.get("host"))
                        + extra, body)
        if self.access is not None:
            started = request.started
            self.access.entry(request.method, request.path, status, lambda: time.monotonic() - started,
                              request.client(self.proxies)[0])
        return data
