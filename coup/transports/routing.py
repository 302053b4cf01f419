"""Mount the Engine.IO transports at a path, choosing the handler by the `transport` query."""

from __future__ import annotations

from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher, Rule

from coup.engine.errors import EngineRequestError
from coup.engine.server import EngineServer
from coup.transports.base import EngineRequestHandler
from coup.transports.origins import OriginPolicy
from coup.transports.polling import PollingHandler, PollingPostHandler
from coup.transports.websocket import WebSocketHandler


class EnginePathMatcher(Matcher):
    """Matches ``path`` (with or without its trailing slash), one `transport` value and,
    if given, one HTTP method."""

    def __init__(self, path: str, transport: str | None, method: str | None = None) -> None:
        self.path = path.rstrip("/") + "/"
        self.transport = transport
        self.method = method

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        req_path = request.path
        if not (req_path == self.path or req_path == self.path[:-1] or req_path.startswith(self.path)):
            return None
        if self.method is not None and request.method != self.method:
            return None
        if self.transport is None:
            return {}
        values = request.query_arguments.get("transport")
        if values and values[-1].decode("latin-1") == self.transport:
            return {}
        return None


class EngineErrorHandler(EngineRequestHandler):
    """Requests at the path with no usable `transport`: answered like the reference does."""

    def prepare(self) -> None:
        try:
            self.engine.check_request(self.query())
        except EngineRequestError as exc:
            self.refuse(exc)


def engine_rules(path: str, engine: EngineServer, origins: OriginPolicy) -> list[Rule]:
    kwargs = {"engine": engine, "origins": origins}
    return [
        Rule(EnginePathMatcher(path, "websocket"), WebSocketHandler, kwargs),
        Rule(EnginePathMatcher(path, "polling", "POST"), PollingPostHandler, kwargs),
        Rule(EnginePathMatcher(path, "polling"), PollingHandler, kwargs),
        Rule(EnginePathMatcher(path, None), EngineErrorHandler, kwargs),
    ]


