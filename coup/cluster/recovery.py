"""Connection state recovery kept in Redis, so it outlives the node a client was on.

One log per namespace in Redis (`coup.cluster.scripts.LOG_PUBLISH`): a broadcast is appended
and published by the same script call, so Redis gives it its offset, and every node (the
sender included) hears the broadcasts of a channel in offset order. An offset therefore means
the same on every node, and a client that comes back anywhere gets every entry after it, in
its rooms. The log is bounded like the in-memory one (packets, bytes, the recovery window, a
share per origin socket; `coup.core.replay_budget`), trimmed by the script that appends.

Session records (``P:session:NSP:PID``: node, socket id, rooms, data) are written when a socket
connects and when its rooms change, refreshed while it is connected and kept for the recovery
window once it is gone, so a node killed without warning leaves them behind too.
docs/architecture.md ("Connection state recovery across nodes") has the reasons and costs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

import hiredis
import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from coup.cluster.bus import Bus, channel_bytes, script_sha
from coup.cluster.envelope import decode_broadcast
from coup.cluster.options import ClusterOptions
from coup.cluster.resp import RedisUnavailable
from coup.cluster.scripts import LOG_HEAD, LOG_READ, SESSION_CLAIM, SESSION_SAVE, log_publish
from coup.core.adapter import ONCE_WINDOW, BroadcastOptions
from coup.core.hold import Stamped
from coup.core.options import RecoveryOptions
from coup.core.recovery import SessionRecord
from coup.protocol import jsonutil
from coup.protocol.socketio import EncodedPacket, stamp_offset
from coup.protocol.wire import Outbound

log = logging.getLogger(__name__)

#: first byte of a broadcast published by `LOG_PUBLISH`: ``L OFFSET SP ENVELOPE`` (no offset: not kept)
LOGGED = b"L"

_T = TypeVar("_T")

#: decoded log entries a node keeps for replays (their count and their bytes); see `RedisRecoveryLog._decode`
DECODED_ENTRIES = 4096
DECODED_BYTES = 8 * 1024 * 1024


def logged_out(packet: EncodedPacket, offset: int | None) -> Outbound:
    """A broadcast as sockets get it: with its recovery offset when the log kept it (the
    same text live and replayed, which is how a replay and held packets drop each other's copies)."""
    if offset is None:
        return Outbound.message(packet)
    return Outbound("4" + stamp_offset(packet.text, offset), packet.attachments)


def split_logged(data: bytes) -> tuple[int | None, bytes]:
    """A logged broadcast as published: its offset (None when not kept) and its envelope."""
    space = data.index(b" ")
    return (int(data[1:space]) if space > 1 else None), data[space + 1:]


def retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback for a future nobody awaits: its exception counts as retrieved (asyncio
    would log it otherwise); what it was for is re-done or logged elsewhere."""
    if not future.cancelled():
        future.exception()


class _Call(Generic[_T]):
    """One `LOG_PUBLISH` call: its arguments, the tokens of the broadcasts it carries, and what
    takes its reply (a `coup.cluster.resp.Waiter`, not a future: the usual reply, nobody
    refused, is looked at where it is read, with no callback scheduled for it; any other
    reply goes to `on_reply` in a later step of the loop, as a future's callback would)."""

    __slots__ = ("_finished", "_loop", "args", "on_reply", "retried", "tokens")

    def __init__(self, on_reply: Callable[[_Call[_T], Any], None]) -> None:
        self.args: list[Any] = []
        self.tokens: list[_T] = []
        self.retried = False
        self.on_reply = on_reply
        self._finished = False
        #: the loop the call was made in (a connection closed outside it still fails it there)
        self._loop = asyncio.get_running_loop()

    def done(self) -> bool:
        return self._finished

    def set_result(self, result: Any, /) -> None:
        self._finished = True
        if result != []:
            self._loop.call_soon(self.on_reply, self, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._finished = True
        self._loop.call_soon(self.on_reply, self, exception)

    def exception(self) -> BaseException | None:
        return None


class _Group:
    """One log of a namespace (with one group, the namespace's only one, under today's names)."""

    __slots__ = ("batch", "head", "index", "keys", "log_key", "own_channel", "slot", "tokens")

    def __init__(self, index: int, options: ClusterOptions, namespace: str, node_id: str, sha: str) -> None:
        self.index = index
        self.log_key = options.nsp_key("rlog", namespace, group=index)
        self.keys = [self.log_key, options.nsp_key("rlog", namespace, "m", group=index)]
        self.head: tuple[Any, ...] = ("EVALSHA", sha, 2, *self.keys)
        #: on a Redis Cluster, the slot of the log (its script publishes on that slot's channels only)
        self.slot = key_slot(self.log_key.encode("utf-8", "surrogatepass")) if options.sharded else None
        #: this node's channel in the group's slot: logged broadcasts for its own sockets, markers
        self.own_channel = channel_bytes(options.nsp_key("n", namespace, node_id, group=index))
        self.batch: list[Any] | None = None
        self.tokens: list[Any] = []


def parse_vector(offset: str, groups: int) -> tuple[int, ...] | None:
    """A client's offset with log groups (``o0.o1...``, one per group), None when it is not one."""
    parts = offset.split(".")
    if len(parts) != groups or not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


class RedisSessionStore:
    """What both Redis recovery logs share: the session records, and the log entries a node
    decoded for replays. A subclass is the log (`RedisRecoveryLog`, `coup.cluster.origin_log.OriginLog`)."""

    def __init__(self, bus: Bus, client: redis.Redis, options: ClusterOptions,
                 namespace: str, node_id: str, recovery: RecoveryOptions, heard_on: bytes) -> None:
        self.bus = bus
        #: a channel of ours the log's pushes share a Redis with (see `after`)
        self.heard_on = heard_on
        self.client = client
        self.options = options
        self.namespace = namespace
        self.node_id = node_id
        self.recovery = recovery
        self.window_ms = int(recovery.max_disconnection_duration * 1000)
        #: how long the log outlives the last node that kept it alive (`refresh`): a minute
        #: past the window, so a client of the last node gone can still come back within it
        self.log_ttl_ms = self.window_ms + 60_000
        self._save_sha = script_sha(SESSION_SAVE)
        #: log entry key -> the entry as replayed, oldest first (`_decode`)
        self._decoded: dict[Any, tuple[BroadcastOptions, Outbound, EncodedPacket]] = {}
        self._decoded_bytes = 0

    def log_keys(self) -> list[str]:
        """The keys of the log `refresh` keeps alive."""
        raise NotImplementedError

    async def load_scripts(self) -> None:
        """Called after every (re)connection: a restarted Redis has forgotten our scripts."""
        for script in self.scripts():
            await self.client.script_load(script)

    def scripts(self) -> list[str]:
        return [SESSION_SAVE, SESSION_CLAIM]

    def _decode(self, key: Any, entry: bytes, skip: int) -> tuple[BroadcastOptions, Outbound, EncodedPacket]:
        """A raw log entry (its envelope after `skip` space-separated fields) as replayed, kept
        for the next replays (`key`: its offset; a tuple for entries that replays stamp per
        socket: (group, offset) or (origin, number)).

        The clients of a drained node come back within a second or two, each asking for the
        same tail of the log: decoding it once per node instead of once per client took the
        replay from a quarter of the survivor's CPU to a few percent (bench/README.md, "A
        drained node's clients coming back"). The same `Outbound` also keeps its encoded frame."""
        at = -1
        for _ in range(skip):
            at = entry.index(b" ", at + 1)
        message = decode_broadcast(entry[at + 1:])
        opts = BroadcastOptions(frozenset(message.rooms), frozenset(message.exclude))
        decoded = (opts, logged_out(message.packet, key if isinstance(key, int) else None), message.packet)
        cache = self._decoded
        cache[key] = decoded
        self._decoded_bytes += decoded[1].size
        while len(cache) > DECODED_ENTRIES or self._decoded_bytes > DECODED_BYTES:
            self._decoded_bytes -= cache.pop(next(iter(cache)))[1].size
        return decoded

    # ------------------------------------------------------------------ session records

    def _session_key(self, pid: str) -> str:
        return self.options.nsp_key("session", self.namespace, pid)

    async def save(self, record: SessionRecord, mode: str) -> bool:
        try:
            return bool(await self.save_nowait(record, mode) == 1)
        except RedisUnavailable as exc:
            log.info("session %s not kept for recovery (redis: %s)", record.sid, exc)
            return False

    def save_nowait(self, record: SessionRecord, mode: str) -> asyncio.Future[Any]:
        """Write `record` after everything this node published so far (ordered with them).

        `mode`: "live" (its socket is connected here: create or refresh), "take" (it moved
        here from another node: overwrite) or "left" (it disconnected here: refresh only if
        still ours, another node may have restored it already)."""
        stored = jsonutil.dumps({"sid": record.sid, "rooms": sorted(record.rooms), "data": record.data})
        return self.bus.command("EVALSHA", self._save_sha, 1, self._session_key(record.pid), self.node_id, stored,
                                self.window_ms, mode)

    async def refresh(self, pids: Iterable[str]) -> None:
        """Keep the records of connected sockets alive (they expire a window after a crash),
        and the log while any node lives (a minute past the window after the last one)."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.log_keys():
                    pipe.pexpire(key, self.log_ttl_ms)
                for pid in pids:
                    pipe.pexpire(self._session_key(pid), self.window_ms)
                await pipe.execute()
        except RedisError as exc:
            log.info("session records not refreshed: %s", exc)

    async def discard(self, pid: str) -> None:
        try:
            await self.bus.command("EVALSHA", self._save_sha, 1, self._session_key(pid), self.node_id, "", 0, "drop")
        except RedisUnavailable:
            pass  # it expires with the window

    async def claim(self, pid: str) -> SessionRecord | None:
        """Take the record of session `pid` (nobody else can restore it after this); on the
        bus, so it shares a write with the log check `SessionRecovery.restore_session` asks
        for at the same time."""
        try:
            raw = await self.bus.script(SESSION_CLAIM, 1, self._session_key(pid))
        except (RedisUnavailable, hiredis.ReplyError) as exc:
            log.warning("session %s not restored: redis %s", pid, exc)
            return None
        if raw is None:
            return None
        _node, _, body = (raw.encode() if isinstance(raw, str) else raw).partition(b"\n")
        stored = jsonutil.loads(body.decode())
        return SessionRecord(str(stored["sid"]), pid, frozenset(stored["rooms"]), dict(stored["data"]))


class RedisRecoveryLog(RedisSessionStore, Generic[_T]):
    """One namespace's recovery log appended by a script (`LOG_PUBLISH`), and the session records:
    on a Redis Cluster, where `coup.cluster.origin_log` is not used (docs/recovery.md).

    `publish` takes a `token` per broadcast: if the script call fails (Redis went away),
    `on_unsent(tokens)` gets them back, so the node can still deliver them to its own sockets.
    """

    def __init__(self, bus: Bus, client: redis.Redis, options: ClusterOptions,
                 namespace: str, node_id: str, recovery: RecoveryOptions,
                 on_unsent: Callable[[list[_T]], None], heard_on: bytes) -> None:
        super().__init__(bus, client, options, namespace, node_id, recovery, heard_on)
        self.on_unsent = on_unsent
        origin_packets = max(1, int(recovery.max_packets * recovery.max_origin_share))
        origin_bytes = max(1, int(recovery.max_bytes * recovery.max_origin_share))
        self._log_publish = log_publish(self.window_ms, recovery.max_packets, recovery.max_bytes, origin_packets,
                                        origin_bytes, self.log_ttl_ms, int(ONCE_WINDOW * 1000), options.sharded)
        #: the namespace's logs: one, or one per log group (docs/cluster.md#redis-cluster)
        sha = script_sha(self._log_publish)
        self.groups = [_Group(g, options, namespace, node_id, sha) for g in range(options.groups)]
        self.log_key = self.groups[0].log_key
        self._keys = self.groups[0].keys
        self._by_slot = {group.slot: group for group in self.groups}
        #: log groups: per group the last offset this node handled (pushes, syncs), and as the
        #: text every packet is stamped with (docs/cluster.md#redis-cluster, "Offsets")
        self.vector: tuple[int, ...] = (0,) * len(self.groups)
        self._parts = ["0"] * len(self.groups)
        self.stamp = ".".join(self._parts)
        #: origins refused since the last reset (each logged once)
        self._refused: set[bytes] = set()
        #: what the log costs: script calls and broadcasts they carried
        self.stats = {"calls": 0, "broadcasts": 0, "unsent": 0}

    def scripts(self) -> list[str]:
        return [self._log_publish, SESSION_SAVE, LOG_READ, SESSION_CLAIM, LOG_HEAD]

    # ------------------------------------------------------------------ the log

    def publish(self, channels: Sequence[bytes], origin: str | None, stamp: bool, envelope: bytes,
                token: _T, once: str = "", group: int = 0) -> bool:
        """Append (when `stamp` and the budget admits it) to the log of `group` and publish on
        `channels` (of that group), at the bus's next flush with the group's other broadcasts
        until then (one script call per group and turn); with a `once` key, only if no
        broadcast with that key went out before. False while disconnected."""
        log = self.groups[group]
        batch = self.bus.open_arguments(log.log_key)
        if batch is None or batch is not log.batch:
            call: _Call[_T] = _Call(self._done)
            batch = self.bus.open_command(log.log_key, log.head, call, self._fold)
            if batch is None:
                return False
            call.args = batch
            log.batch, log.tokens = batch, call.tokens
            self.stats["calls"] += 1
        if len(channels) == 1:  # a list, a tuple: `_channels` gives lists
            batch += (1, channels[0])
        else:
            channels = list(channels)
            batch.append(len(channels))
            batch.extend(channels)
        if once:
            batch += (("3" if stamp else "2") + (origin or ""), once, envelope)
        else:
            batch += (("1" if stamp else "0") + (origin or ""), envelope)
        log.tokens.append(token)
        self.stats["broadcasts"] += 1
        return True

    def _fold(self, channel: bytes, data: bytes) -> bool:
        """A plain publish of this turn (a room command's answer, say): published by the same
        call, after the broadcasts before it (``L SP DATA``). On a Redis Cluster only a channel
        of a log's slot (the rooms of its group) can be, and only while that log's call of
        this turn still takes arguments: False leaves it to the bus."""
        if len(self.groups) == 1:
            log = self.groups[0]
            if log.slot is not None and key_slot(channel) != log.slot:
                return False
        else:
            found = self._by_slot.get(key_slot(channel))
            if found is None or found.batch is None or self.bus.open_arguments(found.log_key) is not found.batch:
                return False
            log = found
        assert log.batch is not None
        log.batch += (1, channel, b"0", data)
        return True

    # ------------------------------------------------------------------ log groups: offsets as vectors

    def heard(self, group: int, offset: int) -> str:
        """A push of `group`'s log at `offset` is being handled: the stamp of its packet."""
        if offset > self.vector[group]:
            self._raise(group, offset)
        return self.stamp

    def _raise(self, group: int, offset: int) -> None:
        vector = list(self.vector)
        vector[group] = offset
        self.vector = tuple(vector)
        self._parts[group] = str(offset)
        self.stamp = ".".join(self._parts)

    async def sync(self, heads: dict[int, int] | None = None) -> None:
        """Make this node's offset of each group in `heads` (None: every group, heads read
        here) at least that head: a marker published on our channel of the group after the
        head was read comes back once every push up to the head was handled. Raises
        `RedisUnavailable`, a script's error, or `TimeoutError` when a marker is not heard."""
        if heads is None:
            replies = await asyncio.gather(*(self.bus.script(LOG_HEAD, 2, *log.keys, "", self.log_ttl_ms)
                                             for log in self.groups))
            heads = {g: int(reply[0]) for g, reply in enumerate(replies)}
        behind = [(g, head) for g, head in heads.items() if head > self.vector[g]]
        if not behind:
            return
        markers = [self.bus.heard_so_far(self.groups[g].own_channel) for g, _ in behind]
        for marker in markers:  # shared with other restores; a link that breaks later fails them unheard
            marker.add_done_callback(retrieved)
        async with asyncio.timeout(self.options.probe_timeout):
            await asyncio.gather(*(asyncio.shield(marker) for marker in markers))
        for g, head in behind:
            if head > self.vector[g]:
                self._raise(g, head)

    async def sync_all(self) -> None:
        """When the link comes up: every group's offset defined before sockets are stamped with it."""
        if len(self.groups) > 1:
            try:
                await self.sync()
            except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
                log.warning("recovery log groups not synced (%s): offsets start at 0 (no recovery from them)",
                            exc or "a marker not heard")

    async def catch_up(self, floor: Sequence[int]) -> bool:
        """Make this node's offsets at least `floor` (a client's vector: what another node gave
        it) before its socket gets packets stamped here; False when that could not be done."""
        if len(floor) != len(self.groups):
            return False
        behind = [g for g, known in enumerate(floor) if known > self.vector[g]]
        if not behind:
            return True
        try:
            replies = await asyncio.gather(*(self.bus.script(LOG_HEAD, 2, *self.groups[g].keys, "", self.log_ttl_ms)
                                             for g in behind))
            await self.sync({g: int(reply[0]) for g, reply in zip(behind, replies, strict=True)})
        except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log groups not caught up (%s)", exc or "a marker not heard")
            return False
        return all(known <= self.vector[g] for g, known in enumerate(floor))

    def _done(self, call: _Call[_T], reply: Any) -> None:
        """A script call's reply other than the usual (nobody refused): an error, or the refused origins."""
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT") and not call.retried:
            # a Redis that lost our scripts (a failover, SCRIPT FLUSH): the call did not run;
            # send it again with the script's text, and load the scripts for the next ones
            call.retried = True
            asyncio.get_running_loop().create_task(self._reload())
            self.bus.command("EVAL", self._log_publish, *call.args[2:]).add_done_callback(partial(self._retried, call))
            return
        tokens = call.tokens
        if isinstance(reply, (Exception, hiredis.ReplyError)):
            log.warning("recovery log: %d broadcasts not published (%s); delivered to this node's sockets only",
                        len(tokens), reply)
            self.stats["unsent"] += len(tokens)
            self.on_unsent(tokens)
            return
        for origin in reply or ():
            if origin not in self._refused:
                if len(self._refused) > 10_000:
                    self._refused.clear()
                self._refused.add(origin)
                log.warning("socket %s holds its share of the recovery log: its further broadcasts are not kept "
                            "for replay", origin.decode(errors="replace"))

    def _retried(self, call: _Call[_T], future: asyncio.Future[Any]) -> None:
        reply = RedisUnavailable("cancelled") if future.cancelled() else future.exception() or future.result()
        if reply != []:
            self._done(call, reply)

    async def _reload(self) -> None:
        try:
            await self.load_scripts()
        except RedisError as exc:
            log.warning("recovery log scripts not loaded: %s", exc)

    async def after(self, offset: str, check_only: bool = False,
                    rooms: frozenset[str] | None = None) -> list[tuple[BroadcastOptions, Outbound]] | None:
        """Entries after `offset` (to whom, as sockets get them); None when the log lost some
        of them (or never gave `offset`): a client gets all it missed or a fresh session.

        Returned (unless `check_only`) once this node has also heard the pushes of every entry
        read: the read's reply can overtake them (another connection), and a push handled
        after the replay went out would reach the restored socket a second time, live, past
        the hold that drops a replayed packet's live copy (`coup.core.hold`).

        With log groups `offset` is a vector and only the groups of `rooms` (and group 0) are
        read (`_after_groups`)."""
        if len(self.groups) > 1:
            return await self._after_groups(offset, check_only, rooms)
        if not offset.isdigit():
            return None
        try:
            reply = await self.bus.script(LOG_READ, 2, *self._keys, offset, "1" if check_only else "0")
            if reply and len(reply) > 1 and not check_only:  # entries to replay (nothing missed: no copy to drop)
                async with asyncio.timeout(self.options.probe_timeout):
                    await asyncio.shield(self.bus.heard_so_far(self.heard_on))  # shared by the restores of a turn
        except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log unreadable (%s): a fresh session instead", exc or "its pushes not heard")
            return None
        if not reply:
            return None
        first = int(reply[0])
        entries = []
        for i, entry in enumerate(reply[1:]):
            opts, out, _packet = self._decoded.get(first + i) or self._decode(first + i, entry, 2)
            entries.append((opts, out))
        return entries

    async def _after_groups(self, offset: str, check_only: bool,
                            rooms: frozenset[str] | None) -> list[tuple[BroadcastOptions, Outbound]] | None:
        """`after` with log groups. The check (before the socket joins its rooms) reads every
        group's head and syncs the groups where this node is behind the client, so no packet
        stamped here afterwards carries a lower offset than the client holds (the next restore
        would replay what it has). The replay reads the groups of `rooms` and group 0, syncs
        those whose head this node has not heard (their late pushes would be duplicates), and
        stamps each entry per socket: the client's vector, raised entry by entry."""
        vector = parse_vector(offset, len(self.groups))
        if vector is None:
            return None
        try:
            if check_only:
                replies = await asyncio.gather(*(self.bus.script(LOG_HEAD, 2, *log.keys, str(vector[log.index]),
                                                              self.log_ttl_ms) for log in self.groups))
                if not all(int(reply[1]) for reply in replies):
                    return None
                await self.sync({g: int(reply[0]) for g, reply in enumerate(replies) if vector[g] > self.vector[g]})
                return []
            wanted = sorted({0, *(self.options.group_of(room) for room in rooms)} if rooms is not None
                            else range(len(self.groups)))
            replies = await asyncio.gather(*(self.bus.script(LOG_READ, 2, *self.groups[g].keys, str(vector[g]), "0")
                                             for g in wanted))
            if not all(replies):
                return None
            await self.sync({g: int(reply[0]) + len(reply) - 2 for g, reply in zip(wanted, replies, strict=True)})
        except (RedisUnavailable, hiredis.ReplyError, TimeoutError) as exc:
            log.warning("recovery log unreadable (%s): a fresh session instead", exc or "its pushes not heard")
            return None
        known = list(vector)
        entries: list[tuple[BroadcastOptions, Outbound]] = []
        for g, reply in zip(wanted, replies, strict=True):
            first = int(reply[0])
            for i, entry in enumerate(reply[1:]):
                opts, _out, packet = self._decoded.get((g, first + i)) or self._decode((g, first + i), entry, 2)
                known[g] = first + i
                entries.append((opts, Stamped(packet, (g, first + i), tuple(known))))
        return entries

    def log_keys(self) -> list[str]:
        return [key for group in self.groups for key in group.keys]
