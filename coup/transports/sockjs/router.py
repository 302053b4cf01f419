"""A sockjs-tornado router built the way Tornado 6 needs it, serving our fixed transports.

sockjs-tornado builds its session-expiry and statistics timers in the constructor on
whatever ``IOLoop.instance()`` is at that moment; built at import time (before the loop
runs) they attach to a loop that never runs, and sessions are never expired. This router
refuses to be built outside a running loop, serves the handlers of
`coup.transports.sockjs.handlers` instead of the library's, checks origins with our
`OriginPolicy`, and can be closed (the library has no shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sockjs.tornado import SockJSRouter as LibraryRouter
from tornado.ioloop import IOLoop

from coup.transports.origins import OriginPolicy
from coup.transports.sockjs import handlers
from coup.transports.sockjs.session import SockJSSession

#: session transports, as the library names them in URLs
TRANSPORTS: Mapping[str, type[Any]] = {
    "websocket": handlers.WebSocketHandler,
    "xhr": handlers.XhrPollingHandler,
    "xhr_streaming": handlers.XhrStreamingHandler,
    "jsonp": handlers.JsonpPollingHandler,
    "eventsource": handlers.EventSourceHandler,
    "htmlfile": handlers.HtmlFileHandler,
}

DEFAULT_SETTINGS: Mapping[str, Any] = {
    # JSESSIONID only helps load balancers that stick sessions by that cookie
    "jsessionid": False,
    # frames queued in one loop turn go out as one `a[...]` frame per session
    "immediate_flush": False,
    # the 2010 WebSocket draft on the framed WebSocket URL (see `hixie76`): off, no
    # browser in use speaks it; the protocol test services turn it on
    "hixie76": False,
}


class SockJSRouter(LibraryRouter):  # type: ignore[misc]
    """The URLs of one SockJS service under `prefix`, e.g. ``/sockjs``."""

    def __init__(self, connection: type[Any], prefix: str, settings: Mapping[str, Any] | None = None, *,
                 origins: OriginPolicy | None = None, max_message_size: int = 1_000_000,
                 context: Any = None) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("build the SockJS router inside the running event loop") from None
        merged = {**DEFAULT_SETTINGS, **(settings or {})}
        super().__init__(connection, prefix, merged, io_loop=IOLoop.current(), session_kls=SockJSSession)
        #: None: any origin (the protocol test services); otherwise CORS and WebSocket
        #: origins follow the node's policy
        self.origins = origins
        self.max_message_size = max_message_size
        #: whatever the connection class needs (the bridge: the Engine.IO server)
        self.context = context
        #: where its URLs start, e.g. ``/sockjs``
        self.prefix = prefix.rstrip("/")
        self._transport_urls = self._routes(prefix)

    def _routes(self, prefix: str) -> list[tuple[str, type[Any], dict[str, Any]]]:
        kwargs = {"server": self}
        session = prefix + r"/[^/.]+/(?P<session_id>[^/.]+)"
        routes: list[tuple[str, type[Any], dict[str, Any]]] = [
            (session + "/xhr_send", handlers.XhrSendHandler, kwargs),
            (session + "/jsonp_send", handlers.JsonpSendHandler, kwargs),
        ]
        disabled = self.settings["disabled_transports"]
        routes.extend((f"{session}/{name}", handler, kwargs)
                      for name, handler in TRANSPORTS.items() if name not in disabled)
        routes.extend([
            (prefix + "/info", handlers.InfoHandler, kwargs),
            (prefix + r"/iframe[0-9-.a-z_]*\.html", handlers.IFrameHandler, kwargs),
            (prefix + "/websocket", handlers.RawWebSocketHandler, kwargs),
            (prefix + "/?", handlers.GreetingsHandler, kwargs),
        ])
        return routes

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        return self.origins is None or self.origins.allows(origin, host)

    @property
    def session_count(self) -> int:
        return int(self.stats.sess_active)

    def close(self) -> None:
        """Stop the timers and close every polling/streaming session this router holds."""
        self._sessions_cleanup.stop()
        self.stats._callback.stop()
        for session in list(self._sessions._items.values()):
            session.close(1001, "Server shutting down")
        self._sessions._items.clear()
        self._sessions._queue.clear()

