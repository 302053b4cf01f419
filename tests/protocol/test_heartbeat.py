"""The heartbeat state machine with time passed in: no loop, no clock, no sleeping."""

from __future__ import annotations

import pytest

from coup.protocol.heartbeat import Heartbeat, HeartbeatAction

WAIT, PING, TIMED_OUT = HeartbeatAction.WAIT, HeartbeatAction.SEND_PING, HeartbeatAction.TIMED_OUT


def test_first_ping_after_one_interval() -> None:
    hb = Heartbeat(now=100.0, interval=25.0, timeout=20.0)
    assert hb.deadline == 125.0
    assert hb.on_timer(124.999999) is WAIT
    assert hb.on_timer(125.0) is PING
    assert hb.awaiting_pong
    assert hb.deadline == 145.0


def test_no_pong_within_timeout_times_out() -> None:
    hb = Heartbeat(0.0, 0.3, 0.2)
    assert hb.on_timer(0.3) is PING
    assert hb.on_timer(0.499999) is WAIT
    assert hb.on_timer(0.5) is TIMED_OUT
    assert hb.on_timer(0.6) is TIMED_OUT  # stays timed out


def test_pong_schedules_the_next_ping_from_its_arrival() -> None:
    hb = Heartbeat(0.0, 25.0, 20.0)
    assert hb.on_timer(25.0) is PING
    hb.on_pong(30.0)
    assert not hb.awaiting_pong
    assert hb.deadline == 55.0
    assert hb.on_timer(45.0) is WAIT  # the old timeout deadline has passed harmlessly
    assert hb.on_timer(55.0) is PING


def test_unsolicited_pong_is_ignored() -> None:
    hb = Heartbeat(0.0, 25.0, 20.0)
    hb.on_pong(10.0)
    assert hb.deadline == 25.0
    assert hb.on_timer(25.0) is PING


def test_late_timer_still_gives_the_client_its_full_timeout() -> None:
    """A ping sent late (a busy loop) starts the timeout when it is sent."""
    hb = Heartbeat(0.0, 25.0, 20.0)
    assert hb.on_timer(27.5) is PING
    assert hb.on_timer(45.0) is WAIT
    assert hb.on_timer(47.5) is TIMED_OUT


def test_deadline_only_moves_later_outside_on_timer_when_interval_covers_timeout() -> None:
    """The invariant a one-entry-per-session timer queue relies on (interval >= timeout)."""
    hb = Heartbeat(0.0, 25.0, 20.0)
    for step in range(1000):  # a long session; pongs arrive anywhere inside the timeout
        assert hb.on_timer(hb.deadline) is PING
        timeout_deadline = hb.deadline
        hb.on_pong(timeout_deadline - 20.0 + (step % 200) / 10.0 + 1e-6)
        assert hb.deadline >= timeout_deadline


def test_shorter_interval_lets_a_pong_move_the_deadline_earlier() -> None:
    hb = Heartbeat(0.0, 1.0, 20.0)
    assert hb.on_timer(1.0) is PING
    assert hb.deadline == 21.0
    hb.on_pong(1.5)
    assert hb.deadline == 2.5  # earlier: the caller must file a new timer entry


def test_a_ping_run_within_its_lateness_does_not_move_the_timeout() -> None:
    """Pings share loop wake-ups, so they may go out a little late; the session still ends at
    exactly interval + timeout without a pong, as the reference does."""
    hb = Heartbeat(0.0, 0.3, 0.2, lateness=0.02)
    assert hb.on_timer(0.315) is PING
    assert hb.deadline == pytest.approx(0.5)
    assert hb.on_timer(0.5) is TIMED_OUT


def test_a_ping_later_than_its_lateness_still_leaves_most_of_the_timeout() -> None:
    hb = Heartbeat(0.0, 25.0, 20.0, lateness=1.0)
    assert hb.on_timer(30.0) is PING  # a loop stalled for five seconds
    assert hb.deadline == 49.0  # 19 s for the client: the timeout minus the lateness


@pytest.mark.parametrize(("interval", "timeout", "lateness"), [
    (0, 1, 0), (1, 0, 0), (-1, 1, 0), (1, -5, 0), (1, 1, -0.1), (25, 20, 20), (25, 20, 30),
])
def test_invalid_settings(interval: float, timeout: float, lateness: float) -> None:
    with pytest.raises(ValueError):
        Heartbeat(0.0, interval, timeout, lateness)
