"""A connection's sockets leaving this process for another, and arriving from one.

When a session moves between nodes (`coup.engine.adoption`), its Socket.IO sockets move
with it, keeping their ids, recovery ids, rooms and data: for the application nothing
happened, so no disconnect or connect handler runs on either side. The node that lets go
keeps the socket objects for handlers still running there; what they send goes to the
sink the cluster gives (it reaches the client on the new node). The node that takes over
holds each socket's packets (`HeldPackets`) until the cluster has caught up with what
the old node kept for it, then releases them in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coup.core.client import Client
from coup.core.hold import HeldPackets, PacketSink, Vector
from coup.core.socket import Socket
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.core.server import SocketServer
    from coup.engine.session import Session


@dataclass(frozen=True, slots=True)
class MovedSocket:
    """One socket of a moving connection, as JSON-able values."""

    nsp: str
    id: str
    pid: str | None
    rooms: list[str]
    data: dict[str, Any]
    auth: dict[str, Any]

    def to_json(self) -> list[Any]:
        return [self.nsp, self.id, self.pid, self.rooms, self.data, self.auth]

    @classmethod
    def from_json(cls, value: list[Any]) -> MovedSocket:
        nsp, sid, pid, rooms, data, auth = value
        return cls(str(nsp), str(sid), pid, [str(r) for r in rooms], dict(data), dict(auth))


async def quiesce(session: Session, timeout: float) -> None:
    """Wait (at most `timeout`) until no namespace is connecting and no handler runs for `session`."""
    client = session.handler
    if not isinstance(client, Client):
        return
    deadline = asyncio.get_running_loop().time() + timeout
    while client.connecting or any(s.busy for s in client.sockets.values()):
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.005)


def export_sockets(session: Session) -> list[MovedSocket] | None:
    """The sockets of `session` for another node; None when it has no usable client here."""
    client = session.handler
    if not isinstance(client, Client) or client.closed or client.connecting:
        return None
    return [MovedSocket(s.nsp.name, s.id, s.pid, sorted(s.rooms), dict(s.data), dict(s.auth))
            for s in client.sockets.values()]


def let_go(server: SocketServer, session: Session, sink_for: Callable[[Socket], PacketSink]) -> None:
    """The sockets of `session` moved away: stop serving them here, with no disconnect handler.

    Each socket object stays usable by handlers still running here (an ack, an emit); what
    they send goes to `sink_for(socket)`.
    """
    client = session.handler
    if not isinstance(client, Client):
        return
    client.closed = True
    for socket in list(client.sockets.values()):
        socket.sink = sink_for(socket)
        socket.nsp.remove(socket)
        server.spawn(socket.nsp.adapter.remove_all(socket.id))
    client.sockets.clear()


async def take_in(server: SocketServer, session: Session, moved: Sequence[MovedSocket]) -> list[Socket]:
    """Rebuild the sockets of a session that moved here; they hold their packets until `release`."""
    client = Client(server, session)
    session.handler = client
    client.joined = True
    sockets = []
    for info in moved:
        nsp = server.namespaces.get(info.nsp)
        if nsp is None:
            continue
        socket = Socket(server.socket_context, nsp, client, info.auth, sid=info.id, pid=info.pid)
        socket.data = info.data
        nsp.add(socket)
        client.add(socket)
        socket.connected = True
        await nsp.adapter.add_all(socket.id, info.rooms)
        sockets.append(socket)
    return sockets


def release(socket: Socket, missed: Sequence[Outbound], floor: Vector | None = None) -> None:
    """Send what the old node kept for `socket` (`missed`), then what it got here meanwhile
    (with vector offsets, none stamped below `floor`, the old node's offsets: `HeldPackets.release`)."""
    held = socket.sink
    socket.sink = socket.session
    if isinstance(held, HeldPackets):
        held.release(missed, floor)
    else:
        for out in missed:
            socket.session.send(out)
