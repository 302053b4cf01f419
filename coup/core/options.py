"""Socket.IO server settings (defaults follow the reference server where it has one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecoveryOptions:
    """Connection state recovery (Socket.IO >= 4.6): replay what a briefly lost client missed."""

    #: how long a disconnected session can still be restored, in seconds
    max_disconnection_duration: float = 120.0
    #: run connection middleware for a restored session too (the reference skips it; we
    #: re-check authentication, which costs one token check per reconnect)
    skip_middlewares: bool = False
    #: packets kept for replay per namespace; an offset older than that is not restored
    #: (never a partial replay)
    max_packets: int = 50_000
    #: bytes of packets kept for replay per namespace (the same rule as `max_packets`)
    max_bytes: int = 32 * 1024 * 1024
    #: the part of `max_packets` and `max_bytes` one origin socket's broadcasts may hold;
    #: past it they are delivered but not kept, so one client cannot push out the others'
    #: resume data (`coup.core.replay_budget`)
    max_origin_share: float = 0.25


@dataclass(frozen=True, slots=True)
class ServerOptions:
    #: seconds a client has to connect to a namespace after the Engine.IO handshake
    connect_timeout: float = 45.0
    #: events of one socket waiting for its handler; a flood beyond this disconnects it
    max_pending_events: int = 256
    #: binary attachments one packet may carry
    max_attachments: int = 10
    #: name of the event that carries `ClientError`s to the client
    error_event: str = "error"
    #: Engine.IO connections one client address may hold; beyond, a namespace CONNECT gets
    #: CONNECT_ERROR ``{code: "TOO_MANY_CONNECTIONS"}`` and the connection closes (None: no cap)
    max_connections_per_address: int | None = None
    recovery: RecoveryOptions | None = None
