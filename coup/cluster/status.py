"""`coup status`: the cluster as Redis holds it, for an operator's terminal or a script.

Nodes, their addresses and last heartbeats, the ring epoch, and the owner of every room that
has a member somewhere come from the keys the nodes keep anyway (`coup.cluster.scripts`);
the owner is computed with the same ring the nodes build (`Ring`, same virtual nodes).
Connection counts are not in those keys: each node also writes a small report of its own
every `REPORT_INTERVAL` seconds (`StatsReporter`), kept `REPORT_TTL` seconds, so a node
that died leaves no stale counts behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from coup.cluster.options import ClusterOptions
from coup.cluster.ring import Ring
from coup.redis_clients import async_client
from coup.tasks import stop_tasks

log = logging.getLogger(__name__)

REPORT_INTERVAL = 2.0
REPORT_TTL = 10.0

#: what a node reports about itself: {"connections": {transport: n}, "sockets": {namespace: n}}
Report = Callable[[], dict[str, Any]]


class StatsReporter:
    """Writes this node's connection counts to ``P:node:ID:stats`` every couple of seconds."""

    def __init__(self, client: redis.Redis, node_id: str, options: ClusterOptions, report: Report) -> None:
        self.client = client
        self.key = options.key("node", node_id, "stats")
        self.report = report
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        try:
            await self.client.delete(self.key)
        except RedisError:
            pass  # it expires by itself

    async def write(self) -> None:
        data = {**self.report(), "at": time.time()}
        await self.client.set(self.key, json.dumps(data, separators=(",", ":")), px=int(REPORT_TTL * 1000))

    async def _loop(self) -> None:
        while True:
            try:
                await self.write()
            except RedisError as exc:
                log.debug("could not write this node's stats: %s", exc)
            await asyncio.sleep(REPORT_INTERVAL)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _numsub(reply: Any) -> dict[bytes, int]:
    """``PUBSUB SHARDNUMSUB``'s answer as channel -> subscribers, flat (``[c, n, ...]``) or in
    pairs, as redis-py versions give it."""
    if reply and isinstance(reply[0], (list, tuple)):
        return {channel: int(count) for channel, count in reply}
    return dict(zip(reply[::2], (int(n) for n in reply[1::2]), strict=True))


async def _room_channels(client: Any, options: ClusterOptions) -> tuple[list[str], dict[bytes, int]]:
    """The room channels somebody hears, and how many nodes hear each. On a Redis Cluster they
    are shard channels, each known to the primary of its slot only: every primary is asked."""
    if not options.sharded:
        pattern = options.nsp_key("r", "*", "*")
        channels = sorted(_text(c) for c in await client.pubsub_channels(pattern))
        return channels, dict(await client.pubsub_numsub(*channels)) if channels else {}
    found: list[str] = []
    hearing: dict[bytes, int] = {}
    for primary in client.get_primaries():
        names = [_text(c) for c in await client.execute_command(
            "PUBSUB", "SHARDCHANNELS", "{" + options.prefix + ":*", target_nodes=primary)]
        if names:
            # asked of the node itself: redis-py 8.2's cluster-level parser of this reply
            # expects pairs and fails on the flat list a primary sends
            hearing.update(_numsub(await primary.execute_command("PUBSUB", "SHARDNUMSUB", *names)))
        found.extend(names)
    return sorted(found), hearing


async def _lease_holders(client: Any, options: ClusterOptions, channels: list[str]) -> dict[str, str]:
    """room -> its lease's holder, for the rooms of `channels` that have one."""
    rooms = sorted({parts[1] for parts in map(options.room_channel_parts, channels) if parts is not None})
    async with client.pipeline(transaction=False) as pipe:
        for room in rooms:
            pipe.get(options.spread("lease", room))
        holders = await pipe.execute()
    return {room: _text(holder) for room, holder in zip(rooms, holders, strict=True) if holder is not None}


