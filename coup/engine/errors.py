"""Engine.IO request errors and the one table that maps them to HTTP answers.

The codes and messages are the reference server's (engine.io ``Server.errors``), so clients
and tools that read them keep working.
"""

from __future__ import annotations

from enum import IntEnum


class EngineErrorCode(IntEnum):
    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


#: code -> (HTTP status, message sent to the client)
ERROR_TABLE: dict[EngineErrorCode, tuple[int, str]] = {
    EngineErrorCode.UNKNOWN_TRANSPORT: (400, "Transport unknown"),
    EngineErrorCode.UNKNOWN_SID: (400, "Session ID unknown"),
    EngineErrorCode.BAD_HANDSHAKE_METHOD: (400, "Bad handshake method"),
    EngineErrorCode.BAD_REQUEST: (400, "Bad request"),
    EngineErrorCode.FORBIDDEN: (403, "Forbidden"),
    EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION: (400, "Unsupported protocol version"),
}


class EngineRequestError(Exception):
    """A request the Engine.IO server refuses; `detail` is for our log, never for the client."""

    def __init__(self, code: EngineErrorCode, detail: str = "") -> None:
        super().__init__(detail or ERROR_TABLE[code][1])
        self.code = code
        self.detail = detail

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.code][0]

    def body(self) -> dict[str, object]:
        return {"code": int(self.code), "message": ERROR_TABLE[self.code][1]}


class Draining(EngineRequestError):
    """A handshake that reached a node on its way out (SIGTERM): 503, so the client's
    reconnection tries again, and the router (whose /readyz check failed) sends it elsewhere.
    The protocol has no code for it; the reference's "Bad request" code goes with it."""

    def __init__(self) -> None:
        super().__init__(EngineErrorCode.BAD_REQUEST, "this node is draining: no new sessions")

    @property
    def status(self) -> int:
        return 503

    def body(self) -> dict[str, object]:
        return {"code": int(self.code), "message": "Server is shutting down"}


class UpgradeRefused(EngineRequestError):
    """A WebSocket for a session that already has one or is being upgraded.

    The reference completes such a WebSocket handshake and closes the socket at once, so the
    client sees a close (its upgrade simply failed) instead of an HTTP error it cannot read.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(EngineErrorCode.BAD_REQUEST, detail)
