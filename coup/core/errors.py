"""Exceptions of the Socket.IO core, and the one table that puts them on the wire.

Handlers raise `ClientError` for a request they refuse (bad payload, no permission): the
client gets an ``error`` event and, if it asked for an ack, a failed ack. Anything else a
handler raises is our bug: it is logged with its traceback and the client only learns
that an internal error happened. Exception text never reaches a client.
"""

from __future__ import annotations

from typing import Any


class ConnectRefused(Exception):
    """Raised by connection middleware: the client gets CONNECT_ERROR {message, data}."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.data is not None:
            body["data"] = self.data
        return body


class ClientError(Exception):
    """An event handler refuses what the client asked, with a code the client can act on."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class AckTimeout(Exception):
    """Not every receiver acknowledged in time; `responses` holds the acks that did arrive."""

    def __init__(self, responses: list[Any] | None = None) -> None:
        super().__init__("acknowledgement timed out")
        self.responses = responses or []


class FetchTimeout(TimeoutError):
    """Not every node answered `fetch_sockets` in time (one stalled, or its link to the others
    was being rebuilt); `sockets` holds those of the nodes that did."""

    def __init__(self, sockets: list[Any]) -> None:
        super().__init__("not every node answered fetch_sockets in time")
        self.sockets = sockets


class SocketDisconnected(Exception):
    """The socket went away while we were waiting for its acknowledgement."""


INTERNAL_ERROR = ClientError("INTERNAL", "Internal server error")
#: characters of the refused event's name echoed in the ``error`` event (names are short;
#: a client sending a 500 KB name does not get it back)
MAX_EVENT_ECHO = 100


def error_event(error: ClientError, event: str | None) -> dict[str, Any]:
    """The ``error`` event payload: {message, code, event} plus any extra fields."""
    body: dict[str, Any] = {"message": error.message, "code": error.code}
    if event is not None:
        body["event"] = event[:MAX_EVENT_ECHO]
    if error.data:
        body.update(error.data)
    return body


def error_ack(error: ClientError) -> dict[str, Any]:
    """What a refused event's acknowledgement carries: {ok: false, error: {code, message, ...data}}.

    The data travels too (as in the ``error`` event): ``retryable: true`` is how a client
    knows that sending again, with the same ``clientMessageId``, is the right answer.
    """
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data:
        body.update(error.data)
    return {"ok": False, "error": body}
