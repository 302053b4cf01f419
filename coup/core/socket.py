"""A client's connection to one namespace: its rooms, its handlers' queue, its acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coup.core.adapter import BroadcastOptions
from coup.core.broadcast import BroadcastOperator
from coup.core.errors import INTERNAL_ERROR, AckTimeout, ClientError, SocketDisconnected, error_ack, error_event
from coup.core.hold import HeldPackets, PacketSink
from coup.core.options import ServerOptions
from coup.core.recovery import RestoredSession, SessionRecord
from coup.core.replay_budget import current_origin
from coup.engine.handshake import HandshakeInfo
from coup.logs import log_context, reset_context
from coup.metrics import Metrics
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.core.client import Client
    from coup.core.namespace import Handler, Namespace
    from coup.engine.session import Session

log = logging.getLogger(__name__)

#: the event label of events no handler was registered for (client-chosen names are unbounded)
UNHANDLED = "(unhandled)"

#: disconnect reasons after which the reference server keeps the session for recovery
RECOVERABLE_REASONS = frozenset({
    "transport error", "transport close", "forced close", "ping timeout",
    "server shutting down", "forced server close",
})


@dataclass(frozen=True, slots=True)
class SocketContext:
    """What a socket needs from its server, handed over when it is built (one per server).

    A socket does not reach back through ``nsp.server`` for these: the server's options, the
    engine's buffer limit and metrics, where background tasks run and who a log line is about.
    """

    options: ServerOptions
    #: bytes a connecting socket may hold before its CONNECT reply (`coup.core.hold`)
    max_buffered_bytes: int
    default_ack_timeout: float
    metrics: Metrics | None
    #: run a background task that the server keeps and cancels on close
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]]
    #: who a socket's user is, for log lines (the application decides; None: nobody)
    log_user: Callable[[Socket], str | None]


class _Disconnected:
    """Inbox marker: run the disconnect handlers after the events queued before it."""

    __slots__ = ("handled", "reason")

    def __init__(self, reason: str) -> None:
        self.reason = reason
        #: done once the handlers ran (`Socket.abandon` waits for it)
        self.handled: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Socket:
    """Event handlers of one socket run one at a time, in the order the packets arrived."""

    __slots__ = (
        "__weakref__",
        "_acks",
        "_busy",
        "_closing",
        "_inbox",
        "_last_rooms",
        "auth",
        "client",
        "connected",
        "context",
        "data",
        "disconnect_reason",
        "handshake",
        "id",
        "nsp",
        "pid",
        "recovered",
        "session",
        "sink",
    )

    def __init__(self, context: SocketContext, nsp: Namespace, client: Client, auth: dict[str, Any], *,
                 sid: str | None = None, pid: str | None = None) -> None:
        self.id = sid or secrets.token_urlsafe(15)
        #: private id for connection state recovery (never shown to other clients)
        self.pid = pid or (secrets.token_urlsafe(15) if context.options.recovery else None)
        self.context = context
        self.nsp = nsp
        self.client = client
        self.session: Session = client.session
        #: where this socket's packets go: held until the CONNECT reply is out, then the session
        self.sink: PacketSink = HeldPackets(client.session, context.max_buffered_bytes)
        self.handshake: HandshakeInfo = client.session.handshake
        self.auth = auth
        #: application data (e.g. the authenticated user); JSON-able, a cluster ships it
        self.data: dict[str, Any] = {}
        self.connected = False
        self.recovered = False
        self.disconnect_reason: str | None = None
        self._inbox: deque[SocketPacket | _Disconnected] | None = None
        self._busy = False
        self._acks: dict[int, asyncio.Future[list[Any]]] = {}
        self._last_rooms: frozenset[str] = frozenset()
        #: what `on_close` started (record saved, rooms left, disconnect handlers), for `abandon`
        self._closing: list[asyncio.Future[Any]] = []

    def __repr__(self) -> str:
        return f"<Socket {self.id} {self.nsp.name}{'' if self.connected else ' disconnected'}>"

    @property
    def busy(self) -> bool:
        """A handler of this socket is running (or events wait for one)."""
        return self._busy

    # ------------------------------------------------------------------ rooms

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this socket is in (as they were at disconnect, once disconnected)."""
        if not self.connected:
            return self._last_rooms
        return self.nsp.adapter.socket_rooms(self.id)

    def restore(self, restored: RestoredSession) -> None:
        """Take over a recovered session's data and rooms (before connecting)."""
        self.data = dict(restored.data)
        self.recovered = True
        self._last_rooms = restored.rooms

    def rooms_to_join(self) -> set[str]:
        """The rooms to join on connecting: its own, and a recovered session's."""
        return {self.id} | set(self._last_rooms)

    async def join(self, *rooms: str) -> None:
        """Join rooms; when this returns, broadcasts to them reach this socket (cluster-wide)."""
        if self.connected:
            await self.nsp.adapter.add_all(self.id, rooms)

    async def leave(self, room: str) -> None:
        if self.connected:
            await self.nsp.adapter.remove(self.id, room)

    # ------------------------------------------------------------------ emitting

    def emit(self, event: str, *args: Any) -> None:
        """Send an event to this client only."""
        packet = SocketPacket(SocketPacketType.EVENT, self.nsp.name, [event, *args])
        if self.context.options.recovery is not None:
            # through the adapter, so the packet gets an offset and can be replayed
            self.nsp.adapter.broadcast(packet, BroadcastOptions(rooms=frozenset((self.id,)), local=True))
        else:
            self.sink.send(Outbound.message(encode(packet)))

    async def emit_with_ack(self, event: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Send an event and wait for the client's acknowledgement; return its arguments."""
        if not self.connected:
            raise SocketDisconnected(self.id)
        ack_id = self.nsp.next_ack_id()
        future = self.expect_ack(ack_id)
        self.sink.send(Outbound.message(encode(
            SocketPacket(SocketPacketType.EVENT, self.nsp.name, [event, *args], ack_id))))
        wait = timeout if timeout is not None else self.context.default_ack_timeout
        try:
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            raise AckTimeout() from None
        finally:
            self._acks.pop(ack_id, None)

    def expect_ack(self, ack_id: int) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        return future

    def to(self, *rooms: str) -> BroadcastOperator:
        """Broadcast to rooms, excluding this socket (as the reference's `socket.to`)."""
        return BroadcastOperator(self.nsp, BroadcastOptions(exclude=frozenset((self.id,)))).to(*rooms)

    @property
    def broadcast(self) -> BroadcastOperator:
        """Everyone in the namespace but this socket."""
        return BroadcastOperator(self.nsp, BroadcastOptions(exclude=frozenset((self.id,))))

    def _send_packet(self, packet: SocketPacket) -> None:
        self.sink.send(Outbound.message(encode(packet)))

    def send_error(self, error: ClientError, event: str | None) -> None:
        """Tell this client its request was refused (the ``error`` event).

        A reply to this socket alone, sent straight to it: never kept for connection state
        recovery (a flood of refused requests must not fill the replay store)."""
        self._send_packet(SocketPacket(SocketPacketType.EVENT, self.nsp.name,
                                       [self.context.options.error_event, error_event(error, event)]))

    # ------------------------------------------------------------------ incoming packets

    def on_packet(self, packet: SocketPacket) -> None:
        ptype = packet.type
        if ptype is SocketPacketType.EVENT or ptype is SocketPacketType.BINARY_EVENT:
            self._on_event(packet)
        elif ptype is SocketPacketType.ACK or ptype is SocketPacketType.BINARY_ACK:
            future = self._acks.pop(packet.id, None) if packet.id is not None else None
            if future is not None and not future.done():
                future.set_result(packet.data)
        elif ptype is SocketPacketType.DISCONNECT:
            self.on_close("client namespace disconnect")

    def _on_event(self, packet: SocketPacket) -> None:
        if not self.connected:
            return
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            if len(inbox) >= self.context.options.max_pending_events:
                log.warning("socket %s: %d events waiting for handlers; disconnecting (flood)",
                            self.id, len(inbox))
                metrics = self.context.metrics
                if metrics is not None:
                    metrics.dropped("inbox", len(inbox) + 1)
                self.send_error(ClientError("FLOOD", "Too many events; slow down"), None)
                self.disconnect(close=True)
                return
            inbox.append(packet)
            return
        handler = self.nsp.handler_for(packet.data[0])
        if handler is None:
            return  # nobody listens to this event, as the reference ignores it
        if not handler.is_async:
            self._call_sync(handler, packet)
            return
        self._busy = True
        self.context.spawn(self._drain(packet))

    def _call_sync(self, handler: Handler, packet: SocketPacket) -> None:
        origin = current_origin.set(self.id)
        metrics = self.context.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        context = log_context(self.session.sid, self.context.log_user(self))
        try:
            result = handler.fn(self, packet.data[1:] if handler.event is not None else packet.data)
        except ClientError as exc:
            self._refuse(exc, packet)
        except Exception:
            log.exception("handler for %r failed on socket %s", packet.data[0], self.id)
            self._refuse(INTERNAL_ERROR, packet)
        else:
            self._ack(packet, result)
        finally:
            reset_context(context)
            current_origin.reset(origin)
        if metrics is not None:
            metrics.event_seconds.observe(handler.event or UNHANDLED, time.perf_counter() - started)

    async def abandon(self, timeout: float = 5.0) -> None:
        """Its client came back on a new connection (with this socket's pid): this one is
        half-open. End it as a dropped transport and wait until its session record is saved
        again, its rooms are left and its disconnect handlers ran, so that the new connection
        restores the session as after any drop (within the presence grace: no flap)."""
        self.client.close("transport close")
        with contextlib.suppress(TimeoutError):  # the caller finds the record missing
            async with asyncio.timeout(timeout):
                await asyncio.gather(*self._closing, return_exceptions=True)

    async def _drain(self, item: SocketPacket | _Disconnected) -> None:
        # a task of its own: what it logs is about this client, and what its handlers
        # broadcast is this socket's (the recovery store's per-origin share), to its end
        log_context(self.session.sid, self.context.log_user(self))
        current_origin.set(self.id)
        try:
            while True:
                if isinstance(item, _Disconnected):
                    try:
                        await self.nsp.run_disconnect_handlers(self, item.reason)
                    finally:
                        item.handled.set_result(None)
                else:
                    await self._handle(item)
                inbox = self._inbox
                if not inbox:
                    return
                item = inbox.popleft()
        finally:
            self._busy = False

    async def _handle(self, packet: SocketPacket) -> None:
        event = packet.data[0]
        handler = self.nsp.handler_for(event)
        if handler is None:
            return
        metrics = self.context.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        try:
            args = packet.data[1:] if handler.event is not None else packet.data
            result = handler.fn(self, args)
            if handler.is_async:
                result = await result
        except ClientError as exc:
            self._refuse(exc, packet)
        except Exception:
            log.exception("handler for %r failed on socket %s", event, self.id)
            self._refuse(INTERNAL_ERROR, packet)
        else:
            self._ack(packet, result)
        if metrics is not None:
            metrics.event_seconds.observe(handler.event or UNHANDLED, time.perf_counter() - started)

    def _ack(self, packet: SocketPacket, result: Any) -> None:
        if packet.id is None or not self.connected:
            return
        if result is None:
            data: list[Any] = []
        elif isinstance(result, tuple):
            data = list(result)
        else:
            data = [result]
        self._send_packet(SocketPacket(SocketPacketType.ACK, self.nsp.name, data, packet.id))

    def _refuse(self, error: ClientError, packet: SocketPacket) -> None:
        if not self.connected:
            return
        event = packet.data[0] if isinstance(packet.data[0], str) else None
        self.send_error(error, event)
        if packet.id is not None:
            self._send_packet(SocketPacket(SocketPacketType.ACK, self.nsp.name, [error_ack(error)], packet.id))

    # ------------------------------------------------------------------ disconnect

    def disconnect(self, close: bool = False) -> None:
        """Server-side disconnect: tell the client, then (if `close`) end its whole connection."""
        if not self.connected:
            return
        if close:
            self.client.disconnect()
            return
        self._send_packet(SocketPacket(SocketPacketType.DISCONNECT, self.nsp.name))
        self.on_close("server namespace disconnect")

    def on_close(self, reason: str) -> None:
        """The socket is gone (client, server or transport); runs once."""
        if not self.connected:
            return
        adapter = self.nsp.adapter
        self._last_rooms = adapter.socket_rooms(self.id)
        self.connected = False
        self.disconnect_reason = reason
        metrics = self.context.metrics
        if metrics is not None:
            metrics.disconnected(self.nsp.name, reason)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(SocketDisconnected(self.id))
        self._acks.clear()
        self.nsp.remove(self)
        self.client.remove(self)
        spawn = self.context.spawn
        if self.pid is not None and reason in RECOVERABLE_REASONS:
            self._closing.append(spawn(adapter.persist_session(
                SessionRecord(self.id, self.pid, self._last_rooms, dict(self.data)))))
        elif self.pid is not None:  # it left, or was put out: nobody may restore it
            spawn(adapter.discard_session(self.pid))
        self._closing.append(spawn(adapter.remove_all(self.id)))
        marker = _Disconnected(reason)
        self._closing.append(marker.handled)
        if self._busy:
            if self._inbox is None:
                self._inbox = deque()
            self._inbox.append(marker)
        else:
            self._busy = True
            spawn(self._drain(marker))
