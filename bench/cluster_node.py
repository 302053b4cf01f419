"""One CoUp node for the cluster benchmark: the shared harness's chat behaviour on our core.

`join-study {studyId}` joins `study:<id>`; `message {studyId, content}` is a room command
(run by the room's owner node, as the domain's `message` is) that broadcasts
`message {id, content, user, createdAt}` to the room. It listens on a private port at once
(stats, readiness) and on the shared port (SO_REUSEPORT, as several PaaS processes would)
only once the file named by --go exists, so the harness sees the port open when every node
is in the cluster.

    python bench/cluster_node.py --port P --private-port Q --node-id n0 --redis-url URL --go FILE
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import gc
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bytecodes import tracer
from cluster_common import serve_until_stopped
from tornado.netutil import bind_sockets
from tornado.web import RequestHandler

from coup.app import SOCKET_IO_PATH, CoupNode
from coup.config import Secret, Settings
from coup.core import Socket
from coup.heap import freeze_startup_heap
from coup.transports.front_door import FrontDoor

TOKEN = "bench-service-token-0123456789"


class CollectorTime:
    """Wall time of the cyclic collector's passes per generation: a profile does not show it,
    yet it grows with what a message keeps alive across a collection (a Redis round trip)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.passes = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.passes[generation] += 1


class StatsHandler(RequestHandler):
    def initialize(self, node: CoupNode, counts: dict[str, int]) -> None:
        self.node = node
        self.counts = counts

    def get(self) -> None:
        cluster = self.node.cluster
        collector = COLLECTOR
        self.finish({"messages": self.counts["messages"], "ready": cluster.ready if cluster else True,
                     "gc_seconds": collector.seconds, "gc_passes": collector.passes,
                     "redis": cluster.describe()["redis"] if cluster else {},
                     "rooms": cluster.describe()["rooms"] if cluster else {}})


COLLECTOR = CollectorTime()


def build(args: argparse.Namespace) -> tuple[CoupNode, dict[str, int]]:
    counts = {"messages": 0}
    # COUP_BENCH_RECOVERY_WINDOW=0 turns connection state recovery off (the default is on, 120 s)
    window = float(os.environ.get("COUP_BENCH_RECOVERY_WINDOW", "120"))
    backlog = {"listen_backlog": int(os.environ["COUP_LISTEN_BACKLOG"])} if "COUP_LISTEN_BACKLOG" in os.environ else {}
    settings = Settings(demo=True, host="127.0.0.1", port=args.port, redis_url=args.redis_url or None,
                        node_id=args.node_id, service_token=Secret(TOKEN), log_level="WARNING",
                        recovery_window=window, **backlog,
                        # COUP_BENCH_LOG_GROUPS=4: one namespace over 4 Redis Cluster slots (issue 17)
                        recovery_log_groups=int(os.environ.get("COUP_BENCH_LOG_GROUPS", "1"))).validated()
    node = CoupNode(settings)
    node.extra_rules.append((r"/bench/stats", StatsHandler, {"node": node, "counts": counts}))
    sio, nsp = node.sio, node.sio.main
    ids = itertools.count(1)

    # COUP_BENCH_ONCE=1: each message carries a once key, as the domain's chat messages do
    # (`StudyRooms` broadcasts `message:ID` once, so a resend after its owner died goes out once)
    once = os.environ.get("COUP_BENCH_ONCE") == "1"

    async def message(room: str, payload: dict[str, Any]) -> Any:
        number = next(ids)
        to = nsp.to(room).once(f"message:{args.node_id}:{number}", first=True) if once else nsp.to(room)
        to.emit("message", {
            "id": number, "content": payload.get("content"), "user": {"id": payload.get("sid")},
            "createdAt": datetime.datetime.now(datetime.UTC).isoformat()})
        return True

    sio.rooms.register("message", message)

    async def on_join(socket: Socket, args_: list[Any]) -> bool:
        data = args_[0] if args_ else None
        if isinstance(data, dict) and data.get("studyId") is not None:
            await socket.join(f"study:{data['studyId']}")
            return True  # the ack bench/reconnect_storm.py waits for (the harness asks for none)
        return False

    async def on_message(socket: Socket, args_: list[Any]) -> None:
        data = args_[0] if args_ else None
        if not isinstance(data, dict) or data.get("studyId") is None:
            return
        counts["messages"] += 1
        await sio.rooms.call(f"study:{data['studyId']}", "message", {"content": data.get("content"), "sid": socket.id})

    nsp.on("join-study", on_join)
    nsp.on("message", on_message)
    return node, counts