async def read_status(url: str, options: ClusterOptions, *, room_limit: int | None = None) -> dict[str, Any]:
    """Everything `coup status` shows, as plain data (what ``--json`` prints)."""
    options = options.for_url(url)
    client = async_client(url, socket_timeout=options.connect_timeout, socket_connect_timeout=options.connect_timeout)
    try:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        beats: list[Any] = list(await client.zrange(options.key("nodes"), 0, -1, withscores=True))
        epoch = int(await client.get(options.key("epoch")) or 0)
        nodes = sorted(_text(node) for node, _ in beats)
        last = {_text(node): now_ms - int(score) for node, score in beats}
        ring = Ring(nodes, epoch, options.vnodes)
        async with client.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.hgetall(options.key("node", node))
                pipe.get(options.key("node", node, "stats"))
            answers = await pipe.execute()
        channels, hearing = await _room_channels(client, options)
        holders = await _lease_holders(client, options, channels) if options.room_leases else {}
    finally:
        await client.aclose()

    rooms: list[dict[str, Any]] = []
    private = 0
    for channel in channels:
        parts = options.room_channel_parts(channel)
        if parts is None:
            continue
        nsp, room = parts
        if ":" not in room:  # a socket's own room (its id): one per socket, not worth a line
            private += 1
            continue
        holder = holders.get(room)  # a live holder owns its room (`coup.cluster.leases`)
        rooms.append({"namespace": nsp, "room": room, "owner": holder if holder in last else ring.owner(room),
                      "nodes": int(hearing.get(channel.encode(), 0))})
    rooms.sort(key=lambda entry: (entry["namespace"], entry["room"]))  # log groups' channels sort by group first
    owned: dict[str, int] = {}
    for entry in rooms:
        owned[entry["owner"]] = owned.get(entry["owner"], 0) + 1
    node_rows = []
    for i, node in enumerate(nodes):
        info = {_text(k): _text(v) for k, v in (answers[2 * i] or {}).items()}
        stats = json.loads(answers[2 * i + 1]) if answers[2 * i + 1] else None
        node_rows.append({
            "id": node, "address": info.get("address", ""), "started": int(info.get("started", 0) or 0),
            "last_heartbeat_ms": last[node], "connections": stats.get("connections") if stats else None,
            "sockets": stats.get("sockets") if stats else None, "rooms_owned": owned.get(node, 0),
        })
    shown = rooms if room_limit is None else rooms[:room_limit]
    return {"epoch": epoch, "nodes": node_rows, "rooms": shown, "rooms_total": len(rooms),
            "socket_rooms": private}


def format_status(status: dict[str, Any], *, prefix: str) -> str:
    """The status as tables for a terminal."""
    lines = [f"cluster '{prefix}': {len(status['nodes'])} node(s), ring epoch {status['epoch']}", ""]
    header = ("NODE", "ADDRESS", "HEARTBEAT", "CONNECTIONS", "WEBSOCKET", "POLLING", "SOCKJS", "SOCKETS", "ROOMS OWNED")
    rows = []
    for node in status["nodes"]:
        connections = node["connections"]
        counts = [str(sum(connections.values())), *(str(connections.get(t, 0)) for t in
                                                    ("websocket", "polling", "sockjs"))] if connections else ["?"] * 4
        sockets = str(sum(node["sockets"].values())) if node["sockets"] else "?"
        rows.append((node["id"], node["address"], f"{node['last_heartbeat_ms'] / 1000:.1f}s ago", *counts, sockets,
                     str(node["rooms_owned"])))
    lines += _table(header, rows)
    lines.append("")
    more = status["rooms_total"] - len(status["rooms"])
    lines.append(f"rooms with members: {status['rooms_total']} (and {status['socket_rooms']} sockets' own rooms)"
                 + (f"; the first {len(status['rooms'])} shown" if more > 0 else ""))
    if status["rooms"]:
        lines += _table(("ROOM", "NAMESPACE", "OWNER", "NODES WITH MEMBERS"),
                        [(r["room"], r["namespace"], r["owner"] or "-", str(r["nodes"])) for r in status["rooms"]])
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)]
