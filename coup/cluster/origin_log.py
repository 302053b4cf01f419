"""Connection state recovery kept in Redis by a log the nodes sequence themselves (one Redis).

Each node takes, per namespace, a new *origin* number at every link-up (never reused) and
numbers its own broadcasts 1, 2, 3...: a broadcast goes to the node's own sockets at once, and
is published and appended to the origin's own list in Redis in one MULTI / EXEC with the rest
of the loop turn's broadcasts, so no reader sees one without the other. A socket's offset is
a vector: per origin, the last number its node had handled (`coup.core.hold.OriginVector`).
A client that comes back anywhere gets, per origin, the entries after its number in its
rooms, merged by time. The node trims its own list (count, bytes, age, a share per origin
socket: `coup.core.replay_budget`'s rules), always keeping its newest entry, so the list's
last entry names its head.

Why not the script log of `coup.cluster.recovery` (which this replaces on one Redis): a
script call per turn and the wait for Redis to hand a node's own broadcasts back cost +22 %
CPU per delivered chat message; this costs a few (docs/recovery.md has the reasons, the
design and the figures).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import hiredis
import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.bus import Bus, Transaction
from coup.cluster.options import ClusterOptions
from coup.cluster.recovery import RedisSessionStore, retrieved
from coup.cluster.resp import RedisUnavailable
from coup.cluster.scripts import ORIGIN_READ
from coup.core.adapter import ONCE_WINDOW, BroadcastOptions
from coup.core.hold import OriginVector, Stamped
from coup.core.options import RecoveryOptions
from coup.protocol.wire import Outbound
from coup.tasks import stop_tasks

log = logging.getLogger(__name__)

#: first byte of a broadcast the origin log numbered: ``S ORIGIN - NUMBER SP ENVELOPE``
SEQUENCED = b"S"

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    text = ""
    while number:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
    return text or "0"


class OwnOrigins:
    """This node's origins, of every namespace: its own numbered broadcasts come back with them
    and were delivered here when sent. `prefixes` is how their messages start (one
    ``bytes.startswith`` tells a push of ours, no parsing)."""

    def __init__(self) -> None:
        self._origins: set[int] = set()
        self.prefixes: tuple[bytes, ...] = ()
        #: the highest origin this node has heard of, of any namespace (they share one counter,
        #: which, lost with the logs, restarts above it: `OriginLog.link_up`)
        self.highest = 0

    def update(self, added: Iterable[int] = (), removed: Iterable[int] = ()) -> None:
        self._origins.difference_update(removed)
        self._origins.update(added)
        self.prefixes = tuple(SEQUENCED + b"%d-" % origin for origin in sorted(self._origins))


def split_sequenced(data: bytes) -> tuple[int, int, bytes]:
    """A numbered broadcast as published: its origin, its number and its envelope."""
    head, _, envelope = data.partition(b" ")
    origin, _, number = head.partition(b"-")
    return int(origin[1:]), int(number), envelope


class OriginLog(RedisSessionStore):
    """One namespace's node-sequenced recovery log, and the session records (one Redis)."""

    def __init__(self, bus: Bus, client: redis.Redis, options: ClusterOptions,
                 namespace: str, node_id: str, recovery: RecoveryOptions, heard_on: bytes,
                 own_origins: OwnOrigins) -> None:
        """`own_origins`: this node's origins of every namespace (its own pushes are dropped by them)."""
        super().__init__(bus, client, options, namespace, node_id, recovery, heard_on)
        #: epoch and the origin counter (shared by every namespace); origins alive (-> expiry
        #: in ms); per origin the last number a count or byte trim took; an origin's list
        self.meta_key = options.key("rlog", "meta")
        self.live_key = options.nsp_key("rlog", namespace, "live")
        self.lost_key = options.nsp_key("rlog", namespace, "lost")
        self.list_prefix = options.nsp_key("rlog", namespace, "o", "")
        self.once_prefix = options.nsp_key("rlog", namespace, "once", "")
        #: this node's origin since its last link-up (None until it has one: broadcasts then
        #: go out without offsets) and the last number it gave
        self.origin: int | None = None
        self.epoch = ""
        self.number = 0
        self._prefix = b""
        self._list_key = ""
        #: per origin the last number this node handled (its own included), and as the text
        #: every packet is stamped with (`coup.core.hold.OriginVector`). It changes with every
        #: broadcast sent or heard, so it is kept in pieces: the epoch, then ``~ORIGIN-NUMBER``
        #: per origin in origin order (`_slots`: where each origin's piece is); a broadcast
        #: changes one piece and joins them
        self._counts: dict[int, int] = {}
        self._pieces: list[str] = [""]
        self._slots: dict[int, int] = {}
        self.stamp = ""
        #: the books of our list: (number, at_us, bytes, origin socket), oldest first
        self._books: deque[tuple[int, int, int, str]] = deque()
        self._bytes = 0
        #: per origin socket: [packets, bytes] it has in our list
        self._shares: dict[str, list[int]] = {}
        self._share_packets = max(1, int(recovery.max_packets * recovery.max_origin_share))
        self._share_bytes = max(1, int(recovery.max_bytes * recovery.max_origin_share))
        #: origin sockets refused since the last reset (each logged once)
        self._refused: set[str] = set()
        #: this turn's transaction, and the RPUSH in it our entries join
        self._tx: Transaction | None = None
        self._rpush: list[Any] = []
        self._on_failed: Callable[[Any], None] = partial(self._failed, 0)
        self._own_origins = own_origins
        #: which of them are this log's
        self._mine: set[int] = set()
        #: a new origin being taken after a failed append (kept: the loop holds tasks weakly)
        self._renewing: asyncio.Task[None] | None = None
        #: what the log costs and does
        self.stats = {"unsent": 0, "trims": 0, "refused": 0}

    def scripts(self) -> list[str]:
        return [*super().scripts(), ORIGIN_READ]

    async def refresh(self, pids: Iterable[str]) -> None:
        """As every log's, and: entries past the window leave our list, and our origin stays live."""
        self.trim_old()
        await super().refresh(pids)
        if self.origin is not None:
            try:
                await self._keep_alive(self.origin)
            except RedisError as exc:
                log.info("recovery log origin not kept alive: %s", exc)

    def log_keys(self) -> list[str]:
        keys = [self.meta_key, self.live_key, self.lost_key]
        return [*keys, self._list_key] if self._list_key else keys

    # ------------------------------------------------------------------ origins

    async def link_up(self, relinked: bool = True) -> None:
        """A new origin for this link (the last one may have numbers Redis never got), and
        every live origin's head heard before anything is stamped with it (`sync_all`).

        Our old origins stop being ours after a new link (`relinked`): no push of theirs comes
        on it, and after a Redis restart their numbers are given again, to other nodes too.
        After a failed append on the same link (`relinked` False) the old one's pushes may
        still come, and are still ours."""
        self.origin = None
        candidate = _base36(int(time.time() * 1000))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.meta_key, "epoch", candidate)
            # a counter lost with the logs (flushed, evicted) starts above every origin we
            # heard of: a node still on the old epoch must not find its number given again
            pipe.hsetnx(self.meta_key, "next", self._own_origins.highest)  # covers `_counts`: see `_rebuild`
            pipe.hincrby(self.meta_key, "next", 1)
            pipe.hget(self.meta_key, "epoch")
            pipe.pexpire(self.meta_key, self.log_ttl_ms)
            _, _, origin, epoch, _ = await pipe.execute()
        epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if epoch != self.epoch:  # a Redis that lost the logs: numbers of the old ones mean nothing
            self.epoch = epoch
            self._counts = {}
            self._rebuild()
        if relinked:
            self._own_origins.update(removed=self._mine)
            self._mine.clear()
        self._mine.add(int(origin))
        self._own_origins.update(added=[int(origin)])
        self._books.clear()
        self._bytes = 0
        self._shares.clear()
        self._list_key = self.list_prefix + str(origin)
        await self._keep_alive(int(origin))
        await self.sync_all()
        self.number = 0
        self._tx = None  # the turn's RPUSH of ours, if any, is the old origin's
        self._on_failed = partial(self._failed, int(origin))
        self._prefix = SEQUENCED + str(origin).encode() + b"-"
        self.origin = int(origin)
        self._counts[self.origin] = 0
        self._rebuild()

    def link_down(self) -> None:
        """The link broke: our origin ends at once. Until the next `link_up` takes a new one,
        broadcasts go out without offsets. The reconnect hooks run on the new link before that
        one, and what they broadcast (a restore's `user-online`) must not append to the old
        origin's number in a Redis that may have restarted empty and give it again."""
        self.origin = None  # its number stays in the stamp as any other origin's

    async def epoch_lost(self) -> bool:
        """Has Redis lost our epoch while the link held (a FLUSHALL, or the log's keys evicted
        under memory pressure: they all have a time to live)? Then no restore can read the
        offsets we give, and the next origin taken is numbered from 1 again, possibly ours; the
        caller takes a new origin (`link_up`). Before it returns True our origin has ended and
        every push we published under it has come back (and was dropped as ours): after
        `link_up` its number is no longer ours, and a late push of it would be delivered twice."""
        if not self.epoch:
            return False
        try:
            epoch = await self.client.hget(self.meta_key, "epoch")
        except RedisError as exc:
            log.info("recovery log epoch not checked: %s", exc)
            return False
        if (epoch.decode() if isinstance(epoch, bytes) else epoch) == self.epoch:
            return False
        if self.origin is not None:  # (None: a link-up after the last check failed, and is tried again)
            log.warning("recovery log: epoch %s is no longer in Redis (flushed, or evicted under memory pressure): "
                        "offsets given so far cannot be restored; a new origin follows", self.epoch)
            self.origin = None
            try:
                await self._heard_so_far()
            except (RedisUnavailable, TimeoutError):
                pass  # the link broke: its reconnect takes the new origin
        return True

    async def _keep_alive(self, origin: int) -> None:
        """Our origin stays live (readers look at its list) a log lifetime past this call."""
        expires = int(time.time() * 1000) + self.log_ttl_ms
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.live_key, str(origin), expires)
            pipe.pexpire(self.live_key, self.log_ttl_ms)
            await pipe.execute()

    def _failed(self, origin: int, reason: Any) -> None:
        """A transaction of ours did not append (the link broke, Redis refused): our list has a
        gap now, so this origin ends; broadcasts go out without offsets until the next one."""
        if origin != self.origin:
            return
        log.warning("recovery log: appends of origin %d failed (%s); a new origin follows", origin, reason)
        self.stats["unsent"] += 1
        self.origin = None
        if self.bus.ready and (self._renewing is None or self._renewing.done()):
            self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def close(self) -> None:
        await stop_tasks(self._renewing)

    async def _renew(self) -> None:
        try:
            await self.link_up(relinked=False)
        except (RedisError, RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log: no new origin (%s); the next link-up takes one", exc)

    # ------------------------------------------------------------------ publishing

    def publish(self, channels: Sequence[bytes], origin_socket: str | None, envelope: bytes,
                once: str = "") -> str | None:
        """Number a broadcast, publish it on `channels` and append it, in this turn's transaction
        (with `once`: and mark its key, so a resend knows it went out). The stamp its
        sockets here get (its number is `number`); None when it is not kept (no origin, or the
        socket holds its share): the caller sends it as with recovery off.

        On the path of every broadcast: what it does per broadcast is kept to the least (the
        transaction and our RPUSH in it are looked up once per turn, the books inline)."""
        origin = self.origin
        if origin is None:
            return None
        size = len(envelope)
        share = None
        if origin_socket:
            share = self._shares.get(origin_socket) or [0, 0]  # a new one is kept once booked
            if share[0] >= self._share_packets or share[1] + size > self._share_bytes:  # also a first one too big
                self._refuse(origin_socket)
                return None
        tx = self._tx
        if tx is None or tx.sealed:  # the turn's first of ours: our entries go in one RPUSH
            tx = self.bus.open_transaction()
            if tx is None:
                return None
            self._tx = tx
            self._rpush = tx.command("RPUSH", self._list_key)
            tx.listeners.append(self._on_failed)
        number = self.number = self.number + 1
        at_us = time.time_ns() // 1000
        digits = b"%d" % number
        message = self._prefix + digits + b" " + envelope
        for channel in channels:
            tx.publish(channel, message)
        socket = origin_socket or ""
        self._rpush.append(b"%s %d %s %s" % (digits, at_us, socket.encode(), envelope))
        if number == 1:  # the list is made now: it expires unless kept alive (`refresh`), also when we die first
            tx.command("PEXPIRE", self._list_key, self.log_ttl_ms)
        if once:
            tx.command(*self._mark(once))
        # the books (`_trim`): the entry, the bytes, the origin socket's share
        self._books.append((number, at_us, size, socket))
        self._bytes += size
        if share is not None:
            if not share[0]:
                self._shares[origin_socket] = share  # type: ignore[index]
            share[0] += 1
            share[1] += size
        bounds = self.recovery
        if len(self._books) > bounds.max_packets or self._bytes > bounds.max_bytes:
            self._trim(tx)
        return self.heard(origin, number)

    def mark(self, once: str) -> None:
        """A broadcast with `once` that is not kept went out: a resend must know it did."""
        self.bus.command(*self._mark(once)).add_done_callback(retrieved)

    def _mark(self, once: str) -> tuple[Any, ...]:
        """The command that says a broadcast with `once` went out (`went_out` reads it)."""
        return ("SET", self.once_prefix + once, "1", "PX", int(ONCE_WINDOW * 1000))

    async def went_out(self, once: str) -> bool | None:
        """Did a broadcast with `once` go out lately (a resend asks before it is numbered)? None
        when Redis cannot say."""
        try:
            return bool(await self.bus.command("EXISTS", self.once_prefix + once))
        except RedisUnavailable:
            return None

    def _refuse(self, origin_socket: str) -> None:
        """`origin_socket` holds its share (a quarter of the bounds): its broadcast is not kept."""
        self.stats["refused"] += 1
        if origin_socket not in self._refused:
            if len(self._refused) > 10_000:
                self._refused.clear()
            self._refused.add(origin_socket)
            log.warning("socket %s holds its share of the recovery log: its further broadcasts are not kept "
                        "for replay", origin_socket)

    def _trim(self, tx: Transaction) -> None:
        """Past the count or byte bound: trim a 64th below it in one LTRIM (and say up to which
        number, so a client that needed it gets a fresh session)."""
        books = self._books
        options = self.recovery
        keep_packets = options.max_packets - options.max_packets // 64
        keep_bytes = options.max_bytes - options.max_bytes // 64
        dropped = self._drop_while(lambda: len(books) > keep_packets or self._bytes > keep_bytes)
        tx.command("LTRIM", self._list_key, dropped[0], -1)
        tx.command("HSET", self.lost_key, str(self.origin), dropped[1])
        self.stats["trims"] += 1

    def _drop_while(self, condition: Any) -> tuple[int, int]:
        """Drop the oldest books while `condition()` holds, never the newest: how many, and the last number dropped."""
        books = self._books
        count = last = 0
        while len(books) > 1 and condition():
            last, _at, size, origin_socket = books.popleft()
            self._bytes -= size
            share = self._shares.get(origin_socket)
            if share is not None:
                share[0] -= 1
                share[1] -= size
                if not share[0]:
                    del self._shares[origin_socket]
            count += 1
        return count, last

    def trim_old(self) -> None:
        """Entries older than the window leave our list (`refresh`). Not counted as lost: an
        entry a client's node had not handled before its last packet came after it."""
        horizon = time.time_ns() // 1000 - self.window_ms * 1000
        books = self._books
        count, _ = self._drop_while(lambda: books[0][1] < horizon)
        if count and self.origin is not None:
            self.bus.command("LTRIM", self._list_key, count, -1).add_done_callback(retrieved)

    # ------------------------------------------------------------------ offsets

    @property
    def vector(self) -> OriginVector:
        """This node's numbers as a value."""
        return OriginVector(self.epoch, dict(self._counts))

    def _drop(self, origins: Iterable[int]) -> None:
        for origin in origins:
            del self._counts[origin]
        self._rebuild()

    def _rebuild(self) -> None:
        """The stamp's pieces anew, in origin order (an origin came or went, or a new epoch)."""
        counts = self._counts
        order = sorted(counts)
        self._pieces = [self.epoch, *[f"~{origin}-{counts[origin]}" for origin in order]]
        self._slots = {origin: i for i, origin in enumerate(order, 1)}
        self.stamp = "".join(self._pieces)
        # every origin that enters `_counts` comes through here (`heard`, `link_up`)
        if order and order[-1] > self._own_origins.highest:
            self._own_origins.highest = order[-1]

    def heard(self, origin: int, number: int) -> str:
        """Broadcast `number` of `origin` is being handled (another node's, or one we just
        numbered), or a restore found the origin's head there: our number of it rises to
        `number`. The stamp of its packet (on the path of every broadcast: the usual case
        changes one piece)."""
        counts = self._counts
        if number > counts.get(origin, 0):
            counts[origin] = number
            slot = self._slots.get(origin)
            if slot is None:
                self._rebuild()
            else:
                pieces = self._pieces
                pieces[slot] = f"~{origin}-{number}"
                self.stamp = "".join(pieces)
        return self.stamp

    async def _read(self, mode: str, vector: OriginVector | None = None) -> list[Any] | None:
        pairs: list[Any] = []
        if vector is not None:
            for origin, number in vector.counts.items():
                pairs += (origin, number)
        reply = await self.bus.script(ORIGIN_READ, 3, self.meta_key, self.live_key, self.lost_key,
                                      vector.epoch if vector is not None else self.epoch, mode,
                                      self.list_prefix, *pairs)
        return None if not reply or reply[0] == 0 else reply

    async def sync(self, heads: dict[int, int]) -> None:
        """Make this node's number of each origin in `heads` at least that head: a marker
        published on our channel after the heads were read comes back once every push up to
        them was handled. Raises `RedisUnavailable` or `TimeoutError` (a marker not heard)."""
        behind = {origin: head for origin, head in heads.items() if head > self._counts.get(origin, 0)}
        if not behind:
            return
        await self._heard_so_far()
        for origin, head in behind.items():
            self.heard(origin, head)

    async def _heard_so_far(self) -> None:
        """Every push Redis sent us before now has been handled (`Bus.heard_so_far` on our
        channel). Raises `RedisUnavailable` or `TimeoutError` (the marker not heard)."""
        marker = self.bus.heard_so_far(self.heard_on)
        marker.add_done_callback(retrieved)  # shared with other waiters
        async with asyncio.timeout(self.options.probe_timeout):
            await asyncio.shield(marker)

    async def sync_all(self) -> None:
        """Every live origin's head heard, and the origins whose logs are gone dropped: an
        origin a stamp does not name counts as 0, so it must name every live one it heard of.
        At each link-up and every quarter window (an origin whose rooms we do not hear would
        otherwise keep an old number, which a trim then leaves behind)."""
        try:
            reply = await self._read("heads")
            if reply is None:
                return
            heads = _heads(reply)
            gone = [origin for origin in self._counts if origin not in heads and origin != self.origin]
            if gone:
                self._drop(gone)
            await self.sync(heads)
        except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log origins not synced (%s)", exc or "a marker not heard")

    async def catch_up(self, floor: OriginVector) -> bool:
        """Make this node's numbers at least `floor` (what another node gave a client) where the
        logs have them, before its socket gets packets stamped here; False when that failed."""
        if floor.epoch != self.epoch:
            return False
        if all(self._counts.get(origin, 0) >= number for origin, number in floor.counts.items()):
            return True
        try:
            reply = await self._read("heads")
            if reply is None:
                return False
            await self.sync(_reachable(floor, _heads(reply)))
        except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log origins not caught up (%s)", exc or "a marker not heard")
            return False
        return True

    # ------------------------------------------------------------------ restores

    async def after(self, offset: str, check_only: bool = False,
                    rooms: frozenset[str] | None = None) -> list[tuple[BroadcastOptions, Outbound]] | None:
        """Entries after the vector `offset` (to whom, as sockets get them), merged by time;
        None when a trim took one of them, or the offset is not of these logs.

        The check (before the socket joins its rooms) raises this node's numbers to the
        client's where the logs have them, so nothing stamped here for it afterwards is lower
        (a lower stamp would make the next restore replay what it has). A number above its
        origin's head is a broadcast delivered before its node died with the append unsent:
        nothing of that origin comes after it. The replay returns once this node has heard the
        pushes of every entry read: a push handled after the replay went out would reach the
        restored socket a second time (`coup.core.hold`)."""
        vector = OriginVector.parse(offset)
        if vector is None or vector.epoch != self.epoch or not vector.epoch:
            return None
        try:
            reply = await self._read("check" if check_only else "read", vector)
            if reply is None:
                return None
            heads = _heads(reply)
            if check_only:
                await self.sync(_reachable(vector, heads))
                return []
            await self.sync(heads)
        except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log unreadable (%s): a fresh session instead", exc or "its pushes not heard")
            return None
        found: list[list[tuple[int, int, int, bytes]]] = []
        for origin, _head, read in _origins(reply):
            rows = []
            for entry in read:
                digits, _, rest = entry.partition(b" ")
                rows.append((int(rest[:rest.index(b" ")]), origin, int(digits), entry))
            found.append(rows)
        known = dict(vector.counts)
        entries: list[tuple[BroadcastOptions, Outbound]] = []
        for _at, origin, number, entry in heapq.merge(*found):
            opts, _out, packet = self._decoded.get((origin, number)) or self._decode((origin, number), entry, 3)
            known[origin] = number
            entries.append((opts, Stamped(packet, (origin, number), OriginVector(vector.epoch, dict(known)))))
        return entries


def _origins(reply: list[Any]) -> list[tuple[int, int, list[bytes]]]:
    """(origin, head, entries) of each live origin in an `ORIGIN_READ` reply."""
    origins = []
    i = 1
    while i < len(reply):
        count = int(reply[i + 2])
        origins.append((int(reply[i]), int(reply[i + 1]), reply[i + 3:i + 3 + count]))
        i += 3 + count
    return origins


def _heads(reply: list[Any]) -> dict[int, int]:
    """Origin -> head from an `ORIGIN_READ` reply."""
    return {origin: head for origin, head, _ in _origins(reply)}


def _reachable(vector: OriginVector, heads: dict[int, int]) -> dict[int, int]:
    """The numbers of `vector` as far as the logs have them (a number above its origin's head
    is a broadcast whose append never reached Redis)."""
    return {origin: min(number, heads.get(origin, 0)) for origin, number in vector.counts.items()}

