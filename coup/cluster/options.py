"""Timings and names of the cluster layer (defaults match the issue: ~1 s heartbeat, dead after ~3)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import zlib
from dataclasses import dataclass

from redis.crc import key_slot

from coup.redis_endpoint import redis_endpoint

#: hash slots of a Redis Cluster
SLOTS = 16384


@functools.lru_cache(maxsize=1024)
def group_tag(prefix: str, namespace: str, group: int, groups: int) -> str:
    """The hash tag of log group `group` of `groups`: ``P:NSP:g``, or ``P:NSP:g.k`` with the
    smallest k whose slot lies in the middle half of the group's equal share of the slots.

    Why: a cluster of S primaries made by ``redis-cli --cluster create`` (or a managed offer)
    gives each primary one equal run of slots, so G a multiple of S then puts G/S groups on
    every primary. Hashing ``P:NSP:g`` alone put two of four groups on one primary and none
    of the namespace's work on another (bench/README.md, "One namespace over several Redis
    Cluster slots"). The middle half keeps a group clear of the runs' edges."""
    width = SLOTS / groups
    low, high = group * width + width / 4, group * width + 3 * width / 4
    base = f"{prefix}:{namespace}:{group}"
    for k in itertools.count():
        tag = base if k == 0 else f"{base}.{k}"
        if low <= key_slot(tag.encode("utf-8", "surrogatepass")) < high:
            return tag
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    #: every Redis key and channel starts with this, so several apps can share one Redis
    prefix: str = "coup"
    #: seconds between two heartbeats of a node
    heartbeat_interval: float = 1.0
    #: a node whose last heartbeat is older than this is dead (three missed heartbeats)
    dead_after: float = 3.0
    #: how often a node looks for dead nodes and re-reads the membership
    check_interval: float = 0.5
    #: how often a node publishes a probe to itself to prove its subscription still hears
    probe_interval: float = 1.0
    #: a probe not heard back within this many seconds means the subscription is deaf
    probe_timeout: float = 2.0
    connect_timeout: float = 2.0
    #: reconnect backoff: first delay, doubled after each failure up to the cap (with jitter)
    reconnect_min: float = 0.05
    reconnect_max: float = 1.0
    #: seconds a room command may take on its owner before the caller gives up (retryable)
    call_timeout: float = 5.0
    #: seconds a cluster-wide query (fetch_sockets, remote join/leave) waits for every node
    request_timeout: float = 5.0
    #: seconds a dropped socket's presence lingers (a reconnect inside it announces nothing)
    presence_grace: float = 0.0
    #: virtual nodes per node on the consistent-hash ring
    vnodes: int = 160
    #: rooms are owned by the node that first needed them (`coup.cluster.leases`), not the ring
    room_leases: bool = True

    #: Redis Cluster (``redis+cluster://``): keys carry hash tags and channels are sharded
    #: (docs/cluster.md#redis-cluster says where each lives and why)
    sharded: bool = False
    #: Redis Cluster: a namespace's rooms, recovery log and offsets in this many slots
    #: (docs/cluster.md#redis-cluster, "Log groups"); 1 on one Redis or Sentinel whatever is asked
    log_groups: int = 1

    def for_url(self, url: str) -> ClusterOptions:
        """These options for the Redis of `url`: sharded on a Redis Cluster, whoever built them."""
        sharded = redis_endpoint(url).cluster
        return self if sharded == self.sharded else dataclasses.replace(self, sharded=sharded)

    @property
    def tagged_prefix(self) -> str:
        """The prefix of the control plane's keys: ``{P}`` on a Redis Cluster, so the registry,
        presence and their scripts (which reach keys of many nodes and users) share one slot."""
        return "{" + self.prefix + "}" if self.sharded else self.prefix

    def key(self, *parts: str) -> str:
        """A control-plane key or channel under our prefix (one slot on a Redis Cluster)."""
        return ":".join((self.tagged_prefix, *parts))

    def spread(self, *parts: str) -> str:
        """A key or channel hashed by its whole name: on a Redis Cluster each lands on its own
        slot (a node's inbox, a counter, a SockJS session's home). The same name as `key`
        on one Redis."""
        return ":".join((self.prefix, *parts))

    @property
    def groups(self) -> int:
        """How many log groups a namespace has: `log_groups` on a Redis Cluster, else 1."""
        return self.log_groups if self.sharded and self.log_groups > 1 else 1

    def group_of(self, room: str) -> int:
        """The log group of `room` (0 with one group): a stable hash, the same on every node
        and in the emitter."""
        groups = self.groups
        return zlib.crc32(room.encode("utf-8", "surrogatepass")) % groups if groups > 1 else 0

    def group_of_channel(self, channel: bytes) -> int:
        """The log group of a channel made by `nsp_key` (``{P:NSP:g}:...``; 0 with one group)."""
        if self.groups == 1:
            return 0
        close = channel.index(b"}:")
        return int(channel[channel.rindex(b":", 0, close) + 1:close].partition(b".")[0])

    def nsp_key(self, kind: str, namespace: str, *parts: str, group: int = 0) -> str:
        """A key or channel of one namespace: ``P:kind:NSP:...``; on a Redis Cluster
        ``{P:NSP}:kind:...``, so a namespace's recovery log, its session records and its room
        channels share a slot and the script that appends to the log publishes on them. With
        several log groups, ``{P:NSP:g}:kind:...`` (or ``g.k``, `group_tag`): one slot per group,
        spread evenly over the slot space."""
        if self.sharded:
            groups = self.groups
            tag = group_tag(self.prefix, namespace, group, groups) if groups > 1 else self.prefix + ":" + namespace
            return ":".join(("{" + tag + "}", kind, *parts))
        return ":".join((self.prefix, kind, namespace, *parts))

    def room_channel_parts(self, channel: str) -> tuple[str, str] | None:
        """(namespace, room) of a room channel made by ``nsp_key("r", nsp, room)``, else None."""
        if self.sharded:
            head = "{" + self.prefix + ":"
            tag, sep, rest = channel.partition("}:r:")
            if not (sep and tag.startswith(head)):
                return None
            nsp = tag[len(head):]
            if self.groups > 1:
                nsp = nsp.rpartition(":")[0]
            return nsp, rest
        head = self.prefix + ":r:"
        if not channel.startswith(head):
            return None
        nsp, _, room = channel[len(head):].partition(":")
        return nsp, room
