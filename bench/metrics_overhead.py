"""What counting metrics costs the fan-out: the same work with metrics on and off, in one run.

    .venv/bin/python bench/metrics_overhead.py                   # micro + harness (about 4 min)
    .venv/bin/python bench/metrics_overhead.py --skip-harness    # only the in-process part (~40 s)
    flock /work/bench.lock .venv/bin/python bench/metrics_overhead.py --repeats 3

Two measurements, each alternating off / on so that machine noise hits both alike:

1. In process (`bench/micro.py`'s `FanoutRig`): a broadcast to a room of N real WebSocket
   sessions over loopback TCP, 1 and 10 broadcasts per loop turn, CPU µs per receiver with
   `EngineServer(metrics=None)` and with `metrics=Metrics()`; best of the rounds.
2. The shared harness (`../shared/bench/run.sh`): `bench/server.py` without metrics, and
   with ``--metrics-port`` while a scraper reads ``/metrics`` every second (a Prometheus
   default scrape is every 15 s). Scenario ``fanout`` gives the max deliveries/s; scenario
   ``fixed`` (an equal offered load for both) gives server CPU per delivery.

The ratio printed is on / off throughput (1.00 = free; the target is >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.micro import FanoutRig, bench_message_path  # noqa: E402
from coup.metrics import Metrics  # noqa: E402

HARNESS = Path(os.environ.get("COUP_BENCH_HARNESS", "/work/shared/bench"))


# ---------------------------------------------------------------------------- in process

async def micro(sizes: tuple[int, ...], rounds: int) -> list[tuple[int, int, float, float]]:
    """(N, broadcasts per turn, best µs per receiver off, best on)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    rows = []
    for n in sizes:
        rigs = {"off": FanoutRig(n), "on": FanoutRig(n, Metrics())}
        for rig in rigs.values():
            await rig.start()
        try:
            for per_turn in (1, 10):
                messages = max(20 * per_turn, 200_000 // n)
                best = {"off": float("inf"), "on": float("inf")}
                for rig in rigs.values():
                    await rig.measure(max(per_turn, messages // 10), per_turn)  # warm up
                for _ in range(rounds):
                    for mode, rig in rigs.items():
                        best[mode] = min(best[mode], (await rig.measure(messages, per_turn))[1])
                rows.append((n, per_turn, best["off"], best["on"]))
        finally:
            for rig in rigs.values():
                await rig.close()
    metrics = rigs["on"].engine.metrics
    assert metrics is not None and metrics.packets_sent["websocket"] > 0, "the 'on' rig counted nothing"
    return rows


async def message_path(rounds: int) -> tuple[float, float]:
    """µs per incoming chat message (frame in -> handler -> broadcast queued to a room of 2), off / on."""
    best = {"off": float("inf"), "on": float("inf")}
    for _ in range(rounds):
        best["off"] = min(best["off"], await bench_message_path(metrics=None))
        counted = Metrics()
        best["on"] = min(best["on"], await bench_message_path(metrics=counted))
        assert counted.event_seconds.children["message"].counts, "the 'on' run counted no event"
    return best["off"], best["on"]


# ---------------------------------------------------------------------------- shared harness

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper(threading.Thread):
    """Reads /metrics every `interval` seconds until stopped; counts the answers."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.done = threading.Event()
        self.scrapes = 0
        self.last = b""

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    self.last = response.read()
                self.scrapes += 1
            except OSError:
                pass  # the server is not up yet, or already gone


def harness_run(scenario: str, metrics: bool, extra: list[str], scrape_every: float = 1.0) -> dict[str, Any]:
    command = f"{sys.executable} {ROOT / 'bench' / 'server.py'} --port {{PORT}}"
    scraper = None
    if metrics:
        metrics_port = _free_port()
        command += f" --metrics-port {metrics_port}"
        if scrape_every > 0:
            scraper = Scraper(metrics_port, scrape_every)
            scraper.start()
    try:
        out = subprocess.run([str(HARNESS / "run.sh"), command, str(_free_port()), scenario, *extra],
                             capture_output=True, text=True, timeout=120, check=False,
                             env={**os.environ, "LABEL": f"metrics-{'on' if metrics else 'off'}"})
    finally:
        if scraper is not None:
            scraper.done.set()
            scraper.join()
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    result: dict[str, Any] = json.loads(line)
    if "error" in result or not result:
        raise RuntimeError(f"harness run failed: {line}\n{out.stderr[-2000:]}")
    if scraper is not None:
        result["scrapes"] = scraper.scrapes
        assert b"coup_packets_sent_total" in scraper.last, "the scraper never read the node's metrics"
    return result


def harness(repeats: int, fixed_rate: int, scrape_every: float, scenarios: tuple[str, ...]) -> None:
    fanout: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    fixed: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for rep in range(repeats):
        for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            said = f"  rep {rep + 1} {mode:3}:"
            if "fanout" in scenarios:
                r = harness_run("fanout", mode == "on", [], scrape_every)
                fanout[mode].append(r)
                said += (f" fanout max {r['max_deliveries_per_s']:,.0f} deliv/s (server {r['server_cpu_pct_at_max']}%, "
                         f"gen {r['gen_cpu_pct_at_max']}%, foreign {r['foreign_cpu_pct_at_max']}% at the max)")
            if "fixed" in scenarios:
                r = harness_run("fixed", mode == "on", ["--rate", str(fixed_rate)], scrape_every)
                fixed[mode].append(r)
                said += (f" fixed {r['deliveries_per_s']:,.0f} deliv/s at server CPU {r['server_cpu_pct']}% "
                         f"(foreign {r['foreign_cpu_pct']}%)")
            print(said, flush=True)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(float(r[key]) for r in rows if r.get(key) is not None))

    def cpu_us(rows: list[dict[str, Any]]) -> float:
        return float(statistics.median(r["server_cpu_pct"] / 100 * 1e6 / r["deliveries_per_s"] for r in rows))

    scraping = f"scrape every {scrape_every:g} s" if scrape_every > 0 else "no scrape"
    print(f"\nshared harness, {repeats} pairs, medians (server on core 0, generator on core 1):")
    print(f"| measure | metrics off | metrics on ({scraping}) | on / off |")
    print("|---|---|---|---|")
    foreign = []
    if fanout["off"]:
        off, on = med(fanout["off"], "max_deliveries_per_s"), med(fanout["on"], "max_deliveries_per_s")
        print(f"| fan-out max deliveries/s | {off:,.0f} | {on:,.0f} | {on / off:.3f} |")
        print(f"| server CPU % at the max | {med(fanout['off'], 'server_cpu_pct_at_max'):.1f} | "
              f"{med(fanout['on'], 'server_cpu_pct_at_max'):.1f} | |")
        foreign += [float(r.get("foreign_cpu_pct_at_max") or 0) for rows in fanout.values() for r in rows]
    if fixed["off"]:
        off_us, on_us = cpu_us(fixed["off"]), cpu_us(fixed["on"])
        print(f"| fixed {fixed_rate} msg/s x 100: server CPU µs per delivery | {off_us:.3f} | {on_us:.3f} | "
              f"{off_us / on_us:.3f} (throughput at equal CPU) |")
        print(f"| fixed: p99 ms | {med(fixed['off'], 'p99_ms'):.2f} | {med(fixed['on'], 'p99_ms'):.2f} | |")
        foreign += [float(r.get("foreign_cpu_pct") or 0) for rows in fixed.values() for r in rows]
    limited = sum(1 for rows in fanout.values() for r in rows if r.get("gen_limited"))
    print(f"generator-limited fan-out runs: {limited}; foreign CPU (% of a core) per run: "
          f"{', '.join(f'{f:.0f}' for f in foreign)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="off/on pairs in the harness")
    parser.add_argument("--rounds", type=int, default=5, help="off/on rounds in process")
    parser.add_argument("--fixed-rate", type=int, default=1000, help="msgs/s of the fixed scenario (x100 deliveries)")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (0: none)")
    parser.add_argument("--scenarios", default="fanout,fixed", help="harness scenarios: fanout, fixed")
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-harness", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    if not args.skip_micro:
        rows = asyncio.run(micro((100, 1000), args.rounds))
        print("in process: CPU µs per receiver (best of rounds), broadcast to a room of N WebSocket sessions")
        print("| N | broadcasts per loop turn | metrics off | metrics on | on / off throughput |")
        print("|---|---|---|---|---|")
        for n, per_turn, off, on in rows:
            print(f"| {n} | {per_turn} | {off:.3f} | {on:.3f} | {off / on:.3f} |")
        off, on = asyncio.run(message_path(args.rounds))
        print(f"\none chat message through the core (frame in, handler, broadcast to a room of 2), µs: "
              f"off {off:.2f}, on {on:.2f}, on / off throughput {off / on:.3f}")
        print(flush=True)
    if not args.skip_harness:
        if not (HARNESS / "run.sh").exists():
            sys.exit(f"no harness at {HARNESS} (set COUP_BENCH_HARNESS)")
        harness(args.repeats, args.fixed_rate, args.scrape_every, tuple(args.scenarios.split(",")))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
