"""TimerQueue and the session heartbeat driven by a fake loop clock: deterministic, no sleeps."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest

from coup.engine.handshake import HandshakeInfo
from coup.engine.options import EngineOptions
from coup.engine.server import EngineServer
from coup.engine.session import Session, SessionState
from coup.engine.timers import TimerQueue
from coup.engine.transport import NotUpgradable
from coup.protocol import wire
from coup.protocol.engineio import EnginePacket, EnginePacketType
from coup.protocol.wire import Outbound


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just enough of an event loop for timers: `time`, `call_later`, `call_soon`, and `advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, FakeHandle]] = []
        self._seq = itertools.count()
        self.wakeups = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now + max(0.0, delay), callback, args)
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        return self.call_later(0.0, callback, *args)

    def advance(self, seconds: float) -> None:
        """Run every callback due within `seconds`, each at its own time, in order."""
        end = self.now + seconds
        while self._heap and self._heap[0][0] <= end:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            self.wakeups += 1
            handle.callback(*handle.args)
        self.now = end

    @property
    def armed(self) -> list[float]:
        return sorted(h.when for _, _, h in self._heap if not h.cancelled)


class Recorder:
    def __init__(self, clock: Callable[[], float], name: str = "") -> None:
        self.clock = clock
        self.name = name
        self.calls: list[float] = []

    def on_timer(self, now: float) -> None:
        assert now == self.clock()
        self.calls.append(now)


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


def queue_for(loop: FakeLoop) -> TimerQueue:
    return TimerQueue(loop)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- TimerQueue


def test_entries_fire_at_their_deadline_not_later(loop: FakeLoop) -> None:
    q = queue_for(loop)
    a, b = Recorder(loop.time), Recorder(loop.time)
    tick = 2.0 ** -20  # about a microsecond, exact in binary
    q.schedule(1000.25, a)
    q.schedule(1000.25 + tick, b)
    loop.advance(0.25 - tick)
    assert a.calls == [] and b.calls == []
    loop.advance(tick)
    assert a.calls == [1000.25] and b.calls == []
    loop.advance(tick)
    assert b.calls == [1000.25 + tick]


def test_one_wakeup_serves_every_entry_due_then(loop: FakeLoop) -> None:
    q = queue_for(loop)
    targets = [Recorder(loop.time) for _ in range(100)]
    for t in targets:
        q.schedule(1005.0, t)
    loop.advance(10)
    assert all(t.calls == [1005.0] for t in targets)
    assert loop.wakeups == 1
    assert len(q) == 0


def test_an_earlier_entry_rearms_the_loop_timer(loop: FakeLoop) -> None:
    q = queue_for(loop)
    late, early = Recorder(loop.time), Recorder(loop.time)
    q.schedule(1010.0, late)
    q.schedule(1002.0, early)
    assert loop.armed == [1002.0]
    loop.advance(20)
    assert early.calls == [1002.0] and late.calls == [1010.0]


def test_refiling_during_a_tick_does_not_hide_an_earlier_entry(loop: FakeLoop) -> None:
    """Regression: A re-filed itself far ahead from inside a tick, and the queue armed for that
    instead of B's nearer deadline, so B fired a whole ping interval late."""
    q = queue_for(loop)
    b = Recorder(loop.time, "b")

    class Refiler(Recorder):
        def on_timer(self, now: float) -> None:
            super().on_timer(now)
            q.schedule(now + 0.3, self)

    a = Refiler(loop.time, "a")
    q.schedule(1000.1, a)
    q.schedule(1000.15, b)
    loop.advance(0.2)
    assert b.calls == [pytest.approx(1000.15)]
    assert a.calls == [pytest.approx(1000.1)]


def test_a_target_filing_a_past_deadline_cannot_starve_the_loop(loop: FakeLoop) -> None:
    q = queue_for(loop)

    class Eager(Recorder):
        def on_timer(self, now: float) -> None:
            super().on_timer(now)
            if len(self.calls) < 3:
                q.schedule(now - 1.0, self)  # already due: runs on the next wake-up, not this one

    eager = Eager(loop.time)
    q.schedule(1001.0, eager)
    loop.advance(1.0)
    assert len(eager.calls) == 3
    assert loop.wakeups == 3


