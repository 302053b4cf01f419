"""Start a redis-server and N nodes sharing one port (SO_REUSEPORT) for the shared harness.

`run.sh` starts this as its SERVER_CMD: everything here stays in run.sh's session, so the
harness's server CPU covers Redis and every node. The nodes run in their own process groups
so that run.sh's SIGTERM reaches only this launcher, which then records the figures the
harness cannot see (Redis commands and pub/sub deliveries, messages handled per node) into
--stats before it stops the nodes.

    cluster_launch.py --impl coup|pysio --nodes N [--no-redis] --stats FILE   (PORT from the environment)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from cluster_common import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = os.environ.get("COUP_BENCH_PYTHON", "/work/main/.venv/bin/python")
TOKEN = "bench-service-token-0123456789"


def get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def cpu_ms(pid: int) -> int:
    """CPU (user + system) process `pid` used so far, in ms."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def redis_counters(client: redis.Redis) -> dict[str, int]:
    stats = client.info("stats")
    commands = client.info("commandstats")
    cpu = client.info("cpu")
    return {"commands": int(stats["total_commands_processed"]),
            # where the server core's time goes: Redis itself (the nodes' share is `nodes_cpu_ms`)
            "cpu_ms": int((float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1000),
            "publish": int(commands.get("cmdstat_publish", {}).get("calls", 0)),
            "evalsha": int(commands.get("cmdstat_evalsha", {}).get("calls", 0))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["coup", "pysio"], required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--stats", required=True)
    args = parser.parse_args()
    port = int(os.environ["PORT"])
    children: list[subprocess.Popen[bytes]] = []
    redis_url = ""
    client: redis.Redis | None = None
    if not args.no_redis:
        redis_port = free_port()
        children.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, process_group=0))
        redis_url = f"redis://127.0.0.1:{redis_port}"
        client = redis.Redis.from_url(redis_url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
    go = Path(tempfile.mkdtemp(prefix="coup-bench-")) / "go"
    private = [free_port() for _ in range(args.nodes)]
    script = HERE / ("cluster_node.py" if args.impl == "coup" else "cluster_pysio_node.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for i in range(args.nodes):
        children.append(subprocess.Popen(
            [PYTHON, str(script), "--port", str(port), "--private-port", str(private[i]), "--node-id", f"n{i}",
             "--redis-url", redis_url, "--go", str(go)], env=env, process_group=0))

    def ready() -> bool:
        try:
            if not all(get_json(f"http://127.0.0.1:{p}/bench/stats")["ready"] for p in private):
                return False
            if args.impl == "coup" and redis_url:
                return all(len(get_json(f"http://127.0.0.1:{p}/api/cluster", TOKEN)["nodes"]) == args.nodes
                           for p in private)
            return True
        except OSError:
            return False

    deadline = time.monotonic() + 15
    while not ready():
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            for child in children:
                child.kill()
            sys.exit("nodes did not come up")
        time.sleep(0.1)
    before = redis_counters(client) if client else {}
    nodes = children[1:] if client else children
    nodes_before = sum(cpu_ms(c.pid) for c in nodes)
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stopping.update(now=True))
    go.touch()
    print(f"{args.nodes} {args.impl} node(s) on port {port}, redis {redis_url or 'none'}", flush=True)
    while not stopping["now"] and all(c.poll() is None for c in children):
        time.sleep(0.1)

    stats: dict[str, Any] = {"impl": args.impl, "nodes": args.nodes, "redis": bool(redis_url)}
    try:
        per_node = [get_json(f"http://127.0.0.1:{p}/bench/stats") for p in private]
        stats["messages"] = sum(n["messages"] for n in per_node)
        stats["messages_per_node"] = [n["messages"] for n in per_node]
        stats["nodes_cpu_ms"] = sum(cpu_ms(c.pid) for c in nodes) - nodes_before
        if client is not None:
            after = redis_counters(client)
            stats.update({f"redis_{k}": after[k] - before[k] for k in after})
            if args.impl == "coup":
                stats["redis_deliveries"] = sum(n["redis"].get("received", 0) for n in per_node)
                stats["room_calls"] = {k: sum(n["rooms"].get(k, 0) for n in per_node)
                                       for k in ("local", "remote", "fallback")}
            else:  # AsyncRedisManager: every node reads the one channel
                subscribers = int(client.pubsub_numsub("socketio")[0][1])
                stats["redis_deliveries"] = stats["redis_publish"] * subscribers
    except OSError as exc:
        stats["error"] = str(exc)
    Path(args.stats).write_text(json.dumps(stats))
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    main()
