"""Per-room sequence numbers held in Redis, so a room's numbering survives an ownership handoff.

`next(room, key)` is one atomic script: monotonic, and idempotent per `key` (the message's
idempotency key, e.g. the user's clientMessageId), so a write retried after a lost reply
gets the same number instead of burning one. A counter missing from Redis (first use, or
Redis restarted without its data) is seeded from `floor(room)`, the highest number the
application has persisted, so numbers never go back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as redis

from coup.cluster.options import ClusterOptions
from coup.cluster.scripts import NEXT_SEQ

Floor = Callable[[str], Awaitable[int]]


async def _zero(room: str) -> int:
    return 0


class RedisSequence:
    #: how long a key remembers its number (a client retries within seconds, not days)
    key_ttl = 24 * 3600

    def __init__(self, client: redis.Redis, options: ClusterOptions, floor: Floor = _zero) -> None:
        self.client = client
        self.options = options
        self.floor = floor
        self._next = client.register_script(NEXT_SEQ)

    async def next(self, room: str, key: str | None = None) -> int:
        keys = [self.options.key("seq", room), self.options.key("seqkey", room, key) if key else ""]
        for _ in range(3):
            n = int(await self._next(keys=keys, args=[self.key_ttl]))
            if n >= 0:
                return n
            # SET NX: when two owners seed at once during a handoff, one value wins
            await self.client.set(keys[0], await self.floor(room), nx=True)
        raise RuntimeError(f"sequence counter of {room} could not be seeded")

    async def current(self, room: str) -> int:
        value = await self.client.get(self.options.key("seq", room))
        return int(value) if value is not None else 0
