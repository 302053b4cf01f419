"""Per-study message numbers held in Redis, so a study's numbering survives an ownership handoff.

The domain's `SequenceSource` contract (`coup.domain.sequence`): `next` gives the number for
the next message, `give_back` returns one that was not used (so numbers stay gap-free), and
`resync` repairs the counter after the database's unique (study, seq) constraint caught a
clash. Each is one atomic script. A counter missing from Redis (first use, or Redis restarted
without its data) is seeded from the highest number stored in the database, so numbers never
go back.

`next` is never retried (an INCR that ran but whose reply was lost would burn a number);
`give_back` and `resync` are conditional, so running one twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as redis

from coup.cluster.options import ClusterOptions
from coup.domain.sequence import SequenceSource

#: reads the highest stored number of a study (0 when it has none)
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


class RedisSequence(SequenceSource):
    def __init__(self, client: redis.Redis, once: redis.Redis, options: ClusterOptions,
                 read_max: MaxReader) -> None:
        """`client` may retry (idempotent scripts); `once` never does (INCR)."""
        self.options = options
        self.read_max = read_max
        self._next = once.register_script(NEXT)
        self._give_back = client.register_script(GIVE_BACK)
        self._raise_to = client.register_script(RAISE_TO)

    def _key(self, study_id: int) -> str:
        return self.options.key("seq", "study", str(study_id))

    async def next(self, study_id: int) -> int:
        key = self._key(study_id)
        n = int(await self._next(keys=[key]))
        if n < 0:  # seed from storage; when two owners seed at once, neither lowers the other
            await self._raise_to(keys=[key], args=[await self.read_max(study_id)])
            n = int(await self._next(keys=[key]))
        return n

    async def give_back(self, study_id: int, seq: int) -> None:
        await self._give_back(keys=[self._key(study_id)], args=[seq])

    async def resync(self, study_id: int) -> None:
        await self._raise_to(keys=[self._key(study_id)], args=[await self.read_max(study_id)])

    async def current(self, study_id: int) -> int:
        """The last number given out (for tests and operators)."""
        return max(0, int(await self._raise_to(keys=[self._key(study_id)], args=[-1])))
