"""Start a redis-server and N nodes sharing one port (SO_REUSEPORT) for the shared harness.

`run.sh` starts this as its SERVER_CMD: everything here stays in run.sh's session, so the
harness's server CPU covers Redis and every node. The nodes run in their own process groups
so that run.sh's SIGTERM reaches only this launcher, which then records the figures the
harness cannot see (Redis commands and pub/sub deliveries, messages handled per node) into
--stats before it stops the nodes.

    cluster_launch.py --impl coup|pysio --nodes N [--no-redis | --redis-shards S] --stats FILE

(PORT from the environment.)

``--redis-shards S`` starts a Redis Cluster of S primaries without replicas (the bench
measures sharding, not failover) and gives the nodes ``redis+cluster://``; the Redis figures
are then summed over the primaries (SPUBLISH counted with PUBLISH).
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


def redis_cpu_us(clients: list[redis.Redis]) -> list[int]:
    """CPU each server has used (user + system, µs): how the work spread over a cluster's primaries."""
    return [int((float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6)
            for cpu in (client.info("cpu") for client in clients)]


def proc_figures(pid: int) -> dict[str, int]:
    """One node process's CPU (user + system µs), read / write syscalls and context switches,
    from /proc: where a node's CPU goes that a Python profile does not show (I/O, waits)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    return {"cpu_us": (int(stat[11]) + int(stat[12])) * 1_000_000 // tick, "syscr": int(io["syscr"]),
            "syscw": int(io["syscw"]), "vcsw": int(status["voluntary_ctxt_switches"]),
            "ivcsw": int(status["nonvoluntary_ctxt_switches"])}


def redis_counters(clients: list[redis.Redis]) -> dict[str, int]:
    """Commands, publishes and script calls, summed over the servers (a cluster's primaries)."""
    total = {"commands": 0, "publish": 0, "evalsha": 0}
    for client in clients:
        stats = client.info("stats")
        commands = client.info("commandstats")
        calls = {name: int(commands.get(f"cmdstat_{name}", {}).get("calls", 0))
                 for name in ("publish", "spublish", "evalsha")}
        total["commands"] += int(stats["total_commands_processed"])
        total["publish"] += calls["publish"] + calls["spublish"]
        total["evalsha"] += calls["evalsha"]
    return total


def redis_command_usec(clients: list[redis.Redis]) -> dict[str, list[int]]:
    """Per command: calls and µs Redis spent in it, summed over the servers (a script's time
    includes its inner calls, which are counted on their own too)."""
    total: dict[str, list[int]] = {}
    for client in clients:
        for name, figures in client.info("commandstats").items():
            entry = total.setdefault(name.removeprefix("cmdstat_"), [0, 0])
            entry[0] += int(figures["calls"])
            entry[1] += int(figures["usec"])
    return total


def start_redis(children: list[subprocess.Popen[bytes]], *extra: str) -> redis.Redis:
    """A redis-server on a free port in its own process group (added to `children`), answering."""
    port = free_port()
    # COUP_BENCH_REDIS_CPU=1: Redis on that core instead of the nodes' (a deployment's Redis has
    # its own machine; on a shared core its work also slows the nodes: bench/README.md)
    cpu = os.environ.get("COUP_BENCH_REDIS_CPU")
    children.append(subprocess.Popen(
        [*(["taskset", "-c", cpu] if cpu else []),
         "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL, process_group=0))
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return client


def start_redis_cluster(children: list[subprocess.Popen[bytes]], shards: int) -> tuple[str, list[redis.Redis]]:
    """A Redis Cluster of `shards` primaries (no replicas); its URL and a client per primary."""
    workdir = tempfile.mkdtemp(prefix="coup-bench-rcluster-")
    # the bus port named: its default (port + 10000) is past 65535 for a free port above 55535
    clients = [start_redis(children, "--cluster-enabled", "yes", "--dir", workdir, "--cluster-config-file",
                           f"{workdir}/nodes-{i}.conf", "--cluster-port", str(free_port())) for i in range(shards)]
    addresses = [f"127.0.0.1:{c.connection_pool.connection_kwargs['port']}" for c in clients]
    subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, timeout=30)
    deadline = time.monotonic() + 15
    while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
        if time.monotonic() > deadline:
            sys.exit("the Redis Cluster did not settle")
        time.sleep(0.1)
    return "redis+cluster://" + ",".join(addresses), clients


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["coup", "pysio"], required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--redis-shards", type=int, default=0, help="a Redis Cluster of this many primaries")
    parser.add_argument("--stats", required=True)
    args = parser.parse_args()
    port = int(os.environ["PORT"])
    children: list[subprocess.Popen[bytes]] = []
    redis_url = ""
    clients: list[redis.Redis] = []
    try:
        if args.redis_shards:
            redis_url, clients = start_redis_cluster(children, args.redis_shards)
        elif not args.no_redis:
            clients = [start_redis(children)]
            redis_url = f"redis://127.0.0.1:{clients[0].connection_pool.connection_kwargs['port']}"
    except BaseException:  # the servers are in their own process groups: nobody else stops them
        for child in children:
            child.kill()
        raise
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
    before = redis_counters(clients) if clients else {}
    cpu_before = redis_cpu_us(clients)
    usec_before = redis_command_usec(clients)
    nodes = children[-args.nodes:]
    procs_before = [proc_figures(c.pid) for c in nodes]
    nodes_before = [get_json(f"http://127.0.0.1:{p}/bench/stats") for p in private] if args.impl == "coup" else []
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stopping.update(now=True))
    go.touch()
    print(f"{args.nodes} {args.impl} node(s) on port {port}, redis {redis_url or 'none'}", flush=True)
    while not stopping["now"] and all(c.poll() is None for c in children):
        time.sleep(0.1)

    stats: dict[str, Any] = {"impl": args.impl, "nodes": args.nodes, "redis": bool(redis_url),
                             "redis_shards": args.redis_shards}
    try:
        per_node = [get_json(f"http://127.0.0.1:{p}/bench/stats") for p in private]
        # each node's figures from the start of the load to its end (summed over the nodes)
        procs = [proc_figures(c.pid) for c in nodes]
        stats["nodes_proc"] = {k: sum(a[k] - b[k] for a, b in zip(procs, procs_before, strict=True))
                               for k in procs[0]}
        stats["messages"] = sum(n["messages"] for n in per_node)
        stats["messages_per_node"] = [n["messages"] for n in per_node]
        if nodes_before:  # the cyclic collector's passes and time per generation, summed over the nodes
            for key in ("gc_seconds", "gc_passes"):
                stats[key] = [sum(a[key][g] - b[key][g] for a, b in zip(per_node, nodes_before, strict=True))
                              for g in range(3)]
        if clients:
            after = redis_counters(clients)
            stats.update({f"redis_{k}": after[k] - before[k] for k in after})
            usec = redis_command_usec(clients)
            zero = [0, 0]
            stats["redis_command_usec"] = {k: [v[0] - usec_before.get(k, zero)[0], v[1] - usec_before.get(k, zero)[1]]
                                           for k, v in usec.items() if v[0] > usec_before.get(k, zero)[0]}
            stats["redis_cpu_us"] = [a - b for a, b in zip(redis_cpu_us(clients), cpu_before, strict=True)]
            if args.impl == "coup":
                stats["redis_deliveries"] = sum(n["redis"].get("received", 0) for n in per_node)
                stats["room_calls"] = {k: sum(n["rooms"].get(k, 0) for n in per_node)
                                       for k in ("local", "remote", "fallback")}
            else:  # AsyncRedisManager: every node reads the one channel
                subscribers = int(clients[0].pubsub_numsub("socketio")[0][1])
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
