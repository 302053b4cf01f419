"""Connection state recovery, shared by every adapter: where it is stored is a `RecoveryStore`.

`SessionRecovery` is the one implementation of what an adapter promises about recovery
(`persist_session`, `restore_session`, `replay`, `persist_sockets`): a client that comes back
with its `pid` and `offset` gets everything stored after the offset in its rooms, or a fresh
session, never a partial replay. The store decides where packets and session records live
and what an offset means: `MemoryRecoveryStore` (this process; offsets stamped at broadcast)
or the Redis store of `coup.cluster.recovery` (offsets given by Redis, meaningful on every
node, kept when a node dies).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coup.core.options import RecoveryOptions
from coup.core.replay_budget import ReplayBudget, current_origin
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode
from coup.protocol.wire import Outbound

if TYPE_CHECKING:
    from coup.core.adapter import BroadcastOptions

log = logging.getLogger(__name__)


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
    #: the last offset the client received (in the store's numbering)
    offset: str


class RecoveryStore(Protocol):
    """Where recovery state lives. `mode` of `save`: "live" (the socket is connected here),
    "take" (it moved here from another node) or "left" (it disconnected here)."""

    async def save(self, record: SessionRecord, mode: str) -> bool:
        """Keep `record` restorable for the recovery window; False when it was not written."""
        ...

    async def claim(self, pid: str) -> SessionRecord | None:
        """Take the record of `pid`, so nobody else restores it."""
        ...

    async def discard(self, pid: str) -> None:
        """Forget the record of `pid` (unless another node restored it meanwhile)."""
        ...

    async def after(self, offset: str, check_only: bool = False,
                    rooms: frozenset[str] | None = None) -> list[tuple[BroadcastOptions, Outbound]] | None:
        """Every stored packet after `offset` (to whom, as sockets get it), in order; None when
        some of them are gone (or `offset` was never given). `check_only`: [] or None. `rooms`:
        the session's rooms, where a store keeps its packets apart by room (log groups)."""
        ...


class _LocalSockets(Protocol):
    """What recovery needs to know of the namespace's sockets on this node."""

    @property
    def sockets(self) -> Mapping[str, Any]: ...


class SessionRecovery:
    """The adapter's recovery calls, over a store (the same code for memory and Redis)."""

    def __init__(self, store: RecoveryStore, nsp: _LocalSockets, socket_rooms: Any) -> None:
        self.store = store
        self.nsp = nsp
        #: sid -> the rooms the socket is in here
        self.socket_rooms = socket_rooms

    def record_of(self, sid: str) -> SessionRecord | None:
        """The record of connected local socket `sid`, if it can be recovered."""
        socket = self.nsp.sockets.get(sid)
        if socket is None or socket.pid is None or not socket.connected:
            return None
        return SessionRecord(sid, socket.pid, self.socket_rooms(sid), dict(socket.data))

    async def persist_session(self, record: SessionRecord) -> None:
        await self.store.save(record, "left")

    async def persist_sockets(self, sids: Iterable[str] | None = None) -> int:
        records = [r for sid in (list(self.nsp.sockets) if sids is None else list(sids))
                   if (r := self.record_of(sid)) is not None]
        written = await asyncio.gather(*(self.store.save(record, "live") for record in records))
        return sum(written)

    async def restore_session(self, pid: str, offset: str) -> RestoredSession | None:
        # asked together: a store on Redis sends both in one write (with the other restores of
        # this loop turn), one round trip instead of two for each of a drained node's clients
        record, covered = await asyncio.gather(self.store.claim(pid), self.store.after(offset, check_only=True))
        if record is None:
            log.info("no recovery for session %s: no record (expired, left, or claimed by another attempt)", pid)
            return None
        old = self.nsp.sockets.get(record.sid)
        if old is not None:
            # still connected here: its old connection is half-open (a request of it failed
            # through a router, the client gave up on it); the client proved it is the same
            # one (the pid is its secret), so the old connection ends and the session, with
            # the rooms it is in now, is restored on the new one
            log.info("session %s: its client is back on a new connection; closing the old one", pid)
            record = self.record_of(record.sid) or record
            await old.abandon()
            if record.sid in self.nsp.sockets:
                log.info("no recovery for session %s: the old connection did not let go", pid)
                return None
        if covered is None:
            log.info("no recovery for session %s: offset %s is no longer in the log", pid, offset)
            return None
        return RestoredSession(record.sid, pid, record.rooms, record.data, offset)

    async def replay(self, restored: RestoredSession) -> tuple[Outbound, ...] | None:
        entries = await self.store.after(restored.offset, rooms=restored.rooms)
        if entries is None:
            return None
        return tuple(out for opts, out in entries if opts.includes(restored.rooms))


