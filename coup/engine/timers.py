"""Deadlines of every session on one loop timer.

Each session keeps one pending entry (its next ping, its ping timeout, its connect timeout or
its closing grace period). The queue arms a single loop timer and, whenever it wakes, runs
every entry whose deadline has passed.

Two kinds of precision, because wake-ups are what cost (a loop wake-up costs far more than an
entry; docs/transports.md, "Session timers"):

- an entry with ``slack`` may run up to that much after its deadline, so the next pings of
  thousands of sessions share a few wake-ups (ten thousand sessions at a 25 s interval with
  0.25 s of slack: four wake-ups a second instead of four hundred);
- an entry without slack (a ping timeout) wakes the loop at its deadline: the official
  protocol suites expect a session to be gone as soon as pingInterval + pingTimeout has
  passed, and a client deserves its full pingTimeout. A pong cancels that entry, so in
  practice only dead clients cost a wake-up of their own.

Nothing is ever run before its deadline. Cancelled entries stay in the heaps until they
reach the top (lazy deletion), which bounds them by what was filed in one ping cycle.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class TimerTarget(Protocol):
    def on_timer(self, now: float) -> None: ...


class _Nothing:
    """The target of a cancelled entry (never run: the queue skips inactive entries)."""

    __slots__ = ()

    def on_timer(self, now: float) -> None:  # pragma: no cover - never called
        pass


_NOTHING = _Nothing()


class TimerEntry:
    """One scheduled call; `cancel()` it when the deadline no longer applies."""

    __slots__ = ("active", "deadline", "latest", "target")

    def __init__(self, deadline: float, latest: float, target: TimerTarget) -> None:
        self.deadline = deadline
        #: the time by which the queue wakes up for it at the latest (deadline + slack)
        self.latest = latest
        self.target = target
        self.active = True

    def cancel(self) -> None:
        """The entry stays in the heaps until it reaches the top (lazy deletion), but lets go
        of its target now: a closed session must not wait a ping cycle to be freed."""
        self.active = False
        self.target = _NOTHING

    def __repr__(self) -> str:
        return f"<TimerEntry {self.deadline:.3f}{'' if self.active else ' done'} {self.target!r}>"


class TimerQueue:
    __slots__ = ("_armed_at", "_by_deadline", "_by_latest", "_clock", "_handle", "_loop", "_seq", "_ticking")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] | None = None) -> None:
        self._loop = loop
        self._clock = clock or loop.time
        #: (deadline, seq, entry): what is due; the sequence keeps equal deadlines in filing order
        self._by_deadline: list[tuple[float, int, TimerEntry]] = []
        #: (latest, seq, entry): when the loop must wake up next
        self._by_latest: list[tuple[float, int, TimerEntry]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        #: True while `_tick` runs targets; it arms the loop timer once, when they are done
        self._ticking = False

    def now(self) -> float:
        return self._clock()

    def schedule(self, deadline: float, target: TimerTarget, *, slack: float = 0.0) -> TimerEntry:
        """Call `target.on_timer(now)` once `deadline` has passed, at most `slack` seconds later."""
        entry = TimerEntry(deadline, deadline + max(0.0, slack), target)
        seq = next(self._seq)
        heapq.heappush(self._by_deadline, (deadline, seq, entry))
        heapq.heappush(self._by_latest, (entry.latest, seq, entry))
        if not self._ticking and (self._armed_at is None or entry.latest < self._armed_at):
            self._arm(entry.latest)
        return entry

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(max(0.0, when - self._clock()), self._tick)
        self._armed_at = when

    def _tick(self) -> None:
        self._handle = None
        self._armed_at = None
        now = self._clock()
        # entries filed while these run, even for a deadline already past, wait for the next
        # wake-up, so a target that keeps re-filing itself cannot hold the loop
        due: list[TimerTarget] = []
        by_deadline = self._by_deadline
        while by_deadline and by_deadline[0][0] <= now:
            entry = heapq.heappop(by_deadline)[2]
            if entry.active:
                due.append(entry.target)
                entry.cancel()  # it may stay in `_by_latest` a while
        self._ticking = True
        try:
            for target in due:
                try:
                    target.on_timer(now)
                except Exception:  # one broken target must not stop the others' timers
                    log.exception("timer callback failed for %r", target)
        finally:
            self._ticking = False
        by_latest = self._by_latest
        while by_latest and not by_latest[0][2].active:
            heapq.heappop(by_latest)
        if by_latest:
            self._arm(by_latest[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_at = None
        self._by_deadline.clear()
        self._by_latest.clear()

    def __len__(self) -> int:
        """Entries still to run (cancelled ones do not count)."""
        return sum(1 for _, _, entry in self._by_latest if entry.active)
