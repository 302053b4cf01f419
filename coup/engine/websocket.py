"""The WebSocket side of a session: an asyncio protocol on the raw socket.

After the HTTP upgrade (done by the Tornado handler in `coup.transports.websocket`) the
socket is handed to this protocol, so the per-message path is ours: one `transport.write`
per socket per loop turn, whatever number of packets were queued in that turn
(`WriteCoalescer`), with frames that were encoded once for every receiver
(`coup.protocol.wire.Outbound`). Figures behind this choice: docs/transports.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from coup.engine.session import SessionState
from coup.engine.transport import NotUpgradable
from coup.protocol import wire
from coup.protocol.deflate import Agreement, Compression, Inflater
from coup.protocol.engineio import decode_ws_binary
from coup.protocol.errors import DecodeError
from coup.protocol.websocket import (
    BinaryMessage,
    CloseCode,
    CloseReceived,
    FrameReader,
    Ping,
    TextMessage,
    WebSocketEvent,
    encode_close_frame,
)
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.engine.session import Session
    from coup.metrics import Metrics

log = logging.getLogger(__name__)

#: seconds a peer has to close its side after our close frame before the socket is aborted
CLOSE_TIMEOUT = 5.0


class WriteCoalescer:
    """Collects the connections written to during one loop turn and flushes each once.

    `WebSocketTransport.send` adds a connection to `_dirty` (and schedules `flush`) when its
    first packet of the turn arrives; both sides are inlined because they run per receiver.
    """

    __slots__ = ("_dirty", "_loop", "_metrics", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics | None = None) -> None:
        self._loop = loop
        self._dirty: list[WebSocketTransport] = []
        self._scheduled = False
        self._metrics = metrics

    def flush(self) -> None:
        self._scheduled = False
        dirty = self._dirty
        self._dirty = []
        frames = 0
        sent = 0
        # `WebSocketTransport.flush` inlined: this loop runs once per receiver per loop turn
        for conn in dirty:
            pending = conn._pending
            transport = conn._transport
            if not pending or conn._closed or transport is None:
                continue  # not attached yet: connection_made() writes what is pending
            count = len(pending)
            data = pending[0] if count == 1 else b"".join(pending)
            transport.write(data)
            frames += count
            sent += len(data)
            pending.clear()
            if transport.get_write_buffer_size() > conn._max_buffer:
                conn._slow_consumer()
        metrics = self._metrics
        if metrics is not None:  # counted once per loop turn, not per frame
            metrics.packets_sent["websocket"] += frames
            metrics.bytes_sent["websocket"] += sent


class WebSocketTransport(NotUpgradable, asyncio.Protocol):
    """One WebSocket connection carrying one Engine.IO session (or probing to carry one)."""

    name = "websocket"

    __slots__ = (
        "_closed",
        "_coalescer",
        "_compression",
        "_linger",
        "_max_buffer",
        "_pending",
        "_probing",
        "_reader",
        "_transport",
        "_upgrade_timer",
        "preamble",
        "session",
    )

    def __init__(self, session: Session, coalescer: WriteCoalescer, *, probing: bool) -> None:
        self.session = session
        self._transport: asyncio.Transport | None = None
        options = session.server.options
        self._reader = FrameReader(max_message=options.max_payload, max_fragments=options.max_fragments,
                                   unmask=options.ws_unmask)
        self._pending: list[bytes] = []
        self._coalescer = coalescer
        self._max_buffer = options.max_buffered_bytes
        #: True until the client completes an upgrade from polling with UPGRADE
        self._probing = probing
        self._closed = False
        self._upgrade_timer: asyncio.TimerHandle | None = None
        #: after our close frame: the deadline for the peer to close its side
        self._linger: asyncio.TimerHandle | None = None
        #: bytes written before any frame once the socket is attached (the HTTP 101 answer)
        self.preamble = b""
        #: permessage-deflate, when the handshake agreed to it (`use_deflate`)
        self._compression: Compression | None = None

    def use_deflate(self, agreement: Agreement) -> None:
        """Compress and decompress as agreed in the handshake (before any frame is read)."""
        options = self.session.server.options
        self._compression = agreement.compression
        inflater = Inflater(no_context_takeover=agreement.client_no_context_takeover)
        self._reader = FrameReader(max_message=options.max_payload, max_fragments=options.max_fragments,
                                   inflater=inflater, unmask=options.ws_unmask)

    def __repr__(self) -> str:
        return f"<WebSocketTransport {self.session.sid}{' probing' if self._probing else ''}>"

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport, so no isinstance check
        self._transport = stream = cast(asyncio.Transport, transport)
        # the 101 answer and whatever was queued meanwhile (the OPEN packet) in one write
        first = self.preamble + b"".join(self._pending)
        self.preamble = b""
        self._pending.clear()
        if first:
            stream.write(first)
        if self._probing:
            loop = asyncio.get_running_loop()
            self._upgrade_timer = loop.call_later(self.session.server.options.upgrade_timeout,
                                                  self._upgrade_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # our close frame is out: what still comes is read and dropped (see `_shutdown`)
        metrics = self.session.server.metrics
        if metrics is not None:  # per read, not per frame
            metrics.bytes_received["websocket"] += len(data)
        try:
            events = self._reader.feed(data)
        except DecodeError as exc:
            # the messages before the bad frame were valid: they are delivered, then we close
            self._dispatch(cast("list[WebSocketEvent]", exc.events))
            if not self._closed:
                log.info("session %s: invalid WebSocket frame: %s", self.session.sid, exc.reason)
                self._fail(exc.close_code)
            return
        self._dispatch(events)

    def _dispatch(self, events: list[WebSocketEvent]) -> None:
        session = self.session
        metrics = session.server.metrics
        if metrics is not None:  # per read, not per frame
            metrics.packets_received["websocket"] += len(events)
        for event in events:
            if self._closed:
                return
            try:
                if type(event) is TextMessage:
                    if self._probing:
                        self._probe_text(event.text)
                    else:
                        session.receive_text(event.text)
                elif type(event) is BinaryMessage:
                    if self._probing:
                        raise DecodeError("binary message before the upgrade completed")
                    session.receive(decode_ws_binary(event.data))
                elif type(event) is Ping:
                    self._write(event.response())
                elif type(event) is CloseReceived:
                    self._write(event.response())
                    self._shutdown()
                    session.transport_closed(self, "transport close")
                # Pong frames need no answer
            except DecodeError as exc:
                if self._probing:
                    log.info("session %s: bad packet on upgrade probe: %s", session.sid, exc.reason)
                    self._fail(CloseCode.PROTOCOL_ERROR)
                else:
                    session.protocol_error(exc)
                return

    def eof_received(self) -> bool | None:
        return None  # the peer finished (after our close frame, or instead of one): close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._pending.clear()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
            self._upgrade_timer = None
        self.session.transport_closed(self, "transport close" if exc is None else "transport error")

    def pause_writing(self) -> None:
        """The kernel buffer is full; we keep queueing in the transport up to `_max_buffer`."""

    def resume_writing(self) -> None:
        pass

    # ------------------------------------------------------------------ upgrade probe

    def _probe_text(self, text: str) -> None:
        session = self.session
        adopting = session.state is SessionState.ADOPTING
        if text == "2probe" and session.upgrading is None:
            if adopting:  # the session lives elsewhere: answered once its home agreed
                session.server.begin_adoption(session, self)
                return
            self.answer_probe()
            session.begin_upgrade(self)
        elif text == "5" and session.upgrading is self:
            self._probing = False
            if self._upgrade_timer is not None:
                self._upgrade_timer.cancel()
                self._upgrade_timer = None
            if adopting:
                session.server.complete_adoption(session, self)
            else:
                session.complete_upgrade(self)
        else:
            raise DecodeError("unexpected packet during the upgrade")

    @property
    def closed(self) -> bool:
        return self._closed

    def answer_probe(self) -> None:
        self._write(wire.PROBE_PONG.ws_bytes())

    def refuse_probe(self) -> None:
        """The session cannot be upgraded here after all: the client's upgrade fails, polling goes on."""
        self._fail(CloseCode.NORMAL)

    def _upgrade_timed_out(self) -> None:
        self._upgrade_timer = None
        if self._probing:
            log.info("session %s: upgrade did not complete in time", self.session.sid)
            self._fail(CloseCode.NORMAL)

    # ------------------------------------------------------------------ outbound

    def send(self, out: Outbound) -> None:
        if self._closed:
            return
        pending = self._pending
        if not pending:  # first packet this turn: join the coalescer's dirty list
            coalescer = self._coalescer
            coalescer._dirty.append(self)
            if not coalescer._scheduled:
                coalescer._scheduled = True
                coalescer._loop.call_soon(coalescer.flush)
        compression = self._compression
        if compression is None:
            pending.append(out._ws or out.ws_bytes())  # the cached frame without a call, per receiver
        else:  # compressed once per broadcast for all receivers with the same parameters
            pending.append(out._wsz if out._wsz_key is compression else out.ws_deflated(compression))

    def flush(self) -> None:
        pending = self._pending
        transport = self._transport
        if not pending or self._closed or transport is None:
            return  # not attached yet: connection_made() writes what is pending
        metrics = self.session.server.metrics
        if metrics is not None:
            metrics.packets_sent["websocket"] += len(pending)
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        transport.write(data)
        if metrics is not None:
            metrics.bytes_sent["websocket"] += len(data)
        if transport.get_write_buffer_size() > self._max_buffer:
            self._slow_consumer()

    def _slow_consumer(self) -> None:
        transport = self._transport
        assert transport is not None
        log.warning("session %s: slow consumer, %d bytes unsent on WebSocket; closing",
                    self.session.sid, transport.get_write_buffer_size())
        metrics = self.session.server.metrics
        if metrics is not None:
            metrics.slow_consumer("websocket")
        self._closed = True
        transport.abort()

    def _write(self, data: bytes) -> None:
        """Write now, after anything pending (control frames and handshake replies)."""
        if self._pending:
            self.flush()
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    # ------------------------------------------------------------------ close

    def close(self, reason: str, *, graceful: bool) -> None:
        """Send a close frame after anything queued, then close the socket."""
        if self._closed:
            return
        self._write(encode_close_frame(CloseCode.NORMAL))
        self._shutdown()
        if graceful and self.session.transport is self:
            self.session.finish_graceful_close()  # everything queued is written; the socket lingers alone

    def _shutdown(self) -> None:
        """End the connection after our close frame, without losing that frame.

        Closing a socket whose receive buffer still holds unread bytes (the rest of an
        oversized message, frames sent after a bad one) makes the kernel send a reset, and
        the peer's kernel then drops our close frame unread. So we half-close instead: the
        peer reads the close frame and the end of the stream, and closes its side; until then
        everything it sends is read and dropped (`data_received`), for at most
        `CLOSE_TIMEOUT` seconds.
        """
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        if transport is None:
            return
        if not transport.can_write_eof():  # pragma: no cover - TCP transports can
            transport.close()
            return
        try:
            transport.write_eof()  # after the buffered frames; reading goes on
        except OSError:  # the peer is gone already
            transport.abort()
            return
        self._linger = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def _fail(self, code: int) -> None:
        if self._closed:
            return
        self._write(encode_close_frame(code))
        self._shutdown()
        if not self._probing:
            self.session.transport_closed(self, "parse error")
