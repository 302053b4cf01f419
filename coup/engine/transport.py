"""What a `Session` asks of the transport that carries its bytes, declared once.

A session starts on one transport (long-polling, WebSocket, SockJS) and may move to another
mid-flight (the upgrade from polling to WebSocket, or on a cluster node the stand-in for a
WebSocket that reached another node). `Session` calls exactly the methods below; a new
transport satisfies `Transport` (mypy checks it wherever one is handed to a session), and one
that cannot be upgraded from takes the no-op hooks of `NotUpgradable`.
"""

from __future__ import annotations

from typing import Protocol

from coup.protocol.wire import Outbound


class UpgradeTarget(Protocol):
    """A transport a session may be moving to: it receives nothing until the move completes,
    and is closed with the session."""

    name: str

    def send(self, out: Outbound) -> None:
        """Queue packets for the client (the hot path: called once per receiver)."""

    def close(self, reason: str, *, graceful: bool) -> None:
        """Graceful: deliver what is queued first. `reason` is the session's close reason."""


class Transport(UpgradeTarget, Protocol):
    """What carries a session's bytes: a polling buffer, a WebSocket, a SockJS connection."""

    def begin_upgrade(self) -> None:
        """Another transport answered the upgrade probe: stop holding requests open."""

    def end_upgrade(self) -> None:
        """The upgrade was abandoned: carry on as before."""

    def discard(self) -> list[Outbound]:
        """The session leaves this transport: return what the client has not fetched yet."""


class NotUpgradable:
    """The upgrade hooks of a transport nothing upgrades from (only polling is)."""

    __slots__ = ()

    def begin_upgrade(self) -> None:
        pass

    def end_upgrade(self) -> None:
        pass

    def discard(self) -> list[Outbound]:
        return []


class ClosedTransport(NotUpgradable):
    """What a closed session keeps in place of its transport: the name (for whoever still
    asks which transport it was on) and nothing to send to."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, out: Outbound) -> None:
        pass

    def close(self, reason: str, *, graceful: bool) -> None:
        pass