class RecoveryCalls:
    """An adapter's recovery calls (`coup.core.adapter.Adapter`), handed to its `recovery`
    (None: recovery is off). Both adapters take them from here."""

    recovery: SessionRecovery | None

    async def persist_session(self, record: SessionRecord) -> None:
        if self.recovery is not None:
            await self.recovery.persist_session(record)

    async def discard_session(self, pid: str) -> None:
        if self.recovery is not None:
            await self.recovery.store.discard(pid)

    async def restore_session(self, pid: str, offset: str) -> RestoredSession | None:
        return await self.recovery.restore_session(pid, offset) if self.recovery is not None else None

    async def replay(self, restored: RestoredSession) -> tuple[Outbound, ...] | None:
        return await self.recovery.replay(restored) if self.recovery is not None else None

    async def persist_sockets(self, sids: Iterable[str] | None = None) -> int:
        return await self.recovery.persist_sockets(sids) if self.recovery is not None else 0


# ---------------------------------------------------------------------------- in memory


@dataclass(frozen=True, slots=True)
class _StoredPacket:
    offset: int
    at: float
    opts: BroadcastOptions
    out: Outbound
    size: int
    origin: str | None


class MemoryRecoveryStore:
    """This process only: packets stamped with a local offset as they are broadcast."""

    def __init__(self, options: RecoveryOptions) -> None:
        self.options = options
        self._budget = ReplayBudget(options)
        self._packets: deque[_StoredPacket] = deque()
        self._next_offset = 1
        self._sessions: dict[str, SessionRecord] = {}

    def stamp(self, packet: SocketPacket, opts: BroadcastOptions) -> Outbound:
        """Encode a broadcast once; an event without ack id gets an offset and is kept for replay."""
        if packet.type is SocketPacketType.EVENT and packet.id is None:
            origin = current_origin.get()
            offset = self._next_offset
            # built directly: `dataclasses.replace` walks the fields on every call (hot path)
            stamped = Outbound.message(encode(SocketPacket(packet.type, packet.namespace,
                                                           [*packet.data, str(offset)])))
            budget = self._budget
            if budget.admit(origin, stamped.size):
                self._next_offset += 1
                now = time.monotonic()
                budget.add(self._packets, _StoredPacket(offset, now, opts, stamped, stamped.size, origin), now)
                return stamped
        return Outbound.message(encode(packet))

    async def save(self, record: SessionRecord, mode: str) -> bool:
        if mode == "left":
            record.disconnected_at = time.monotonic()
            self._sessions[record.pid] = record
        self._expire()
        return True

    def _expire(self) -> None:
        horizon = time.monotonic() - self.options.max_disconnection_duration
        for pid in [pid for pid, s in self._sessions.items() if s.disconnected_at < horizon]:
            del self._sessions[pid]

    async def claim(self, pid: str) -> SessionRecord | None:
        self._expire()
        return self._sessions.pop(pid, None)

    async def discard(self, pid: str) -> None:
        self._sessions.pop(pid, None)

    async def after(self, offset: str, check_only: bool = False,
                    rooms: frozenset[str] | None = None) -> list[tuple[BroadcastOptions, Outbound]] | None:
        packets = stored_after(self._packets, self._next_offset - 1, offset)
        if packets is None:
            return None
        return [] if check_only else [(p.opts, p.out) for p in packets]


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