def test_a_failing_target_does_not_stop_the_others(loop: FakeLoop, caplog: pytest.LogCaptureFixture) -> None:
    q = queue_for(loop)

    class Broken:
        def on_timer(self, now: float) -> None:
            raise RuntimeError("boom")

    ok = Recorder(loop.time)
    q.schedule(1001.0, Broken())
    q.schedule(1001.0, ok)
    with caplog.at_level(logging.ERROR, logger="coup.engine.timers"):
        loop.advance(2)
    assert ok.calls == [1001.0]
    assert "timer callback failed" in caplog.text


def test_close_drops_everything(loop: FakeLoop) -> None:
    q = queue_for(loop)
    r = Recorder(loop.time)
    q.schedule(1001.0, r)
    q.close()
    loop.advance(5)
    assert r.calls == [] and len(q) == 0


def test_cancelled_entries_neither_run_nor_wake_the_loop(loop: FakeLoop) -> None:
    q = queue_for(loop)
    early, late = Recorder(loop.time), Recorder(loop.time)
    q.schedule(1001.0, early).cancel()
    q.schedule(1002.0, late)
    loop.advance(1.5)
    assert early.calls == [] and loop.wakeups <= 1
    loop.advance(1.0)
    assert late.calls == [1002.0]
    assert len(q) == 0


def test_entries_with_slack_share_wake_ups_and_never_run_early(loop: FakeLoop) -> None:
    q = queue_for(loop)
    rng = random.Random(3)
    targets = []
    for _ in range(1000):
        r = Recorder(loop.time)
        deadline = 1000.0 + rng.uniform(0.0, 1.0)
        q.schedule(deadline, r, slack=0.1)
        targets.append((deadline, r))
    loop.advance(2.0)
    for deadline, r in targets:
        assert len(r.calls) == 1
        assert deadline <= r.calls[0] <= deadline + 0.1
    assert loop.wakeups <= 11  # a thousand deadlines, about one wake-up per 0.1 s


def test_an_exact_entry_is_not_held_back_by_slack_ones(loop: FakeLoop) -> None:
    q = queue_for(loop)
    lazy, exact = Recorder(loop.time), Recorder(loop.time)
    q.schedule(1000.5, lazy, slack=1.0)
    q.schedule(1000.75, exact)
    loop.advance(0.75)
    assert exact.calls == [1000.75]
    assert lazy.calls == [1000.75]  # due already: it rides along
    assert loop.wakeups == 1


# ---------------------------------------------------------------------------- session heartbeat


class FakeTransport(NotUpgradable):
    name = "polling"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: list[tuple[str, bool]] = []

    def send(self, out: Outbound) -> None:
        self.sent.append(out.poll_text())

    def close(self, reason: str, *, graceful: bool) -> None:
        self.closed.append((reason, graceful))


class Handler:
    def __init__(self) -> None:
        self.closed: list[str] = []

    def on_message(self, session: Session, data: str | bytes) -> None:
        pass

    def on_close(self, session: Session, reason: str) -> None:
        self.closed.append(reason)


def open_session(loop: FakeLoop, interval: float = 25.0, timeout: float = 20.0) -> tuple[Session, FakeTransport,
                                                                                          Handler]:
    server = EngineServer(EngineOptions(ping_interval=interval, ping_timeout=timeout),
                          loop=loop)  # type: ignore[arg-type]
    transport = FakeTransport()
    handshake = HandshakeInfo(headers={}, query={}, address="127.0.0.1", url="/", secure=False, issued=0.0)
    session = Session("sid1", server, handshake, transport, server.now())
    handler = Handler()
    session.handler = handler
    server.sessions[session.sid] = session
    session.set_timer(session.heartbeat.deadline)
    return session, transport, handler


PONG = EnginePacket(EnginePacketType.PONG)


def advance_until_ping(loop: FakeLoop, transport: FakeTransport, limit: float = 60.0) -> float:
    """Advance the fake clock from one armed loop timer to the next until the session sends
    its next ping; return when it did."""
    before = transport.sent.count("2")
    start = loop.now
    while transport.sent.count("2") == before:
        assert loop.armed and loop.armed[0] - start < limit, "no ping"
        loop.advance(loop.armed[0] - loop.now)
    return loop.now


