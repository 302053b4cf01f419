"""Room membership and delivery for one namespace, behind an interface a cluster can replace.

`Adapter` is the seam between the server core and "where do the other sockets live":
`MemoryAdapter` (the default) knows only this process; a Redis-backed subclass
(`coup.cluster`) adds other nodes without anything above this module changing.

Delivery guarantee: `broadcast` encodes the packet once and hands the same bytes to every
local receiver, in call order; per socket, packets arrive in the order they were sent.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coup.core.errors import AckTimeout
from coup.core.replay_budget import ReplayBudget, current_origin
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.core.namespace import Namespace


@dataclass(frozen=True, slots=True)
class BroadcastOptions:
    """Who receives: sockets in any of `rooms` (all sockets when empty), minus those in `exclude`."""

    rooms: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    #: only sockets of this process, even in a cluster
    local: bool = False

    def includes(self, socket_rooms: Iterable[str]) -> bool:
        """Would a socket in `socket_rooms` receive this broadcast?"""
        rooms = set(socket_rooms)
        if self.rooms and not (rooms & self.rooms):
            return False
        return not (rooms & self.exclude)


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """A socket as a cluster-wide query sees it (it may live on another node)."""

    id: str
    namespace: str
    rooms: frozenset[str]
    data: dict[str, Any]
    node: str = ""


@dataclass(slots=True)
class SessionRecord:
    """What a recoverable socket leaves behind when its connection drops."""

    sid: str
    pid: str
    rooms: frozenset[str]
    data: dict[str, Any]
    disconnected_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RestoredSession:
    """A session claimed for a reconnecting client; `Adapter.replay` gives what it missed."""

    sid: str
    pid: str
    rooms: frozenset[str]
    data: dict[str, Any]
    #: the last offset the client received (in this adapter's numbering)
    offset: str


@dataclass(frozen=True, slots=True)
class _StoredPacket:
    offset: int
    at: float
    opts: BroadcastOptions
    out: Outbound
    size: int
    origin: str | None


class Adapter:
    """The interface. Membership calls are async because a cluster must subscribe before
    it can promise delivery; local-only queries are sync."""

    def __init__(self, nsp: Namespace) -> None:
        self.nsp = nsp

    async def init(self) -> None:
        """Called once when the namespace is created (a cluster subscribes here)."""

    async def close(self) -> None:
        """Called on server shutdown."""

    # membership of local sockets
    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        raise NotImplementedError

    async def remove(self, sid: str, room: str) -> None:
        raise NotImplementedError

    async def remove_all(self, sid: str) -> None:
        raise NotImplementedError

    def socket_rooms(self, sid: str) -> frozenset[str]:
        raise NotImplementedError

    def local_room_sids(self, room: str) -> frozenset[str]:
        raise NotImplementedError

    # delivery
    def broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> None:
        raise NotImplementedError

    async def broadcast_with_ack(self, packet: SocketPacket, opts: BroadcastOptions,
                                 timeout: float) -> list[Any]:
        raise NotImplementedError

    # cluster-wide queries and commands
    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]:
        raise NotImplementedError

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        raise NotImplementedError

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        raise NotImplementedError

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        raise NotImplementedError

    # connection state recovery
    async def persist_session(self, record: SessionRecord) -> None:
        raise NotImplementedError

    async def restore_session(self, pid: str, offset: str) -> RestoredSession | None:
        """Claim the session `pid` if everything after `offset` can still be replayed."""
        raise NotImplementedError

    async def replay(self, restored: RestoredSession) -> tuple[Outbound, ...] | None:
        """What the restored client missed: every stored packet after its offset in its rooms,
        up to now. Called once the socket has joined its rooms (so what comes later reaches
        it), just before the CONNECT reply; None when some of it is gone by then."""
        raise NotImplementedError

    async def persist_sockets(self, sids: Iterable[str] | None = None) -> int:
        """Make the sessions of local sockets `sids` (all when None) restorable on any node for
        the recovery window from now, with everything broadcast before this call; return how
        many were written. A node that is about to close its clients (a drain) awaits this."""
        raise NotImplementedError


class MemoryAdapter(Adapter):
    """Everything in this process: the single-node default, and the local half of a cluster."""

    def __init__(self, nsp: Namespace) -> None:
        super().__init__(nsp)
        self.rooms: dict[str, set[str]] = {}
        self.sids: dict[str, set[str]] = {}
        self._recovery = recovery = nsp.server.options.recovery
        self._budget = ReplayBudget(recovery) if recovery is not None else None
        self._packets: deque[_StoredPacket] = deque()
        self._next_offset = 1
        self._sessions: dict[str, SessionRecord] = {}
        self._metrics = nsp.server.metrics

    # ------------------------------------------------------------------ membership

    def add_local(self, sid: str, rooms: Iterable[str]) -> list[str]:
        """Join `rooms`; return the rooms that had no local member before (a cluster subscribes to those)."""
        created: list[str] = []
        mine = self.sids.get(sid)
        if mine is None:
            mine = self.sids[sid] = set()
        for room in rooms:
            if room in mine:
                continue
            mine.add(room)
            members = self.rooms.get(room)
            if members is None:
                self.rooms[room] = {sid}
                created.append(room)
            else:
                members.add(sid)
        return created

    def remove_local(self, sid: str, rooms: Iterable[str] | None = None) -> list[str]:
        """Leave `rooms` (all when None); return the rooms left without local members."""
        emptied: list[str] = []
        mine = self.sids.get(sid)
        if mine is None:
            return emptied
        for room in list(mine) if rooms is None else list(rooms):
            if room not in mine:
                continue
            mine.discard(room)
            members = self.rooms.get(room)
            if members is not None:
                members.discard(sid)
                if not members:
                    del self.rooms[room]
                    emptied.append(room)
        if not mine:
            del self.sids[sid]
        return emptied

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        self.add_local(sid, rooms)

    async def remove(self, sid: str, room: str) -> None:
        self.remove_local(sid, (room,))

    async def remove_all(self, sid: str) -> None:
        self.remove_local(sid)

    def socket_rooms(self, sid: str) -> frozenset[str]:
        return frozenset(self.sids.get(sid, ()))

    def local_room_sids(self, room: str) -> frozenset[str]:
        return frozenset(self.rooms.get(room, ()))

    def local_targets(self, opts: BroadcastOptions) -> Collection[str]:
        """The local socket ids a broadcast reaches (a snapshot: delivery may change rooms)."""
        rooms = self.rooms
        if opts.rooms:
            if len(opts.rooms) == 1:
                (room,) = opts.rooms
                targets: Collection[str] = tuple(rooms.get(room, ()))
            else:
                union: set[str] = set()
                for room in opts.rooms:
                    members = rooms.get(room)
                    if members:
                        union |= members
                targets = union
        else:
            targets = tuple(self.sids)
        if opts.exclude:
            excluded: set[str] = set()
            for room in opts.exclude:
                members = rooms.get(room)
                if members:
                    excluded |= members
            if excluded:
                return [sid for sid in targets if sid not in excluded]
        return targets

    # ------------------------------------------------------------------ delivery

    def encode_broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> Outbound:
        """Encode once; with recovery on, stamp the offset and keep the packet for replay."""
        budget = self._budget
        if budget is not None and packet.type is SocketPacketType.EVENT and packet.id is None:
            origin = current_origin.get()
            offset = self._next_offset
            stamped = Outbound.message(encode(replace(packet, data=[*packet.data, str(offset)])))
            if budget.admit(origin, stamped.size):
                self._next_offset += 1
                now = time.monotonic()
                budget.add(self._packets, _StoredPacket(offset, now, opts, stamped, stamped.size, origin), now)
                return stamped
        return Outbound.message(encode(packet))

    def broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> None:
        self.deliver(self.encode_broadcast(packet, opts), opts)

    def deliver(self, out: Outbound, opts: BroadcastOptions) -> None:
        """Hand already-encoded packets to every local receiver (the fan-out hot loop)."""
        sockets = self.nsp.sockets
        targets = self.local_targets(opts)
        metrics = self._metrics
        if metrics is not None:  # once per broadcast, not per receiver
            metrics.broadcast_receivers.observe(len(targets))
        for sid in targets:
            socket = sockets.get(sid)
            if socket is not None:
                socket.sink.send(out)

    async def broadcast_with_ack(self, packet: SocketPacket, opts: BroadcastOptions,
                                 timeout: float) -> list[Any]:
        futures = self.send_with_ack(packet, opts)
        return await gather_acks(futures, timeout)

    def send_with_ack(self, packet: SocketPacket, opts: BroadcastOptions) -> list[asyncio.Future[Any]]:
        """Send to local receivers with one shared ack id; return one future per receiver."""
        ack_id = self.nsp.next_ack_id()
        out = Outbound.message(encode(replace(packet, id=ack_id)))
        futures = []
        sockets = self.nsp.sockets
        for sid in self.local_targets(opts):
            socket = sockets.get(sid)
            if socket is not None and socket.connected:
                futures.append(socket.expect_ack(ack_id))
                socket.sink.send(out)
        return futures

    # ------------------------------------------------------------------ cluster-wide (local only here)

    def local_sockets(self, opts: BroadcastOptions) -> list[Any]:
        sockets = self.nsp.sockets
        return [sockets[sid] for sid in self.local_targets(opts) if sid in sockets]

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]:
        return [SocketInfo(s.id, self.nsp.name, self.socket_rooms(s.id), s.data, self.nsp.server.node_id)
                for s in self.local_sockets(opts)]

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        for socket in self.local_sockets(opts):
            await socket.join(*rooms)

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        for socket in self.local_sockets(opts):
            for room in rooms:
                await socket.leave(room)

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        for socket in self.local_sockets(opts):
            socket.disconnect(close=close)

    # ------------------------------------------------------------------ recovery

    async def persist_session(self, record: SessionRecord) -> None:
        if self._recovery is None:
            return
        self._sessions[record.pid] = record
        self._expire_sessions()

    def _expire_sessions(self) -> None:
        assert self._recovery is not None
        horizon = time.monotonic() - self._recovery.max_disconnection_duration
        for pid in [pid for pid, s in self._sessions.items() if s.disconnected_at < horizon]:
            del self._sessions[pid]

    async def restore_session(self, pid: str, offset: str) -> RestoredSession | None:
        if self._recovery is None:
            return None
        self._expire_sessions()
        record = self._sessions.pop(pid, None)
        if record is None or stored_after(self._packets, self._next_offset - 1, offset) is None:
            return None
        return RestoredSession(record.sid, record.pid, record.rooms, record.data, offset)

    async def persist_sockets(self, sids: Iterable[str] | None = None) -> int:
        count = 0
        for sid in list(self.nsp.sockets) if sids is None else sids:
            socket = self.nsp.sockets.get(sid)
            if socket is not None and socket.pid is not None and self._recovery is not None:
                await self.persist_session(SessionRecord(sid, socket.pid, self.socket_rooms(sid), dict(socket.data)))
                count += 1
        return count

    async def replay(self, restored: RestoredSession) -> tuple[Outbound, ...] | None:
        packets = stored_after(self._packets, self._next_offset - 1, restored.offset)
        if packets is None:
            return None
        return tuple(p.out for p in packets if p.opts.includes(restored.rooms))


class _Stored(Protocol):
    @property
    def offset(self) -> int: ...


_S = TypeVar("_S", bound=_Stored)


def stored_after(stored: deque[_S], last: int, offset: str) -> list[_S] | None:
    """The stored packets after `offset`, from a buffer in offset order whose newest offset
    ever given is `last`. None when one of them has left the buffer, or for an offset never
    given: a client gets everything it missed or a fresh session, never a partial replay."""
    if not offset.isdigit():
        return None
    wanted = int(offset)
    first = stored[0].offset if stored else last + 1
    if not first - 1 <= wanted <= last:
        return None
    return list(itertools.islice(stored, wanted - first + 1, None))


async def gather_acks(futures: list[asyncio.Future[Any]], timeout: float) -> list[Any]:
    """Wait for every receiver's ack; on timeout raise `AckTimeout` with the ones that came.

    Each response is the first argument the receiver acknowledged with, as the reference
    server's broadcast-with-ack gives them.
    """
    if not futures:
        return []
    done, pending = await asyncio.wait(futures, timeout=timeout)
    responses = [_first(f.result()) for f in futures
                 if f in done and not f.cancelled() and f.exception() is None]
    for f in pending:
        f.cancel()
    if pending or len(responses) != len(futures):
        raise AckTimeout(responses)
    return responses


def _first(args: list[Any]) -> Any:
    return args[0] if args else None
