"""Which nodes are alive: heartbeats, reaping of dead nodes, and the ring built from them.

Each node heartbeats every `heartbeat_interval` (a script stamps Redis time into a sorted
set). Every `check_interval` each node re-reads the membership (the periodic re-check) and
runs the reap script, which removes nodes silent for `dead_after` together with their
presence entries, atomically, so exactly one survivor handles each death and reports the
users it took offline. Joins, leaves and deaths are also announced on a channel so the
others rebuild their ring at once instead of at the next check.

A node that finds it was declared dead (it stalled, or lost Redis while the others did
not) is a zombie: its users were already reported offline, so it drops its sockets (they
reconnect) before registering again. After a Redis outage nobody reaps until it has
heartbeated for `dead_after` again, so a cluster-wide Redis outage kills no node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.options import ClusterOptions
from coup.cluster.ring import Ring
from coup.cluster.scripts import DRAIN, HEARTBEAT, MEMBERSHIP, REAP, publishing
from coup.tasks import stop_tasks

log = logging.getLogger(__name__)

#: first byte of JSON cluster messages (announcements are published by the scripts)
JSON_KIND = "J"

LostKeys = Callable[[list[str]], Awaitable[None]]


class Registry:
    def __init__(self, client: redis.Redis, once: redis.Redis, node_id: str, options: ClusterOptions) -> None:
        """`client` may retry (reads, heartbeats); `once` never does (the reap: its answer is
        the one report of who went offline)."""
        self.client = client
        self.node_id = node_id
        self.options = options
        self.address = ""
        self.started = int(time.time())
        self.ring = Ring((), 0, options.vnodes)
        #: node id -> address, from the last membership read
        self.addresses: dict[str, str] = {}
        self.registered = False
        self._registered_once = False
        self._heartbeat = client.register_script(publishing(HEARTBEAT, options.sharded))
        self._reap = once.register_script(publishing(REAP, options.sharded))
        self._membership = client.register_script(MEMBERSHIP)
        self._drain = once.register_script(DRAIN)
        self._nodes_key = options.key("nodes")
        self._epoch_key = options.key("epoch")
        self._draining_key = options.key("draining")
        #: this node is on its way out: it owns no room (`drain`)
        self.draining = False
        self.announce_channel = options.key("cluster")
        self._linked_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._refresh_soon: asyncio.Event = asyncio.Event()
        #: called with the presence keys a dead (or leaving) node took offline
        self.on_lost: LostKeys | None = None
        #: called when this node finds it had been declared dead (drop local sockets)
        self.on_zombie: Callable[[], Awaitable[None]] | None = None
        self.on_ring_change: list[Callable[[Ring, Ring], None]] = []
        self.stats = {"reaped": 0, "ring_changes": 0}

    # ------------------------------------------------------------------ lifecycle

    def start(self, address: str) -> None:
        self.address = address
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_loop()), loop.create_task(self._check_loop())]

    async def stop(self) -> None:
        self._running = False
        await stop_tasks(*self._tasks)
        self._tasks = []

    async def on_link_up(self) -> None:
        """The pub/sub link (re)connected: register now and re-read the membership."""
        self._linked_at = time.monotonic()
        if not self.draining:  # a node restarted under the id of one that drained owns rooms again
            await self.client.srem(self._draining_key, self.node_id)
        await self.heartbeat()
        await self.refresh()

    def on_link_down(self) -> None:
        self._linked_at = None

    async def drain(self) -> None:
        """Hand our rooms to the others: we stay alive (heartbeats, sessions, presence) but
        own no room from now on. The others rebuild their ring at the announcement (or at
        their next check) and route new room commands to the survivors."""
        self.draining = True
        epoch = await self._drain(keys=[self._draining_key, self._epoch_key], args=[self.node_id])
        announcement = {"t": "node", "ev": "drain", "node": self.node_id, "epoch": int(epoch)}
        publish = self.client.spublish if self.options.sharded else self.client.publish
        await publish(self.announce_channel, JSON_KIND + json.dumps(announcement))
        await self.refresh()

    async def leave(self) -> list[str]:
        """Graceful exit: remove us and our presence entries at once, announce it."""
        self.registered = False
        try:
            result = await self._reap(keys=[self._nodes_key, self._epoch_key],
                                      args=self._reap_args(leaving=self.node_id))
        except RedisError as exc:
            log.warning("could not announce our leave (%s); the others will time us out", exc)
            return []
        lost: list[str] = []
        for _, keys in _pairs(result):
            lost.extend(keys)
        return lost

    # ------------------------------------------------------------------ heartbeat

    async def heartbeat(self) -> None:
        state, epoch, _ = await self._heartbeat(
            keys=[self._nodes_key, self.options.key("node", self.node_id), self._epoch_key,
                  self.options.key("reaped", self.node_id)],
            args=[self.node_id, self.address, self.started, self.announce_channel, JSON_KIND])
        state = int(state)
        if state == 2 and self._registered_once and self.on_zombie is not None:
            log.warning("this node was declared dead by the cluster; dropping its sockets so they reconnect")
            await self.on_zombie()
        elif state == 1 and self._registered_once:
            log.warning("our registration was gone from redis (restarted without data?); registered again")
        if state:
            log.info("node %s registered (epoch %s)", self.node_id, epoch)
            self._refresh_soon.set()
        self.registered = True
        self._registered_once = True

    async def _heartbeat_loop(self) -> None:
        while self._running:
            await asyncio.sleep(self.options.heartbeat_interval)
            if self._linked_at is None:
                continue
            try:
                await self.heartbeat()
            except RedisError as exc:
                log.debug("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat failed")

    # ------------------------------------------------------------------ membership

    def _reap_args(self, leaving: str = "") -> list[Any]:
        opts = self.options
        return [opts.tagged_prefix, int(opts.dead_after * 1000), self.announce_channel, JSON_KIND, leaving,
                self.node_id]

    async def reap(self) -> None:
        """Remove nodes silent for `dead_after`; report the keys they took offline."""
        linked = self._linked_at
        if linked is None or time.monotonic() - linked < self.options.dead_after or not self.registered:
            return  # just back from an outage: the others have not had time to heartbeat
        result = await self._reap(keys=[self._nodes_key, self._epoch_key], args=self._reap_args())
        if not result:
            return
        lost: list[str] = []
        for node, keys in _pairs(result):
            self.stats["reaped"] += 1
            log.warning("node %s is dead (no heartbeat for %.1f s); %d presence keys went offline",
                        node, self.options.dead_after, len(keys))
            lost.extend(keys)
        await self.refresh()
        if lost and self.on_lost is not None:
            await self.on_lost(lost)

    async def refresh(self) -> None:
        """Re-read the live nodes and the epoch; rebuild the ring when they changed."""
        nodes_raw, epoch_raw, draining_raw = await self._membership(
            keys=[self._nodes_key, self._epoch_key, self._draining_key])
        nodes = sorted(n.decode() for n in nodes_raw)
        epoch = int(epoch_raw or 0)
        draining = frozenset(n.decode() for n in draining_raw) & frozenset(nodes)
        if tuple(nodes) != self.ring.nodes or epoch != self.ring.epoch or draining != self.ring.draining:
            async with self.client.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hget(self.options.key("node", node), "address")
                addresses = await pipe.execute()
            self.addresses = {n: a.decode() for n, a in zip(nodes, addresses, strict=True) if a}
            if tuple(nodes) != self.ring.nodes or draining != self.ring.draining:
                old, self.ring = self.ring, Ring(nodes, epoch, self.options.vnodes, draining)
                self.stats["ring_changes"] += 1
                log.info("ring epoch %d: %s%s", epoch, ", ".join(nodes),
                         f" (draining: {', '.join(sorted(draining))})" if draining else "")
                for callback in self.on_ring_change:
                    callback(old, self.ring)
            else:
                self.ring.epoch = epoch

    def announce_received(self, message: dict[str, Any]) -> None:
        """A join/leave/death announcement: re-read the membership now."""
        log.info("cluster: node %s %s (epoch %s)", message.get("node"), message.get("ev"), message.get("epoch"))
        self._refresh_soon.set()

    async def _check_loop(self) -> None:
        while self._running:
            try:
                async with asyncio.timeout(self.options.check_interval):
                    await self._refresh_soon.wait()
            except TimeoutError:
                pass
            self._refresh_soon.clear()
            if self._linked_at is None or not self._running:
                continue
            try:
                await self.refresh()
                await self.reap()
            except RedisError as exc:
                log.debug("membership check failed: %s", exc)
            except Exception:
                log.exception("membership check failed")

    def owner(self, key: str, without: frozenset[str] = frozenset()) -> str:
        """The owner of `key` on our current ring (ourselves when the ring is empty); with
        `without`, on the ring as it will be once those nodes are gone."""
        ring = self.ring.without(without) if without else self.ring
        return ring.owner(key) or self.node_id

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "epoch": self.ring.epoch,
            "nodes": [{"id": n, "address": self.addresses.get(n, "")} for n in self.ring.nodes],
            "draining": sorted(self.ring.draining),
            "pid": os.getpid(),
        }


def _pairs(flat: list[Any]) -> list[tuple[str, list[str]]]:
    out = []
    for i in range(0, len(flat), 2):
        out.append((_text(flat[i]), [_text(k) for k in flat[i + 1]]))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
