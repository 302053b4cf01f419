"""What counting metrics costs the fan-out, in CPU instructions: a figure a busy machine cannot blur.

    .venv/bin/python bench/metrics_instructions.py            # about 3 min on this machine

`bench/metrics_overhead.py` times the same work in seconds, which other processes on a shared
2-core machine disturb by more than the effect (±20 % between runs). Instructions retired do
not depend on what else runs: each configuration runs under `valgrind --tool=callgrind` (which
counts every instruction of the server process; the clients are drained by a separate process
that is not counted), once with K1 and once with K2 broadcasts, and the difference divided by
the extra deliveries is the instruction cost of one delivery, start-up and shut-down cancelled
out. Metrics off and on run the same `FanoutRig` as `metrics_overhead.py`.

Printed: instructions per delivery off / on, and on / off throughput at equal instructions per
second (off ÷ on; 1.00 = free, target >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


async def _child(n: int, broadcasts: int, per_turn: int, metrics_on: bool) -> None:
    from bench.micro import FanoutRig
    from coup.metrics import Metrics

    rig = FanoutRig(n, Metrics() if metrics_on else None)
    await rig.start()
    try:
        await rig.measure(broadcasts, per_turn)
    finally:
        await rig.close()
    if metrics_on:
        metrics = rig.engine.metrics
        assert metrics is not None and metrics.packets_sent["websocket"] > 0, "the 'on' rig counted nothing"


def _instructions(n: int, broadcasts: int, per_turn: int, metrics_on: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", "--n", str(n), "--broadcasts", str(broadcasts),
            "--per-turn", str(per_turn), "--metrics", "on" if metrics_on else "off",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
        if done.returncode != 0:
            raise SystemExit(f"callgrind run failed:\n{done.stderr[-3000:]}")
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if match is None:
            raise SystemExit("no instruction total in the callgrind output")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    parser.add_argument("--broadcasts", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=100, help="receivers in the room")
    parser.add_argument("--per-turn", type=int, default=10, help="broadcasts per loop turn")
    parser.add_argument("--k1", type=int, default=100, help="broadcasts of the short run")
    parser.add_argument("--k2", type=int, default=600, help="broadcasts of the long run")
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.n, args.broadcasts, args.per_turn, args.metrics == "on"))
        return
    print(f"callgrind, room of {args.n}, {args.per_turn} broadcasts per loop turn, "
          f"K = {args.k1} and {args.k2} broadcasts")
    per_delivery = {}
    for mode in ("off", "on"):
        short = _instructions(args.n, args.k1, args.per_turn, mode == "on")
        long = _instructions(args.n, args.k2, args.per_turn, mode == "on")
        per_delivery[mode] = (long - short) / ((args.k2 - args.k1) * args.n)
        print(f"  metrics {mode:3}: {short:,} / {long:,} instructions -> "
              f"{per_delivery[mode]:,.0f} per delivery")
    print(f"on / off throughput at equal instructions per second: "
          f"{per_delivery['off'] / per_delivery['on']:.3f}")


if __name__ == "__main__":
    main()
