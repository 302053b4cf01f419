"""The Socket.IO server core: sessions to sockets, namespaces, rooms, acks, middleware.

Everything here talks to rooms and other nodes through `Adapter`, `Presence` and
`RoomRouter`; the in-memory implementations serve one process, `coup.cluster` provides
Redis-backed ones. Nothing here knows whether Redis exists.
"""

from coup.core.adapter import ONCE_WINDOW, Adapter, BroadcastOptions, MemoryAdapter, SocketInfo
from coup.core.broadcast import BroadcastOperator
from coup.core.errors import AckTimeout, ClientError, ConnectRefused, FetchTimeout, SocketDisconnected
from coup.core.namespace import Namespace
from coup.core.options import RecoveryOptions, ServerOptions
from coup.core.presence import MemoryPresence, Presence
from coup.core.rooms import Detached, LocalRoomRouter, RoomRouter
from coup.core.server import SocketServer
from coup.core.socket import Socket

__all__ = [
    "ONCE_WINDOW", "AckTimeout", "Adapter", "BroadcastOperator", "BroadcastOptions", "ClientError", "ConnectRefused",
    "Detached", "FetchTimeout", "LocalRoomRouter", "MemoryAdapter", "MemoryPresence", "Namespace", "Presence",
    "RecoveryOptions", "RoomRouter", "ServerOptions", "Socket", "SocketDisconnected", "SocketInfo", "SocketServer",
]
