"""The cluster chat scenario for several variants in alternating rounds, and what each adds.

Single runs of `bench/cluster.sh` move by ±15 % on this machine, more than the effects looked
for (the recovery log's cost, issue 12), so only many rounds in which every variant runs once,
the order rotating, say anything. Each variant is a name and the environment it runs with;
the first is the reference the others are compared with, round by round. The order rotates,
and every other cycle of rotations runs reversed, so that within a round each variant runs
right after each other one equally often over 2 x (number of variants) rounds (a run can leave
the next one a busier machine: with rotations only, three variants always ran in one succession):

    .venv/bin/python bench/recovery_rounds.py --rounds 4 \\
        off=COUP_BENCH_RECOVERY_WINDOW=0 on=COUP_BENCH_RECOVERY_WINDOW=120
    # a variant from another tree (its bench/cluster.sh, so its nodes run that tree's coup)
    .venv/bin/python bench/recovery_rounds.py off=COUP_BENCH_RECOVERY_WINDOW=0 \\
        other=COUP_BENCH_RECOVERY_WINDOW=120,TREE=/work/wt/other

With ``--together`` a round's variants run at the same time, not in turns: each its own Redis,
nodes and generator (other ports), the servers of both on the server core, started 0.2 s
apart (a whole second made the one started first measure a busier window: +1.8 points on
whichever variant it was, over 30 rounds; the order rotates, so that cancels out in the median,
but it widens it). A slow or fast spell of the machine then falls on both alike: two identical variants
came out within ±3 % of each other per round while the level moved by a third between rounds,
where rounds in turns move by ±15 % (bench/README.md, "Off and on at the same time"). The
machine is busier so, and every figure higher than in a run alone; the comparison is what holds.

    .venv/bin/python bench/recovery_rounds.py --together --rounds 30 \\
        off=COUP_BENCH_RECOVERY_WINDOW=0 on=COUP_BENCH_RECOVERY_WINDOW=120

Prints, per round and variant, server CPU per delivered message (the harness's srv CPU % times
10⁴ / deliveries per s), Redis's and the nodes' CPU per message a client sent, p50 and the
harness's foreign CPU, then the medians and each variant's added CPU per delivery against
the first (per round, and its median).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]

    @property
    def tree(self) -> Path:
        return Path(self.env.get("TREE", str(HERE.parent)))


@dataclass(frozen=True)
class Figures:
    per_delivery: float
    redis: float
    nodes: float
    p50: float
    foreign: float


def parse_variant(text: str) -> Variant:
    name, _, settings = text.partition("=")
    env = dict(part.split("=", 1) for part in settings.split(",") if part)
    return Variant(name, env)


def figures(line: dict[str, Any]) -> Figures:
    cluster = line.get("cluster", {})
    messages = cluster.get("messages") or 1
    return Figures(
        per_delivery=line["server_cpu_pct"] * 1e4 / line["deliveries_per_s"],
        redis=sum(cluster.get("redis_cpu_us") or [0]) / messages,
        nodes=(cluster.get("nodes_proc") or {}).get("cpu_us", 0) / messages,
        p50=line.get("p50_ms") or 0.0,
        foreign=line.get("foreign_cpu_pct") or 0.0,
    )


def start(variant: Variant, duration: int, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`variant`'s chat run (its tree's bench/cluster.sh), started."""
    env = {**os.environ, "SCENARIOS": "chat", "CHAT_CONFIGS": "coup-3", "LOADGEN_ARGS": f"--duration {duration}",
           **{k: v for k, v in variant.env.items() if k != "TREE"}, **(extra or {})}
    env.setdefault("COUP_BENCH_PYTHON", str(HERE.parent / ".venv" / "bin" / "python"))
    return subprocess.Popen(["bash", str(variant.tree / "bench" / "cluster.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(variant: Variant, process: subprocess.Popen[str]) -> Figures:
    """The figures of a run `start` began, once it ended."""
    _, stderr = process.communicate()
    found = re.search(r"^results: (.+)$", stderr, re.M)
    if found is None:
        raise SystemExit(f"{variant.name}: no results\n{stderr[-2000:]}")
    lines = [json.loads(raw) for raw in Path(found.group(1)).read_text().splitlines() if raw.strip()]
    return figures(lines[-1])


def run(variant: Variant, duration: int) -> Figures:
    return finish(variant, start(variant, duration))


def together(order: list[Variant], duration: int, stagger: float, scratch: Path) -> dict[str, Figures]:
    """Every variant's run at once (each its own Redis, nodes and generator, on the same cores),
    started `stagger` s apart in `order`: a slow or fast spell of the machine then falls on all
    of them alike, where in turns it falls on whichever ran then."""
    started = []
    for i, variant in enumerate(order):
        if i:
            time.sleep(stagger)
        out = scratch / f"{variant.name}.jsonl"  # a new directory each round: no earlier lines in it
        started.append((variant, start(variant, duration, {"PORT_BASE": str(27140 + 20 * i), "CLUSTER_OUT": str(out)})))
    return {variant.name: finish(variant, process) for variant, process in started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=parse_variant, help="NAME=VAR=VALUE[,VAR=VALUE...]")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=30, help="seconds of chat per run")
    parser.add_argument("--together", action="store_true",
                        help="run a round's variants at the same time, not in turns (see `together`)")
    parser.add_argument("--stagger", type=float, default=0.2, help="seconds between the starts with --together")
    args = parser.parse_args()
    variants: list[Variant] = args.variants
    reference = variants[0].name
    results: list[dict[str, Figures]] = []
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        if r // len(variants) % 2:  # every other cycle reversed: each variant follows each other one as often
            order.reverse()
        if args.together:
            with tempfile.TemporaryDirectory() as scratch:
                results.append(together(order, args.duration, args.stagger, Path(scratch)))
        else:
            results.append({v.name: run(v, args.duration) for v in order})
        row = results[-1]
        cells = [f"{v.name} {row[v.name].per_delivery:.1f} µs/deliv (Redis {row[v.name].redis:.1f}, nodes "
                 f"{row[v.name].nodes:.0f} µs/msg; p50 {row[v.name].p50:.2f} ms; foreign {row[v.name].foreign:.0f} %)"
                 for v in variants]
        added = [f"{v.name} {100 * (row[v.name].per_delivery / row[reference].per_delivery - 1):+.1f} %"
                 for v in variants[1:]]
        print(f"round {r + 1} ({', '.join(v.name for v in order)}): " + "; ".join(cells) + " | " + ", ".join(added),
              flush=True)
    print("medians:")
    for v in variants:
        runs = [row[v.name] for row in results]
        print(f"  {v.name}: {statistics.median(f.per_delivery for f in runs):.1f} µs per delivery, Redis "
              f"{statistics.median(f.redis for f in runs):.1f} and nodes {statistics.median(f.nodes for f in runs):.1f}"
              " µs per message")
    for v in variants[1:]:
        added = [100 * (row[v.name].per_delivery / row[reference].per_delivery - 1) for row in results]
        print(f"  {v.name} against {reference}: {statistics.median(added):+.1f} % per delivery (rounds: "
              + ", ".join(f"{a:+.1f}" for a in added) + ")")
        low, high = median_interval(added)
        print(f"    mean {statistics.mean(added):+.1f} %; a rough 95 % interval of the median "
              f"{low:+.1f} to {high:+.1f} %")


def median_interval(values: list[float]) -> tuple[float, float]:
    """A rough 95 % interval of the median of `values`: the order statistics n/2 ∓ 0.98 √n
    (the binomial's normal approximation; for 40 rounds the 14th and 27th)."""
    ordered = sorted(values)
    n = len(ordered)
    low = max(1, round(n / 2 - 0.98 * n ** 0.5))
    high = min(n, round(n / 2 + 1 + 0.98 * n ** 0.5))
    return ordered[low - 1], ordered[high - 1]


if __name__ == "__main__":
    main()
