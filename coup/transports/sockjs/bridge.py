"""A SockJS connection as one more session of the Socket.IO core.

Each SockJS connection gets an Engine.IO-less `coup.engine.session.Session` whose
transport is a `SockJSLink`. The core cannot tell it from a polling or WebSocket
session: the same `Client` decodes its packets, the same middleware authenticates it,
its sockets join the same rooms of the same adapter, and broadcasts reach it through the
same `session.send(Outbound)` fan-out. Only the wire differs: the link turns Socket.IO
packets into the JSON envelope of `coup.transports.sockjs.envelope` and back.

The session is never put on the heartbeat wheel: SockJS has its own heartbeat frames and
notices a lost client by its own timeouts, then tells us through `on_close`.
"""

from __future__ import annotations

import json
import logging
import time
from enum import Enum
from typing import Any

from sockjs.tornado import SockJSConnection
from sockjs.tornado.session import CLOSING as SOCKJS_CLOSING

from coup.engine.handshake import HandshakeInfo
from coup.engine.server import EngineServer
from coup.engine.session import Session, SessionState
from coup.engine.transport import NotUpgradable
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound
from coup.transports.sockjs import envelope
from coup.transports.sockjs.envelope import CLOSE_PROTOCOL, CLOSE_SERVER, CLOSE_TOO_LARGE, EnvelopeError

log = logging.getLogger(__name__)

#: events a client may send after its auth message, before the server accepted it
MAX_EARLY_EVENTS = 64


class Frame:
    """One core output as the SockJS session sends it: the envelope text, JSON-quoted once."""

    __slots__ = ("kind", "quoted", "text")

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        self.text = text
        #: the message as an element of a SockJS `a[...]` frame (ASCII-safe JSON string)
        self.quoted = json.dumps(text)


class BridgeContext:
    """What every bridge of one SockJS endpoint shares: the Engine.IO server and a frame cache.

    A broadcast hands the same `Outbound` to each receiver in turn, so remembering the
    last translation makes a room-wide broadcast cost one translation, not one per socket.
    """

    __slots__ = ("engine", "last_frame", "last_out", "max_message_size")

    def __init__(self, engine: EngineServer, max_message_size: int) -> None:
        self.engine = engine
        self.max_message_size = max_message_size
        #: the last `Outbound` translated, and its frame (`CoreBridge.deliver` reads them first)
        self.last_out: Outbound | None = None
        self.last_frame: Frame | None = None

    def frame(self, out: Outbound) -> Frame | None:
        if out is self.last_out:
            return self.last_frame
        packet = envelope.outbound_packet(out)
        frame = None
        if packet is not None:
            body = envelope.packet_envelope(packet)
            frame = Frame(body["type"], envelope.dumps(body))
        self.last_out, self.last_frame = out, frame
        return frame


class BridgeState(Enum):
    AWAITING_AUTH = "awaiting auth"
    CONNECTING = "connecting"  # auth sent to the middleware, no answer yet
    CONNECTED = "connected"


class SockJSLink(NotUpgradable):
    """The core `Transport` of a SockJS connection."""

    __slots__ = ("bridge", "name")

    def __init__(self, bridge: CoreBridge) -> None:
        self.bridge = bridge
        self.name = "sockjs"

    def send(self, out: Outbound) -> None:
        self.bridge.deliver(out)

    def close(self, reason: str, *, graceful: bool) -> None:
        # SockJS sends what is queued before its close frame, so every close is graceful
        bridge = self.bridge
        bridge.shutdown(CLOSE_SERVER, reason, reason)
        bridge.core = None  # the core session is over (and the link with it: no cycle is left)


