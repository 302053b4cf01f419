"""Which browser origins may talk to us: one policy for CORS and for WebSocket `Origin`."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


class OriginPolicy:
    """Allowed origins are exact ``scheme://host[:port]`` strings, or ``*`` for any.

    A request from the server's own origin (its `Origin` host equals the `Host` header) is
    always allowed, and so is a request without `Origin` (not a browser, or same-origin GET).
    """

    __slots__ = ("_allowed", "_any")

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        items = [o.strip().rstrip("/") for o in allowed if o.strip()]
        self._any = "*" in items
        self._allowed = frozenset(o.lower() for o in items if o != "*")

    @property
    def allows_any(self) -> bool:
        return self._any

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if self._any or origin in self._allowed:
            return True
        if origin == "null" or not host:
            return False
        return urlsplit(origin).netloc == host.strip().lower()

    def cors_headers(self, origin: str | None, host: str | None) -> tuple[tuple[str, str], ...]:
        """The CORS headers of an answer to a request from `origin` (none if it is not allowed)."""
        if origin is None or not self.allows(origin, host):
            return ()
        return (("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"))

    def __repr__(self) -> str:
        return f"OriginPolicy({'*' if self._any else sorted(self._allowed)})"
