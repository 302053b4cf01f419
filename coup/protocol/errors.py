"""One error family for everything the codecs refuse.

A `DecodeError` always means "the peer sent something malformed": the I/O layer
closes or refuses only that peer and logs `reason`. Its text never reaches a client.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by `coup.protocol`."""

    def __init__(self, reason: str, *, close_code: int = 1002) -> None:
        super().__init__(reason)
        self.reason = reason
        #: WebSocket close code the I/O layer should send when it ends the connection.
        self.close_code = close_code
        #: what an incremental decoder had decoded from the same input before the violation:
        #: the I/O layer delivers these first (they were valid), then closes
        self.events: list[object] = []


class DecodeError(ProtocolError):
    """Input from the peer does not follow the protocol."""


class PayloadTooLarge(DecodeError):
    """Input from the peer exceeds the negotiated maxPayload."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, close_code=1009)


class EncodeError(ProtocolError):
    """Our own code asked to send something the protocol cannot carry (a local bug)."""
