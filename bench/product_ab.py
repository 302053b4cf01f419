"""The product path A/B, interleaved: several CoUp variants (and Node) take turns, round by round.

`bench/product_path.py` runs each server once, one after the other: on a machine whose load
changes within a minute (other people's test runs), the last server measured may meet a
different machine than the first. Here every round runs an open-loop phase at `--rate`
(send -> ack p50 / p99) and a closed-loop phase (persisted messages/s) for every target, the
order rotated each round, and the medians over the rounds are compared.

A variant is CoUp from this tree with extra environment variables, or at another commit:

    python bench/product_ab.py --rounds 4 --rate 1300 --closed \\
        --variant prepared=COUP_DB_PREPARE=1 --variant whole=COUP_DB_PREPARE=0 \\
        --before productrt --node

(bench/README.md, "A second commit in flight, measured again": the writer's connections were
variants through three measurement-only environment variables.)
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.product_path import (
    REF,
    ROOT,
    Target,
    coup_environment,
    export_commit,
    run_phase,
    schemas,
    seed,
    with_schema,
    write_users,
)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, pairs = spec.partition("=")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=1300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="name=ENV=VALUE,ENV=VALUE (this tree)")
    parser.add_argument("--before", help="also CoUp at this commit")
    parser.add_argument("--node", action="store_true", help="also the Node reference")
    parser.add_argument("--closed", action="store_true", help="also a closed-loop phase per round")
    args = parser.parse_args()
    secret = secrets.token_urlsafe(48)
    variants = [parse_variant(spec) for spec in args.variant]
    names = [name for name, _ in variants] + (["before"] if args.before else []) + (["node"] if args.node else [])
    with schemas(args.database, names) as made, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        users_file = write_users(tmp / "users.json", secret, args.users, args.studies)
        for schema in made.values():
            seed(with_schema(args.database, schema), args.users, args.studies)
        coup_env = coup_environment(secret)
        targets = [Target(name, made[name], [sys.executable, "-m", "coup", "serve"],
                          {**coup_env, **env, "DATABASE_URL": with_schema(args.database, made[name])}, ROOT)
                   for name, env in variants]
        if args.before:
            old = export_commit(args.before, tmp / "before")
            targets.append(Target("before", made["before"], [sys.executable, "-m", "coup", "serve"],
                                  {**coup_env, "PYTHONPATH": str(old),
                                   "DATABASE_URL": with_schema(args.database, made["before"])}, old))
        if args.node:
            targets.append(Target("node", made["node"], ["node", str(REF / "server.js")],
                                  {"JWT_SECRET": secret, "DATABASE_URL": args.database, "PG_SCHEMA": made["node"]},
                                  REF))
        logs = Path(tempfile.mkdtemp(prefix="product_ab_logs_"))
        results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for round_no in range(args.rounds):
            shift = round_no % len(targets)
            for target in targets[shift:] + targets[:shift]:
                row: dict[str, Any] = {"open": run_phase(target, users_file, "open", args.duration, args.warmup,
                                                         args.rate, logs)}
                if args.closed:
                    row["closed"] = run_phase(target, users_file, "closed", args.duration, args.warmup, 0, logs)
                results[target.name].append(row)
                o = row["open"]
                line = (f"round {round_no + 1} {target.name}: open @ {args.rate:g}/s ack p50 / p99 "
                        f"{o['ack_p50_ms']} / {o['ack_p99_ms']} ms, last member {o['last_p50_ms']} / "
                        f"{o['last_p99_ms']} ms, server CPU {o['server_cpu_pct']} %, {o['cpu_us_per_msg']} us/msg")
                if args.closed:
                    c = row["closed"]
                    line += f"; closed {c['acked_per_s']:,} msg/s, {c['cpu_us_per_msg']} us/msg"
                print(line, flush=True)
        print()
        print("| target | ack p50 (rounds) | ack p99 (rounds) | median p50 / p99 | last member median p50 / p99 |"
              + (" closed msg/s (rounds) | median |" if args.closed else ""))
        print("|---|---|---|---|---|" + ("---|---|" if args.closed else ""))
        for target in targets:
            rows = results[target.name]
            p50 = [r["open"]["ack_p50_ms"] for r in rows]
            p99 = [r["open"]["ack_p99_ms"] for r in rows]
            l50 = [r["open"]["last_p50_ms"] for r in rows]
            l99 = [r["open"]["last_p99_ms"] for r in rows]
            line = (f"| {target.name} | {' · '.join(map(str, p50))} | {' · '.join(map(str, p99))} | "
                    f"{statistics.median(p50):.2f} / {statistics.median(p99):.2f} | "
                    f"{statistics.median(l50):.2f} / {statistics.median(l99):.2f} |")
            if args.closed:
                rates = [r["closed"]["acked_per_s"] for r in rows]
                line += f" {' · '.join(f'{v:,}' for v in rates)} | {statistics.median(rates):,.0f} |"
            print(line)


if __name__ == "__main__":
    main()
