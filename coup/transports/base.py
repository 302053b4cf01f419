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
        origin = self.request.headers.get("Origin")
        if origin is not None and self.origin_allowed():
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.add_header("Vary", "Origin")

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
        log.info("refused %s %s: %s", self.request.method, self.request.uri, error.detail or error)
        self.clear()
        self.set_status(error.status)
        self.set_cors_headers()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = EngineErrorCode.BAD_REQUEST
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"code": int(code), "message": "Bad request"}))
