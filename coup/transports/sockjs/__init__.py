"""SockJS into the same core: sockjs-tornado's protocol, our fixes, and the envelope bridge.

`SockJSEndpoint` mounts one SockJS service (``/sockjs`` on a node) whose connections are
sessions of the node's Socket.IO core; see `bridge` for how, `envelope` for the messages,
`handlers`/`session`/`router` for what we fix in sockjs-tornado 1.0.7.
"""

from __future__ import annotations

from typing import Any

from coup.engine.server import EngineServer
from coup.transports.origins import OriginPolicy
from coup.transports.sockjs.bridge import BridgeContext, CoreBridge
from coup.transports.sockjs.router import SockJSRouter


class SockJSEndpoint:
    """The SockJS service of one node. Build it inside the running event loop."""

    def __init__(self, engine: EngineServer, origins: OriginPolicy, prefix: str = "/sockjs", *,
                 max_message_size: int = 1_000_000, sockjs_url: str = "/vendor/sockjs.min.js",
                 settings: dict[str, Any] | None = None) -> None:
        self.prefix = prefix.rstrip("/")
        context = BridgeContext(engine, max_message_size)
        self.router = SockJSRouter(CoreBridge, self.prefix, {"sockjs_url": sockjs_url, **(settings or {})},
                                   origins=origins, max_message_size=max_message_size, context=context)

    @property
    def rules(self) -> list[Any]:
        """Tornado routes; mount them before any catch-all route."""
        return list(self.router.urls)

    def close(self) -> None:
        self.router.close()


__all__ = ["SockJSEndpoint"]
