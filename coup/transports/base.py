"""What the polling and WebSocket handlers share: error answers, CORS, handshake info."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from tornado.web import RequestHandler

from coup.engine.errors import EngineErrorCode, EngineRequestError
from coup.engine.handshake import HandshakeInfo
from coup.engine.server import EngineServer
from coup.transports.origins import OriginPolicy

log = logging.getLogger(__name__)


def log_refusal(method: str | None, uri: str | None, error: EngineRequestError) -> None:
    log.info("refused %s %s: %s", method, uri, error.detail or error)


def refusal_body(error: EngineRequestError) -> bytes:
    """The reference server's error body; the detail goes to our log only (`log_refusal`)."""
    return json.dumps(error.body()).encode()


class EngineRequestHandler(RequestHandler):
    """Base of the handlers mounted at the Engine.IO path (``/socket.io/``)."""

    engine: EngineServer
    origins: OriginPolicy

    def initialize(self, engine: EngineServer, origins: OriginPolicy) -> None:
        self.engine = engine
        self.origins = origins

    def query(self) -> dict[str, str]:
        return {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}

    def origin_allowed(self) -> bool:
        return self.origins.allows(self.request.headers.get("Origin"), self.request.headers.get("Host"))

    def set_cors_headers(self) -> None:
        headers = self.request.headers
        for name, value in self.origins.cors_headers(headers.get("Origin"), headers.get("Host")):
            self.add_header(name, value)

    def handshake_info(self) -> HandshakeInfo:
        request = self.request
        origin = request.headers.get("Origin")
        return HandshakeInfo(
            headers={k.lower(): v for k, v in request.headers.get_all()},
            query=self.query(),
            address=request.remote_ip or "",
            url=request.uri or "",
            secure=request.protocol == "https",
            issued=time.time(),
            xdomain=origin is not None,
        )

    def refuse(self, error: EngineRequestError) -> None:
        """Answer with the reference server's error body; the detail goes to our log only."""
        log_refusal(self.request.method, self.request.uri, error)
        self.clear()
        self.set_status(error.status)
        self.set_cors_headers()
        self.set_header("Content-Type", "application/json")
        self.finish(refusal_body(error))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = EngineErrorCode.BAD_REQUEST
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"code": int(code), "message": "Bad request"}))
