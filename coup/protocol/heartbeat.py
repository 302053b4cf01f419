"""Engine.IO heartbeat as a pure state machine with time passed in.

The server pings every `interval` seconds after the last pong (or the handshake) and gives
up when no pong arrives within `timeout` seconds of a ping, as the reference server does.
The I/O layer asks `deadline` when to call back and calls `on_timer(now)` then; tests drive
it with a fake clock.

Invariant: when ``interval >= timeout`` (the usual 25 s / 20 s), the deadline only moves
later outside `on_timer` (a pong pushes it from ``ping + timeout`` to ``now + interval``), so
a timer queue can keep exactly one entry per session and re-file it from `on_timer`. With a
shorter interval a pong can move the deadline earlier; the caller then files a new entry
(`coup.engine.session.Session` does).
"""

from __future__ import annotations

from enum import Enum


class HeartbeatAction(Enum):
    WAIT = "wait"  # not due yet: call again at `deadline`
    SEND_PING = "send-ping"  # send a PING now, then call again at `deadline`
    TIMED_OUT = "timed-out"  # no PONG in time: close the session ("ping timeout")


class Heartbeat:
    __slots__ = ("awaiting_pong", "deadline", "interval", "timeout")

    def __init__(self, now: float, interval: float, timeout: float) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
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
        self.deadline = now + self.timeout
        return HeartbeatAction.SEND_PING
