"""Per-user limits kept in this process: a token bucket for messages, a throttle for typing.

Both are local to a node: a user spreading tabs over several nodes gets each node's
allowance, which still bounds a flood to a small multiple. Idle entries are swept so the
tables stay as large as the set of recently active users.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

Clock = Callable[[], float]


class _Swept:
    """A dict of per-key state whose idle entries are dropped now and then."""

    def __init__(self, idle_after: float, clock: Clock) -> None:
        self._idle_after = idle_after
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, float]] = {}
        self._next_sweep = clock() + idle_after

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._idle_after
        horizon = now - self._idle_after
        for key in [k for k, (_, stamp) in self._entries.items() if stamp < horizon]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class TokenBucket(_Swept):
    """`rate` tokens per second, at most `burst` saved up; one token per action."""

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        super().__init__(idle_after=max(burst / rate, 1.0) * 2, clock=clock)
        self.rate = rate
        self.burst = float(burst)

    def take(self, key: Hashable) -> float:
        """0.0 when allowed (a token is spent); else the seconds until a token is available."""
        now = self._clock()
        self._sweep(now)
        tokens, stamp = self._entries.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._entries[key] = (tokens - 1.0, now)
            return 0.0
        self._entries[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Throttle(_Swept):
    """At most one action per key every `interval` seconds; the rest are dropped."""

    def __init__(self, interval: float, *, clock: Clock = time.monotonic) -> None:
        super().__init__(idle_after=max(interval, 1.0) * 2, clock=clock)
        self.interval = interval

    def allow(self, key: Hashable) -> bool:
        now = self._clock()
        self._sweep(now)
        last = self._entries.get(key)
        if last is not None and now - last[1] < self.interval:
            return False
        self._entries[key] = (0.0, now)
        return True
