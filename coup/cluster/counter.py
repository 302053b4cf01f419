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

Redis may lose the last writes: a Sentinel failover promotes a replica that had not
received them yet (replication is asynchronous), a restart without persistence loses
everything. The counter would then hand out numbers it already gave. So each counter
remembers the last number it gave per id (`_given`, bounded) and, when Redis answers with
one not above it, raises Redis to what it gave and to what is stored (`read_max`) before
taking the next: numbers never repeat from one writer, whatever Redis forgot.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.options import ClusterOptions
from coup.core.errors import ClientError

log = logging.getLogger(__name__)

#: reads the highest number stored for an id (0 when it has none)
MaxReader = Callable[[int], Awaitable[int]]
#: ids whose last given number a counter remembers (the least recently used are forgotten)
REMEMBERED = 10_000
#: what the caller's client gets while Redis is unreachable (a failover, an outage): send again
UNAVAILABLE = ClientError("UNAVAILABLE", "Numbering is unavailable for a moment; please retry", {"retryable": True})

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
                 read_max: MaxReader, linked: Callable[[], bool] | None = None) -> None:
        """`client` may retry (idempotent scripts); `once` never does (INCR). `linked` says whether
        the node's pub/sub link is up: without it, numbers are refused (see `next`)."""
        self.options = options
        self._linked = linked
        self.name = name
        self.read_max = read_max
        self._next = once.register_script(NEXT)
        self._give_back = client.register_script(GIVE_BACK)
        self._raise_to = client.register_script(RAISE_TO)
        #: id -> the last number this counter gave out (for ids used lately)
        self._given: OrderedDict[int, int] = OrderedDict()
        self.stats = {"went_back": 0}

    def _key(self, ident: int) -> str:
        return self.options.spread("seq", self.name, str(ident))

    async def next(self, ident: int) -> int:
        """The next number; raises `UNAVAILABLE` (a retryable client error) while Redis is
        unreachable, and while the node's pub/sub link is not back yet: Redis answers commands
        again (after a failover, a restart) up to a second before the link has reconnected, and
        a numbered message broadcast then would reach nobody on the other nodes."""
        if self._linked is not None and not self._linked():
            raise UNAVAILABLE
        try:
            return await self._take(ident)
        except RedisError as exc:
            log.debug("counter %s:%d: redis unavailable (%s)", self.name, ident, exc)
            raise UNAVAILABLE from None

    async def _take(self, ident: int) -> int:
        key = self._key(ident)
        given = self._given.get(ident, 0)  # before the INCR: a sound Redis answers above it
        n = int(await self._next(keys=[key]))
        if n < 0:  # seed from storage; when two owners seed at once, neither lowers the other
            await self._raise_to(keys=[key], args=[await self.read_max(ident)])
            n = int(await self._next(keys=[key]))
        if n <= given:  # Redis lost numbers we gave (a failover, a restart): never give one twice
            self.stats["went_back"] += 1
            log.warning("counter %s:%d went back to %d after we gave %d (redis lost writes); raising it",
                        self.name, ident, n, given)
            await self._raise_to(keys=[key], args=[max(given, await self.read_max(ident))])
            n = int(await self._next(keys=[key]))
        self._remember(ident, max(n, self._given.get(ident, 0)))
        return n

    def _remember(self, ident: int, n: int) -> None:
        self._given[ident] = n
        self._given.move_to_end(ident)
        if len(self._given) > REMEMBERED:
            self._given.popitem(last=False)

    async def give_back(self, ident: int, seq: int) -> None:
        if self._given.get(ident) == seq:  # whether or not Redis takes it back, it may come again
            self._given[ident] = seq - 1
        await self._give_back(keys=[self._key(ident)], args=[seq])

    async def resync(self, ident: int) -> None:
        await self._raise_to(keys=[self._key(ident)], args=[await self.read_max(ident)])

    async def current(self, ident: int) -> int:
        """The last number given out (for tests and operators)."""
        return max(0, int(await self._raise_to(keys=[self._key(ident)], args=[-1])))