class CoreBridge(SockJSConnection):  # type: ignore[misc]
    """sockjs-tornado's connection object for one client; `session.server` is our router."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.context: BridgeContext = session.server.context
        self.core: Session | None = None
        self.state = BridgeState.AWAITING_AUTH
        self.namespace = "/"
        self.early: list[SocketPacket] = []
        self.closing = False

    # ------------------------------------------------------------------ SockJS side

    def on_open(self, info: Any) -> None:
        engine = self.context.engine
        if engine.draining:  # on our way out: the client reconnects, and the router sends it elsewhere
            self.closing = True
            self.session.close(CLOSE_SERVER, "server shutting down")
            return
        request = getattr(self.session, "request", None)
        headers = {k.lower(): v for k, v in info.headers.get_all()}
        handshake = HandshakeInfo(
            headers=headers,
            query={k: v[-1].decode("utf-8", "replace") for k, v in info.arguments.items() if v},
            address=info.ip or "",
            url=info.path,
            secure=request is not None and request.protocol == "https",
            issued=time.time(),
            xdomain="origin" in headers,
            extra={"transport": "sockjs", "sockjs_transport": self.session.transport_name},
        )
        # only the core session holds the link: with the bridge holding it too, the two would
        # form a cycle that keeps the whole connection (the library's session, the request,
        # the stream) in memory until a full collection, which a serving process seldom runs
        core = Session(engine.new_sid(), engine, handshake, SockJSLink(self), engine.now())
        self.core = core
        engine.sessions[core.sid] = core
        if engine.metrics is not None:
            engine.metrics.opened["sockjs"] += 1
        if engine.on_connection is not None:
            engine.on_connection(core)

    def on_message(self, message: Any) -> None:
        if self.closing or self.core is None:
            return
        if isinstance(message, str) and len(message) > self.context.max_message_size:
            self.fail(EnvelopeError("TOO_LARGE", "message exceeds the size limit"), CLOSE_TOO_LARGE)
            return
        try:
            inbound = envelope.decode_inbound(message, self.namespace)
        except EnvelopeError as exc:
            self.fail(exc)
            return
        if inbound.kind == "auth":
            if self.state is not BridgeState.AWAITING_AUTH:
                self.fail(EnvelopeError("BAD_STATE", "already authenticated"))
                return
            self.state = BridgeState.CONNECTING
            self.namespace = inbound.namespace
            self.feed(SocketPacket(SocketPacketType.CONNECT, inbound.namespace, inbound.auth))
            return
        if self.state is BridgeState.AWAITING_AUTH:
            self.fail(EnvelopeError("AUTH_REQUIRED", 'the first message must be {"type": "auth", ...}'))
            return
        if inbound.kind == "disconnect":
            if self.state is BridgeState.CONNECTED:
                self.feed(SocketPacket(SocketPacketType.DISCONNECT, self.namespace))
            self.shutdown(1000, "client disconnect", "client namespace disconnect")
            return
        assert inbound.packet is not None
        if self.state is BridgeState.CONNECTING:
            if len(self.early) >= MAX_EARLY_EVENTS:
                self.fail(EnvelopeError("TOO_MANY", "too many messages before the auth answer"))
                return
            self.early.append(inbound.packet)
            return
        self.feed(inbound.packet)

    def on_close(self) -> None:
        """The SockJS session ended under us (client gone, expired, or closed by us)."""
        if self.closing:
            return
        self.closing = True
        if self.core is not None:
            self.core.transport_closed(self.core.transport, "transport close")

    # ------------------------------------------------------------------ core side

    def feed(self, packet: SocketPacket) -> None:
        """Give the core the packet a Socket.IO client would have sent."""
        if self.core is not None:
            self.core.receive_text("4" + encode(packet).text)

    def deliver(self, out: Outbound) -> None:
        context = self.context
        # once per receiver of a broadcast: the cached frame without a call
        frame = context.last_frame if out is context.last_out else context.frame(out)
        if frame is None or self.closing:
            return
        kind = frame.kind
        if kind == "connect":
            self.state = BridgeState.CONNECTED
            early, self.early = self.early, []
            if early:  # after what the core sends right behind its CONNECT (recovered packets)
                self.session.server.io_loop.add_callback(self._feed_all, early)
        elif kind == "connect_error":
            self.state = BridgeState.AWAITING_AUTH  # the client may authenticate again
            self.early.clear()
        self.send_frame(frame)
        if kind == "disconnect":
            self.session.server.io_loop.add_callback(
                self.shutdown, CLOSE_SERVER, "server namespace disconnect", "server namespace disconnect")

    def _feed_all(self, packets: list[SocketPacket]) -> None:
        for packet in packets:
            if self.closing:
                return
            self.feed(packet)

    def send_frame(self, frame: Frame) -> None:
        session = self.session
        if session is None or session.state >= SOCKJS_CLOSING:  # `is_closed` without the property
            return
        if session.send_expects_json:
            session.send_jsonified(frame.quoted, False)
        else:  # the raw /websocket endpoint: one WebSocket message per envelope
            session.send_message(frame.text, stats=False)

    # ------------------------------------------------------------------ closing

    def fail(self, error: EnvelopeError, code: int = CLOSE_PROTOCOL) -> None:
        """The client broke the protocol: tell it why, then close (as Socket.IO does)."""
        log.info("sockjs session %s: %s (%s); closing", self.core.sid if self.core else "-", error.message,
                 error.code)
        session = self.session
        if session is not None and not session.is_closed:
            text = envelope.error_envelope(error)
            if session.send_expects_json:
                session.send_jsonified(json.dumps(text), False)
            else:
                session.send_message(text, stats=False)
        self.shutdown(code, error.code.lower(), "parse error")

    def shutdown(self, code: int, message: str, core_reason: str) -> None:
        """Close both halves: the core session (with `core_reason`) and the SockJS session."""
        if self.closing:
            return
        self.closing = True
        core = self.core
        if core is not None and core.state is not SessionState.CLOSED:
            core.close(core_reason, graceful=False)
        session = self.session
        if session is not None and not session.is_closed:
            session.close(code, message)
