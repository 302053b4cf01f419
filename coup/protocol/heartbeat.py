"""Engine.IO heartbeat as a pure state machine with time passed in.

The server pings every `interval` seconds after the last pong (or the handshake) and gives
up when no pong arrives within `timeout` seconds of a ping, as the reference server does.
The I/O layer asks `deadline` when to call back and calls `on_timer(now)` then; tests drive
it with a fake clock.

A pong moves the deadline to ``now + interval`` (earlier than the pending timeout when the
interval is the shorter of the two), so the caller replaces its timer then
(`coup.engine.session.Session` does); a timer that runs for a deadline that has moved just
gets WAIT.

The caller may run a ping up to `lateness` seconds after it is due (to share loop wake-ups).
The timeout still counts from when the ping was due, so the session ends at exactly
interval + timeout without a pong, as the reference does; a ping later than that (a stalled
loop) leaves the client ``timeout - lateness`` at least.
"""

from __future__ import annotations

from enum import Enum


class HeartbeatAction(Enum):
    WAIT = "wait"  # not due yet: call again at `deadline`
    SEND_PING = "send-ping"  # send a PING now, then call again at `deadline`
    TIMED_OUT = "timed-out"  # no PONG in time: close the session ("ping timeout")


class Heartbeat:
    __slots__ = ("awaiting_pong", "deadline", "interval", "lateness", "timeout")

    def __init__(self, now: float, interval: float, timeout: float, lateness: float = 0.0) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        if not 0 <= lateness < timeout:
            raise ValueError("heartbeat lateness must be under the timeout")
        self.interval = interval
        self.timeout = timeout
        self.lateness = lateness
        self.deadline = now + interval
        self.awaiting_pong = False

    def on_pong(self, now: float) -> None:
        """A PONG arrived. Unsolicited pongs are ignored, as the reference does."""
        if self.awaiting_pong:
            self.awaiting_pong = False
            self.deadline = now + self.interval

    def on_timer(self, now: float) -> HeartbeatAction:
        if now < self.deadline:
            return HeartbeatAction.WAIT
        if self.awaiting_pong:
            return HeartbeatAction.TIMED_OUT
        self.awaiting_pong = True
        self.deadline = max(self.deadline, now - self.lateness) + self.timeout
        return HeartbeatAction.SEND_PING
