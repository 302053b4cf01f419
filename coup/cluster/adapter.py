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

Connection-state recovery works across nodes: offsets are stamped by the node that
delivers; a disconnected session is stored in Redis and its rooms stay subscribed on its
node for the recovery window, so when the client reconnects elsewhere, the new node asks
the old one for the packets it missed (`restore_session`).
"""

from __future__ import annotations

import base64
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from coup.cluster.bus import channel_bytes
from coup.cluster.envelope import Broadcast, decode_packet, encode_broadcast, encode_json, stamp_offset
from coup.cluster.resp import RedisUnavailable
from coup.core.adapter import (
    BroadcastOptions,
    MemoryAdapter,
    RestoredSession,
    SessionRecord,
    SocketInfo,
    gather_acks,
    stored_after,
)
from coup.core.errors import AckTimeout
from coup.core.replay_budget import current_origin
from coup.protocol import jsonutil
from coup.protocol.socketio import EncodedPacket, SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.cluster.node import Cluster
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


@dataclass(slots=True)
class _Entry:
    """A delivered event kept for connection-state recovery."""

    offset: int
    at: float
    opts: BroadcastOptions
    mid: str
    packet: EncodedPacket
    size: int
    origin: str | None

    def outbound(self, offset: int | None = None) -> Outbound:
        return Outbound("4" + stamp_offset(self.packet.text, offset or self.offset), self.packet.attachments)


@dataclass(slots=True)
class _Hold:
    """Rooms kept subscribed for a disconnected session that may come back (here or elsewhere)."""

    record: SessionRecord
    channels: list[bytes]
    expires: float
    released: bool = field(default=False)


@dataclass(frozen=True, slots=True)
class _Handover(RestoredSession):
    """A session restored from another node: `offset` is our mark when we asked it."""

    #: what the other node replayed (stamped with our mark), before our own packets after it
    earlier: tuple[Outbound, ...] = ()
    #: their message ids: we may have heard some of them ourselves after the mark
    replayed: frozenset[str] = frozenset()


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
            self.adapter.keep_for_moved(self.sid, "", EncodedPacket(out.text[1:], out.binaries), False)


def _attachments(packet: EncodedPacket) -> list[str]:
    return [base64.b64encode(a).decode("ascii") for a in packet.attachments]


def _packet(text: str, attachments: Iterable[str]) -> EncodedPacket:
    return EncodedPacket(text, tuple(base64.b64decode(a) for a in attachments))


class RedisAdapter(MemoryAdapter):
    def __init__(self, nsp: Namespace, cluster: Cluster) -> None:
        super().__init__(nsp)
        self.cluster = cluster
        self.bus = cluster.bus
        opts = cluster.options
        self.all_channel = channel_bytes(opts.key("a", nsp.name))
        self._room_prefix = opts.key("r", nsp.name) + ":"
        self._recovery_options = nsp.server.options.recovery
        self._log: deque[_Entry] = deque()
        self._offset = 0
        self._holds: dict[str, _Hold] = {}
        #: sid -> pid of a session restored here whose hold ends once the socket has joined
        self._restoring: dict[str, str] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()
        #: sockets that moved to another node, by sid (see `_Stub`)
        self._stubs: dict[str, _Stub] = {}
        #: those of them whose new node has not subscribed yet: the only ones a broadcast must visit
        self._unsettled: dict[str, _Stub] = {}
        #: sockets moving here: the message ids delivered to each while it joins its rooms
        self._adopting: dict[str, set[str]] = {}
        self._mids = itertools.count(1)
        self._started = False
        cluster.adapters[nsp.name] = self

    def channel(self, room: str) -> bytes:
        return channel_bytes(self._room_prefix + room)

    # ------------------------------------------------------------------ lifecycle

    async def init(self) -> None:
        if not self._started:
            self._started = True
            await self.bus.acquire([self.all_channel])

    async def close(self) -> None:
        self.cluster.adapters.pop(self.nsp.name, None)

    # ------------------------------------------------------------------ membership

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        rooms = tuple(rooms)
        if not self._started:
            await self.init()  # a namespace made after the server started
        created = self.add_local(sid, rooms)
        if created:
            await self.bus.acquire([self.channel(r) for r in created])
        await self.bus.settled([self.channel(r) for r in rooms])
        pid = self._restoring.pop(sid, None)
        if pid is not None:
            self._release_hold(pid)

    async def remove(self, sid: str, room: str) -> None:
        self._release_rooms(self.remove_local(sid, (room,)))

    async def remove_all(self, sid: str) -> None:
        self._release_rooms(self.remove_local(sid))

    def _release_rooms(self, rooms: list[str]) -> None:
        if rooms:
            self.bus.release([self.channel(r) for r in rooms])

    # ------------------------------------------------------------------ broadcasting

    def _record(self, packet: EncodedPacket, opts: BroadcastOptions, mid: str, stamp: bool) -> Outbound:
        """The packet as this node delivers it: with this node's recovery offset, kept for replay."""
        budget = self._budget
        if budget is None or not stamp:
            return Outbound.message(packet)
        origin = current_origin.get()
        size = len(packet.text) + sum(len(a) for a in packet.attachments) + 12  # + the offset
        if not budget.admit(origin, size):
            return Outbound.message(packet)
        self._offset += 1
        now = time.monotonic()
        entry = _Entry(self._offset, now, opts, mid, packet, size, origin)
        budget.add(self._log, entry, now)
        return entry.outbound()

    def encode_broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> Outbound:
        stamp = packet.type is SocketPacketType.EVENT and packet.id is None
        return self._record(encode(packet), opts, "", stamp)

    def broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> None:
        if opts.local:
            super().broadcast(packet, opts)
            if self._stubs:
                self._keep_for_stubs("", encode(packet), packet.type is SocketPacketType.EVENT and packet.id is None,
                                     opts)
            return
        encoded = encode(packet)
        stamp = packet.type is SocketPacketType.EVENT and packet.id is None
        mid = f"{self.cluster.node_id}:{next(self._mids)}"
        self.deliver(self._record(encoded, opts, mid, stamp), opts)
        if self._unsettled or self._adopting:
            self._moving_sockets_heard(mid, encoded, stamp, opts)
        data = encode_broadcast(Broadcast(self.cluster.node_id, mid, self.nsp.name, tuple(opts.rooms),
                                          tuple(opts.exclude), stamp, encoded))
        if opts.rooms:
            for room in opts.rooms:
                self.bus.publish_nowait(self.channel(room), data)
        else:
            self.bus.publish_nowait(self.all_channel, data)

    def on_broadcast(self, message: Broadcast) -> None:
        """A broadcast from another node (or an emitter) arrived on one of our channels."""
        if len(message.rooms) > 1 and self._duplicate(message.mid):
            return
        opts = BroadcastOptions(frozenset(message.rooms), frozenset(message.exclude))
        self.deliver(self._record(message.packet, opts, message.mid, message.stamp), opts)
        if self._unsettled or self._adopting:
            self._moving_sockets_heard(message.mid, message.packet, message.stamp, opts)

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

    def _moving_sockets_heard(self, mid: str, packet: EncodedPacket, stamp: bool, opts: BroadcastOptions) -> None:
        """A broadcast while sockets move: keep it for those that left, note it for those arriving."""
        if self._unsettled:
            self._keep_for_stubs(mid, packet, stamp, opts)
        for sid, heard in self._adopting.items():
            if opts.includes(self.socket_rooms(sid)):
                heard.add(mid)

    def _keep_for_stubs(self, mid: str, packet: EncodedPacket, stamp: bool, opts: BroadcastOptions) -> None:
        """Broadcasts are kept for unsettled stubs only (a settled one's new node hears its rooms);
        a local one (`mid` empty: an emit from a handler still running here) for any stub it names,
        so a broadcast never walks the stubs that stay settled for the grace period."""
        for sid, stub in self._unsettled.items():
            if opts.includes(stub.rooms):
                self.keep_for_moved(sid, mid, packet, stamp)
        if not mid:
            for room in opts.rooms:
                left = self._stubs.get(room)
                if left is not None and left.settled and opts.includes(left.rooms):
                    self.keep_for_moved(room, mid, packet, stamp)

    async def hand_over(self, sid: str, rooms: Iterable[str], to: str) -> _StubSink:
        """Socket `sid` moves to node `to`: keep its rooms heard and its packets kept until `settle`."""
        rooms = frozenset(rooms)
        channels = [self.channel(r) for r in rooms]
        self._stubs[sid] = self._unsettled[sid] = _Stub(to, rooms, channels, time.monotonic() + _RESTORE_GRACE)
        await self.bus.acquire(channels)  # already ours (the socket is in them): counts, waits for nothing
        return _StubSink(self, sid)

    def keep_for_moved(self, sid: str, mid: str, packet: EncodedPacket, stamp: bool) -> None:
        stub = self._stubs.get(sid)
        if stub is None or stub.overflowed:
            return
        item = [mid, packet.text, _attachments(packet), 1 if stamp else 0]
        if stub.settled:  # the new node hears the rooms; this came from a handler still running here
            self.bus.publish_nowait(self.cluster.inbox(stub.to), encode_json(
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
        return None if stub.overflowed else packets

    def expect_moved(self, sid: str) -> None:
        """Socket `sid` is about to join its rooms here: note what reaches it until `take_kept`."""
        self._adopting[sid] = set()

    def take_kept(self, sid: str, kept: list[list[Any]]) -> list[Outbound]:
        """What the old node kept for `sid`, minus what we delivered ourselves, as this node delivers it."""
        heard = self._adopting.pop(sid, set())
        opts = BroadcastOptions(frozenset((sid,)))
        return [self._record(_packet(text, attachments), opts, mid, bool(stamp))
                for mid, text, attachments, stamp in kept if not (mid and mid in heard)]

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
        return await self.cluster.request(channel, message, timeout)

    async def broadcast_with_ack(self, packet: SocketPacket, opts: BroadcastOptions,
                                 timeout: float) -> list[Any]:
        if opts.local:
            return await super().broadcast_with_ack(packet, opts, timeout)
        encoded = encode(packet)
        try:
            responses = await self._request("ack", opts, timeout + 1.0, p=encoded.text, a=_attachments(encoded),
                                            w=timeout)
            complete = True
        except RedisUnavailable:
            return await super().broadcast_with_ack(packet, opts, timeout)
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
            return await super().fetch_sockets(opts)
        try:
            responses = await self._request("fetch", opts, self.cluster.options.request_timeout)
        except RedisUnavailable:
            log.warning("fetch_sockets while redis is unreachable: this node's sockets only")
            return await super().fetch_sockets(opts)
        return [SocketInfo(s[0], self.nsp.name, frozenset(s[1]), s[2], s[3])
                for response in responses for s in response.get("sockets", ())]

    async def _command(self, op: str, opts: BroadcastOptions, **extra: Any) -> bool:
        """A join/leave/disconnect on every node; False when it could only be done here."""
        try:
            await self._request(op, opts, self.cluster.options.request_timeout, **extra)
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
            await super().add_sockets(opts, rooms)

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        if opts.local or not await self._command("leave", opts, rooms=rooms):
            await super().del_sockets(opts, rooms)

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        if opts.local or not await self._command("disconnect", opts, close=close):
            await super().disconnect_sockets(opts, close)

    async def serve(self, message: dict[str, Any]) -> dict[str, Any]:
        """Answer a cluster-wide request for this node's sockets."""
        op = message.get("op")
        if op == "replay":
            return self._serve_replay(str(message.get("pid")), str(message.get("offset")))
        opts = BroadcastOptions(frozenset(message.get("r", ())), frozenset(message.get("x", ())), local=True)
        if op == "fetch":
            return {"sockets": [[s.id, sorted(s.rooms), s.data, s.node] for s in await super().fetch_sockets(opts)]}
        if op == "join":
            await super().add_sockets(opts, message.get("rooms", ()))
        elif op == "leave":
            await super().del_sockets(opts, message.get("rooms", ()))
        elif op == "disconnect":
            await super().disconnect_sockets(opts, bool(message.get("close")))
        elif op == "ack":
            packet = decode_packet(_packet(message["p"], message.get("a", ())))
            futures = self.send_with_ack(packet, opts)
            try:
                return {"acks": await gather_acks(futures, float(message.get("w", 5.0))), "complete": True}
            except AckTimeout as exc:
                return {"acks": exc.responses, "complete": False}
        else:
            raise ValueError(f"unknown cluster request {op!r}")
        return {}

    # ------------------------------------------------------------------ connection state recovery

    def _session_key(self, pid: str) -> str:
        return self.cluster.options.key("session", self.nsp.name, pid)

    async def persist_session(self, record: SessionRecord) -> None:
        recovery = self._recovery_options
        if recovery is None:
            return
        self.expire_holds()
        channels = [self.channel(r) for r in record.rooms]
        self._holds[record.pid] = _Hold(record, channels,
                                        time.monotonic() + recovery.max_disconnection_duration)
        await self.bus.acquire(channels)  # counts synchronously, before remove_all releases the rooms
        stored = {"sid": record.sid, "rooms": sorted(record.rooms), "data": record.data,
                  "node": self.cluster.node_id}
        try:
            await self.cluster.redis.set(self._session_key(record.pid), jsonutil.dumps(stored),
                                         px=int(recovery.max_disconnection_duration * 1000))
        except RedisError as exc:
            log.info("session %s kept on this node only (redis: %s)", record.sid, exc)

    def _release_hold(self, pid: str) -> None:
        hold = self._holds.pop(pid, None)
        if hold is not None and not hold.released:
            hold.released = True
            self.bus.release(hold.channels)

    def expire_holds(self) -> None:
        now = time.monotonic()
        if self._stubs:
            self._expire_stubs(now)
        for pid in [pid for pid, hold in self._holds.items() if hold.expires < now]:
            self._release_hold(pid)

    def _entries_after(self, offset: str, rooms: frozenset[str]) -> list[_Entry] | None:
        """What a client at `offset` missed in `rooms`; None when the buffer no longer has it all."""
        entries = stored_after(self._log, self._offset, offset)
        if entries is None:
            return None  # never a partial replay
        return [e for e in entries if e.opts.includes(rooms)]

    def _serve_replay(self, pid: str, offset: str) -> dict[str, Any]:
        """Another node restores a session that disconnected from us: hand it what it missed."""
        hold = self._holds.get(pid)
        if hold is None:
            return {"gone": True}
        entries = self._entries_after(offset, hold.record.rooms)
        self._release_hold(pid)  # the other node subscribed to the rooms before asking
        if entries is None:
            return {"gone": True}
        return {"packets": [[e.mid, e.packet.text, _attachments(e.packet)] for e in entries]}

    async def restore_session(self, pid: str, offset: str) -> RestoredSession | None:
        recovery = self._recovery_options
        if recovery is None:
            return None
        self.expire_holds()
        hold = self._holds.get(pid)
        if hold is not None:  # back on the node it left
            self.cluster.spawn(self._forget_stored(pid))
            record = hold.record
            if stored_after(self._log, self._offset, offset) is None:
                self._release_hold(pid)
                return None
            hold.expires = time.monotonic() + _RESTORE_GRACE
            self._restoring[record.sid] = pid
            return RestoredSession(record.sid, pid, record.rooms, record.data, offset)
        return await self._restore_elsewhere(pid, offset)

    def replay(self, restored: RestoredSession) -> tuple[Outbound, ...] | None:
        entries = self._entries_after(restored.offset, restored.rooms)
        if entries is None:
            return None
        if isinstance(restored, _Handover):  # from another node: its replay, then what we heard since
            return (*restored.earlier, *(e.outbound() for e in entries if e.mid not in restored.replayed))
        return tuple(e.outbound() for e in entries)

    async def _forget_stored(self, pid: str) -> None:
        try:
            await self.cluster.redis.delete(self._session_key(pid))
        except RedisError:
            pass

    async def _restore_elsewhere(self, pid: str, offset: str) -> RestoredSession | None:
        try:
            raw = await self.cluster.redis_once.getdel(self._session_key(pid))
        except RedisError:
            return None
        if raw is None:
            return None
        stored = jsonutil.loads(raw.decode() if isinstance(raw, bytes) else raw)
        holder = stored.get("node")
        if holder == self.cluster.node_id:
            return None  # we held it but the hold is gone (expired): nothing to replay
        record = SessionRecord(stored["sid"], pid, frozenset(stored["rooms"]), stored["data"])
        channels = [self.channel(r) for r in record.rooms]
        self._holds[pid] = _Hold(record, channels, time.monotonic() + _RESTORE_GRACE)
        await self.bus.acquire(channels)  # hear the rooms before asking what was missed
        mark = self._offset
        try:
            responses = await self.cluster.request(
                self.cluster.inbox(holder),
                {"t": "req", "op": "replay", "n": self.nsp.name, "pid": pid, "offset": offset},
                self.cluster.options.request_timeout)
        except (RedisUnavailable, ClusterTimeout):
            responses = []
        if not responses or "packets" not in responses[0]:
            self._release_hold(pid)
            return None
        earlier: list[Outbound] = []
        replayed: set[str] = set()
        for mid, text, attachments in responses[0]["packets"]:
            if mid:  # local emits of the old node have no id (and cannot reach us twice)
                replayed.add(mid)
            # the old node's offsets mean nothing here: position the client at our mark
            earlier.append(Outbound("4" + stamp_offset(text, mark), tuple(base64.b64decode(a) for a in attachments)))
        self._restoring[record.sid] = pid
        # `replay` adds what we heard after the mark, once the socket has joined its rooms
        return _Handover(record.sid, pid, record.rooms, record.data, str(mark), tuple(earlier), frozenset(replayed))
