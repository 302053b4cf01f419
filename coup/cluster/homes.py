"""Which node holds each SockJS session: a Redis key per session, set before its first answer.

An Engine.IO sid names its node; a SockJS session id is chosen by the client, so its home
must be written down where every node can read it. The first node that gets a receiving
request for an unknown session claims it (``P:sockjs:ID`` → node, only if no node has;
one script, so two nodes racing agree) and only then serves it, so the open frame never
reaches the client before the key exists. Other nodes look the key up only for sessions
they do not hold. The key lives `ttl` seconds and is refreshed while the session lives;
when it is gone here, the key is deleted (if still ours).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.options import ClusterOptions
from coup.tasks import stop_tasks

log = logging.getLogger(__name__)

# KEYS: the session's key   ARGV: this node, ttl ms   -> the home (us when we claimed it)
CLAIM = """
local home = redis.call('GET', KEYS[1])
if home then return home end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS: the session's key   ARGV: this node   -> 1 when it was ours and is deleted
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SessionHomes:
    def __init__(self, client: redis.Redis, node_id: str, options: ClusterOptions, *, ttl: float = 60.0) -> None:
        self.client = client
        self.node_id = node_id
        self.options = options
        self.ttl = ttl
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)
        #: sessions we claimed, refreshed while `is_local(id)` says they live here
        self.claimed: set[str] = set()
        self.is_local: Callable[[str], bool] = lambda session: False
        self._sweeper: asyncio.Task[None] | None = None

    def _key(self, session: str) -> str:
        return self.options.spread("sockjs", session)

    async def claim(self, session: str) -> str:
        """The session's home; us, if no node had it."""
        raw = await self._claim(keys=[self._key(session)], args=[self.node_id, int(self.ttl * 1000)])
        home = raw.decode() if isinstance(raw, bytes) else str(raw)
        if home == self.node_id:
            self.claimed.add(session)
        return home

    async def lookup(self, session: str) -> str | None:
        raw = await self.client.get(self._key(session))
        return raw.decode() if isinstance(raw, bytes) else raw

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        await stop_tasks(self._sweeper)
        self._sweeper = None

    async def sweep(self) -> None:
        """Refresh the keys of our live sessions; delete those of sessions gone from here."""
        gone = [s for s in self.claimed if not self.is_local(s)]
        alive = [s for s in self.claimed if s not in gone]
        async with self.client.pipeline(transaction=False) as pipe:
            for session in alive:
                pipe.pexpire(self._key(session), int(self.ttl * 1000))
            for session in gone:
                await self._release(keys=[self._key(session)], args=[self.node_id], client=pipe)
            await pipe.execute()
        self.claimed.difference_update(gone)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.ttl / 3))
            if not self.claimed:
                continue
            try:
                await self.sweep()
            except RedisError as exc:
                log.info("refreshing SockJS session homes failed: %s", exc)
