"""One node's pub/sub link to Redis: ordered publishing, counted subscriptions, self-repair.

Guarantees and non-guarantees:

- Messages published by one node reach each subscriber in the order they were published
  (one publishing connection, pipelined, never retried: a publish whose reply is lost may or
  may not have happened, and doing it twice would deliver twice).
- While Redis is unreachable, `publish` fails at once (nothing is queued: a node must keep
  serving its local sockets, not build an unbounded backlog). Messages are lost; the layer
  above designs for it.
- `acquire(channels)` returns once Redis confirmed the subscriptions, so a broadcast
  published after that reaches us. While disconnected it returns at once; the supervisor
  subscribes everything wanted when it reconnects, and `ready` stays False until it has.
- A subscription that is connected but hears nothing ("deaf": a half-open TCP connection, a
  proxy that dropped it) is found by a self-probe every `probe_interval` and rebuilt (on a
  Redis Cluster one probe per primary).
- With Redis Sentinel (``redis+sentinel://``), each (re)connection asks the sentinels for
  the primary, and a watcher hears their ``+switch-master``: the end of a failover cuts the
  reconnect backoff short (every node reconnects at once, not within a second of each
  other), and a link still on another server (a demoted primary) is rebuilt.
- With a Redis Cluster (``redis+cluster://``) channels are shard channels: the link holds a
  publishing and a subscribing connection to every primary and sends each channel's
  SSUBSCRIBE / SPUBLISH to the primary of its slot (a command with keys to the primary of
  its first key), so one node's messages on one channel still arrive in order. A change of
  the slot map (``MOVED`` / ``ASK`` answered, a subscription the server ends with
  ``sunsubscribe``, a primary gone) rebuilds the whole link from a fresh slot map, like any
  other break: re-subscribe, re-sync (docs/cluster.md#redis-cluster).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any, cast

import hiredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from coup.cluster.options import ClusterOptions
from coup.cluster.resp import SLOTS, RedisUnavailable, RespConnection, Waiter, open_sentinel, slot_map
from coup.metrics import Metrics
from coup.redis_endpoint import redis_endpoint
from coup.tasks import stop_tasks

log = logging.getLogger(__name__)

MessageHandler = Callable[[bytes, bytes], None]
ReconnectHook = Callable[[], Awaitable[None]]

#: first byte of a self-probe (other kinds are the cluster's, see `coup.cluster.envelope`)
PROBE = b"P"
#: first byte of several messages for one channel sent as one PUBLISH (4-byte length + data each)
BATCH = b"M"
#: a batch stops growing at this size; the next message for its channel starts a new one
_BATCH_BYTES = 256 * 1024
_SUBSCRIBE_CHUNK = 500
#: seconds between reconnections while a Redis Cluster fails a primary over (see `Bus._reconnect_cap`)
_FAILOVER_POLL = 0.2


def channel_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


class Bus:
    def __init__(self, url: str, node_id: str, options: ClusterOptions, on_message: MessageHandler) -> None:
        self.url = url
        self.node_id = node_id
        self.options = options
        self.on_message = on_message
        #: this node's inbox: requests and replies addressed to it, and its own probes
        self.inbox = channel_bytes(options.spread("n", node_id))
        self._refs: dict[bytes, int] = {self.inbox: 1}
        self._confirming: dict[bytes, deque[asyncio.Future[bool]]] = {}
        self._pub: RespConnection | None = None
        self._sub: RespConnection | None = None
        #: Redis Cluster: shard channels, and per primary its (publishing, subscribing) connections
        self.sharded = redis_endpoint(url).cluster
        self._shards: dict[tuple[str, int], tuple[RespConnection, RespConnection]] = {}
        #: Redis Cluster: per slot, the primary that serves it (as the last slot map said)
        self._owners: list[tuple[str, int] | None] = []
        #: Redis Cluster: channels we unsubscribed from whose ``sunsubscribe`` is still to come
        self._leaving: dict[bytes, int] = {}
        #: Redis Cluster: the last connection attempt got a slot map (the cluster answers)
        self._slot_map_read = False
        #: Redis Cluster: per primary, a channel of ours on it that the self-probe publishes on
        self._probe_channels: dict[tuple[str, int], bytes] = {}
        #: this loop turn's publishes, in order: [channel, messages, future or None]
        self._outbox: list[list[Any]] = []
        #: the batch of each channel that may still take messages this turn
        self._open: dict[bytes | str, list[Any]] = {}
        self._flush_scheduled = False
        #: the last marker `heard_so_far` queued (its batch, heard when it comes back)
        self._marker: tuple[list[Any], asyncio.Future[None]] | None = None
        #: where this turn's plain publishes go while a folding command is open (see `open_command`)
        self._fold: Callable[[bytes, bytes], bool] | None = None
        self._broken = asyncio.Event()
        self._running = False
        self._supervisor: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: set by a Sentinel failover's end: the reconnect backoff stops waiting
        self._wake = asyncio.Event()
        self._probes: dict[bytes, asyncio.Future[None]] = {}
        #: markers of `heard_so_far` on their way, by nonce (failed when the link breaks)
        self._markers: dict[bytes, asyncio.Future[None]] = {}
        self._reconnect_hooks: list[ReconnectHook] = []
        self._down_callbacks: list[Callable[[], None]] = []
        self._first_ready = asyncio.Event()
        #: connected, subscribed to everything wanted, re-sync hooks done
        self.ready = False
        self.connections = 0
        #: published / received count PUBLISH commands and Redis pushes; messages count what they carried
        self.stats = {"published": 0, "published_messages": 0, "publish_failed": 0, "received": 0,
                      "received_messages": 0, "deaf_repairs": 0}
        self._last_drop_log = 0.0
        #: why the last connection attempt failed ("" once connected)
        self._last_failure = ""
        #: where the self-probe's timings go (Redis round trip, pub/sub lag), if anywhere
        self.metrics: Metrics | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._running

    def fixed(self, channel: bytes) -> None:
        """Hear `channel` for the node's whole life (call before `start`)."""
        self._refs[channel] = self._refs.get(channel, 0) + 1

    def on_down(self, callback: Callable[[], None]) -> None:
        """`callback()` runs whenever the link breaks."""
        self._down_callbacks.append(callback)

    def on_reconnect(self, hook: ReconnectHook) -> None:
        """`hook()` runs after every (re)connection, once subscribed, before `ready` is True."""
        self._reconnect_hooks.append(hook)

    async def start(self, wait: float) -> None:
        """Start connecting; return once ready or after `wait` seconds (Redis may be down)."""
        self._running = True
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        self._prober = asyncio.get_running_loop().create_task(self._probe_loop())
        if redis_endpoint(self.url).sentinel:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_failovers())
        try:
            async with asyncio.timeout(wait):
                await self._first_ready.wait()
        except TimeoutError:
            log.warning("redis not reachable at start (%s); serving local sockets and retrying",
                        self._last_failure or "no answer")

    async def stop(self) -> None:
        self._running = False
        self._flush()
        pubs = [pub for pub, _ in self._shards.values()] if self.sharded else [self._pub]
        try:  # let queued publishes (a leaving node's last words) reach Redis
            async with asyncio.timeout(1.0):
                await asyncio.gather(*(pub.call("PING") for pub in pubs if pub is not None and not pub.closed))
        except (RedisUnavailable, TimeoutError):
            pass
        await stop_tasks(self._prober, self._watcher, self._supervisor)
        self._drop_connections()

    def _drop_connections(self) -> None:
        self.ready = False
        for conn in (self._pub, self._sub, *(c for pair in self._shards.values() for c in pair)):
            if conn is not None:
                conn.close()
        self._pub = self._sub = None
        self._shards = {}
        self._leaving.clear()
        for waiters in self._confirming.values():
            for future in waiters:
                if not future.done():
                    future.set_result(False)
        self._confirming.clear()
        for marker in self._markers.values():
            if not marker.done():
                marker.set_exception(RedisUnavailable("the link to redis broke"))
        self._markers.clear()

    def _mark_broken(self) -> None:
        self.ready = False
        if not self._broken.is_set():
            self._broken.set()
            for callback in self._down_callbacks:
                callback()

    async def _supervise(self) -> None:
        delay = self.options.reconnect_min
        while self._running:
            self._wake.clear()  # a failover that ends from now on shortens the next wait
            try:
                await self._connect()
                delay = self.options.reconnect_min
                await self._broken.wait()
                log.warning("redis link lost; serving local sockets and reconnecting")
            except (RedisUnavailable, RedisError) as exc:
                self._connect_failed(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis link supervisor failed; reconnecting")
            self._drop_connections()
            if not self._running:
                return
            try:
                async with asyncio.timeout(delay * random.uniform(0.8, 1.2)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, self._reconnect_cap())

    def _reconnect_cap(self) -> float:
        """The longest wait between two reconnections. A Redis Cluster that answered with a slot
        map while a primary did not is failing over: nothing tells us when the replica takes
        over (Sentinel's ``+switch-master`` has no cluster twin), so we ask again often; slot
        maps are cheap and end the wait within `_FAILOVER_POLL` of the promotion."""
        if self._slot_map_read:
            return min(self.options.reconnect_max, _FAILOVER_POLL)
        return self.options.reconnect_max

    async def _watch_failovers(self) -> None:
        """Stay subscribed to ``+switch-master`` on one of the sentinels (another when it goes)."""
        delay = self.options.reconnect_min
        while self._running:
            lost = asyncio.Event()
            try:
                conn = await open_sentinel(self.url, timeout=self.options.connect_timeout, on_push=self._on_switch,
                                           on_lost=lost.set)
            except RedisUnavailable as exc:
                log.debug("sentinel watch not (re)established: %s", exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.options.reconnect_max)
                continue
            delay = self.options.reconnect_min
            try:
                conn.send(("SUBSCRIBE", "+switch-master"))
                await lost.wait()
            finally:
                conn.close()

    def _on_switch(self, reply: list[Any]) -> None:
        """``+switch-master <service> <old ip> <old port> <new ip> <new port>``."""
        if reply[0] != b"message":
            return
        parts = reply[2].decode(errors="replace").split()
        if len(parts) != 5 or parts[0] != redis_endpoint(self.url).service:
            return
        new = (parts[3], int(parts[4]))
        log.warning("redis sentinel failover: the primary is now %s:%d", *new)
        self._wake.set()
        pub = self._pub
        if pub is not None and not pub.closed and pub.address != new:
            self._mark_broken()  # still on the old primary (demoted, or about to be)

    def _connect_failed(self, exc: Exception) -> None:
        """A failed (re)connection: WARNING when the reason is new (a wrong certificate or
        password says so once, at once), INFO while the same reason repeats every retry."""
        reason = str(exc)
        level = logging.INFO if reason == self._last_failure else logging.WARNING
        self._last_failure = reason
        log.log(level, "redis link not (re)established: %s", reason)

    async def _connect(self) -> None:
        self._broken.clear()
        opts = self.options
        name = f"{opts.prefix}:{self.node_id}"
        if self.sharded:
            await self._connect_shards(name)
        else:
            self._pub = await RespConnection.open(self.url, name=f"{name}:pub", timeout=opts.connect_timeout,
                                                  on_lost=self._mark_broken)
            self._sub = await RespConnection.open(self.url, name=f"{name}:sub", timeout=opts.connect_timeout,
                                                  on_push=self._on_push, on_lost=self._mark_broken)
        self.connections += 1
        wanted = [*self._refs, *self._probe_channels.values()]
        futures = []
        for i in range(0, len(wanted), _SUBSCRIBE_CHUNK):
            futures.extend(self._send_subscribe(wanted[i:i + _SUBSCRIBE_CHUNK]))
        if futures:
            _, pending = await asyncio.wait(futures, timeout=opts.connect_timeout)
            if pending or self._broken.is_set():
                raise RedisUnavailable("redis did not confirm our subscriptions")
        for hook in self._reconnect_hooks:
            await hook()
        if self._broken.is_set():
            raise RedisUnavailable("redis link lost while re-syncing")
        self.ready = True
        self._last_failure = ""
        self._first_ready.set()
        log.info("redis link up (connection #%d, %d channels)", self.connections, len(wanted))

    async def _connect_shards(self, name: str) -> None:
        """Redis Cluster: the slot map, then a publishing and a subscribing connection to each
        primary. `_pub` / `_sub` are those of the primary of our inbox (they say "connected")."""
        timeout = self.options.connect_timeout
        self._slot_map_read = False
        self._owners = owners = await slot_map(self.url, timeout)
        self._slot_map_read = True
        self._probe_channels = self._probe_channels_for(owners)
        for address in dict.fromkeys(owner for owner in owners if owner is not None):
            pub = await RespConnection.open(self.url, name=f"{name}:pub", timeout=timeout, address=address,
                                            on_lost=self._mark_broken)
            sub = await RespConnection.open(self.url, name=f"{name}:sub", timeout=timeout, address=address,
                                            on_push=self._on_push, on_lost=self._mark_broken)
            pub.on_redirect = sub.on_redirect = self._redirected
            self._shards[address] = (pub, sub)
        if None in owners:
            raise RedisUnavailable("the Redis Cluster serves not every slot (a primary is failing over)")
        self._pub, self._sub = self._shard(self.inbox)

    def _probe_channels_for(self, owners: list[tuple[str, int] | None]) -> dict[tuple[str, int], bytes]:
        """A probe channel per primary: our inbox's name with a hash tag that lands on that
        primary's slots (the first of ``{0}``, ``{1}``, ... that does; a few tries each)."""
        found: dict[tuple[str, int], bytes] = {}
        wanted = {owner for owner in owners if owner is not None}
        for i in range(SLOTS * 4):
            if len(found) == len(wanted):
                break
            channel = self.inbox + b":probe{" + str(i).encode() + b"}"
            owner = owners[key_slot(channel)]
            if owner is not None and owner not in found:
                found[owner] = channel
        return found

    def _shard(self, key: bytes) -> tuple[RespConnection, RespConnection]:
        """The connections to the primary that serves `key`'s slot (a channel or a key)."""
        owner = self._owners[key_slot(key)] if self._owners else None
        pair = self._shards.get(owner) if owner is not None else None
        if pair is None:
            raise RedisUnavailable("no connection to the primary of this slot")
        return pair

    def _redirected(self, error: hiredis.ReplyError) -> None:
        """A Redis Cluster answered MOVED, ASK or CLUSTERDOWN: its slot map changed (a failover,
        a resharding) or is changing. Rebuilt from a new slot map, as after any break."""
        if self.ready:
            log.warning("redis cluster slot map changed (%s); rebuilding the link", str(error)[:120])
        self._mark_broken()

    # ------------------------------------------------------------------ receiving

    def _on_push(self, reply: Any) -> None:
        if type(reply) is hiredis.ReplyError:  # a refused SSUBSCRIBE: `_redirected` has it
            return
        kind = reply[0]
        if kind == b"message" or kind == b"smessage":
            self.stats["received"] += 1
            data = reply[2]
            if data[:1] == BATCH:
                for part in unpack_batch(data):
                    self._receive(reply[1], part)
            else:
                self._receive(reply[1], data)
        elif kind == b"subscribe" or kind == b"ssubscribe":
            self._confirmed(reply[1])
        elif kind == b"sunsubscribe":
            self._shard_unsubscribed(reply[1])

    def _shard_unsubscribed(self, channel: bytes) -> None:
        """Ours (`release`), or the server's when the channel's slot moved to another primary."""
        leaving = self._leaving.get(channel, 0)
        if leaving:
            if leaving == 1:
                del self._leaving[channel]
            else:
                self._leaving[channel] = leaving - 1
        elif channel in self._refs and self.ready:
            log.warning("redis cluster moved the slot of a channel we hear; rebuilding the link")
            self._mark_broken()

    def _receive(self, channel: bytes, data: bytes) -> None:
        self.stats["received_messages"] += 1
        if data[:1] == PROBE:
            heard = self._probes.pop(data[1:], None) or self._markers.pop(data[1:], None)
            if heard is not None and not heard.done():
                heard.set_result(None)
            return
        try:
            self.on_message(channel, data)
        except Exception:
            log.exception("handling a cluster message failed")

    def _confirmed(self, channel: bytes) -> None:
        waiters = self._confirming.get(channel)
        if waiters:
            future = waiters.popleft()
            if not waiters:
                del self._confirming[channel]
            if not future.done():
                future.set_result(True)

    # ------------------------------------------------------------------ subscriptions

    def _send_subscribe(self, channels: list[bytes]) -> list[asyncio.Future[bool]]:
        sub = self._sub
        if sub is None or sub.closed:
            return []
        loop = asyncio.get_running_loop()
        futures = []
        for channel in channels:
            future: asyncio.Future[bool] = loop.create_future()
            self._confirming.setdefault(channel, deque()).append(future)
            futures.append(future)
        if not self.sharded:
            sub.send(("SUBSCRIBE", *channels))
            return futures
        by_shard: dict[RespConnection, list[tuple[Any, ...]]] = {}
        for channel in channels:  # one SSUBSCRIBE per channel: one command may name one slot only
            by_shard.setdefault(self._shard(channel)[1], []).append(("SSUBSCRIBE", channel))
        for conn, commands in by_shard.items():
            conn.send(*commands)
        return futures

    async def acquire(self, channels: Iterable[bytes]) -> None:
        """Count one more reason to hear `channels`; return once Redis confirmed them."""
        new: list[bytes] = []
        waits: list[asyncio.Future[bool]] = []
        refs = self._refs
        for channel in channels:
            count = refs.get(channel, 0)
            refs[channel] = count + 1
            if count == 0:
                new.append(channel)
            else:
                waiters = self._confirming.get(channel)
                if waiters:
                    waits.append(waiters[-1])
        if new:
            try:
                waits.extend(self._send_subscribe(new))
            except RedisUnavailable:
                pass  # the supervisor subscribes everything wanted once it reconnects
        if waits:
            await asyncio.wait(waits, timeout=self.options.connect_timeout)

    async def settled(self, channels: Iterable[bytes]) -> None:
        """Wait for subscriptions of `channels` still in flight (somebody else asked for them)."""
        confirming = self._confirming
        if not confirming:
            return
        waits = [waiters[-1] for channel in channels if (waiters := confirming.get(channel))]
        if waits:
            await asyncio.wait(waits, timeout=self.options.connect_timeout)

    def release(self, channels: Iterable[bytes]) -> None:
        """Drop one reason to hear `channels`; unsubscribe those nobody needs any more."""
        gone: list[bytes] = []
        refs = self._refs
        for channel in channels:
            count = refs.get(channel, 0)
            if count <= 1:
                if count == 1:
                    del refs[channel]
                    gone.append(channel)
            else:
                refs[channel] = count - 1
        sub = self._sub
        if gone and sub is not None and not sub.closed:
            try:
                if not self.sharded:
                    sub.send(("UNSUBSCRIBE", *gone))
                    return
                for channel in gone:
                    self._shard(channel)[1].send(("SUNSUBSCRIBE", channel))
                    self._leaving[channel] = self._leaving.get(channel, 0) + 1
            except RedisUnavailable:
                pass

    def subscribed(self, channel: bytes) -> bool:
        return channel in self._refs

    # ------------------------------------------------------------------ publishing

    def publish(self, channel: bytes, data: bytes) -> asyncio.Future[Any]:
        """Queue a PUBLISH for this loop turn; the future gives the number of receivers.

        Fails at once with `RedisUnavailable` while disconnected; never retried.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._queue(channel, data, future):
            future.set_exception(RedisUnavailable("redis is not connected"))
        return future

    def publish_nowait(self, channel: bytes, data: bytes) -> None:
        """Publish without waiting for the reply (the hot path of a broadcast).

        Messages for one channel within one loop turn travel as one PUBLISH (a batch), in
        order; under load that divides Redis commands and pushes per message.
        """
        self._queue(channel, data, None)

    def heard_so_far(self, channel: bytes) -> asyncio.Future[None]:
        """Done once a marker published on `channel` (one we hear) after everything queued so
        far has come back to us: every push Redis sent us before it ran has been handled by then.

        A reply on the publishing connection can overtake a push on the subscribing one (two
        sockets), so a command's answer says nothing about what we have heard. Redis runs one
        connection's commands in order and pushes to a subscriber in order: the marker is the
        barrier. Markers asked in a row share one future and one PUBLISH (await it shielded).
        Fails with `RedisUnavailable` while disconnected, or when the link breaks before it is heard.
        """
        outbox = self._outbox
        last = self._marker
        if last is not None and outbox and outbox[-1] is last[0] and last[0][0] == channel and not last[1].done():
            return last[1]
        heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pub = self._pub
        if pub is None or pub.closed:
            heard.set_exception(RedisUnavailable("redis is not connected"))
            return heard
        nonce = secrets.token_bytes(8)
        self._markers[nonce] = heard
        # a batch of its own, named in no `_open`: nothing queued later joins it ahead of its place
        batch = [channel, [PROBE + nonce], None, 0]
        self._marker = (batch, heard)
        outbox.append(batch)
        self._schedule_flush()
        return heard

    def open_command(self, key: str, head: tuple[Any, ...], waiter: Waiter,
                     fold: Callable[[bytes, bytes], bool] | None = None) -> list[Any] | None:
        """The argument list of this loop turn's command `key`, in publish order: the caller
        appends its arguments. The command starts as `head`; `waiter` gets its reply
        (`coup.cluster.resp.Waiter`; an exception when it cannot be sent). None while
        disconnected (nothing is queued). With `fold`, the turn's later
        `publish_nowait` calls go into the command too (`fold(channel, data)`), not after it,
        unless `fold` says False (a channel of another Redis Cluster slot).

        This is how a script that appends to the recovery log and publishes (`LOG_PUBLISH`)
        takes every broadcast of one turn in one call, ordered with the plain publishes.
        """
        batch = self._open.get(key)
        if batch is not None:
            return cast(list[Any], batch[1])
        pub = self._pub
        if pub is None or pub.closed:
            self._dropped()
            return None
        batch = [None, list(head), waiter, 0]
        # publishes queued after this command start new batches (or fold into it): none overtakes it
        if self.options.groups > 1:
            # log groups: only those of its slot; another group's call this turn stays open, so a
            # turn makes one call per group (the order across slots is no promise anyway)
            slot = key_slot(channel_bytes(key))
            for other in [k for k in self._open if key_slot(k if isinstance(k, bytes) else channel_bytes(k)) == slot]:
                del self._open[other]
        else:
            self._open.clear()
        self._open[key] = batch
        self._fold = fold
        self._outbox.append(batch)
        self._schedule_flush()
        return cast(list[Any], batch[1])

    def open_arguments(self, key: str) -> list[Any] | None:
        """The argument list of this loop turn's command `key` if it is still open (nothing
        queued since would be overtaken by adding to it), else None: `open_command` then."""
        batch = self._open.get(key)
        return None if batch is None else cast(list[Any], batch[1])

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command after everything published so far; the future gives its reply
        (a Redis error reply is returned, not raised). Fails with `RedisUnavailable` while
        disconnected; never retried."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pub = self._pub
        if pub is None or pub.closed:
            future.set_exception(RedisUnavailable("redis is not connected"))
            return future
        self._outbox.append([None, list(args), future, 0])
        self._schedule_flush()
        return future

    def script(self, script: str, *args: Any) -> asyncio.Future[Any]:
        """`script` (``numkeys, keys..., args...``) after everything queued so far, to the
        primary of its first key on a Redis Cluster: on the bus, so the calls of a loop turn go
        out in one write with no redis-py pool checkout each (a quarter of a restore's CPU).
        Sent as EVALSHA, and once more with its text when Redis lost it (a restart, a
        failover); an error reply is raised."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(future: asyncio.Future[Any]) -> None:
            if reply.done():
                return
            if future.cancelled() or future.exception() is not None:
                reply.set_exception(future.exception() or RedisUnavailable("cancelled"))
                return
            result = future.result()
            if isinstance(result, hiredis.ReplyError) and str(result).startswith("NOSCRIPT"):
                self.command("EVAL", script, *args).add_done_callback(done)
            elif isinstance(result, hiredis.ReplyError):
                reply.set_exception(result)
            else:
                reply.set_result(result)

        self.command("EVALSHA", script_sha(script), *args).add_done_callback(done)
        return reply

    def open_transaction(self) -> Transaction | None:
        """This loop turn's open `Transaction` (one Redis only), or a new one: the caller adds
        to it. None while disconnected (nothing is queued). Until something is queued after
        it, the turn's plain `publish_nowait` calls join it in their order.

        How the node-sequenced recovery log (`coup.cluster.origin_log`) publishes its
        broadcasts and appends them in one step: a restore that subscribes, then reads the
        log, finds every broadcast in the log or on its channels (or both), never neither."""
        batch = self._open.get(_TX_KEY)
        if batch is not None:
            return cast(Transaction, batch[1])
        pub = self._pub
        if pub is None or pub.closed:
            return None  # not counted as dropped here: the caller publishes without it, which counts
        assert not self.sharded, "a transaction keeps to one slot: not on a Redis Cluster"
        tx = Transaction()
        batch = [None, tx, tx, 0]
        self._open.clear()  # publishes queued after it fold into it (`_queue`) or start new batches
        self._open[_TX_KEY] = batch
        self._fold = tx.fold
        self._outbox.append(batch)
        self._schedule_flush()
        return tx

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # after the next look at the sockets, not this one: what the sockets ready by then
            # bring (more client messages, more requests) shares the write and the recovery
            # log's script call (0.85 -> 0.66 calls per chat message; microseconds later, p50
            # unchanged: bench/README.md, "Recovery log on and off")
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._flush)

    def _queue(self, channel: bytes, data: bytes, future: asyncio.Future[Any] | None) -> bool:
        """Add a PUBLISH to this turn's pipeline; True when it cannot be sent (disconnected)."""
        pub = self._pub
        if pub is None or pub.closed:
            self._dropped()
            return True
        if future is None:
            if self._fold is not None and self._fold(channel, data):
                return False
            batch = self._open.get(channel)
            if batch is not None and batch[3] < _BATCH_BYTES:
                batch[1].append(data)
                batch[3] += len(data)
                return False
            batch = [channel, [data], None, len(data)]
            self._open[channel] = batch
        else:  # its receiver count is asked for: never folded into a command
            batch = self._open.get(channel)
            if batch is not None and batch[3] < _BATCH_BYTES:
                # requests to one inbox in one turn share a PUBLISH (one push to decode, not
                # one each): everything in it reached the same subscribers, so each gets its count
                batch[1].append(data)
                batch[3] += len(data)
            else:
                batch = [channel, [data], None, len(data)]
                self._open[channel] = batch
                self._outbox.append(batch)
                self._schedule_flush()
            if batch[2] is None:  # the bus's own: a caller that gives up cancels only its own
                batch[2] = asyncio.get_running_loop().create_future()
            batch[2].add_done_callback(partial(_same_reply, future))
            self._fold = None  # nothing queued after it may fold into a command before it
            return False
        self._outbox.append(batch)
        self._schedule_flush()
        return False

    def _flush(self) -> None:
        self._flush_scheduled = False
        batches = self._outbox
        if not batches:
            return
        self._outbox, self._open, self._fold = [], {}, None
        commands: list[tuple[Any, ...] | bytes] = []
        waiters: list[Waiter | None] = []
        for b in batches:
            if b[0] is not None:
                commands.append(("PUBLISH", b[0], b[1][0] if len(b[1]) == 1 else pack_batch(b[1])))
                self.stats["published_messages"] += len(b[1])
            elif isinstance(b[1], Transaction):
                inner = b[1].commands()
                commands += inner
                waiters += [None] * (len(inner) - 1)
                self.stats["published_messages"] += b[1].messages
            else:
                commands.append(tuple(b[1]))
            waiters.append(b[2])
        if self.sharded:
            # no transaction on a Redis Cluster (`open_transaction`): no command comes packed
            self._write_sharded(batches, cast(list[tuple[Any, ...]], commands), waiters)
            return
        pub = self._pub
        try:
            if pub is None:
                raise RedisUnavailable("redis is not connected")
            pub.write(commands, waiters)
        except RedisUnavailable as exc:
            self._failed(waiters, exc)
            return
        self.stats["published"] += len(commands)

    def _failed(self, waiters: list[Waiter | None], exc: RedisUnavailable) -> None:
        for waiter in waiters:
            self._dropped()
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

    def _write_sharded(self, batches: list[list[Any]], commands: list[tuple[Any, ...]],
                       waiters: list[Waiter | None]) -> None:
        """Redis Cluster: each PUBLISH as the SPUBLISH of its channel's primary, each command to
        the primary of its first key (a script's ``EVAL[SHA] script numkeys key ...``); the
        order within one primary's connection is the order they were queued in."""
        per_shard: dict[RespConnection, tuple[list[tuple[Any, ...]], list[Waiter | None]]] = {}
        for batch, command, waiter in zip(batches, commands, waiters, strict=True):
            if batch[0] is None:
                key = command[3] if len(command) > 3 and str(command[0]).upper() in _SCRIPT_CALLS \
                    and int(command[2]) > 0 else self.inbox
            else:
                key, command = batch[0], ("SPUBLISH", *command[1:])
            try:
                pub = self._shard(key if isinstance(key, bytes) else channel_bytes(str(key)))[0]
            except RedisUnavailable as exc:
                self._failed([waiter], exc)
                continue
            queued = per_shard.setdefault(pub, ([], []))
            queued[0].append(command)
            queued[1].append(waiter)
        for pub, (shard_commands, shard_waiters) in per_shard.items():
            try:
                pub.write(shard_commands, shard_waiters)
            except RedisUnavailable as exc:
                self._failed(shard_waiters, exc)
                continue
            self.stats["published"] += len(shard_commands)

    def _dropped(self) -> None:
        self.stats["publish_failed"] += 1
        now = time.monotonic()
        if now - self._last_drop_log > 5.0:
            self._last_drop_log = now
            log.warning("redis unavailable: cross-node messages are being dropped (%d so far)",
                        self.stats["publish_failed"])

    # ------------------------------------------------------------------ self-probe

    async def _probe_loop(self) -> None:
        opts = self.options
        while self._running:
            await asyncio.sleep(opts.probe_interval)
            if not self.ready:
                continue
            # on a Redis Cluster one probe per primary: a subscription may go deaf on any of them
            channels = list(self._probe_channels.values()) or [self.inbox]
            await asyncio.gather(*(self._probe(channel) for channel in channels))

    async def _probe(self, channel: bytes) -> None:
        """Publish a probe on `channel` (ours) and hear it back; a deaf link is rebuilt."""
        opts = self.options
        nonce = secrets.token_bytes(8)
        heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = heard
        try:
            started = time.perf_counter()
            async with asyncio.timeout(opts.probe_timeout):
                receivers = await self.publish(channel, PROBE + nonce)
            answered = time.perf_counter()
            if receivers == 0:
                raise _Deaf("redis has no subscription of ours")
            async with asyncio.timeout(opts.probe_timeout):
                await heard
            if self.metrics is not None:
                self.metrics.redis_roundtrip.observe(answered - started)
                self.metrics.pubsub_lag.observe(time.perf_counter() - started)
        except (TimeoutError, _Deaf, RedisUnavailable) as exc:
            if self.ready:  # a failure during a reconnect is not news
                self.stats["deaf_repairs"] += 1
                log.warning("redis subscription deaf (%s); rebuilding the link", exc or "probe not heard")
                self._mark_broken()
        finally:
            self._probes.pop(nonce, None)


