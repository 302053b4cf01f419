"""Send events to a CoUp cluster from a process that is not a node (a web backend, a worker).

    from coup.emitter import Emitter
    emitter = Emitter("redis://localhost:6379")
    emitter.to("user:1").emit("notification", {"id": 7, "type": "TASK_ASSIGNED", "message": "..."})
    emitter.to("study:3").except_("user:1").emit("task-updated", {...})
    emitter.to("user:1").disconnect_sockets()

It publishes exactly what a node publishes for ``nsp.to(room).emit(...)``, on the same
channels, so only the nodes with members in those rooms receive it (`coup.cluster.adapter`).
It is synchronous (redis-py's blocking client), for any kind of backend; from asyncio code,
call it through `asyncio.to_thread`. A publish is never retried: when Redis is unreachable
`emit` raises `redis.ConnectionError` and the caller decides (a retry may deliver twice).
Use the same ``prefix`` as the nodes' `COUP_REDIS_PREFIX`, and on a Redis Cluster the same
``log_groups`` as their `COUP_RECOVERY_LOG_GROUPS` (it says which slot a room's channel is
in). Any `REDIS_URL` a node takes works, ``redis+sentinel://`` included: during a failover
`emit` raises, and the next one reaches the new primary.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from coup.cluster.envelope import Broadcast, encode_broadcast, encode_json
from coup.cluster.options import ClusterOptions
from coup.protocol.socketio import RESERVED_EVENTS, SocketPacket, SocketPacketType, encode
from coup.redis_clients import sync_client


class _Link:
    """What emitters derived from one another share: the client, the ids, the names."""

    def __init__(self, client: redis.Redis, options: ClusterOptions) -> None:
        self.client = client
        self.options = options
        self.origin = "emitter-" + secrets.token_hex(6)
        self.ids = itertools.count(1)

    def publish(self, channel: bytes, data: bytes) -> int:
        """PUBLISH, or SPUBLISH to the shard that owns `channel` on a Redis Cluster."""
        if self.options.sharded:
            return int(self.client.spublish(channel, data))
        return int(self.client.publish(channel, data))

    def room_channel(self, nsp: str, room: str) -> bytes:
        return self.options.nsp_key("r", nsp, room, group=self.options.group_of(room)).encode("utf-8", "surrogatepass")

    def all_channel(self, nsp: str) -> bytes:
        return self.options.nsp_key("a", nsp).encode("utf-8", "surrogatepass")


class Emitter:
    def __init__(self, redis_url: str | redis.Redis, *, prefix: str = "coup", namespace: str = "/",
                 log_groups: int = 1) -> None:
        if isinstance(redis_url, str):
            client = sync_client(redis_url, retry=Retry(NoBackoff(), 0), socket_timeout=5, socket_connect_timeout=5)
        else:
            client = redis_url
        # a Redis Cluster's room channels are shard channels, named with the namespace's hash tag
        self._link = _Link(client, ClusterOptions(prefix=prefix, sharded=isinstance(client, redis.RedisCluster),
                                                          log_groups=log_groups))
        self.namespace = namespace if namespace.startswith("/") else "/" + namespace
        self.rooms: frozenset[str] = frozenset()
        self.exclude: frozenset[str] = frozenset()

    def _derive(self, namespace: str, rooms: frozenset[str], exclude: frozenset[str]) -> Emitter:
        other = Emitter.__new__(Emitter)
        other._link = self._link
        other.namespace = namespace
        other.rooms = rooms
        other.exclude = exclude
        return other

    def of(self, namespace: str) -> Emitter:
        """The same emitter for another namespace, with no room selected."""
        return self._derive(namespace if namespace.startswith("/") else "/" + namespace, frozenset(), frozenset())

    def to(self, *rooms: str) -> Emitter:
        """Only sockets in any of `rooms` (each call adds rooms)."""
        return self._derive(self.namespace, self.rooms | frozenset(rooms), self.exclude)

    in_ = to

    def except_(self, *rooms: str) -> Emitter:
        """Not the sockets in any of `rooms`."""
        return self._derive(self.namespace, self.rooms, self.exclude | frozenset(rooms))

    def _channels(self) -> list[bytes]:
        link = self._link
        if not self.rooms:
            return [link.all_channel(self.namespace)]
        return [link.room_channel(self.namespace, room) for room in sorted(self.rooms)]

    def emit(self, event: str, *args: Any) -> int:
        """Send `event` to the selected sockets on every node; returns how many nodes heard it
        (a multi-room emit counts a node once per room it has members in)."""
        if event in RESERVED_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        link = self._link
        packet = encode(SocketPacket(SocketPacketType.EVENT, self.namespace, [event, *args]))
        data = encode_broadcast(Broadcast(link.origin, f"{link.origin}:{next(link.ids)}", self.namespace,
                                          tuple(sorted(self.rooms)), tuple(sorted(self.exclude)), True, packet))
        return sum(link.publish(channel, data) for channel in self._channels())

    def _command(self, op: str, **extra: Any) -> None:
        # the rooms' own channel when there is one room, else the channel every node hears
        channel = self._channels()[0] if len(self.rooms) == 1 else self._link.all_channel(self.namespace)
        self._link.publish(channel, encode_json({"t": "req", "op": op, "n": self.namespace,
                                                        "r": sorted(self.rooms), "x": sorted(self.exclude),
                                                        **extra}))

    def sockets_join(self, *rooms: str) -> None:
        """Make the selected sockets join `rooms` (on whichever node they are)."""
        self._command("join", rooms=list(rooms))

    def sockets_leave(self, *rooms: str) -> None:
        self._command("leave", rooms=list(rooms))

    def disconnect_sockets(self, close: bool = False) -> None:
        """Disconnect the selected sockets (`close`: end their whole connection)."""
        self._command("disconnect", close=close)

    def close(self) -> None:
        self._link.client.close()
