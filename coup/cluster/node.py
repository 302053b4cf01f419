"""One node's membership of the cluster: the Redis links and everything built on them.

`Cluster` owns the two redis-py clients (one that may retry idempotent commands, one that
never retries), the pub/sub `Bus`, the `Registry` and ring, and hands the core its
`RedisAdapter` factory, `RedisPresence` and `RedisRoomRouter`. It also routes what arrives
on the bus: broadcasts to the namespace's adapter, requests to whoever serves them, replies
to whoever waits for them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import hiredis
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from coup.cluster.adapter import ClusterTimeout, RedisAdapter
from coup.cluster.alarms import Alarms
from coup.cluster.bus import Bus, channel_bytes
from coup.cluster.counter import MaxReader, RedisCounter
from coup.cluster.envelope import BROADCAST, JSON, decode_broadcast, decode_json, encode_json, origin_prefix
from coup.cluster.homes import SessionHomes
from coup.cluster.leases import Leases
from coup.cluster.moves import SessionMoves
from coup.cluster.options import ClusterOptions
from coup.cluster.origin_log import SEQUENCED, OwnOrigins, split_sequenced
from coup.cluster.own_broadcasts import OwnBroadcasts
from coup.cluster.presence import RedisPresence
from coup.cluster.recovery import LOGGED, split_logged
from coup.cluster.registry import Registry
from coup.cluster.resp import RedisUnavailable
from coup.cluster.ring import Ring
from coup.cluster.rooms import RedisRoomRouter
from coup.cluster.tunnel import TUNNEL, Tunnel
from coup.protocol.errors import EncodeError
from coup.redis_clients import async_client
from coup.tasks import stop_tasks

if TYPE_CHECKING:
    from coup.core.namespace import Namespace
    from coup.core.server import SocketServer

log = logging.getLogger(__name__)

#: separates the node id from the rest of an Engine.IO session id
SID_SEPARATOR = "."


class _Pending:
    """Replies to one request; done when as many came as nodes heard the request."""

    __slots__ = ("abandoned", "done", "expected", "first_only", "responses", "target")

    def __init__(self, first_only: bool, target: str | None) -> None:
        self.responses: list[Any] = []
        self.expected: int | None = None
        self.first_only = first_only
        #: the one node asked (a room command), if any
        self.target = target
        self.abandoned = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def abandon(self) -> None:
        """The node asked left the ring: stop waiting for its answer."""
        self.abandoned = True
        if not self.done.done():
            self.done.set_result(None)

    def expect(self, count: int) -> None:
        self.expected = min(count, 1) if self.first_only else count
        self._check()

    def add(self, data: Any) -> None:
        self.responses.append(data)
        self._check()

    def _check(self) -> None:
        if self.expected is not None and len(self.responses) >= self.expected and not self.done.done():
            self.done.set_result(None)


#: connections one client keeps to Redis at most; more commands at once wait for a free one
POOL_SIZE = 64
#: seconds a command waits for a free pooled connection before it fails
POOL_WAIT = 10.0


def make_client(url: str, options: ClusterOptions, *, retries: int) -> redis.Redis:
    """A redis-py client; `retries=0` for writes that must not run twice.

    Its pool makes a command wait for a free connection: redis-py's default pool fails at
    once past 100 ("Too many connections"), which a burst of reconnecting clients (every
    client of a node that drained, coming back at once) reached, failing their presence and
    recovery commands.
    """
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries) if retries else Retry(NoBackoff(), 0)
    client = async_client(url, socket_timeout=options.connect_timeout, socket_connect_timeout=options.connect_timeout,
                          retry=retry, client_name=f"{options.prefix}:ctl")
    if isinstance(client, redis.RedisCluster):  # a pool per cluster node, kept by redis-py
        return client
    pool = client.connection_pool
    if type(pool) is redis.ConnectionPool:  # one server (Sentinel's pool finds the primary itself)
        waiting = redis.BlockingConnectionPool(max_connections=POOL_SIZE, timeout=POOL_WAIT,
                                               connection_class=pool.connection_class, **pool.connection_kwargs)
        client = redis.Redis.from_pool(waiting)
    return client


async def disconnect_pooled(client: redis.Redis) -> None:
    """Close `client`'s idle connections. A Redis Cluster client is closed altogether, so its
    next command reads the slot map again: the bus has just read a complete one, while
    redis-py, after refreshes that failed during a failover, can wait out a backoff before its
    own next one and meanwhile keep sending a slot's commands to the primary that died."""
    if isinstance(client, redis.RedisCluster):
        await client.aclose()
    else:
        await client.connection_pool.disconnect()