#: where this turn's open `Transaction` is named among the open batches (no channel is empty)
_TX_KEY = b""


class Transaction:
    """One MULTI / EXEC of a loop turn: publishes (consecutive messages for one channel share a
    PUBLISH, as `Bus.publish_nowait`'s batches do, without reordering messages across
    channels), then the other commands (a log's RPUSH, a mark), atomically: no client of
    Redis sees the publishes without the rest or the other way round.

    It takes its EXEC reply itself (a `coup.cluster.resp.Waiter`: no future per turn) and
    tells its `listeners` when the commands did not all run (the link broke, Redis refused)."""

    __slots__ = ("_finished", "listeners", "messages", "publishes", "sealed", "tail")

    def __init__(self) -> None:
        #: (channel, message) in publish order (consecutive ones for one channel are batched
        #: when it is written out: `commands`)
        self.publishes: list[tuple[bytes, bytes]] = []
        self.tail: list[list[Any]] = []
        self.messages = 0
        self.listeners: list[Callable[[Any], None]] = []
        self._finished = False
        #: written out (or failed): nothing may join it any more (`Bus.open_transaction` then
        #: opens the next turn's). A caller may keep it and ask this instead of the bus.
        self.sealed = False

    def done(self) -> bool:
        return self._finished

    def set_result(self, result: Any, /) -> None:
        self._finished = self.sealed = True
        if type(result) is not list or hiredis.ReplyError in map(type, result):  # EXECABORT, or a command failed
            self._fail(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._finished = self.sealed = True
        self._fail(exception)

    def exception(self) -> BaseException | None:
        return None

    def _fail(self, reason: Any) -> None:
        for listener in self.listeners:
            listener(reason)

    def publish(self, channel: bytes, data: bytes) -> None:
        self.publishes.append((channel, data))

    def fold(self, channel: bytes, data: bytes) -> bool:
        """A plain publish of the turn queued while the transaction is open goes in it, in order."""
        self.publish(channel, data)
        return True

    def command(self, *args: Any) -> list[Any]:
        """A command after the publishes; its argument list, which the caller may still extend
        this turn (one RPUSH for every entry of the turn)."""
        command = list(args)
        self.tail.append(command)
        return command

    def commands(self) -> list[tuple[Any, ...] | bytes]:
        """Its commands, when it is written out: it is sealed. MULTI and EXEC come packed."""
        self.sealed = True
        publishes = self.publishes
        self.messages = len(publishes)
        commands: list[tuple[Any, ...] | bytes] = [_MULTI]
        if len(publishes) == 1:  # the usual turn
            commands.append(("PUBLISH", *publishes[0]))
        else:
            for channel, batch in groupby(publishes, itemgetter(0)):
                messages = [data for _, data in batch]
                commands.append(("PUBLISH", channel, messages[0] if len(messages) == 1 else pack_batch(messages)))
        commands += map(tuple, self.tail)
        commands.append(_EXEC)
        return commands


#: a transaction's first and last command, packed once (`RespConnection.write` takes them as they are)
_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))


class _Deaf(Exception):
    pass


#: commands whose first key follows the script and the key count
_SCRIPT_CALLS = ("EVAL", "EVALSHA")


def script_sha(script: str) -> str:
    """What EVALSHA names `script` by."""
    return hashlib.sha1(script.encode()).hexdigest()


def _same_reply(to: asyncio.Future[Any], reply: asyncio.Future[Any]) -> None:
    """A request that joined another's PUBLISH gets that PUBLISH's reply."""
    if to.done():
        return
    if reply.cancelled():
        to.cancel()
    elif (exc := reply.exception()) is not None:
        to.set_exception(exc)
    else:
        to.set_result(reply.result())


def pack_batch(messages: list[bytes]) -> bytes:
    return BATCH + b"".join(len(m).to_bytes(4, "big") + m for m in messages)


def unpack_batch(data: bytes) -> list[bytes]:
    parts = []
    view = memoryview(data)
    i = 1
    while i < len(data):
        size = int.from_bytes(view[i:i + 4], "big")
        parts.append(bytes(view[i + 4:i + 4 + size]))
        i += 4 + size
    return parts
