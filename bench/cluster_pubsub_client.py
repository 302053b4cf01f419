"""What receiving one pub/sub message costs a node: redis-py's PubSub vs our RespConnection.

redis-benchmark (another process) publishes N messages of 200 bytes to one channel; this
process only receives them, and its CPU time per message is what each client costs.

    python bench/cluster_pubsub_client.py [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as redis
from cluster_common import redis_server

from coup.cluster.resp import RespConnection


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def publish_all(port: int, n: int) -> None:
    """Publish from another process (redis-benchmark), so this process only receives."""
    process = await asyncio.create_subprocess_exec(
        "redis-benchmark", "-p", str(port), "-n", str(n), "-c", "1", "-P", "100", "-q",
        "PUBLISH", "bench", "x" * 200, stdout=subprocess.DEVNULL)
    await process.wait()


async def with_redis_py(url: str, port: int, n: int) -> float:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe("bench")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    received = 0

    async def read() -> None:
        nonlocal received
        while received < n:
            message = await pubsub.get_message(timeout=5)
            if message is not None and message["type"] == "message":
                received += 1

    start = cpu()
    reader = asyncio.create_task(read())
    await publish_all(port, n)
    await reader
    spent = cpu() - start
    await pubsub.aclose()
    await client.aclose()
    return spent / n * 1e6


async def with_resp(url: str, port: int, n: int) -> float:
    received = 0
    done = asyncio.get_running_loop().create_future()

    def push(reply: list[Any]) -> None:
        nonlocal received
        if reply[0] == b"message":
            received += 1
            if received == n and not done.done():
                done.set_result(None)

    sub = await RespConnection.open(url, name="sub", timeout=2, on_push=push)
    sub.send(("SUBSCRIBE", "bench"))
    await asyncio.sleep(0.1)
    start = cpu()
    await publish_all(port, n)
    await done
    spent = cpu() - start
    sub.close()
    return spent / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server not found")
    async with redis_server() as (url, port):
        results: dict[str, list[float]] = {"redis-py PubSub.get_message": [], "RespConnection (hiredis)": []}
        for _ in range(args.repeats):
            results["redis-py PubSub.get_message"].append(await with_redis_py(url, port, args.messages))
            results["RespConnection (hiredis)"].append(await with_resp(url, port, args.messages))
        print(f"subscriber CPU per received message, {args.messages} messages of 200 bytes, "
              f"median of {args.repeats} ({time.strftime('%H:%M')})")
        for name, values in results.items():
            print(f"  {name:30} {sorted(values)[len(values) // 2]:6.2f} µs")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
