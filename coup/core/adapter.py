"""Room membership and delivery for one namespace, behind an interface a cluster can replace.

`Adapter` (a Protocol) is the seam between the server core and "where do the other sockets
live": `MemoryAdapter` (the default) knows only this process; the Redis adapter
(`coup.cluster`) adds other nodes without anything above this module changing. Both are
built from the same parts: `LocalRooms` (this process's members and delivery to them) and
`coup.core.recovery.SessionRecovery` over a store (memory, or Redis).

Delivery guarantee: `broadcast` encodes the packet once and hands the same bytes to every
local receiver, in call order; per socket, packets arrive in the order they were sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from coup.core.errors import AckTimeout
from coup.core.recovery import (
    MemoryRecoveryStore,
    RecoveryCalls,
    RestoredSession,
    SessionRecord,
    SessionRecovery,
)
from coup.protocol.socketio import SocketPacket, encode
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.core.namespace import Namespace


#: seconds a broadcast's `once` key is remembered
ONCE_WINDOW = 120.0
#: keys one process remembers at most (the oldest go first past it: a memory bound)
ONCE_KEYS = 100_000


class OnceKeys:
    """The `once` keys of this process's broadcasts of the last `ONCE_WINDOW` seconds."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first(self, key: str) -> bool:
        """Remember `key`; True when it was not seen within the window."""
        now = time.monotonic()
        seen = self._seen
        while seen and (len(seen) >= ONCE_KEYS or now - next(iter(seen.values())) >= ONCE_WINDOW):
            seen.popitem(last=False)
        if key in seen:
            return False
        seen[key] = now
        return True


@dataclass(frozen=True, slots=True)
class BroadcastOptions:
    """Who receives: sockets in any of `rooms` (all sockets when empty), minus those in `exclude`."""

    rooms: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    #: only sockets of this process, even in a cluster
    local: bool = False
    #: with a key: sent only if no broadcast with this key was sent in the last `ONCE_WINDOW`
    #: seconds (cluster-wide), decided in the same step as the send. A command that stored
    #: something and then broadcast it gives the broadcast a key; a repeat of the command
    #: broadcasts again with the same key: it goes out only if the first never did (its node
    #: died in between), so every receiver gets it exactly once.
    once: str = ""
    #: with `once`: this is the key's first broadcast (the command stored it just now), not a
    #: repeat; a log that marks the key in the same step as the send need not ask first
    first: bool = False

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


class Adapter(Protocol):
    """The interface. Membership calls are async because a cluster must subscribe before
    it can promise delivery; local-only queries are sync."""

    nsp: Namespace

    @property
    def local(self) -> LocalRooms:
        """This node's sockets and rooms (what metrics and local queries read)."""
        ...

    async def init(self) -> None:
        """Called once when the namespace is created (a cluster subscribes here)."""

    async def close(self) -> None:
        """Called on server shutdown."""

    # membership of local sockets
    async def add_all(self, sid: str, rooms: Iterable[str]) -> None: ...

    async def remove(self, sid: str, room: str) -> None: ...

    async def remove_all(self, sid: str) -> None: ...

    def socket_rooms(self, sid: str) -> frozenset[str]: ...

    def local_room_sids(self, room: str) -> frozenset[str]: ...

    # delivery
    def broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> None: ...

    async def broadcast_with_ack(self, packet: SocketPacket, opts: BroadcastOptions,
                                 timeout: float) -> list[Any]: ...

    # cluster-wide queries and commands
    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]: ...

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None: ...

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None: ...

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None: ...

    # connection state recovery (`coup.core.recovery`)
    async def persist_session(self, record: SessionRecord) -> None:
        """A recoverable socket disconnected: keep its session for the recovery window."""
        ...

    async def restore_session(self, pid: str, offset: str) -> RestoredSession | None:
        """Claim the session `pid` if everything after `offset` can still be replayed."""
        ...

    async def replay(self, restored: RestoredSession) -> tuple[Outbound, ...] | None:
        """What the restored client missed: every stored packet after its offset in its rooms,
        up to now. Called once the socket has joined its rooms (so what comes later reaches
        it), just before the CONNECT reply; None when some of it is gone by then."""
        ...

    async def discard_session(self, pid: str) -> None:
        """The socket left for good (its client disconnected, or the server put it out): the
        session `pid` must not be restored."""
        ...

    async def persist_sockets(self, sids: Iterable[str] | None = None) -> int:
        """Make the sessions of local sockets `sids` (all when None) restorable on any node for
        the recovery window from now, with everything broadcast before this call; return how
        many were written. A node that is about to close its clients (a drain) awaits this."""
        ...


class LocalRooms:
    """This process's sockets in rooms, and delivery to them: the part every adapter shares."""

    def __init__(self, nsp: Namespace) -> None:
        self.nsp = nsp
        self.rooms: dict[str, set[str]] = {}
        self.sids: dict[str, set[str]] = {}
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


class MemoryAdapter(RecoveryCalls):
    """Everything in this process: the single-node default."""

    def __init__(self, nsp: Namespace) -> None:
        self.nsp = nsp
        self._local = LocalRooms(nsp)
        recovery = nsp.server.options.recovery
        self._store = MemoryRecoveryStore(recovery) if recovery is not None else None
        self.recovery = SessionRecovery(self._store, nsp, self._local.socket_rooms) \
            if self._store is not None else None
        self._once = OnceKeys()

    @property
    def local(self) -> LocalRooms:
        return self._local

    async def init(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add_all(self, sid: str, rooms: Iterable[str]) -> None:
        self._local.add_local(sid, rooms)

    async def remove(self, sid: str, room: str) -> None:
        self._local.remove_local(sid, (room,))

    async def remove_all(self, sid: str) -> None:
        self._local.remove_local(sid)

    def socket_rooms(self, sid: str) -> frozenset[str]:
        return self._local.socket_rooms(sid)

    def local_room_sids(self, room: str) -> frozenset[str]:
        return self._local.local_room_sids(room)

    def broadcast(self, packet: SocketPacket, opts: BroadcastOptions) -> None:
        if opts.once and not self._once.first(opts.once):
            return
        store = self._store
        out = store.stamp(packet, opts) if store is not None else Outbound.message(encode(packet))
        self._local.deliver(out, opts)

    async def broadcast_with_ack(self, packet: SocketPacket, opts: BroadcastOptions,
                                 timeout: float) -> list[Any]:
        return await gather_acks(self._local.send_with_ack(packet, opts), timeout)

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[SocketInfo]:
        return await self._local.fetch_sockets(opts)

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        await self._local.add_sockets(opts, rooms)

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        await self._local.del_sockets(opts, rooms)

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        await self._local.disconnect_sockets(opts, close)



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
