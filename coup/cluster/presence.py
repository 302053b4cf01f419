"""Cluster-wide presence: a key (a user) is online while any of its sockets on any node is.

Redis holds, per key, the sockets that hold it (`P:presence:KEY`, sid → node) and, per node,
an index of its entries, so the survivor that reaps a dead node can remove them. Every
transition is decided inside one atomic script, so each is reported exactly once,
cluster-wide. This node also keeps its own sockets in memory: that is the truth it re-syncs
into Redis after an outage or a Redis restart (reporting keys that went offline meanwhile
through `on_lost`).

While Redis is unreachable: `attach` answers from this node's view (a key with no local
socket counts as coming online: a repeated user-online is harmless, a missing one leaves a
user shown offline), and `detach` answers False; the re-sync after the outage reports the
keys that really went offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Iterable

import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coup.cluster.options import ClusterOptions
from coup.cluster.scripts import ATTACH, DETACH, MOVE, RESYNC
from coup.core.presence import PresenceGrace
from coup.tasks import spawn_kept

log = logging.getLogger(__name__)

#: a transition script is asked at most this often when Redis does not answer in time
TRANSITION_ATTEMPTS = 3
#: seconds after a transition Redis did not take before Redis is re-synced (then doubled while it fails)
RESYNC_FIRST_WAIT = 0.25


class _Gate:
    """Transitions run side by side; a re-sync runs alone. A re-sync sends this node's whole
    view: a transition that reached Redis while it was on its way would be undone by it (a
    socket that left shown online again, one that came reported offline), and one whose
    socket entered the view after it was read would find its work done (an online never
    announced). Entering an open gate does not yield, so a transition's change of the view
    stays in the step that asked for it."""

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """A transition (or a move) inside: others may run beside it, a re-sync may not."""
        while not self._open.is_set():
            await self._open.wait()
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def alone(self, wait: float) -> AsyncIterator[None]:
        """No transition runs or starts inside; those running are waited for at most `wait`
        seconds (a link that comes up has closed their connections: they fail at once)."""
        while not self._open.is_set():  # another re-sync
            await self._open.wait()
        self._open.clear()
        try:
            try:
                async with asyncio.timeout(wait):
                    await self._idle.wait()
            except TimeoutError:
                log.info("presence re-sync: %d transitions still running; going ahead", self._running)
            yield
        finally:
            self._open.set()


class RedisPresence(PresenceGrace):
    """`coup.core.presence.Presence` across nodes."""

    def __init__(self, client: redis.Redis, once: redis.Redis, node_id: str, options: ClusterOptions,
                 grace: float = 0.0) -> None:
        """`client` may retry (reads); `once` never retries (the transition scripts)."""
        super().__init__(grace)
        self.client = client
        self.node_id = node_id
        self.options = options
        self._attach = once.register_script(ATTACH)
        self._detach = once.register_script(DETACH)
        self._resync = once.register_script(RESYNC)
        self._move = once.register_script(MOVE)
        self._index = options.key("node", node_id, "presence")
        #: this node's sockets per key: what re-syncs Redis after an outage
        self.local: dict[str, set[str]] = {}
        self._dirty = False
        #: ids of transition calls: a retried call is answered as its first run was. The
        #: token keeps them unique per process: a node restarted under its id counts from 1
        #: again, and was answered with its previous process's answers (its attach not recorded)
        self._calls = itertools.count(1)
        self._calls_prefix = f"{node_id}:{secrets.token_hex(6)}"
        self._tasks: set[asyncio.Task[None]] = set()
        #: re-syncs Redis after a transition it did not take (`_failed`)
        self._resyncing: asyncio.Task[None] | None = None
        self._gate = _Gate()

    def _key(self, key: str) -> str:
        return self.options.key("presence", key)

    def _call_id(self) -> str:
        return f"{self._calls_prefix}:{next(self._calls)}"

    async def _add(self, key: str, sid: str) -> bool:
        async with self._gate.shared():
            sids = self.local.get(key)
            first_here = not sids
            if sids is None:
                sids = self.local[key] = set()
            sids.add(sid)
            return await self._run(self._attach, key, [sid, self.node_id, f"{key}\0{sid}", self._call_id()],
                                   "attach", refused=first_here)

    async def _transition(self, script: AsyncScript, key: str, args: list[str]) -> bool:
        """Run a transition script; after a timeout, run it again.

        A timed-out call may or may not have run in Redis. The scripts remember their answer
        per socket, so the retry returns what the first run decided and a transition is
        announced exactly once, never twice (the old fallback guessed) and never lost.
        """
        keys = [self._key(key), self._index, self.options.key("presence-done", key)]
        for attempt in range(TRANSITION_ATTEMPTS):
            try:
                return bool(await script(keys=keys, args=args))
            except RedisTimeoutError:
                if attempt == TRANSITION_ATTEMPTS - 1:
                    raise
                log.info("presence transition of %s timed out; asking again", key)
        raise AssertionError("unreachable")

    async def _remove(self, key: str, sid: str) -> bool:
        async with self._gate.shared():
            sids = self.local.get(key)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self.local[key]
            return await self._run(self._detach, key, [sid, f"{key}\0{sid}", self.node_id, self._call_id()],
                                   "detach", refused=False)

    async def _run(self, script: AsyncScript, key: str, args: list[str], what: str, *, refused: bool) -> bool:
        """`_transition`; when Redis does not take it, `refused` is the answer (this node's
        guess) and Redis is re-synced soon (`_failed`)."""
        try:
            return await self._transition(script, key, args)
        except RedisError as exc:
            self._failed()
            log.warning("presence %s of %s while redis is unreachable (%s); re-synced soon", what, key, exc)
            return refused

    def _failed(self) -> None:
        """A transition Redis did not take: Redis is re-synced from this node's view soon, not
        only when the bus next comes up. The bus may be up already: after a Redis Cluster
        failover a command client can still be on the old primary after the bus moved on (a
        user who left then stayed online until the next outage)."""
        self._dirty = True
        if self._resyncing is None:
            self._resyncing = asyncio.get_running_loop().create_task(self._resync_soon())

    async def _resync_soon(self) -> None:
        wait = RESYNC_FIRST_WAIT
        try:
            while self._dirty:
                await asyncio.sleep(wait)
                try:
                    await self.resync()
                except RedisError as exc:
                    log.info("presence re-sync failed (%s); trying again", exc)
                    wait = min(wait * 2, max(self.options.reconnect_max, RESYNC_FIRST_WAIT))
        finally:
            self._resyncing = None

    async def online(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(self._key(key))
                found = await pipe.execute()
        except RedisError:
            log.warning("presence lookup while redis is unreachable: answering from this node only")
            return {k for k in keys if k in self.local}
        return {k for k, n in zip(keys, found, strict=True) if n}

    async def report_lost(self, keys: Iterable[str], *, at_once: bool = False) -> None:
        """Keys that went offline without a detach here (a dead node, an outage).

        After the grace, not at once (unless `at_once`: this node is leaving): the users of a
        crashed node are reconnecting elsewhere, and one that is back by then is no news.
        The callbacks check that the key is still offline before they announce it.
        """
        keys = list(keys)
        if self.grace > 0 and not at_once:
            spawn_kept(self._tasks, self._report_later(keys))
            return
        for key in keys:
            if key in self.local:
                continue  # one of our sockets holds it: it is not offline
            await self.announce_lost(key)

    async def _report_later(self, keys: list[str]) -> None:
        await asyncio.sleep(self.grace)
        await self.report_lost(keys, at_once=True)

    async def resync(self) -> None:
        """Make Redis hold exactly this node's sockets (after a (re)connection), with no
        transition of this node in between (`_Gate`)."""
        async with self._gate.alone(self.options.connect_timeout):
            args: list[str] = [self.options.tagged_prefix, self.node_id]
            for key, sids in self.local.items():
                for sid in sids:
                    args += (key, sid)
            lost, found = await self._resync(keys=[self._index], args=args)
        if found and self._dirty:
            log.info("presence re-sync: %d keys came online while redis was unreachable", len(found))
        self._dirty = False
        lost_keys = [k.decode() for k in lost]
        if lost_keys:
            log.info("presence re-sync: %d keys went offline without a detach", len(lost_keys))
            spawn_kept(self._tasks, self.report_lost(lost_keys))

    async def hand_over(self, sids: set[str], node: str) -> list[list[str]]:
        """Sockets `sids` moved to `node`: their entries become that node's, atomically.

        Returns the (key, sid) pairs, which the new node adds to its own view (`take_over`).
        """
        pairs: list[list[str]] = []
        async with self._gate.shared():
            for key in list(self.local):
                here = self.local[key]
                for sid in here & sids:
                    pairs.append([key, sid])
                    here.discard(sid)
                if not here:
                    del self.local[key]
            if pairs:
                args = [self.options.tagged_prefix, self.node_id, node, *(part for pair in pairs for part in pair)]
                try:
                    await self._move(keys=[self._index, self.options.key("node", node, "presence")], args=args)
                except RedisError as exc:
                    # the new node's re-sync after the next outage repairs it; until then our death
                    # would report these keys offline (a user-offline too many, never one too few)
                    log.warning("moving presence of %d sockets to %s failed: %s", len(pairs), node, exc)
        return pairs

    @contextlib.asynccontextmanager
    async def moving_in(self) -> AsyncIterator[None]:
        """Around asking another node for sockets and `take_over` of their entries: no re-sync
        of ours is on its way meanwhile. One that read our view before `take_over` and reached
        Redis after that node's `hand_over` would drop the moved entries (their users reported
        offline)."""
        async with self._gate.shared():
            yield

    def take_over(self, pairs: Iterable[list[str]]) -> None:
        """Entries moved here by `hand_over` on the node the sockets came from (inside `moving_in`)."""
        for key, sid in pairs:
            self.local.setdefault(key, set()).add(sid)

    def forget_local(self) -> None:
        """A zombie node's sockets were already reported offline by the cluster (or this node
        is leaving, and reports them itself): nothing is re-synced any more."""
        self.local.clear()
        self._dirty = False
        if self._resyncing is not None:
            self._resyncing.cancel()