def coalesce_redis_writes() -> None:
    """COUP_BENCH_COALESCE_REDIS=1, an experiment (bench/README.md, "Reconnect storm"): each Redis
    connection's writes of one loop turn go out in one `write`, not one per command (in a storm,
    one SUBSCRIBE per connecting socket)."""
    import asyncio

    from coup.cluster import resp

    pending: dict[resp.RespConnection, list[bytes]] = {}

    def flush(conn: resp.RespConnection) -> None:
        chunks = pending.pop(conn)
        if not conn._closed and conn._transport is not None:
            conn._transport.write(b"".join(chunks))

    def write(self: resp.RespConnection, commands: list[tuple[Any, ...] | bytes],
              waiters: list[asyncio.Future[Any] | None]) -> None:
        if self._closed or self._transport is None:
            raise resp.RedisUnavailable("redis connection is closed")
        if self._on_push is None:
            self._waiters.extend(waiters)
        data = resp.pack_commands(commands)
        chunks = pending.get(self)
        if chunks is None:
            pending[self] = [data]
            asyncio.get_running_loop().call_soon(flush, self)
        else:
            chunks.append(data)

    resp.RespConnection.write = write  # type: ignore[method-assign]


def _profile_later(out: Path) -> None:
    """COUP_BENCH_CPROFILE=DIR: cProfile (CPU time of the node's Python code, unlike py-spy's
    wall-clock samples, which on a shared core charge a node for the time it waited) from
    COUP_BENCH_CPROFILE_AFTER s after start (default 12: the harness has connected and loads)
    for COUP_BENCH_CPROFILE_FOR s (default 4), written to DIR/<node id>.prof."""
    import cProfile

    profiler = cProfile.Profile(time.process_time)
    after = float(os.environ.get("COUP_BENCH_CPROFILE_AFTER", "12"))
    duration = float(os.environ.get("COUP_BENCH_CPROFILE_FOR", "4"))

    def stop() -> None:
        profiler.disable()
        profiler.dump_stats(out)

    loop = asyncio.get_running_loop()
    loop.call_later(after, profiler.enable)
    loop.call_later(after + duration, stop)


def _count_bytecodes_later(out: Path, counts: dict[str, int]) -> None:
    """COUP_BENCH_BYTECODES=DIR: Python bytecodes run per function (`sys.settrace` opcode
    events: the same figure in every run, where CPU seconds move by ±20 %) from
    COUP_BENCH_BYTECODES_AFTER s after start (default 15) for COUP_BENCH_BYTECODES_FOR s
    (default 20), with the client messages this node took meanwhile, written to DIR/<node id>.txt
    (`bench/chat_bytecodes.py` runs it and compares). The node runs some 30 times slower meanwhile:
    only for a light load."""
    tally: collections.Counter[str] = collections.Counter()
    first = [0]

    def start() -> None:
        first[0] = counts["messages"]
        sys.settrace(tracer(tally))

    def stop() -> None:
        sys.settrace(None)
        lines = [f"messages {counts['messages'] - first[0]}", *(f"{n}\t{key}" for key, n in tally.most_common())]
        out.write_text("\n".join(lines) + "\n")

    loop = asyncio.get_running_loop()
    after = float(os.environ.get("COUP_BENCH_BYTECODES_AFTER", "15"))
    loop.call_later(after, start)
    loop.call_later(after + float(os.environ.get("COUP_BENCH_BYTECODES_FOR", "20")), stop)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--private-port", type=int, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--go", required=True)
    args = parser.parse_args()
    if os.environ.get("COUP_BENCH_COALESCE_REDIS") == "1":
        coalesce_redis_writes()
    node, counts = build(args)
    await node.start(bind_sockets(args.private_port, "127.0.0.1"))
    if os.environ.get("COUP_BENCH_NO_FREEZE") != "1":
        # as `coup serve` does: the start-up heap out of the collector, and its young generation
        # collected every 10,000 allocations, not 700 (docs/operations.md). Until 2026-12-05 the
        # cluster nodes ran with CPython's defaults: COUP_BENCH_NO_FREEZE=1 gives those figures
        freeze_startup_heap()

    async def open_shared_port() -> None:  # through the front door, as CoupNode.start does
        assert node.http_server is not None
        door = FrontDoor(node.engine, node.origins, node.http_server, SOCKET_IO_PATH, proxies=node.proxies)
        await door.serve(bind_sockets(args.port, "127.0.0.1", reuse_port=True), backlog=node.settings.listen_backlog)

    profile_dir = os.environ.get("COUP_BENCH_CPROFILE")
    if profile_dir:
        _profile_later(Path(profile_dir) / f"{args.node_id}.prof")
    bytecodes_dir = os.environ.get("COUP_BENCH_BYTECODES")
    if bytecodes_dir:
        _count_bytecodes_later(Path(bytecodes_dir) / f"{args.node_id}.txt", counts)
    await serve_until_stopped(args.go, open_shared_port)
    await node.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
