"""The Redis adapter: rooms and delivery across nodes, interest-only.

Each room has its own channel (``P:r:NSP:ROOM``) and a node subscribes to it only while it
has a local member (or holds a disconnected session that may be recovered); namespace-wide
broadcasts use ``P:a:NSP``, which every node hears. A broadcast is encoded once by its
sender, delivered to local members at once, and published once per room; receivers skip
their own and drop repeated copies of multi-room broadcasts. docs/architecture.md compares
this with owner-kept interest sets and per-node inboxes, with the figures.

Delivery guarantee: what `MemoryAdapter` promises locally, plus: a broadcast reaches every
node that had a member in the room when it was published, in the sender's publish order,
unless Redis is unreachable at that moment (then only local members get it).

Cluster-wide queries (fetch_sockets, remote join/leave/disconnect, broadcast with acks) are
published on the same channel as a broadcast to those rooms; PUBLISH returns how many nodes
heard it, which is exactly how many replies to wait for.

Connection-state recovery outlives the node: with recovery on, a broadcast is numbered by its
node, delivered to local members at once, and published and appended to the node's own log
in Redis in one transaction (`coup.cluster.origin_log`; on a Redis Cluster the script of
`coup.cluster.recovery` appends and publishes, and gives the offset). A client may come back
on any node, also after its node was killed: the session record and the log are in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import hiredis
import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.bus import Bus, channel_bytes
from coup.cluster.envelope import (
    Broadcast,
    decode_packet,
    encode_broadcast,
    encode_json,
)
from coup.cluster.options import ClusterOptions
from coup.cluster.origin_log import OriginLog, OwnOrigins
from coup.cluster.own_broadcasts import OwnBroadcasts
from coup.cluster.recovery import RedisRecoveryLog, RedisSessionStore, logged_out, retrieved
from coup.cluster.resp import RedisUnavailable
from coup.cluster.scripts import ONCE_PUBLISH
from coup.core.adapter import ONCE_WINDOW, BroadcastOptions, LocalRooms, SocketInfo, gather_acks
from coup.core.errors import AckTimeout, FetchTimeout
from coup.core.hold import OriginVector, Stamped, Vector
from coup.core.recovery import RecoveryCalls, SessionRecovery
from coup.core.replay_budget import current_origin
from coup.protocol.socketio import EncodedPacket, SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound
from coup.tasks import spawn_kept, stop_tasks

if TYPE_CHECKING:
    from coup.core.namespace import Namespace

log = logging.getLogger(__name__)

#: how long a multi-room broadcast id is remembered to drop its other copies
_DUPLICATE_WINDOW = 30.0
#: a hold kept for a session being restored here, until its socket has joined its rooms
_RESTORE_GRACE = 60.0


class ClusterTimeout(TimeoutError):
    """Not every node answered a cluster-wide query in time; `responses` has those that did."""

    def __init__(self, responses: list[Any]) -> None:
        super().__init__("not every node answered in time")
        self.responses = responses


#: what a broadcast waiting for the recovery log call is: (message id, packet, to whom)
_Unsent = tuple[str, EncodedPacket, BroadcastOptions]


@dataclass(slots=True)
class _Stub:
    """A socket that moved to node `to`: what reaches it here until that node has subscribed.

    Until `settled` it keeps the socket's rooms subscribed and keeps every packet for the
    socket (broadcasts with their message ids, and what handlers still running here send);
    after that only the latter, forwarded at once (the new node hears the rooms itself).
    """

    to: str
    rooms: frozenset[str]
    channels: list[bytes]
    expires: float
    packets: list[list[Any]] = field(default_factory=list)
    size: int = 0
    settled: bool = False
    overflowed: bool = False


class _StubSink:
    """The sink of a socket object left behind by a move (a handler may still use it)."""

    __slots__ = ("adapter", "sid")

    def __init__(self, adapter: RedisAdapter, sid: str) -> None:
        self.adapter = adapter
        self.sid = sid

    def send(self, out: Outbound) -> None:
        if out.text is not None and out.text.startswith("4"):
            self.adapter.keep_for_moved(self.sid, "", EncodedPacket(out.text[1:], out.binaries), None)


def _attachments(packet: EncodedPacket) -> list[str]:
    return [base64.b64encode(a).decode("ascii") for a in packet.attachments]


def _packet(text: str, attachments: Iterable[str]) -> EncodedPacket:
    return EncodedPacket(text, tuple(base64.b64decode(a) for a in attachments))


class Requester(Protocol):
    """Cluster-wide requests (`coup.cluster.node.Cluster.request`)."""

    async def __call__(self, channel: bytes, message: dict[str, Any], timeout: float) -> list[Any]: ...


class RedisAdapter(RecoveryCalls):
    """`coup.core.adapter.Adapter` across nodes: this node's `LocalRooms`, Redis channels for
    the others, and `SessionRecovery` over the Redis recovery log."""

    def __init__(self, nsp: Namespace, *, node_id: str, options: ClusterOptions, bus: Bus, client: redis.Redis,
                 request: Requester, inbox: Callable[[str], bytes],
                 registry: dict[str, RedisAdapter], own: OwnBroadcasts[RedisAdapter],
                 own_origins: OwnOrigins | None = None) -> None:
        """`client` may retry idempotent commands; `inbox(node)` is a node's
        channel; the adapter adds itself to `registry` (by namespace) while it serves; `own`
        gives the node's message ids and keeps its logged broadcasts until Redis hands them back;
        `own_origins` are the node's origins of the recovery log (`coup.cluster.origin_log`)."""
        self.nsp = nsp
        self.node_id = node_id
        self.options = options
        self.bus = bus
        self._request_on = request
        self._inbox = inbox
        self._registry = registry
        self._local = LocalRooms(nsp)
        #: log groups (docs/cluster.md#redis-cluster): 1, or the slots this namespace spreads over
        self._groups = options.groups
        self.all_channel = channel_bytes(options.nsp_key("a", nsp.name))
        self._room_prefix = options.nsp_key("r", nsp.name, "")
        self._room_prefixes = [options.nsp_key("r", nsp.name, "", group=g) for g in range(self._groups)]
        #: where a logged broadcast for this node's sockets only goes: our inbox, or on a Redis
        #: Cluster our channel in the namespace's slot (the log script publishes in its slot only)
        self._own_channel = channel_bytes(options.nsp_key("n", nsp.name, node_id)) if options.sharded else bus.inbox
        recovery = nsp.server.options.recovery
        #: the log and session records in Redis (None: recovery off): on one Redis the log the
        #: nodes sequence (`OriginLog`), on a Redis Cluster the script's (docs/recovery.md)
        self.recovery_log: RedisSessionStore | None = None
        self._script_log: RedisRecoveryLog[_Unsent] | None = None
        self._origin_log: OriginLog | None = None
        self.recovery: SessionRecovery | None = None
        if recovery is not None:
            if options.sharded:
                self.recovery_log = self._script_log = RedisRecoveryLog(
                    bus, client, options, nsp.name, node_id, recovery, self._deliver_unsent, self._own_channel)
            else:
                self.recovery_log = self._origin_log = OriginLog(
                    bus, client, options, nsp.name, node_id, recovery, self._own_channel,
                    OwnOrigins() if own_origins is None else own_origins)
            self.recovery = SessionRecovery(self.recovery_log, nsp, self._local.socket_rooms)
        self._refresher: asyncio.Task[None] | None = None
        self._seen: OrderedDict[str, float] = OrderedDict()
        #: sockets that moved to another node, by sid (see `_Stub`)
        self._stubs: dict[str, _Stub] = {}
        #: those of them whose new node has not subscribed yet: the only ones a broadcast must visit
        self._unsettled: dict[str, _Stub] = {}
        #: sockets moving here: the message ids delivered to each while it joins its rooms
        self._adopting: dict[str, set[str]] = {}
        self._own = own
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        registry[nsp.name] = self

    @property
    def local(self) -> LocalRooms:
        return self._local

    def socket_rooms(self, sid: str) -> frozenset[str]:
        return self._local.socket_rooms(sid)

    def local_room_sids(self, room: str) -> frozenset[str]:
        return self._local.local_room_sids(room)

    def channel(self, room: str) -> bytes:
        if self._groups > 1:
            return channel_bytes(self._room_prefixes[self.options.group_of(room)] + room)
        return channel_bytes(self._room_prefix + room)

    def _own_channels(self) -> list[bytes]:
        """Our channels for logged broadcasts to our own sockets (and markers): one per log
        group; with one group our inbox on one Redis, on a Redis Cluster one in the log's slot."""
        if self._script_log is not None and self._groups > 1:
            return [group.own_channel for group in self._script_log.groups]
        return [] if self._own_channel == self.bus.inbox else [self._own_channel]

    # ------------------------------------------------------------------ lifecycle

    async def init(self) -> None:
        if not self._started:
            self._started = True
            await self.bus.acquire([self.all_channel, *self._own_channels()])
            if self.recovery_log is not None:
                if self.bus.ready:  # later (re)connections do this in `link_up`
                    await self._log_up()
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_sessions())

    async def close(self) -> None:
        if self._tasks:  # broadcasts waiting for Redis's word go out (or not) before we stop
            await asyncio.wait(list(self._tasks), timeout=self.options.connect_timeout)
        await stop_tasks(self._refresher, *self._tasks)
        if self._origin_log is not None:
            await self._origin_log.close()
        self._registry.pop(self.nsp.name, None)

    async def link_up(self) -> None:
        """After a (re)connection to Redis: a restarted Redis lost our scripts and records."""
        if self.recovery_log is not None:
            if self._started:  # our channels the markers travel on are subscribed (`init`)
                await self._log_up()
            else:
                await self.recovery_log.load_scripts()
            for sid in list(self.nsp.sockets):
                self._save_session(sid)

    def link_down(self) -> None:
        """The link to Redis broke: see `OriginLog.link_down`."""
        if self._origin_log is not None:
            self._origin_log.link_down()

    async def _log_up(self) -> None:
        """The log after a link-up: its scripts loaded; the offsets of the script log's groups
        synced, or a new origin of the nodes' log (whose heads it syncs)."""
        assert self.recovery_log is not None
        await self.recovery_log.load_scripts()
        if self._origin_log is not None:
            try:
                await self._origin_log.link_up()
            except (RedisError, RedisUnavailable) as exc:
                log.warning("recovery log: no origin taken (%s); broadcasts go out without offsets", exc)
        elif self._script_log is not None:
            await self._script_log.sync_all()

    # ------------------------------------------------------------------ membership

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        rooms = tuple(rooms)
        if not self._started:
            await self.init()  # a namespace made after the server started
        created = self._local.add_local(sid, rooms)
        if created:
            await self.bus.acquire([self.channel(r) for r in created])
        await self.bus.settled([self.channel(r) for r in rooms])
        self._save_session(sid)

    async def remove(self, sid: str, room: str) -> None:
        self._release_rooms(self._local.remove_local(sid, (room,)))
        self._save_session(sid)

    async def remove_all(self, sid: str) -> None:
        self._release_rooms(self._local.remove_local(sid))

    def _release_rooms(self, rooms: list[str]) -> None:
        if rooms:
            self.bus.release([self.channel(r) for r in rooms])

    # ------------------------------------------------------------------ broadcasting

    def broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> None:
        moved_away = opts.local and self._stubs and not opts.rooms.isdisjoint(self._stubs)
        if self._origin_log is not None and not moved_away:
            self._broadcast_sequenced(packet, opts, self._origin_log)
            return
        if self._script_log is not None and not moved_away:
            self._broadcast_logged(packet, opts, self._script_log)
            return
        if opts.local:
            encoded = encode(packet)
            self._local.deliver(Outbound.message(encoded), opts)
            if self._stubs:
                self._keep_for_stubs("", encoded, None, opts)
            return
        encoded = encode(packet)
        stamp = packet.type is SocketPacketType.EVENT and packet.id is None
        _, mid = self._own.next_mid()
        data = encode_broadcast(Broadcast(self.node_id, mid, self.nsp.name, tuple(opts.rooms),
                                          tuple(opts.exclude), stamp, encoded))
        channels = self._channels(opts)
        if opts.once:
            spawn_kept(self._tasks, self._broadcast_once(mid, encoded, opts, data, channels))
            return
        self._deliver_unsent([(mid, encoded, opts)])
        for channel in channels:
            self.bus.publish_nowait(channel, data)

    async def _broadcast_once(self, mid: str, encoded: EncodedPacket, opts: BroadcastOptions, data: bytes,
                              channels: list[bytes]) -> None:
        """A broadcast with a `once` key while the recovery log is off: Redis decides whether it
        goes out; our sockets get it when it did, or when Redis is away. On one Redis the mark
        and the publishes are one script call (`ONCE_PUBLISH`). On a Redis Cluster a script may
        publish only on shard channels of its own key's slot (a PUBLISH from it never reaches a
        shard channel's subscribers), so the script only marks the key (no channels) and the
        broadcast then goes out as any other does."""
        key = self.options.key("once", self.nsp.name, opts.once)
        window = int(ONCE_WINDOW * 1000)
        try:
            if self.options.sharded:
                sent = await self.bus.script(ONCE_PUBLISH, 1, key, window, b"") == 1
                if sent:
                    for channel in channels:
                        self.bus.publish_nowait(channel, data)
            else:
                sent = await self.bus.script(ONCE_PUBLISH, 1, key, window, data, *channels) == 1
        except (RedisUnavailable, hiredis.ReplyError) as exc:
            log.warning("broadcast %s not published (%s); delivered to this node's sockets only", opts.once, exc)
            sent = True
        if sent:
            self._deliver_unsent([(mid, encoded, opts)])

    def _channels(self, opts: BroadcastOptions, group: int = 0) -> list[bytes]:
        """Where a broadcast is published: its rooms' channels, the namespace's, or (local, with
        the log: only we may hear it) our own (in log `group`)."""
        if opts.local:
            return [self._script_log.groups[group].own_channel
                    if self._groups > 1 and self._script_log is not None else self._own_channel]
        return [self.channel(room) for room in opts.rooms] if opts.rooms else [self.all_channel]

    def _parts(self, opts: BroadcastOptions) -> list[tuple[int, BroadcastOptions]]:
        """A broadcast as one broadcast per log group it touches: the part of group g goes to
        its rooms of g and excludes its rooms of lower groups, so a socket in rooms of several
        groups gets one copy, that of the lowest group it shares with it, live and on replay
        alike (each part is logged, offset and replayed on its own)."""
        if not opts.rooms:
            return [(0, opts)]
        group_of = self.options.group_of
        by_group: dict[int, list[str]] = {}
        for room in opts.rooms:
            by_group.setdefault(group_of(room), []).append(room)
        if len(by_group) == 1:
            return [(next(iter(by_group)), opts)]
        parts = []
        lower: set[str] = set()
        for group in sorted(by_group):
            parts.append((group, BroadcastOptions(frozenset(by_group[group]), opts.exclude | lower, opts.local,
                                                  opts.once)))
            lower.update(by_group[group])
        return parts

    def _broadcast_logged(self, packet: SocketPacket, opts: BroadcastOptions, log: RedisRecoveryLog[_Unsent]) -> None:
        """With recovery on: through the log script; delivered here too when Redis hands it back
        (a local broadcast travels on our own inbox, which only we hear)."""
        encoded = encode(packet)
        stamp = packet.type is SocketPacketType.EVENT and packet.id is None
        for group, part in self._parts(opts) if self._groups > 1 else ((0, opts),):
            number, mid = self._own.next_mid()
            channels = self._channels(part, group)
            envelope = encode_broadcast(Broadcast(self.node_id, mid, self.nsp.name, tuple(part.rooms),
                                                  tuple(part.exclude), stamp, encoded))
            if log.publish(channels, current_origin.get(), stamp, envelope, (mid, encoded, part), part.once, group):
                self._own.keep(number, self, mid, encoded, part)
            else:
                self._deliver_unsent([(mid, encoded, part)])

    def _broadcast_sequenced(self, packet: SocketPacket, opts: BroadcastOptions, log: OriginLog) -> None:
        """With recovery on, on one Redis: numbered by this node, to our sockets at once, then
        published and appended in the turn's transaction (`OriginLog.publish`). A resend of a
        `once` broadcast asks Redis first whether the first went out."""
        encoded = encode(packet)
        stamp = packet.type is SocketPacketType.EVENT and packet.id is None
        _, mid = self._own.next_mid()
        channels = [] if opts.local else self._channels(opts)  # a local one is only appended
        envelope = encode_broadcast(Broadcast(self.node_id, mid, self.nsp.name, tuple(opts.rooms),
                                              tuple(opts.exclude), stamp, encoded))
        if opts.once and not opts.first:
            spawn_kept(self._tasks, self._resend(mid, encoded, opts, stamp, channels, envelope, log))
            return
        self._send_sequenced(mid, encoded, opts, stamp, channels, envelope, log)

    def _send_sequenced(self, mid: str, encoded: EncodedPacket, opts: BroadcastOptions, stamp: bool,
                        channels: list[bytes], envelope: bytes, log: OriginLog) -> None:
        stamped = log.publish(channels, current_origin.get(), envelope, opts.once) if stamp else None
        if stamped is None:  # not kept: as with recovery off (a once key still marked)
            self._deliver_unsent([(mid, encoded, opts)])
            for channel in channels:
                self.bus.publish_nowait(channel, envelope)
            if opts.once:
                log.mark(opts.once)
            return
        entry = (log.origin or 0, log.number)
        self._local.deliver(Stamped(encoded, entry, None, stamped), opts)
        if self._unsettled or self._adopting:
            self._moving_sockets_heard(mid, encoded, [entry[0], entry[1], stamped], opts)

    async def _resend(self, mid: str, encoded: EncodedPacket, opts: BroadcastOptions, stamp: bool,
                      channels: list[bytes], envelope: bytes, log: OriginLog) -> None:
        went_out = await log.went_out(opts.once)
        if went_out is None:  # Redis is away: our sockets still get it
            self._deliver_unsent([(mid, encoded, opts)])
        elif not went_out:
            self._send_sequenced(mid, encoded, opts, stamp, channels, envelope, log)

    def on_sequenced(self, message: Broadcast, origin: int, number: int) -> None:
        """Another node's broadcast, numbered `number` by its origin `origin`."""
        log = self._origin_log
        if log is None:  # recovery off here: as any broadcast
            self.on_broadcast(message)
            return
        stamp = log.heard(origin, number)  # our number of the origin moves first, also for a copy dropped below
        opts = BroadcastOptions(frozenset(message.rooms), frozenset(message.exclude))
        if len(opts.rooms) > 1 and self._duplicate(message.mid):
            return
        self._local.deliver(Stamped(message.packet, (origin, number), None, stamp), opts)
        if self._unsettled or self._adopting:
            self._moving_sockets_heard(message.mid, message.packet, [origin, number, stamp], opts)

    def _deliver_unsent(self, unsent: list[_Unsent]) -> None:
        """Broadcasts Redis did not take: this node's sockets still get them (without offset)."""
        for mid, encoded, opts in unsent:
            self._local.deliver(Outbound.message(encoded), opts)
            if self._unsettled or self._adopting:
                self._moving_sockets_heard(mid, encoded, None, opts)

    def on_broadcast(self, message: Broadcast, offset: int | None = None, channel: bytes = b"") -> None:
        """A broadcast from another node, an emitter or (through the recovery log) ourselves
        arrived on `channel`, one of ours; `offset` when the recovery log kept it."""
        self.on_logged(message.mid, message.packet, BroadcastOptions(frozenset(message.rooms),
                                                                     frozenset(message.exclude)), offset, channel)

    def on_logged(self, mid: str, packet: EncodedPacket, opts: BroadcastOptions, offset: int | None,
                  channel: bytes = b"") -> None:
        """A broadcast as it arrived (or, one of ours through the recovery log, as we kept it)."""
        if offset is not None and self._groups > 1 and self._script_log is not None:
            # log groups: this node's offset of the channel's group moves first (also for a
            # copy dropped below), and the packet carries the whole vector
            group = self.options.group_of_channel(channel)
            log = self._script_log
            stamp = log.heard(group, offset)
            if len(opts.rooms) > 1 and self._duplicate(mid):
                return
            stamped = Stamped(packet, (group, offset), log.vector, stamp)
            self._local.deliver(stamped, opts)
            if self._unsettled or self._adopting:
                self._moving_sockets_heard(mid, packet, [group, offset, list(log.vector)], opts)
            return
        if len(opts.rooms) > 1 and self._duplicate(mid):
            return
        self._local.deliver(logged_out(packet, offset), opts)
        if self._unsettled or self._adopting:
            self._moving_sockets_heard(mid, packet, offset, opts)

    def _duplicate(self, mid: str) -> bool:
        seen = self._seen
        now = time.monotonic()
        while seen:
            oldest, at = next(iter(seen.items()))
            if now - at < _DUPLICATE_WINDOW and len(seen) < 100_000:
                break
            del seen[oldest]
        if mid in seen:
            return True
        seen[mid] = now
        return False

    # ------------------------------------------------------------------ sockets moving between nodes

    def _moving_sockets_heard(self, mid: str, packet: EncodedPacket, offset: _Kept,
                              opts: BroadcastOptions) -> None:
        """A broadcast while sockets move: keep it for those that left, note it for those arriving."""
        if self._unsettled:
            self._keep_for_stubs(mid, packet, offset, opts)
        for sid, heard in self._adopting.items():
            if opts.includes(self.socket_rooms(sid)):
                heard.add(mid)

    def _keep_for_stubs(self, mid: str, packet: EncodedPacket, offset: _Kept, opts: BroadcastOptions) -> None:
        """Broadcasts are kept for unsettled stubs only (a settled one's new node hears its rooms);
        a local one (`mid` empty: an emit from a handler still running here) for any stub it names,
        so a broadcast never walks the stubs that stay settled for the grace period."""
        for sid, stub in self._unsettled.items():
            if opts.includes(stub.rooms):
                self.keep_for_moved(sid, mid, packet, offset)
        if not mid:
            for room in opts.rooms:
                left = self._stubs.get(room)
                if left is not None and left.settled and opts.includes(left.rooms):
                    self.keep_for_moved(room, mid, packet, offset)

    async def hand_over(self, sid: str, rooms: Iterable[str], to: str) -> _StubSink:
        """Socket `sid` moves to node `to`: keep its rooms heard and its packets kept until `settle`."""
        rooms = frozenset(rooms)
        channels = [self.channel(r) for r in rooms]
        self._stubs[sid] = self._unsettled[sid] = _Stub(to, rooms, channels, time.monotonic() + _RESTORE_GRACE)
        await self.bus.acquire(channels)  # already ours (the socket is in them): counts, waits for nothing
        return _StubSink(self, sid)

    def keep_for_moved(self, sid: str, mid: str, packet: EncodedPacket, offset: _Kept) -> None:
        stub = self._stubs.get(sid)
        if stub is None or stub.overflowed:
            return
        item = [mid, packet.text, _attachments(packet), offset or 0]
        if stub.settled:  # the new node hears the rooms; this came from a handler still running here
            self.bus.publish_nowait(self._inbox(stub.to), encode_json(
                {"t": "fwd", "n": self.nsp.name, "sid": sid, "p": [item]}))
            return
        stub.size += len(packet.text)
        if stub.size > self.nsp.server.engine.options.max_buffered_bytes:
            log.warning("socket %s: more than %d bytes for it while it moved; its new node will close it",
                        sid, self.nsp.server.engine.options.max_buffered_bytes)
            stub.overflowed = True
            stub.packets = []
            return
        stub.packets.append(item)

    def settle(self, sid: str) -> list[list[Any]] | None:
        """The new node heard the rooms: hand it what was kept; None if the socket was not ours or overflowed."""
        stub = self._stubs.get(sid)
        if stub is None or stub.settled:
            return None
        stub.settled = True
        self._unsettled.pop(sid, None)
        self.bus.release(stub.channels)
        stub.channels = []
        packets, stub.packets = stub.packets, []
        # vector offsets: those the socket may hold from us; its new node stamps nothing below them
        if self._origin_log is not None:
            packets.append(["", "", [], [-1, 0, self._origin_log.stamp]])
        elif self._groups > 1 and self._script_log is not None:
            packets.append(["", "", [], [-1, 0, list(self._script_log.vector)]])
        return None if stub.overflowed else packets

    def expect_moved(self, sid: str) -> None:
        """Socket `sid` is about to join its rooms here: note what reaches it until `take_kept`."""
        self._adopting[sid] = set()

    def take_kept(self, sid: str, kept: list[list[Any]]) -> list[Outbound]:
        """What the old node kept for `sid`, minus what we delivered ourselves, as this node delivers it."""
        heard = self._adopting.pop(sid, set())
        return [_kept_out(_packet(text, attachments), offset)
                for mid, text, attachments, offset in kept if not (mid and mid in heard) and _packet_kept(offset)]

    async def floor_of(self, kept: list[list[Any]]) -> Vector | None:
        """Vector offsets: those the old node says the socket may hold (`settle`), once this
        node's are at least those where it can (so nothing it stamps for the socket is lower);
        None with scalar offsets."""
        floors = [offset[2] for *_, offset in kept if isinstance(offset, list) and offset[0] == -1]
        if not floors:
            return None
        if self._origin_log is not None and isinstance(floors[-1], str):
            vector = OriginVector.parse(floors[-1])
            if vector is not None:
                await self._origin_log.catch_up(vector)
            return vector
        if self._groups == 1 or self._script_log is None:
            return None
        floor = tuple(floors[-1])
        await self._script_log.catch_up(floor)
        return floor

    def on_forwarded(self, sid: str, kept: list[list[Any]]) -> None:
        """Packets from a handler that still ran on the node `sid` left."""
        socket = self.nsp.sockets.get(sid)
        if socket is None:
            return
        for out in self.take_kept(sid, kept):
            socket.sink.send(out)

    def _expire_stubs(self, now: float) -> None:
        for sid in [sid for sid, stub in self._stubs.items() if stub.expires < now]:
            stub = self._stubs.pop(sid)
            self._unsettled.pop(sid, None)
            if not stub.settled:
                log.warning("socket %s moved to %s, which never took what was kept for it", sid, stub.to)
                self.bus.release(stub.channels)

    # ------------------------------------------------------------------ cluster-wide requests

    async def _request(self, op: str, opts: BroadcastOptions, timeout: float, **extra: Any) -> list[Any]:
        channel = self.channel(next(iter(opts.rooms))) if len(opts.rooms) == 1 else self.all_channel
        message = {"t": "req", "op": op, "n": self.nsp.name, "r": sorted(opts.rooms), "x": sorted(opts.exclude),
                   **extra}
        return await self._request_on(channel, message, timeout)

    async def broadcast_with_ack(self, packet: SocketPacket, opts: BroadcastOptions,
                                 timeout: float) -> list[Any]:
        if opts.local:
            return await gather_acks(self._local.send_with_ack(packet, opts), timeout)
        encoded = encode(packet)
        try:
            responses = await self._request("ack", opts, timeout + 1.0, p=encoded.text, a=_attachments(encoded),
                                            w=timeout)
            complete = True
        except RedisUnavailable:
            return await gather_acks(self._local.send_with_ack(packet, opts), timeout)
        except ClusterTimeout as exc:
            responses, complete = exc.responses, False
        acks: list[Any] = []
        for response in responses:
            acks.extend(response.get("acks", ()))
            complete = complete and bool(response.get("complete"))
        if not complete:
            raise AckTimeout(acks)
        return acks

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]:
        if opts.local:
            return await self._local.fetch_sockets(opts)
        try:
            responses = await self._request("fetch", opts, self.options.request_timeout)
        except RedisUnavailable:
            log.warning("fetch_sockets while redis is unreachable: this node's sockets only")
            return await self._local.fetch_sockets(opts)
        except ClusterTimeout as exc:
            raise FetchTimeout(self._sockets_of(exc.responses)) from None
        return self._sockets_of(responses)

    def _sockets_of(self, responses: list[Any]) -> list[SocketInfo]:
        return [SocketInfo(s[0], self.nsp.name, frozenset(s[1]), s[2], s[3])
                for response in responses for s in response.get("sockets", ())]

    async def _command(self, op: str, opts: BroadcastOptions, **extra: Any) -> bool:
        """A join/leave/disconnect on every node; False when it could only be done here."""
        try:
            await self._request(op, opts, self.options.request_timeout, **extra)
            return True
        except RedisUnavailable:
            log.warning("%s while redis is unreachable: applied to this node's sockets only", op)
        except ClusterTimeout as exc:
            log.warning("%s: only %d nodes confirmed in time", op, len(exc.responses))
            return True
        return False

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        if opts.local or not await self._command("join", opts, rooms=rooms):
            await self._local.add_sockets(opts, rooms)

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        if opts.local or not await self._command("leave", opts, rooms=rooms):
            await self._local.del_sockets(opts, rooms)

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        if opts.local or not await self._command("disconnect", opts, close=close):
            await self._local.disconnect_sockets(opts, close)

    async def serve(self, message: dict[str, Any]) -> dict[str, Any]:
        """Answer a cluster-wide request for this node's sockets."""
        op = message.get("op")
        opts = BroadcastOptions(frozenset(message.get("r", ())), frozenset(message.get("x", ())), local=True)
        if op == "fetch":
            return {"sockets": [[s.id, sorted(s.rooms), s.data, s.node] for s in await self._local.fetch_sockets(opts)]}
        if op == "join":
            await self._local.add_sockets(opts, message.get("rooms", ()))
        elif op == "leave":
            await self._local.del_sockets(opts, message.get("rooms", ()))
        elif op == "disconnect":
            await self._local.disconnect_sockets(opts, bool(message.get("close")))
        elif op == "ack":
            packet = decode_packet(_packet(message["p"], message.get("a", ())))
            futures = self._local.send_with_ack(packet, opts)
            try:
                return {"acks": await gather_acks(futures, float(message.get("w", 5.0))), "complete": True}
            except AckTimeout as exc:
                return {"acks": exc.responses, "complete": False}
        else:
            raise ValueError(f"unknown cluster request {op!r}")
        return {}

    # ------------------------------------------------------------------ connection state recovery

    def _save_session(self, sid: str) -> None:
        """Keep the session record of connected socket `sid` current in Redis (rooms, data)."""
        if self.recovery_log is None or self.recovery is None:
            return
        record = self.recovery.record_of(sid)
        if record is not None:
            # a socket moving here takes over the record its old node wrote
            self.recovery_log.save_nowait(record, "take" if sid in self._adopting else "live") \
                .add_done_callback(retrieved)  # a lost write is re-done by the next refresh or re-sync

    async def _refresh_sessions(self) -> None:
        """Records of connected sockets live one window past their last refresh: a quarter window apart.

        With log groups every group's offset is synced as often: a group this node hears
        nothing of (no member in its rooms here) would otherwise keep the offset of the link's
        start in every stamp, and once the log trimmed past it no client of ours could restore
        (the check reads every group's log)."""
        assert self.recovery_log is not None
        interval = max(0.5, min(30.0, self.recovery_log.window_ms / 4000))
        while True:
            await asyncio.sleep(interval)
            if self.bus.ready:
                if self._origin_log is not None and await self._origin_log.epoch_lost():
                    try:
                        await self.link_up()  # a new origin, and our records written again
                    except (RedisError, RedisUnavailable) as exc:
                        log.warning("recovery log: no new epoch taken (%s); the next refresh tries again", exc)
                await self.recovery_log.refresh(s.pid for s in list(self.nsp.sockets.values()) if s.pid is not None)
                if self._origin_log is not None:
                    await self._origin_log.sync_all()
                elif self._script_log is not None:
                    await self._script_log.sync_all()

    def expire_holds(self) -> None:
        if self._stubs:
            self._expire_stubs(time.monotonic())



#: what is kept with a broadcast for a moving socket: its offset, with log groups [group,
#: offset, vector], with the nodes' log [origin, number, vector text] ([-1, 0, vector]: no
#: packet, the old node's offsets when it settled)
_Kept = int | list[Any] | None


def _packet_kept(offset: _Kept) -> bool:
    return not (isinstance(offset, list) and offset[0] == -1)


def _kept_out(packet: EncodedPacket, offset: _Kept) -> Outbound:
    """A kept broadcast as the socket's new node delivers it, with the stamp the old node gave it."""
    if isinstance(offset, list) and isinstance(offset[2], str):  # [origin, number, vector text]
        vector = OriginVector.parse(offset[2])
        if vector is None:
            return Outbound.message(packet)
        return Stamped(packet, (int(offset[0]), int(offset[1])), vector)
    if isinstance(offset, list):
        return Stamped(packet, (int(offset[0]), int(offset[1])), tuple(int(v) for v in offset[2]))
    return logged_out(packet, int(offset) if offset else None)
