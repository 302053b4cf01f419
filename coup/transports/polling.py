"""HTTP long-polling: GET fetches packets (held until there are some), POST delivers them.

POSTs go to their own handler, which streams the body in (`stream_request_body`) so that
maxPayload is enforced here whatever the size: an oversized body gets our 400 and ends the
session, where a body over Tornado's own `max_body_size` would only have dropped the
connection. GETs stay on a plain handler: a streaming handler that answers before the body
is read makes Tornado close the keep-alive connection, which clients then trip over.
"""

from __future__ import annotations

import asyncio

from tornado.web import stream_request_body

from coup.engine.errors import EngineErrorCode, EngineRequestError
from coup.engine.polling import PollingTransport
from coup.engine.session import Session
from coup.protocol.errors import PayloadTooLarge
from coup.transports.base import EngineRequestHandler


class PollingHandler(EngineRequestHandler):
    """GET (the handshake and every poll), OPTIONS (CORS preflight); other methods get 400."""

    _transport: PollingTransport | None = None

    def prepare(self) -> None:
        error = self.request_error()
        if error is not None:
            self.refuse(error)

    def request_error(self) -> EngineRequestError | None:
        if self.request.method not in ("GET", "POST", "OPTIONS"):
            code = EngineErrorCode.BAD_REQUEST if "sid" in self.request.query_arguments \
                else EngineErrorCode.BAD_HANDSHAKE_METHOD
            return EngineRequestError(code, f"method {self.request.method}")
        try:
            self.engine.check_request(self.query())
        except EngineRequestError as exc:
            return exc
        if self.request.method != "OPTIONS" and not self.origin_allowed():
            return EngineRequestError(EngineErrorCode.FORBIDDEN, f"origin {self.request.headers.get('Origin')!r}")
        return None

    def polling_transport(self, sid: str, *, closing: bool = False) -> PollingTransport:
        session: Session = self.engine.get(sid, closing=closing)
        transport = session.transport
        if not isinstance(transport, PollingTransport):
            raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "session is not on polling")
        return transport

    async def get(self) -> None:
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
        data = body.encode("utf-8")
        if self.engine.metrics is not None:
            self.engine.metrics.bytes_sent["polling"] += len(data)
        self.finish(data)

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
