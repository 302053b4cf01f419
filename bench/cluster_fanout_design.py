"""Measure the two interest-only fan-out designs of issue 4 against a real redis-server.

A: per-room channels, subscribed on demand (a node SUBSCRIBEs to a room's channel while it
   has a member there; a broadcast is one PUBLISH; Redis copies it to interested nodes).
B: owner-kept interest sets with per-node inbox channels (a node SADDs itself to the room's
   interest set while it has a member there; a broadcast is SMEMBERS + one PUBLISH per
   interested node's inbox). B-cached is B with the set cached at the publisher (no SMEMBERS;
   the cache needs invalidation messages, not counted: it is B's best case).

Same rooms, same members, same messages for each; prints Redis CPU per delivered message,
Redis commands per message, wall time, membership-change cost and memory per subscription.

    python bench/cluster_fanout_design.py [--nodes 3] [--rooms 1000] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster_common import redis_server

from coup.cluster.resp import RespConnection


class Subscriber:
    def __init__(self) -> None:
        self.received = 0
        self.conn: RespConnection | None = None

    def push(self, reply: list[Any]) -> None:
        if reply[0] == b"message":
            self.received += 1


async def info(conn: RespConnection, section: str) -> dict[str, str]:
    raw = (await conn.call("INFO", section)).decode()
    return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)


async def redis_cpu(conn: RespConnection) -> float:
    cpu = await info(conn, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def commands(conn: RespConnection) -> int:
    return int((await info(conn, "stats"))["total_commands_processed"])


async def run(design: str, url: str, nodes: int, membership: list[list[int]], messages: list[int]) -> dict[str, Any]:
    ctl = await RespConnection.open(url, name="ctl", timeout=2)
    await ctl.call("FLUSHALL")
    subs = [Subscriber() for _ in range(nodes)]
    for i, sub in enumerate(subs):
        sub.conn = await RespConnection.open(url, name=f"node{i}", timeout=2, on_push=sub.push)
    pub = await RespConnection.open(url, name="pub", timeout=2)

    # membership: who hears which room
    t0 = time.perf_counter()
    c0 = await commands(ctl)
    for room, members in enumerate(membership):
        for n in members:
            if design == "A":
                subs[n].conn.send(("SUBSCRIBE", f"r:{room}"))  # type: ignore[union-attr]
            else:
                pub.send(("SADD", f"interest:{room}", str(n)))
    if design != "A":
        for n, sub in enumerate(subs):
            sub.conn.send(("SUBSCRIBE", f"inbox:{n}"))  # type: ignore[union-attr]
    await pub.call("PING")
    await asyncio.sleep(0.3)
    join_commands = await commands(ctl) - c0 - 1
    join_s = time.perf_counter() - t0
    mem = int((await info(ctl, "memory"))["used_memory"])

    expected = sum(len(membership[r]) for r in messages)
    cache = {room: [str(n) for n in members] for room, members in enumerate(membership)}
    cpu0, c0 = await redis_cpu(ctl), await commands(ctl)
    start = time.perf_counter()
    payload = b"x" * 200
    batch: list[tuple[Any, ...]] = []
    for i, room in enumerate(messages):
        if design == "A":
            batch.append(("PUBLISH", f"r:{room}", payload))
        else:
            if design == "B":
                members = [m.decode() for m in await pub.call("SMEMBERS", f"interest:{room}")]
            else:
                members = cache[room]
            batch.extend(("PUBLISH", f"inbox:{n}", payload) for n in members)
        if len(batch) >= 64 or i == len(messages) - 1:
            pub.send(*batch)
            batch = []
            await asyncio.sleep(0)
    while sum(s.received for s in subs) < expected:
        await asyncio.sleep(0.005)
        if time.perf_counter() - start > 60:
            break
    wall = time.perf_counter() - start
    cpu = await redis_cpu(ctl) - cpu0
    cmds = await commands(ctl) - c0 - 2  # minus our two INFO calls
    for conn in [ctl, pub, *[s.conn for s in subs]]:
        conn.close()  # type: ignore[union-attr]
    return {"design": design, "delivered": sum(s.received for s in subs), "expected": expected,
            "redis_us_per_delivery": cpu / expected * 1e6, "commands_per_message": cmds / len(messages),
            "deliveries_per_s": expected / wall, "join_commands": join_commands, "join_ms": join_s * 1000,
            "memory_bytes": mem}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server not found")
    async with redis_server() as (url, _):
        rng = random.Random(7)
        # each room has members on 2 of the nodes (a study group spread over a small cluster)
        membership = [rng.sample(range(args.nodes), min(2, args.nodes)) for _ in range(args.rooms)]
        messages = [rng.randrange(args.rooms) for _ in range(args.messages)]
        results: dict[str, list[dict[str, Any]]] = {"A": [], "B": [], "B-cached": []}
        for _ in range(args.repeats):
            for design in results:
                results[design].append(await run(design, url, args.nodes, membership, messages))
        print(f"{args.nodes} nodes, {args.rooms} rooms (members on 2 nodes each), {args.messages} messages, "
              f"median of {args.repeats}")
        print(f"{'design':10} {'Redis µs/deliv':>15} {'cmds/msg':>9} {'deliv/s':>9} {'join cmds':>10} "
              f"{'lost':>5}")
        for design, runs in results.items():
            def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return float(sorted(r[key] for r in runs)[len(runs) // 2])
            lost = sum(r["expected"] - r["delivered"] for r in runs)
            print(f"{design:10} {med('redis_us_per_delivery'):15.2f} {med('commands_per_message'):9.2f} "
                  f"{med('deliveries_per_s'):9.0f} {med('join_commands'):10.0f} {lost:5d}")
        sub_mem = (results["A"][0]["memory_bytes"] - results["B"][0]["memory_bytes"])
        pairs = sum(len(m) for m in membership)
        print(f"memory of A's room subscriptions over B's interest sets: {sub_mem / pairs:.0f} bytes per "
              f"(node, room) pair")


if __name__ == "__main__":
    asyncio.run(main())