class Cluster:
    def __init__(self, url: str, node_id: str, options: ClusterOptions | None = None) -> None:
        if SID_SEPARATOR in node_id or ":" in node_id:
            raise ValueError(f"node id may not contain {SID_SEPARATOR!r} or ':': {node_id!r}")
        self.url = url
        self.node_id = node_id
        self.options = opts = (options or ClusterOptions()).for_url(url)
        #: retries idempotent commands (reads, heartbeats, SET of a session record)
        self.redis = make_client(url, opts, retries=2)
        #: never retries: presence transitions, GETDEL
        self.redis_once = make_client(url, opts, retries=0)
        self.bus = Bus(url, node_id, opts, self._dispatch)
        self.registry = Registry(self.redis, self.redis_once, node_id, opts)
        self.presence = RedisPresence(self.redis, self.redis_once, node_id, opts, grace=opts.presence_grace)
        #: who owns which room, when rooms are leased (`ClusterOptions.room_leases`)
        self.leases = Leases(self.redis, node_id, opts, lambda: self.registry.ring,
                             lambda: self.registry.draining) if opts.room_leases else None
        self.rooms = RedisRoomRouter(node_id, options=opts, bus=self.bus, owner=self.registry.owner,
                                     request=self.request, inbox=self.inbox, room_channel=self._room_channel,
                                     refresh=self.registry.refresh, leases=self.leases)
        #: every failure to serve a session, counted by reason (shown by `GET /api/cluster`)
        self.alarms = Alarms()
        #: requests for sessions held by other nodes, carried through Redis
        self.tunnel = Tunnel(node_id, self.bus, self.inbox, self.alarms)
        #: polling sessions moving to the node their WebSocket upgrade reached
        self.moves = SessionMoves(self)
        #: which node holds each SockJS session
        self.sockjs_homes = SessionHomes(self.redis, node_id, opts)
        self.adapters: dict[str, RedisAdapter] = {}
        self.sio: SocketServer | None = None
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._own_broadcasts = origin_prefix(node_id)
        #: this node's message ids, and its logged broadcasts until Redis hands them back
        self.own: OwnBroadcasts[RedisAdapter] = OwnBroadcasts(node_id)
        #: this node's origins of the recovery log (`coup.cluster.origin_log`): its own numbered
        #: broadcasts, delivered when sent, come back with them
        self.own_origins = OwnOrigins()
        self._maintenance: asyncio.Task[None] | None = None
        self.bus.fixed(channel_bytes(self.registry.announce_channel))
        self.bus.on_reconnect(self._link_up)
        self.bus.on_down(self.registry.on_link_down)
        self.bus.on_down(self.tunnel.link_down)
        self.bus.on_down(self._adapters_down)
        self.registry.on_lost = self.presence.report_lost
        self.registry.on_zombie = self._drop_local_sockets
        self.registry.on_ring_change.append(self._ring_changed)
        self.registry.on_ring_change.append(self.rooms.ring_changed)

    # ------------------------------------------------------------------ wiring into the core

    def adapter_factory(self, nsp: Namespace) -> RedisAdapter:
        return RedisAdapter(nsp, node_id=self.node_id, options=self.options, bus=self.bus, client=self.redis,
                            request=self.request, inbox=self.inbox, registry=self.adapters,
                            own=self.own, own_origins=self.own_origins)

    def _room_channel(self, room: str) -> bytes | None:
        """The channel of `room` in the default namespace (where room commands' callers are)."""
        adapter = self.adapters.get("/")
        return adapter.channel(room) if adapter is not None else None

    def counter(self, name: str, read_max: MaxReader) -> RedisCounter:
        """Gap-free numbers per id kept in Redis (`P:seq:{name}:{id}`), seeded by `read_max`."""
        return RedisCounter(self.redis, self.redis_once, self.options, name, read_max, linked=lambda: self.bus.ready)

    def bind(self, sio: SocketServer) -> None:
        self.sio = sio

    @property
    def sid_prefix(self) -> str:
        """Engine.IO session ids start with the node id, so any node can route a request for one."""
        return self.node_id + SID_SEPARATOR

    @staticmethod
    def node_of_sid(sid: str) -> str | None:
        node, sep, _ = sid.partition(SID_SEPARATOR)
        return node if sep else None

    def sockjs_local(self, session: str) -> bool:
        """Does this node hold the SockJS session `session`?"""
        return self.sockjs_homes.is_local(session)

    def inbox(self, node: str) -> bytes:
        return channel_bytes(self.options.spread("n", node))

    @property
    def ready(self) -> bool:
        return self.bus.ready and self.registry.registered

    # ------------------------------------------------------------------ lifecycle

    async def start(self, address: str) -> None:
        self.registry.start(address)
        await self.bus.start(wait=self.options.connect_timeout * 2)
        self.sockjs_homes.start()
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def drain(self, timeout: float) -> None:
        """On our way out: the others own our rooms from now on, with never two writers of one
        room at once. Commands for us are held, the ones running finish (`timeout`), we leave
        the ring (`Registry.drain`), the held ones go to the new owners."""
        self.rooms.begin_handover()
        try:
            if not await self.rooms.finish(timeout):
                log.warning("draining: room commands still running after %.1f s", timeout)
            async with asyncio.timeout(self.options.connect_timeout * 2):
                await self.registry.drain()
        except (TimeoutError, RedisError) as exc:
            log.warning("could not hand our rooms over (%s); the others take them when we leave", exc)
        finally:
            self.rooms.end_handover()

    async def stop(self) -> None:
        """Leave the cluster: our sockets are closed, so their users may have gone offline."""
        if self._tasks:  # requests others sent us (room commands) are answered, not cut short
            await asyncio.wait(list(self._tasks), timeout=self.options.call_timeout)
        await stop_tasks(self._maintenance)
        await self.tunnel.stop()
        await self.sockjs_homes.stop()
        await self.registry.stop()
        self.presence.forget_local()
        try:
            async with asyncio.timeout(5.0):  # a leaving node must not hang on a sick Redis
                lost = await self.registry.leave()
                await self.presence.report_lost(lost, at_once=True)
        except TimeoutError:
            log.warning("leaving the cluster took too long; the others will time us out")
        await stop_tasks(*self._tasks)
        await self.bus.stop()
        await self.redis.aclose()
        await self.redis_once.aclose()

    async def _link_up(self) -> None:
        # pooled command connections from before the break may be dead without knowing it;
        # the non-retrying client would fail its next write on one
        for client in (self.redis, self.redis_once):
            await disconnect_pooled(client)
        if self.leases is not None:  # Redis may have restarted without them: every lease is read again
            self.leases.forget_all()
        await self.registry.on_link_up()
        await self.presence.resync()
        for adapter in list(self.adapters.values()):
            await adapter.link_up()

    def _adapters_down(self) -> None:
        for adapter in list(self.adapters.values()):
            adapter.link_down()

    def _ring_changed(self, old: Ring, new: Ring) -> None:
        gone = set(old.nodes) - set(new.nodes)
        for node in gone:
            self.tunnel.node_gone(node)
        for pending in list(self._pending.values()):
            if pending.target in gone:
                pending.abandon()

    async def _drop_local_sockets(self) -> None:
        """We were declared dead: our users were reported offline; let our sockets reconnect."""
        self.presence.forget_local()
        if self.sio is None:
            return
        for nsp in list(self.sio.namespaces.values()):
            for socket in list(nsp.sockets.values()):
                socket.client.close("forced close")

    async def _maintain(self) -> None:
        while self.bus.running:
            await asyncio.sleep(5.0)
            for adapter in list(self.adapters.values()):
                adapter.expire_holds()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ requests and replies

    async def request(self, channel: bytes, message: dict[str, Any], timeout: float, *,
                      first_only: bool = False, target: str | None = None) -> list[Any]:
        """Publish a request and gather one reply from every node that heard it.

        Raises `RedisUnavailable` when it could not be published, `ClusterTimeout` (with the
        replies that came) when not every node answered within `timeout`, or at once when
        `target`, the node asked, is declared dead meanwhile.
        """
        q = f"{self.node_id}:{next(self._ids)}"
        pending = self._pending[q] = _Pending(first_only, target)
        try:
            async with asyncio.timeout(timeout):
                count = await self.bus.publish(channel, encode_json({**message, "o": self.node_id, "q": q}))
                if isinstance(count, hiredis.ReplyError):
                    raise RedisUnavailable(str(count))
                pending.expect(int(count))
                await pending.done
            if pending.abandoned:
                raise TimeoutError
            return pending.responses
        except TimeoutError:
            raise ClusterTimeout(pending.responses) from None
        finally:
            del self._pending[q]

    async def _serve(self, message: dict[str, Any]) -> None:
        try:
            if message["t"] == "call":
                data: Any = await self.rooms.serve(message)
            elif str(message.get("op", "")).startswith("move-"):
                data = await self.moves.serve(message)
            else:
                adapter = self.adapters.get(message.get("n", "/"))
                data = await adapter.serve(message) if adapter is not None else {}
        except (RedisError, RedisUnavailable) as exc:
            # Redis away while serving (a failover: a fence reading the ring): the caller retries
            log.warning("cluster request %s failed: redis %s", message.get("op") or message.get("name"), exc)
            data = {"error": "failed"}
        except Exception:
            log.exception("cluster request %s failed", message.get("op") or message.get("name"))
            data = {"error": "failed"}
        q, origin = message.get("q"), message.get("o")
        if not q or not isinstance(origin, str):
            return  # fire and forget (an emitter's command)
        try:
            reply = encode_json({"t": "res", "q": q, "d": data})
        except EncodeError:
            log.error("reply to cluster request %s is not JSON", message.get("op") or message.get("name"))
            reply = encode_json({"t": "res", "q": q, "d": {"error": "failed"}})
        via = self.adapters.get(message["via"]) if message["t"] == "call" and "via" in message else None
        if via is not None:  # the caller hears the room: answer in the same PUBLISH as its broadcast
            self.bus.publish_nowait(via.channel(str(message["room"])), reply)
        else:
            self.bus.publish_nowait(self.inbox(origin), reply)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        kind = data[:1]
        if kind == SEQUENCED:
            if data.startswith(self.own_origins.prefixes):
                return  # delivered locally when it was sent
            origin, number, envelope = split_sequenced(data)
            broadcast = decode_broadcast(envelope)
            adapter = self.adapters.get(broadcast.nsp)
            if adapter is not None:
                adapter.on_sequenced(broadcast, origin, number)
        elif kind == LOGGED:  # through the recovery log: ours too, and with its offset
            offset, envelope = split_logged(data)
            if offset is None and envelope[:1] != BROADCAST:
                self._dispatch(channel, envelope)  # a plain message that rode with the broadcasts
                return
            own = self.own.take(envelope)
            if own is not None:  # ours, as we kept it: nothing to decode
                sender, mid, packet, opts = own
                if self.adapters.get(sender.nsp.name) is sender:
                    sender.on_logged(mid, packet, opts, offset, channel)
                return
            broadcast = decode_broadcast(envelope)
            adapter = self.adapters.get(broadcast.nsp)
            if adapter is not None:
                adapter.on_broadcast(broadcast, offset, channel)
        elif kind == BROADCAST:
            if data.startswith(self._own_broadcasts):
                return  # delivered locally when it was sent
            broadcast = decode_broadcast(data)
            adapter = self.adapters.get(broadcast.nsp)
            if adapter is not None:
                adapter.on_broadcast(broadcast)
        elif kind == TUNNEL:
            self.tunnel.on_message(data)
        elif kind == JSON:
            message = decode_json(data)
            t = message.get("t")
            if t == "res":
                pending = self._pending.get(message.get("q", ""))
                if pending is not None:
                    pending.add(message.get("d"))
            elif t in ("req", "call"):
                self.spawn(self._serve(message))
            elif t == "node":
                self.registry.announce_received(message)
            elif t == "fwd":
                adapter = self.adapters.get(message.get("n", "/"))
                if adapter is not None:
                    adapter.on_forwarded(str(message.get("sid")), message.get("p", []))
        else:
            log.warning("unknown cluster message on %r", channel[:80])

    # ------------------------------------------------------------------ visibility

    def describe(self) -> dict[str, Any]:
        info = self.registry.describe()
        info["ready"] = self.ready
        info["redis"] = {"connected": self.bus.ready, "connections": self.bus.connections, **self.bus.stats}
        info["rooms"] = dict(self.rooms.stats)
        info["relay"] = self.tunnel.describe()
        info["moves"] = dict(self.moves.stats)
        #: failures to serve a session, by reason (each also logged once as a WARNING)
        info["failures"] = self.alarms.snapshot()
        return info