def test_session_pings_every_interval_while_pongs_come_back(loop: FakeLoop) -> None:
    session, transport, handler = open_session(loop)
    last = loop.now
    for _ in range(100):
        sent = advance_until_ping(loop, transport)
        # due 25 s after the last pong (or the handshake), at most timer_slack (0.2 s) later
        assert 25.0 - 1e-9 <= sent - last <= 25.0 + 0.2 + 1e-9
        loop.advance(1.5)
        session.receive(PONG)
        last = loop.now
        assert len(session.server.timers) == 1  # one pending entry per session, never more
    assert transport.sent.count("2") == 100
    assert session.open and handler.closed == []


def test_session_closes_at_exactly_interval_plus_timeout(loop: FakeLoop) -> None:
    session, transport, handler = open_session(loop, 0.3, 0.2)
    start = loop.now
    sent = advance_until_ping(loop, transport)
    assert 0.3 - 1e-9 <= sent - start <= 0.3 + 0.002 + 1e-9  # timer_slack of a 300/200 ms heartbeat
    loop.advance(start + 0.5 - loop.now - 0.000001)
    assert session.open
    loop.advance(0.000001)
    assert session.state is SessionState.CLOSED
    assert handler.closed == ["ping timeout"]
    assert transport.closed == [("ping timeout", False)]
    assert "sid1" not in session.server.sessions


def test_pong_just_in_time_keeps_the_session(loop: FakeLoop) -> None:
    session, transport, handler = open_session(loop, 0.3, 0.2)
    start = loop.now
    advance_until_ping(loop, transport)
    loop.advance(start + 0.4999 - loop.now)
    session.receive(PONG)
    pong_at = loop.now
    loop.advance(0.2)
    assert session.open
    sent = advance_until_ping(loop, transport)
    assert 0.3 - 1e-9 <= sent - pong_at <= 0.302 + 1e-9  # the next ping counts from the pong
    assert handler.closed == []


def test_short_interval_pings_on_time_after_a_pong(loop: FakeLoop) -> None:
    """pingInterval < pingTimeout: the pong moves the deadline before the pending timeout."""
    session, transport, _ = open_session(loop, 1.0, 20.0)
    advance_until_ping(loop, transport)
    for _ in range(5):
        loop.advance(0.1)
        session.receive(PONG)
        pong_at = loop.now
        sent = advance_until_ping(loop, transport, limit=5)
        assert 1.0 - 1e-9 <= sent - pong_at <= 1.0 + 0.01 + 1e-9  # not 20 s later
    assert session.open


def test_exactly_one_ping_per_pong(loop: FakeLoop) -> None:
    session, transport, _ = open_session(loop, 1.0, 20.0)
    for i in range(50):
        advance_until_ping(loop, transport)
        assert transport.sent.count("2") == i + 1
        session.receive(PONG)
        session.receive(PONG)  # an unsolicited extra pong changes nothing
    assert len(session.server.timers) == 1


def test_closing_session_gets_a_grace_period_then_ends(loop: FakeLoop) -> None:
    session, transport, handler = open_session(loop, 25.0, 20.0)
    loop.advance(5.0)
    session.close("forced server close", graceful=True)
    assert session.state is SessionState.CLOSING
    assert transport.closed == [("forced server close", True)]
    loop.advance(19.9)
    assert session.state is SessionState.CLOSING  # the heartbeat entry at 25 s is superseded
    loop.advance(0.1)
    assert session.state is SessionState.CLOSED
    assert handler.closed == ["forced server close"]


def test_upgrade_keeps_the_heartbeat(loop: FakeLoop) -> None:
    session, transport, handler = open_session(loop, 0.3, 0.2)
    ws = FakeTransport()
    ws.name = "websocket"
    session.begin_upgrade(ws)
    session.complete_upgrade(ws)
    loop.advance(0.3)
    assert ws.sent == ["2"] and transport.sent == []
    assert session.transport is ws
    loop.advance(0.2)
    assert handler.closed == ["ping timeout"]


def test_wire_constants() -> None:
    assert (wire.PING.poll_text(), wire.PONG.poll_text(), wire.NOOP.poll_text(), wire.CLOSE.poll_text()) == \
        ("2", "3", "6", "1")
