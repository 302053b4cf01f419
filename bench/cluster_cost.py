"""CPU per delivered message, one node against three, at the same offered fan-out load (issue 18.3).

The harness's fan-out maximum needs the server core to ourselves; on a shared machine it
does not get it, and the maximum says more about the neighbours than about us. CPU time per
delivered message does not depend on how much of the core we got: this runs the shared
harness's `fixed` scenario (1000 clients in 10 rooms of 100, 50 senders, RATE messages/s =
100·RATE deliveries/s) against the cluster launcher of `bench/cluster.sh`, and reads each
node's and the redis-server's CPU (user + system) and read/write syscalls from /proc over a
window of steady load. Configs alternate within each round.

    flock /work/bench.lock .venv/bin/python bench/cluster_cost.py --rates 1000,1500 --rounds 2
    ... --configs coup-3 --roots /work/main,$PWD     # A/B: another checkout's code, alternating
    COUP_BENCH_RECOVERY_WINDOW=0 ... (recovery off; see bench/cluster_node.py)

Each row: deliveries/s, µs of CPU per delivered message (nodes + Redis), user and system
shares of the nodes' part, socket writes per 100 deliveries, the harness's foreign CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("SHARED_BENCH", "/work/shared/bench"))
PYTHON = os.environ.get("COUP_BENCH_PYTHON", str(HERE.parent / ".venv" / "bin" / "python"))
TICK = os.sysconf("SC_CLK_TCK")


def pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def children(parent: int, name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent), name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def sample(pid: int) -> tuple[int, int, int, int]:
    """(user ticks, system ticks, read syscalls, write syscalls) of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields[11]), int(fields[12]), int(io["syscr"]), int(io["syscw"])


def run(config: str, rate: int, window: float, port: int, root: Path, senders: int) -> dict[str, Any]:
    nodes = int(config.split("-")[1])
    stats = f"/tmp/coup-cluster-cost-{port}.json"
    launch = f"{PYTHON} {root / 'bench' / 'cluster_launch.py'} --impl coup --nodes {nodes} --stats {stats}"
    log_path = Path(f"/tmp/coup-cluster-cost-{port}.log")
    with log_path.open("w") as log:
        harness = subprocess.Popen([str(SHARED / "run.sh"), launch, str(port), "fixed", "--rate", str(rate),
                                    "--duration", str(int(window + 7)), "--senders", str(senders)],
                                   stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "LABEL": config})
        deadline = time.monotonic() + 60
        while "warm-up probe" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # the load settles
        node_pids = pids(f"cluster_node.py --port {port}")
        redis_pids = [c for launcher in pids(f"cluster_launch.py --impl coup --nodes {nodes} --stats {stats}")
                      for c in children(launcher, "redis-server")]
        before = {p: sample(p) for p in node_pids + redis_pids}
        started = time.monotonic()
        time.sleep(window)
        after = {p: sample(p) for p in node_pids + redis_pids}
        elapsed = time.monotonic() - started
        out, _ = harness.communicate(timeout=120)
    line = json.loads(out.strip().splitlines()[-1])
    delivered = float(line.get("deliveries_per_s") or 0) * elapsed

    def total(group: list[int], i: int) -> int:
        return sum(after[p][i] - before[p][i] for p in group)

    per = 1e6 / TICK / delivered if delivered else float("nan")
    return {"config": config, "rate": rate, "deliveries_per_s": line.get("deliveries_per_s"),
            "node_user_us": total(node_pids, 0) * per, "node_sys_us": total(node_pids, 1) * per,
            "redis_us": (total(redis_pids, 0) + total(redis_pids, 1)) * per,
            "writes_per_100": total(node_pids, 3) / delivered * 100 if delivered else None,
            "foreign_cpu_pct": line.get("foreign_cpu_pct"), "p99_ms": line.get("p99_ms")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="coup-1,coup-3")
    parser.add_argument("--rates", default="1000,1500")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=27340)
    parser.add_argument("--senders", default="50", help="sending clients (comma-separated: alternated)")
    parser.add_argument("--roots", default=str(HERE.parent),
                        help="checkouts to compare (comma-separated; each config runs once per root, alternating)")
    args = parser.parse_args()
    print(f"{'config':7} {'root':>10} {'snd':>4} {'rate':>5} {'deliv/s':>9} {'µs/deliv':>8} {'node usr':>8} "
          f"{'node sys':>8} "
          f"{'redis':>6} {'wr/100':>6} {'foreign%':>8} {'p99 ms':>8}", flush=True)
    port = args.port
    for _ in range(args.rounds):
        for rate in (int(r) for r in args.rates.split(",")):
            for config, root, senders in ((c, Path(r), int(n)) for c in args.configs.split(",")
                                          for r in args.roots.split(",") for n in args.senders.split(",")):
                r = run(config, rate, args.window, port, root, senders)
                port += 1
                print(f"{r['config']:7} {root.name[:10]:>10} {senders:>4} {rate:>5} {r['deliveries_per_s']:>9} "
                      f"{r['node_user_us'] + r['node_sys_us'] + r['redis_us']:>8.2f} {r['node_user_us']:>8.2f} "
                      f"{r['node_sys_us']:>8.2f} {r['redis_us']:>6.2f} {r['writes_per_100'] or 0:>6.1f} "
                      f"{r['foreign_cpu_pct']!s:>8} {r['p99_ms']!s:>8}", flush=True)


if __name__ == "__main__":
    main()
