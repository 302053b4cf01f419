"""Gap-free counters held in Redis, so a numbering survives a change of the node that writes it.

One `RedisCounter` is a family of counters (`P:seq:{name}:{id}`), one per integer id: `next`
gives the next number, `give_back` returns one that was not used (so numbers stay gap-free),
and `resync` repairs a counter after the caller's storage caught a clash (e.g. a unique
constraint). Each is one atomic script. A counter missing from Redis (first use, or Redis
restarted without its data) is seeded from the highest number the caller has stored
(`read_max`), so numbers never go back. What the numbers mean is the caller's business: the
CoUp domain numbers each study's messages with one (wired in `coup.app`).

`next` is never retried (an INCR that ran but whose reply was lost would burn a number);
`give_back` and `resync` are conditional, so running one twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as redis

from coup.cluster.options import ClusterOptions

#: reads the highest number stored for an id (0 when it has none)
MaxReader = Callable[[int], Awaitable[int]]

# KEYS: counter -> the next number, or -1 when the counter does not exist
NEXT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('INCR', KEYS[1])
"""

# KEYS: counter   ARGV: the number given out -> 1 when it was taken back
GIVE_BACK = """
if tonumber(redis.call('GET', KEYS[1]) or '-1') == tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""

# KEYS: counter   ARGV: the highest stored number -> the counter, never lowered
RAISE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return tonumber(ARGV[1])
end
return current
"""


class RedisCounter:
    def __init__(self, client: redis.Redis, once: redis.Redis, options: ClusterOptions, name: str,
                 read_max: MaxReader) -> None:
        """`client` may retry (idempotent scripts); `once` never does (INCR)."""
        self.options = options
        self.name = name
        self.read_max = read_max
        self._next = once.register_script(NEXT)
        self._give_back = client.register_script(GIVE_BACK)
        self._raise_to = client.register_script(RAISE_TO)

    def _key(self, ident: int) -> str:
        return self.options.key("seq", self.name, str(ident))

    async def next(self, ident: int) -> int:
        key = self._key(ident)
        n = int(await self._next(keys=[key]))
        if n < 0:  # seed from storage; when two owners seed at once, neither lowers the other
            await self._raise_to(keys=[key], args=[await self.read_max(ident)])
            n = int(await self._next(keys=[key]))
        return n

    async def give_back(self, ident: int, seq: int) -> None:
        await self._give_back(keys=[self._key(ident)], args=[seq])

    async def resync(self, ident: int) -> None:
        await self._raise_to(keys=[self._key(ident)], args=[await self.read_max(ident)])

    async def current(self, ident: int) -> int:
        """The last number given out (for tests and operators)."""
        return max(0, int(await self._raise_to(keys=[self._key(ident)], args=[-1])))
