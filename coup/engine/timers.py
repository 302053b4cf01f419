"""Deadlines of every session on one loop timer.

Each session has one pending deadline at a time (its heartbeat, its connect timeout or its
closing grace period). A `call_later` handle per session would be cancelled and re-created
on every pong; here a pong does not touch the queue at all: the entry fires at the old
deadline, the target sees that its deadline moved and files a new entry (see the invariant
in `coup.protocol.heartbeat`). The queue arms a single loop timer for its earliest entry
and, when it fires, runs every entry that is due.

Entries fire at their deadline (plus the loop's own latency), never rounded to a coarser
tick: the official protocol suites expect a session to be gone as soon as pingInterval +
pingTimeout has passed, and a client deserves its full pingTimeout.
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


class TimerQueue:
    __slots__ = ("_armed_at", "_clock", "_handle", "_heap", "_loop", "_seq", "_ticking")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] | None = None) -> None:
        self._loop = loop
        self._clock = clock or loop.time
        #: (deadline, sequence, target); the sequence keeps equal deadlines in filing order
        self._heap: list[tuple[float, int, TimerTarget]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        #: True while `_tick` runs targets; it arms the loop timer once, when they are done
        self._ticking = False

    def now(self) -> float:
        return self._clock()

    def schedule(self, deadline: float, target: TimerTarget) -> None:
        """Call `target.on_timer(now)` once `deadline` has passed."""
        heapq.heappush(self._heap, (deadline, next(self._seq), target))
        if not self._ticking and (self._armed_at is None or deadline < self._armed_at):
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(max(0.0, deadline - self._clock()), self._tick)
        self._armed_at = deadline

    def _tick(self) -> None:
        self._handle = None
        self._armed_at = None
        now = self._clock()
        heap = self._heap
        # targets filed during this tick for a deadline already past run on the next tick,
        # so a target that keeps re-filing itself cannot hold the loop
        due: list[TimerTarget] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        self._ticking = True
        try:
            for target in due:
                try:
                    target.on_timer(now)
                except Exception:  # one broken target must not stop the others' timers
                    log.exception("timer callback failed for %r", target)
        finally:
            self._ticking = False
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_at = None
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)
