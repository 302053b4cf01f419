"""sockjs-tornado's session with the defects that break it on Tornado 6 fixed.

* Heartbeats: the library's timer passes ``time.time() + delay`` to ``IOLoop.add_timeout``,
  whose clock on Tornado 6 is the asyncio loop's monotonic clock, so the first ``h`` frame
  would come decades late. We run the heartbeat on ``loop.call_later``.
* Closing while a polling response is being written (``close()`` from ``on_open``, or a
  server close right after a poll answered) appended the close frame to a response whose
  Content-Length was already sent. The close frame now waits for the next request, as the
  protocol says ("the server must constantly serve the close message").
* Messages still queued for the next flush go out before the close frame.
* The close frame's reason is JSON-encoded (the library pasted it between quotes).
* A request holding the session whose client is gone, with nobody told (`on_delete`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sockjs.tornado import session as sockjs_session

from coup.transports.arrival import peer_gone

ANOTHER_CONNECTION = "Another connection still open"


def close_frame(code: int, reason: str) -> str:
    return "c" + json.dumps([code, reason], separators=(",", ":"))


class SockJSSession(sockjs_session.Session):  # type: ignore[misc]
    """A SockJS session of any HTTP or WebSocket transport."""

    _heartbeat_handle: asyncio.TimerHandle | None = None
    #: set by the library: a flush is on the loop already
    _pending_flush: bool
    #: the HTTP request that opened the session (its transport handler may be gone by on_open)
    request: Any = None

    # ------------------------------------------------------------------ expiry

    def on_delete(self, forced: bool) -> None:
        """The library's expiry check: every `disconnect_delay` (5 s) while a request holds
        the session it keeps the session, trusting the request to say when its client
        leaves. A Tornado request does not always: behind HAProxy, a tab closed as it polled
        reset a connection the front door had handed on, and the loop never reported it
        (in 1 of ~16 runs of the demo test behind the proxy): the session, and its user's
        presence, stayed until the next heartbeat failed to write (25 s). So the check asks
        the socket itself; a dead one ends the request as its hang-up would have."""
        handler = self.handler
        if not forced and handler is not None and peer_gone(getattr(handler, "request", None)):
            handler.on_connection_close()
        super().on_delete(forced)

    # ------------------------------------------------------------------ heartbeats

    def start_heartbeat(self) -> None:
        self.stop_heartbeat()
        loop = asyncio.get_running_loop()
        self._heartbeat_handle = loop.call_later(self._heartbeat_interval / 1000.0, self._heartbeat)

    def stop_heartbeat(self) -> None:
        handle = self._heartbeat_handle
        if handle is not None:
            handle.cancel()
            self._heartbeat_handle = None

    def delay_heartbeat(self) -> None:
        if self._heartbeat_handle is not None:
            self.start_heartbeat()

    def _heartbeat(self) -> None:
        self._heartbeat_handle = None
        handler = self.handler
        if handler is None:
            return  # the next request restarts the timer
        if handler.active:  # a streaming response busy flushing just sent data: skip this beat
            handler.send_pack("h")
        if self.handler is handler:
            self.start_heartbeat()

    # ------------------------------------------------------------------ sending

    def send_jsonified(self, msg: str, stats: bool = True) -> None:
        """The library's, with the deferred flush put on the asyncio loop directly.

        Tornado's `IOLoop.add_callback` asks `asyncio.get_running_loop()` (a getpid() system
        call on CPython 3.11) and wraps the callback twice: 25 % of the server's samples at
        40k xhr-streaming deliveries/s (py-spy), one call per message a busy stream queues.
        """
        if self._immediate_flush:
            super().send_jsonified(msg, stats)
            return
        if self.send_queue:
            self.send_queue += ","
        self.send_queue += msg
        if not self._pending_flush:
            self._pending_flush = True
            self.server.io_loop.asyncio_loop.call_soon(self.flush)
        if stats:
            self.stats.on_pack_sent(1)

    # ------------------------------------------------------------------ close

    def close(self, code: int = 3000, message: str = "Go away!") -> None:
        if self.state != sockjs_session.CLOSED:
            self.flush()  # queued messages go out before the close frame
            handler = self.handler
            if handler is not None and handler.can_send_close():
                handler.send_pack(close_frame(code, message))
        sockjs_session.BaseSession.close(self, code, message)
        self.stop_heartbeat()

    def set_handler(self, handler: Any, start_heartbeat: bool = True) -> bool:
        """Attach a request to the session; a closed session answers it with its close frame.

        A session takes one receiving request at a time, the first the server read: a poll
        that got here first although read later gives way (see `coup.transports.arrival`).
        """
        current = self.handler
        overtook = getattr(current, "overtook", None)
        gives_way = overtook is not None and bool(overtook(handler))
        if current is not None and not gives_way:
            handler.send_pack(close_frame(2010, ANOTHER_CONNECTION))
            return False
        if self._verify_ip and self.conn_info is not None and handler.request.remote_ip != self.conn_info.ip:
            handler.send_pack(close_frame(2010, "Attempted to connect to session from different IP"))
            return False
        if self.state in (sockjs_session.CLOSING, sockjs_session.CLOSED) and not self.send_queue:
            handler.send_pack(close_frame(*self.get_close_reason()))
            return False
        if current is not None:
            current.give_way(close_frame(2010, ANOTHER_CONNECTION))
        sockjs_session.BaseSession.set_handler(self, handler)
        if self.request is None:
            self.request = handler.request
        self.promote()
        if start_heartbeat:
            self.start_heartbeat()
        return True

