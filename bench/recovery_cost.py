"""What the Redis recovery log costs per broadcast: recovery on and off in one run (issue 12).

    flock /work/bench.lock .venv/bin/python bench/recovery_cost.py            # ~1 min
    flock /work/bench.lock .venv/bin/python bench/recovery_cost.py --rounds 9 --messages 4000

A cluster node in this process (the real `Cluster`, `RedisAdapter`, `EngineServer`,
`SocketServer`) on its own redis-server, with a chat room of N (default 2) real WebSocket
sessions over loopback TCP read by a drain subprocess (`bench/micro.py`'s `FanoutRig`).
Each round sends M broadcasts, one per loop turn (chat traffic, not a burst), and waits until
every receiver has them. CPU is counted where it is spent: this process (user + system: the
node's encode, publish or script call, the push read back and the writes to the sockets) and
the redis-server (`INFO cpu` delta). Recovery off: the node delivers at once and publishes the
envelope (its own copy comes back and is skipped). On: the log the nodes sequence themselves
(`coup.cluster.origin_log`): delivered at once too, published and appended in one MULTI / EXEC
per loop turn (its own copy comes back and is skipped). Off and on alternate; the best round of each is printed,
so foreign load on a shared machine weighs on both alike and mostly drops out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the package, and the cluster benchmark's helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import redis  # noqa: E402
from cluster_launch import start_redis  # noqa: E402

from bench.micro import PAYLOAD, FanoutRig  # noqa: E402
from coup.cluster.node import Cluster  # noqa: E402
from coup.cluster.options import ClusterOptions  # noqa: E402
from coup.core.options import RecoveryOptions, ServerOptions  # noqa: E402
from coup.core.server import SocketServer  # noqa: E402
from coup.engine.options import EngineOptions  # noqa: E402
from coup.engine.server import EngineServer  # noqa: E402


class ClusterRig(FanoutRig):
    """`FanoutRig` on a cluster node: the room's broadcasts go through Redis."""

    def __init__(self, n: int, url: str, recovery: bool, prefix: str | None = None) -> None:
        """`prefix`: the Redis prefix, for rigs that are nodes of one cluster (a new one by default)."""
        super().__init__(n)
        self.cluster = Cluster(url, "b" + secrets.token_hex(2),
                               ClusterOptions(prefix=prefix or "b" + secrets.token_hex(3)))
        self.engine = EngineServer(EngineOptions(sid_prefix=self.cluster.sid_prefix))
        self.sio = SocketServer(self.engine, ServerOptions(recovery=RecoveryOptions() if recovery else None),
                                adapter_factory=self.cluster.adapter_factory, presence=self.cluster.presence,
                                rooms=self.cluster.rooms, node_id=self.cluster.node_id)
        self.nsp = self.sio.main
        self.cluster.bind(self.sio)

    async def start(self) -> None:
        await self.cluster.start("127.0.0.1:1")
        await self.sio.start()
        await super().start()

    async def stop(self) -> None:
        if self.drain is not None:
            self.drain.kill()
            self.drain.wait()
        await self.cluster.stop()

    async def cpu(self, messages: int) -> float:
        """CPU µs of this process per broadcast, until every receiver has them."""
        room = self.nsp.to("room")
        start = time.process_time()
        for _ in range(messages):
            room.emit("bench", PAYLOAD)
            await asyncio.sleep(0)
        await self.wait_delivered(messages * self.n)
        return (time.process_time() - start) * 1e6 / messages


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(url: str, client: redis.Redis, args: argparse.Namespace) -> tuple[dict[str, list[float]], int]:
    """Best (node µs, redis µs) per broadcast for each mode, and the log's length at the end."""
    rigs = {"off": ClusterRig(args.room, url, False), "on": ClusterRig(args.room, url, True)}
    for rig in rigs.values():
        await rig.start()
    best: dict[str, list[float]] = {"off": [1e9, 1e9], "on": [1e9, 1e9]}
    try:
        for _ in range(args.rounds):
            for mode, rig in rigs.items():
                before = redis_cpu(client)
                node = await rig.cpu(args.messages)
                in_redis = (redis_cpu(client) - before) * 1e6 / args.messages
                if node + in_redis < sum(best[mode]):
                    best[mode] = [node, in_redis]
    finally:
        for rig in rigs.values():
            await rig.stop()
    lists = client.keys(f"{rigs['on'].cluster.options.prefix}:rlog:/:o:*")
    return best, sum(int(client.llen(key)) for key in lists)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--room", type=int, default=2)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    children: list[subprocess.Popen[bytes]] = []
    try:
        client = start_redis(children, "--loglevel", "warning")
        port = client.connection_pool.connection_kwargs["port"]
        best, log_len = asyncio.run(measure(f"redis://127.0.0.1:{port}", client, args))
    finally:
        for child in children:
            child.kill()
            child.wait()
    print(f"room of {args.room}, {args.messages} broadcasts per round, one per loop turn, best of {args.rounds}")
    print("recovery | node µs/msg | redis µs/msg | total µs/msg")
    for mode, (node, in_redis) in best.items():
        print(f"{mode:8} | {node:11.1f} | {in_redis:12.1f} | {node + in_redis:12.1f}")
    off, on = sum(best["off"]), sum(best["on"])
    print(f"added by the Redis recovery log: {on - off:.1f} µs per broadcast ({(on / off - 1) * 100:+.0f} %); "
          f"log entries kept: {log_len}")


if __name__ == "__main__":
    main()
