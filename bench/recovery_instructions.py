"""What the recovery log costs a broadcast between two nodes, in instructions: a figure that holds still.

    .venv/bin/python bench/recovery_instructions.py            # a few minutes

The cluster chat scenario (`bench/recovery_rounds.py`) measures CPU seconds, which move by
±20 % between runs on this shared machine, more than what is looked for (issue 12: the recovery
log may add at most 10 %). Instructions retired do not. Two cluster nodes run in one process
under `valgrind --tool=callgrind`, on a redis-server started outside it, each with one member of
a room (real WebSocket sessions read by drain processes, as `bench/recovery_cost.py`'s rig):
the first node broadcasts to the room, one broadcast per loop turn, so each broadcast is
delivered once locally and once through Redis by the other node, as a chat message in a room
of two spread over two nodes is. Each mode runs with K1 and K2 broadcasts; the difference over
K2 - K1 is the instructions of one broadcast (start-up cancels out), both nodes together. Redis's
CPU per broadcast (`INFO cpu`, the same work whatever valgrind does to the nodes) is printed
beside it.

What this does not count: the client's own message reaching a node and its handler (the chat
scenario's "off" has those too, so there the same added instructions are a smaller share).

    .venv/bin/python bench/recovery_instructions.py --bytecodes   # seconds

counts Python bytecodes instead (`sys.settrace` opcode events, the same rig in this process),
per function, and prints the functions whose count per broadcast differs most between recovery
off and on: where the added instructions are, which callgrind cannot name in Python code. Over
the log's work the two figures went together (2026-12-05: 747 -> 604 added bytecodes,
+67.5k -> +48.5k added instructions). The added count moves by ±40 between runs (timers and
Redis replies fall differently): compare within one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the package, and the cluster benchmark's helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bytecodes import print_added, tracer  # noqa: E402
from cluster_launch import start_redis  # noqa: E402
from recovery_cost import ClusterRig, redis_cpu  # noqa: E402

from bench.micro import PAYLOAD  # noqa: E402


async def _child(url: str, broadcasts: int, recovery: bool) -> None:
    prefix = "i" + secrets.token_hex(3)
    sender, other = ClusterRig(1, url, recovery, prefix), ClusterRig(1, url, recovery, prefix)
    for rig in (sender, other):
        await rig.start()
    try:
        room = sender.nsp.to("room")
        for _ in range(broadcasts):
            room.emit("bench", PAYLOAD)
            await asyncio.sleep(0)
        await sender.wait_delivered(broadcasts)
        await other.wait_delivered(broadcasts)
    finally:
        for rig in (sender, other):
            await rig.stop()


def _run(url: str, broadcasts: int, recovery: bool, client: object) -> tuple[int, float]:
    """Instructions of one child run, and the redis-server's CPU seconds meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                   "--child", url, "--broadcasts", str(broadcasts), "--recovery", "on" if recovery else "off"]
        before = redis_cpu(client)  # type: ignore[arg-type]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
        in_redis = redis_cpu(client) - before  # type: ignore[arg-type]
        if done.returncode != 0:
            raise SystemExit(f"callgrind run failed:\n{done.stderr[-3000:]}")
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if match is None:
            raise SystemExit("no instruction total in the callgrind output")
        return int(match.group(1)), in_redis


def _bytecodes(url: str, broadcasts: int, recovery: bool) -> collections.Counter[str]:
    """Bytecodes run per function by a child run, in this process."""
    tally: collections.Counter[str] = collections.Counter()
    sys.settrace(tracer(tally))
    try:
        asyncio.run(_child(url, broadcasts, recovery))
    finally:
        sys.settrace(None)
    return tally


def _compare_bytecodes(url: str, k1: int, k2: int, top: int) -> None:
    per: dict[bool, dict[str, float]] = {}
    for recovery in (False, True):
        short, long = _bytecodes(url, k1, recovery), _bytecodes(url, k2, recovery)
        per[recovery] = {key: (long[key] - short.get(key, 0)) / (k2 - k1) for key in long}
    print_added(per[False], per[True], "broadcast (both nodes)", top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--broadcasts", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--recovery", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    parser.add_argument("--k1", type=int, help="broadcasts of the short run (200; 100 with --bytecodes)")
    parser.add_argument("--k2", type=int, help="broadcasts of the long run (1,200; 400 with --bytecodes)")
    parser.add_argument("--bytecodes", action="store_true",
                        help="count Python bytecodes per function instead (seconds; K = 100 and 400 unless given)")
    parser.add_argument("--top", type=int, default=30, help="functions listed with --bytecodes")
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.broadcasts, args.recovery == "on"))
        return
    args.k1 = args.k1 or (100 if args.bytecodes else 200)
    args.k2 = args.k2 or (400 if args.bytecodes else 1200)
    children: list[subprocess.Popen[bytes]] = []
    try:
        client = start_redis(children, "--loglevel", "warning")
        url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}"
        if args.bytecodes:
            _compare_bytecodes(url, args.k1, args.k2, args.top)
            return
        print(f"callgrind, two nodes in one process, a room of 2 (one member on each), "
              f"K = {args.k1} and {args.k2} broadcasts from the first node")
        per: dict[str, tuple[float, float]] = {}
        for mode in ("off", "on"):
            short, redis_short = _run(url, args.k1, mode == "on", client)
            long, redis_long = _run(url, args.k2, mode == "on", client)
            extra = args.k2 - args.k1
            per[mode] = ((long - short) / extra, (redis_long - redis_short) * 1e6 / extra)
            print(f"  recovery {mode:3}: {short:,} / {long:,} instructions -> {per[mode][0]:,.0f} per broadcast "
                  f"(both nodes); redis {per[mode][1]:.1f} µs per broadcast")
    finally:
        for child in children:
            child.kill()
            child.wait()
    added = per["on"][0] - per["off"][0]
    print(f"added by the recovery log: {added:,.0f} instructions per broadcast ({added / per['off'][0] * 100:+.1f} %), "
          f"redis {per['on'][1] - per['off'][1]:+.1f} µs")


if __name__ == "__main__":
    main()
