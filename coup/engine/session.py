"""One Engine.IO session: the client's identity across transports, heartbeat and queues.

A session outlives its transports: it starts on polling or WebSocket and may move from
polling to WebSocket mid-flight (the upgrade). Everything above sees only `send()`,
`close()` and the `SessionHandler` callbacks, whatever carries the bytes.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from coup.engine.handshake import HandshakeInfo
from coup.engine.transport import ClosedTransport, Transport, UpgradeTarget
from coup.protocol import wire
from coup.protocol.engineio import EnginePacket, EnginePacketType, decode_text
from coup.protocol.errors import DecodeError
from coup.protocol.heartbeat import Heartbeat, HeartbeatAction
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.engine.server import EngineServer
    from coup.engine.timers import TimerEntry

log = logging.getLogger(__name__)


class SessionHandler(Protocol):
    """The layer above (Socket.IO, or an Engine.IO-only app) as a session sees it."""

    def on_message(self, session: Session, data: str | bytes) -> None: ...

    def on_close(self, session: Session, reason: str) -> None: ...


class SessionState(Enum):
    OPEN = "open"
    CLOSING = "closing"  # waiting for a polling client to fetch its last packets
    CLOSED = "closed"
    #: taken over from another node (`coup.engine.adoption`): sends go out, received packets wait
    ADOPTING = "adopting"


#: read on every packet sent or received, so compared as module constants, not enum attributes
_OPEN = SessionState.OPEN
_ADOPTING = SessionState.ADOPTING
#: packets a client may send while its session is being adopted, before they are handled
MAX_DEFERRED = 256


class Session:
    """An Engine.IO session (the reference calls it a Socket)."""

    __slots__ = (
        "__weakref__",
        "_deferred",
        "_timer",
        "close_reason",
        "handler",
        "handshake",
        "heartbeat",
        "server",
        "sid",
        "state",
        "transport",
        "upgraded",
        "upgrading",
    )

    def __init__(self, sid: str, server: EngineServer, handshake: HandshakeInfo, transport: Transport,
                 now: float) -> None:
        self.sid = sid
        self.server = server
        self.handshake = handshake
        self.transport: Transport = transport
        self.handler: SessionHandler | None = None
        opts = server.options
        self.heartbeat = Heartbeat(now, opts.ping_interval, opts.ping_timeout, lateness=opts.timer_slack)
        self.state = SessionState.OPEN
        self.upgrading: UpgradeTarget | None = None
        self.upgraded = False
        self.close_reason: str | None = None
        #: this session's one pending timer entry (next ping, ping timeout or closing grace)
        self._timer: TimerEntry | None = None
        #: packets received while ADOPTING, handled once adopted
        self._deferred: list[str | EnginePacket] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.sid} {self.transport.name} {self.state.value}>"

    @property
    def open(self) -> bool:
        return self.state is SessionState.OPEN

    # ------------------------------------------------------------------ outbound

    def send(self, out: Outbound) -> None:
        """Queue packets for the client (hot path: no allocation beyond the queue entry)."""
        if self.state is _OPEN:
            self.transport.send(out)
        elif self.state is _ADOPTING:
            self.transport.send(out)

    # ------------------------------------------------------------------ inbound

    def receive_text(self, text: str) -> None:
        """A text packet from the client (a WebSocket text frame or a polling record)."""
        if self.state is not _OPEN:
            if self.state is _ADOPTING:
                self._defer(text)
            return
        if text and text[0] == "4":  # MESSAGE: the common case, skip building a packet object
            handler = self.handler
            if handler is not None:
                handler.on_message(self, text[1:])
            return
        self.receive(decode_text(text))

    def receive(self, packet: EnginePacket) -> None:
        """One decoded packet from the client."""
        if self.state is not _OPEN:
            if self.state is _ADOPTING:
                self._defer(packet)
            return
        ptype = packet.type
        if ptype is EnginePacketType.MESSAGE:
            if self.handler is not None:
                self.handler.on_message(self, packet.data)
        elif ptype is EnginePacketType.PONG:
            heartbeat = self.heartbeat
            if heartbeat.awaiting_pong and self.run_overdue_timer():  # an unsolicited pong changes nothing
                heartbeat.on_pong(self.server.now())
                self.set_timer(heartbeat.deadline, slack=self.server.options.timer_slack)
        elif ptype is EnginePacketType.CLOSE:
            self.close("transport close", graceful=False)
        elif ptype is EnginePacketType.PING:
            # Engine.IO v4 clients never ping; the reference answers anyway, and the
            # official test suites rely on it.
            self.send(wire.PONG)
        elif ptype is EnginePacketType.NOOP:
            pass
        else:  # OPEN or UPGRADE on an established transport
            raise DecodeError(f"unexpected {ptype.name} packet")

    def protocol_error(self, exc: DecodeError) -> None:
        """The client sent something malformed: log why and end only this session."""
        log.info("closing session %s: parse error: %s", self.sid, exc.reason)
        self.close("parse error", graceful=False)

    # ------------------------------------------------------------------ timers

    def run_overdue_timer(self) -> bool:
        """Run the session's timer now if its deadline has passed; return whether it is open.

        The loop runs ready I/O before due timers, so a request can reach us after the ping
        timeout but before its timer callback: the deadline decides, not the callback's turn
        (the reference's loop runs timers first, and a client expects the same answer).
        """
        timer = self._timer
        if timer is not None and timer.deadline <= self.server.now():
            timer.cancel()
            self.on_timer(self.server.now())
        return self.open

    def set_timer(self, deadline: float, *, slack: float = 0.0) -> None:
        """Replace the session's pending timer entry (see `coup.engine.timers` for `slack`)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.server.timers.schedule(deadline, self, slack=slack)

    def on_timer(self, now: float) -> None:
        self._timer = None
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.CLOSING:
            log.info("session %s: client did not fetch its last packets in time", self.sid)
            self._finish_close()
            return
        action = self.heartbeat.on_timer(now)
        if action is HeartbeatAction.TIMED_OUT:
            log.info("session %s: ping timeout", self.sid)
            self.close("ping timeout", graceful=False)
            return
        if action is HeartbeatAction.SEND_PING:
            self.send(wire.PING)
            self.set_timer(self.heartbeat.deadline)  # the timeout: on time, the client gets all of it
        else:
            self.set_timer(self.heartbeat.deadline, slack=self.server.options.timer_slack)

    # ------------------------------------------------------------------ upgrade

    def begin_upgrade(self, transport: UpgradeTarget) -> None:
        """The WebSocket answered the probe: stop holding polling requests open."""
        self.upgrading = transport
        self.transport.begin_upgrade()

    def complete_upgrade(self, transport: Transport) -> None:
        """The client sent UPGRADE on the probe WebSocket: move everything to it."""
        old = self.transport
        self.upgrading = None
        self.upgraded = True
        self.transport = transport
        for out in old.discard():
            transport.send(out)

    def abort_upgrade(self, transport: UpgradeTarget) -> None:
        if self.upgrading is transport:
            self.upgrading = None
            self.transport.end_upgrade()

    # ------------------------------------------------------------------ moving between nodes

    def _defer(self, packet: str | EnginePacket) -> None:
        deferred = self._deferred
        if deferred is None:
            deferred = self._deferred = []
        if len(deferred) >= MAX_DEFERRED:
            log.warning("session %s: %d packets sent while the session moved here; closing", self.sid, len(deferred))
            self.state = _OPEN  # so the close runs its handlers
            self.close("transport error", graceful=False)
            return
        deferred.append(packet)

    def finish_adoption(self) -> None:
        """The session moved here is complete: heartbeat from now, then the packets that waited."""
        if self.state is not _ADOPTING:
            return
        self.state = _OPEN
        opts = self.server.options
        self.heartbeat = Heartbeat(self.server.now(), opts.ping_interval, opts.ping_timeout, lateness=opts.timer_slack)
        self.set_timer(self.heartbeat.deadline, slack=opts.timer_slack)
        deferred, self._deferred = self._deferred, None
        for packet in deferred or ():
            if isinstance(packet, str):
                self.receive_text(packet)
            else:
                self.receive(packet)

    def hand_over(self) -> list[Outbound]:
        """This session moved to another node: end it here without telling the layer above.

        Returns the packets queued for the client and not yet fetched (the new node sends them first).
        """
        pending = self.transport.discard()
        self.handler = None  # no close handlers: the sockets live on elsewhere
        self.close_reason = "moved"
        self._finish_close()
        return pending

    # ------------------------------------------------------------------ close

    def close(self, reason: str, *, graceful: bool = True) -> None:
        """End the session. Graceful: queued packets still reach a polling client first."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.OPEN:
            self.close_reason = reason
        if graceful and self.state is SessionState.OPEN:
            self.state = SessionState.CLOSING
            self.transport.close(reason, graceful=True)
            if self.state is SessionState.CLOSING:  # the transport could not finish at once
                opts = self.server.options
                self.set_timer(self.server.now() + opts.ping_timeout, slack=opts.timer_slack)
            return
        self._finish_close()

    def transport_closed(self, transport: UpgradeTarget, reason: str) -> None:
        """The transport went away under us (socket closed, write failed)."""
        if transport is self.upgrading:
            self.abort_upgrade(transport)
            return
        if transport is not self.transport:
            return
        if self.state is SessionState.OPEN:
            self.close_reason = reason
        self._finish_close()

    def finish_graceful_close(self) -> None:
        """Called by a transport once a graceful close has delivered everything."""
        if self.state is SessionState.CLOSING:
            self._finish_close()

    def _finish_close(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reason = self.close_reason or "forced close"
        metrics = self.server.metrics
        if metrics is not None:
            metrics.closed[reason] += 1
        if self.upgrading is not None:
            self.upgrading.close(reason, graceful=False)
            self.upgrading = None
        transport = self.transport
        transport.close(reason, graceful=False)
        # the transport refers to this session too: a cycle only a full collection would
        # free, and those are rare (coup.heap); without it, reference counting frees a
        # closed connection as soon as its last callback is done
        self.transport = ClosedTransport(transport.name)
        self.server.forget(self)
        handler = self.handler
        self.handler = None
        if handler is not None:
            try:
                handler.on_close(self, reason)
            except Exception:
                log.exception("session %s: close handler failed", self.sid)
