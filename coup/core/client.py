"""One Engine.IO session seen from Socket.IO: decodes its packets and routes them to sockets."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from coup.protocol.errors import DecodeError
from coup.protocol.socketio import SocketDecoder, SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.core.server import SocketServer
    from coup.core.socket import Socket
    from coup.engine.session import Session
    from coup.engine.timers import TimerEntry

log = logging.getLogger(__name__)


class Client:
    """The `SessionHandler` of a Socket.IO connection; owns one socket per namespace."""

    __slots__ = ("closed", "connect_timer", "connecting", "decoder", "joined", "server", "session", "sockets")

    def __init__(self, server: SocketServer, session: Session) -> None:
        self.server = server
        self.session = session
        self.decoder = SocketDecoder(max_attachments=server.options.max_attachments)
        self.sockets: dict[str, Socket] = {}
        #: namespaces whose CONNECT is being processed (middleware may be slow)
        self.connecting: set[str] = set()
        #: a namespace was joined at least once: the connect timeout no longer applies
        self.joined = False
        self.closed = False
        #: the connect timeout's entry, cancelled once it no longer applies (a pending entry
        #: would keep this client and its session in memory until the deadline)
        self.connect_timer: TimerEntry | None = None

    def __repr__(self) -> str:
        return f"<Client {self.session.sid} {sorted(self.sockets)}>"

    # ------------------------------------------------------------------ SessionHandler

    def on_message(self, session: Session, data: str | bytes) -> None:
        try:
            if isinstance(data, str):
                packet = self.decoder.feed_text(data)
            else:
                packet = self.decoder.feed_binary(data)
        except DecodeError as exc:
            session.protocol_error(exc)
            return
        if packet is not None:
            self._route(packet)

    def on_close(self, session: Session, reason: str) -> None:
        if not self.closed:  # runs twice when we close first (`close`), then the session ends
            self.closed = True
            self.server.client_closed(self)
        self._stop_connect_timer()
        for socket in list(self.sockets.values()):
            socket.on_close(reason)
        self.sockets.clear()

    # ------------------------------------------------------------------ routing

    def _route(self, packet: SocketPacket) -> None:
        name = packet.namespace
        socket = self.sockets.get(name)
        if socket is not None and packet.type is not SocketPacketType.CONNECT \
                and packet.type is not SocketPacketType.CONNECT_ERROR:
            socket.on_packet(packet)
            return
        if packet.type is SocketPacketType.CONNECT and socket is None:
            if name in self.connecting:
                log.info("session %s: duplicate CONNECT to %s ignored", self.session.sid, name)
                return
            auth: dict[str, Any] = packet.data if isinstance(packet.data, dict) else {}
            self.connecting.add(name)
            self.server.start_connect(self, name, auth)
            return
        if packet.type is SocketPacketType.DISCONNECT and name in self.connecting:
            return  # the client gave up before we answered; the connect task sees it
        # an event for a namespace the client has not joined, a second CONNECT, or a
        # CONNECT_ERROR from a client: the reference closes the whole connection
        self.session.protocol_error(DecodeError(f"{packet.type.name} for namespace {name[:60]} in an invalid state"))

    # ------------------------------------------------------------------ helpers

    def send_packet(self, packet: SocketPacket) -> None:
        self.session.send(Outbound.message(encode(packet)))

    def add(self, socket: Socket) -> None:
        self.sockets[socket.nsp.name] = socket
        self.joined = True
        self._stop_connect_timer()

    def _stop_connect_timer(self) -> None:
        timer = self.connect_timer
        if timer is not None:
            timer.cancel()
            self.connect_timer = None

    def remove(self, socket: Socket) -> None:
        if self.sockets.get(socket.nsp.name) is socket:
            del self.sockets[socket.nsp.name]

    @property
    def idle(self) -> bool:
        """No CONNECT and no event handler of this connection is running or queued."""
        return not self.connecting and not any(socket.busy for socket in self.sockets.values())

    def close(self, reason: str) -> None:
        """End the whole connection (every namespace) after queued packets are delivered."""
        if not self.closed:
            self.session.close(reason, graceful=True)
            # the sockets learn of it now, not when a polling client fetches its last packet
            self.on_close(self.session, reason)

    def disconnect(self) -> None:
        """Server-side `disconnect(close=True)`: every namespace gets DISCONNECT, then the
        connection closes. The sockets end with "server namespace disconnect", as in the
        reference, so a kicked client cannot restore its session through recovery."""
        for socket in list(self.sockets.values()):
            socket.disconnect()
        self.close("forced server close")

    def on_timer(self, now: float) -> None:
        """Connect timeout: a client that joined no namespace in time is dropped (once it
        has joined one, leaving them all keeps the connection, as the reference does)."""
        if not self.closed and not self.joined and not self.connecting:
            log.info("session %s: no namespace connected within %.0f s; closing",
                     self.session.sid, self.server.options.connect_timeout)
            self.session.close("forced close", graceful=False)
