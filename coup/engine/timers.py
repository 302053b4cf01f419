"""A timer wheel: one loop callback per tick serves every session's deadlines.

Ten thousand idle connections each need a heartbeat deadline; a `call_later` handle per
connection costs memory and heap work on every pong. The wheel files each target in a
slot of `resolution` seconds and wakes once per occupied slot. Targets re-file themselves
from `on_timer` (see the invariant in `coup.protocol.heartbeat`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class TimerTarget(Protocol):
    def on_timer(self, now: float) -> None: ...


class TimerWheel:
    __slots__ = ("_clock", "_handle", "_handle_slot", "_heap", "_loop", "_slots", "resolution")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float,
                 clock: Callable[[], float] | None = None) -> None:
        self._loop = loop
        self._clock = clock or loop.time
        self.resolution = resolution
        self._slots: dict[int, list[TimerTarget]] = {}
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._handle_slot: int | None = None

    def now(self) -> float:
        return self._clock()

    def schedule(self, deadline: float, target: TimerTarget) -> None:
        """Call `target.on_timer(now)` at or shortly after `deadline` (within one resolution)."""
        slot = math.ceil(deadline / self.resolution)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [target]
            heapq.heappush(self._heap, slot)
            if self._handle_slot is None or slot < self._handle_slot:
                self._arm(slot)
        else:
            bucket.append(target)

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        delay = max(0.0, slot * self.resolution - self._clock())
        self._handle = self._loop.call_later(delay, self._tick)
        self._handle_slot = slot

    def _tick(self) -> None:
        self._handle = None
        self._handle_slot = None
        now = self._clock()
        due = math.floor(now / self.resolution + 1e-9)
        heap = self._heap
        while heap and heap[0] <= due:
            slot = heapq.heappop(heap)
            for target in self._slots.pop(slot, ()):
                try:
                    target.on_timer(now)
                except Exception:  # one broken target must not stop the others' timers
                    log.exception("timer callback failed for %r", target)
        if heap:
            self._arm(heap[0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._handle_slot = None
        self._slots.clear()
        self._heap.clear()

    def __len__(self) -> int:
        return sum(len(b) for b in self._slots.values())
