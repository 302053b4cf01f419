"""HTTP long-polling: GET fetches packets (held until there are some), POST delivers them."""

from __future__ import annotations

import asyncio

from coup.engine.errors import EngineErrorCode, EngineRequestError
from coup.engine.polling import PollingTransport
from coup.engine.session import Session
from coup.transports.base import EngineRequestHandler


class PollingHandler(EngineRequestHandler):
    _transport: PollingTransport | None = None

    def prepare(self) -> None:
        if self.request.method not in ("GET", "POST", "OPTIONS"):
            self.refuse(EngineRequestError(EngineErrorCode.BAD_REQUEST, f"method {self.request.method}"))
            return
        try:
            self.engine.check_request(self.query())
        except EngineRequestError as exc:
            self.refuse(exc)
            return
        if self.request.method != "OPTIONS" and not self.origin_allowed():
            self.refuse(EngineRequestError(EngineErrorCode.FORBIDDEN,
                                           f"origin {self.request.headers.get('Origin')!r}"))

    def _polling_transport(self, sid: str) -> PollingTransport:
        session: Session = self.engine.get(sid)
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
                transport = self._polling_transport(sid)
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
        self.finish(body.encode("utf-8"))

    def post(self) -> None:
        sid = self.get_query_argument("sid", None)
        try:
            if sid is None:
                raise EngineRequestError(EngineErrorCode.BAD_HANDSHAKE_METHOD, "POST without sid")
            self._polling_transport(sid).receive_payload(self.request.body)
        except EngineRequestError as exc:
            self.refuse(exc)
            return
        self.set_cors_headers()
        self.set_header("Content-Type", "text/html")
        self.finish(b"ok")

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
        if self._transport is not None:
            self._transport.cancel_poll()
