"""The long-polling side of a session: an outbound queue and at most one waiting GET.

The reference semantics we keep: a GET returns at once when packets are queued, otherwise it
waits until one is; a second GET while one waits ends the session ("overlap from client");
an upgrade or a close answers the waiting GET with NOOP (or CLOSE) so the client is never
left hanging until the heartbeat gives up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

from coup.engine.errors import EngineErrorCode, EngineRequestError
from coup.protocol import wire
from coup.protocol.engineio import SEPARATOR, decode_payload
from coup.protocol.errors import DecodeError
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.engine.session import Session

log = logging.getLogger(__name__)

#: session close reasons after which a waiting GET gets NOOP instead of CLOSE
_NOOP_CLOSE_REASONS = frozenset({"transport close", "server shutting down"})


class PollingTransport:
    name = "polling"

    __slots__ = (
        "_closed",
        "_final",
        "_loop",
        "_queue",
        "_queued_bytes",
        "_release_scheduled",
        "_upgrading",
        "_waiter",
        "discarded",
        "session",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.session: Session | None = None
        self._loop = loop
        self._queue: deque[Outbound] = deque()
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._release_scheduled = False
        self._upgrading = False
        #: the last packet to send (CLOSE or NOOP) once the session ends
        self._final: Outbound | None = None
        self._closed = False
        self.discarded = False

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    # ------------------------------------------------------------------ outbound

    def send(self, out: Outbound) -> None:
        if self._closed or self.discarded:
            return
        self._queue.append(out)
        self._queued_bytes += out.size
        session = self.session
        if session is not None and self._queued_bytes > session.server.options.max_buffered_bytes:
            log.warning("session %s: slow consumer, %d bytes queued for polling; closing",
                        session.sid, self._queued_bytes)
            metrics = session.server.metrics
            if metrics is not None:
                metrics.slow_consumer("polling")
                metrics.dropped("polling", len(self._queue))
            self._closed = True
            self._queue.clear()
            self._loop.call_soon(partial(session.close, "transport error", graceful=False))
            return
        if self._waiter is not None and not self._release_scheduled:
            # release on the next loop turn, so packets sent in this one share a response
            self._release_scheduled = True
            self._loop.call_soon(self._release)

    def _release(self) -> None:
        self._release_scheduled = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drain(self) -> str:
        queue = self._queue
        final = self._final
        if final is not None and self._closed:
            queue.append(final)
            self._final = None
            if self.session is not None:
                self._loop.call_soon(self.session.finish_graceful_close)
        if not queue:
            return wire.NOOP.poll_text()
        metrics = self.session.server.metrics if self.session is not None else None
        if metrics is not None:  # per response, not per packet
            metrics.packets_sent["polling"] += len(queue)
        if len(queue) == 1:
            text = queue[0].poll_text()
        else:
            text = SEPARATOR.join([o.poll_text() for o in queue])
        queue.clear()
        self._queued_bytes = 0
        return text

    async def poll(self) -> str:
        """Serve one GET: the queued packets now, or as soon as there are some."""
        waiter = self.begin_poll()
        if waiter is not None:
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._drain()

    def begin_poll(self) -> asyncio.Future[None] | None:
        """Start serving one GET without a coroutine (the front door's fast path).

        None: the answer is ready, `end_poll()` gives it. Otherwise the future to wait on; once
        it is done (not cancelled: `cancel_poll` cancels it), `end_poll(waiter)` gives the answer.
        """
        if self.discarded:
            raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "polling after upgrade")
        session = self.session
        if self._waiter is not None:
            # the reference ends the session on overlapping polls ("overlap from client")
            self._final = wire.CLOSE
            self._closed = True
            self._release()
            if session is not None:
                log.info("session %s: overlapping poll requests; closing", session.sid)
                session.close("transport error", graceful=False)
            raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "overlapping poll")
        if self._queue or self._closed or self._upgrading:
            return None
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def end_poll(self, waiter: asyncio.Future[None] | None = None) -> str:
        """The answer to the GET `begin_poll` started (with the future it returned, if any)."""
        if waiter is not None and self._waiter is waiter:
            self._waiter = None
        return self._drain()

    def cancel_poll(self) -> None:
        """The client hung up on its GET; what was queued stays for its next one."""
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.cancel()

    # ------------------------------------------------------------------ inbound

    def receive_payload(self, body: bytes) -> None:
        """Feed a POST body to the session; a `DecodeError` ends the session."""
        session = self.session
        if session is None or self.discarded:
            raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "post after upgrade")
        opts = session.server.options
        try:
            packets = decode_payload(body, max_payload=opts.max_payload, max_packets=opts.max_packets_per_post)
            metrics = session.server.metrics
            if metrics is not None:
                metrics.packets_received["polling"] += len(packets)
                metrics.bytes_received["polling"] += len(body)
            for packet in packets:
                session.receive(packet)
        except DecodeError as exc:
            session.protocol_error(exc)
            raise EngineRequestError(EngineErrorCode.BAD_REQUEST, exc.reason) from None

    # ------------------------------------------------------------------ upgrade & close

    def begin_upgrade(self) -> None:
        self._upgrading = True
        if self._waiter is not None:
            self._release()

    def end_upgrade(self) -> None:
        self._upgrading = False

    def discard(self) -> list[Outbound]:
        """The session moved to WebSocket: hand over what was not fetched, refuse later polls."""
        self.discarded = True
        pending = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self._release()
        return pending

    def close(self, reason: str, *, graceful: bool) -> None:
        if self._closed:
            return
        self._closed = True
        # NOOP where the client should not take the close as final: a client that asked to
        # close gets NOOP on its pending GET, as the reference answers; on shutdown (a
        # restart) CLOSE would make python-engineio give up for good, while after NOOP its
        # next poll fails and it reconnects, as socket.io-client does either way
        self._final = wire.NOOP if reason in _NOOP_CLOSE_REASONS else wire.CLOSE
        if not graceful:
            self._queue.clear()
            self._queued_bytes = 0
            if self._waiter is not None:
                self._queue.append(self._final)
                self._final = None
                self._release()
            return
        if self._waiter is not None:
            self._release()
