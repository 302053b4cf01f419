"""Python bytecodes per chat message on the cluster chat scenario, recovery off against on, per function.

    .venv/bin/python bench/chat_bytecodes.py            # about 2 minutes
    .venv/bin/python bench/chat_bytecodes.py --top 40 --rate 0.5

CPU seconds of the chat scenario (`bench/recovery_rounds.py`) move by ±20 % between runs here,
more than the recovery log's cost (issue 12: at most 10 %), and say nothing of where it goes.
This runs the same scenario (`bench/cluster.sh`: 3 nodes, one Redis, the shared harness's chat
clients in rooms of two) twice, recovery off and on, with every node counting the Python
bytecodes it runs per function for a stretch of the chat phase (`COUP_BENCH_BYTECODES`, see
`bench/cluster_node.py`), and prints bytecodes per client message and the functions whose
count differs most. Counting slows a node some 30 times, so the load is light (100 clients,
0.3 messages per second each by default): a loop turn then holds one message, so what a node
does once per turn (the recovery log's `MULTI` / `EXEC`) weighs more here than at full load.
The added count moves by up to ~15 % between runs of the same code (which node owns which room).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bytecodes import print_added  # noqa: E402


def run(mode_env: dict[str, str], out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **mode_env, "SCENARIOS": "chat", "CHAT_CONFIGS": "coup-3", "RUN_TIMEOUT": "200",
           "COUP_BENCH_BYTECODES": str(out), "COUP_BENCH_BYTECODES_AFTER": str(args.after),
           "COUP_BENCH_BYTECODES_FOR": str(args.seconds),
           "LOADGEN_ARGS": f"--clients {args.clients} --rooms {args.clients // 2} --per-client-rate {args.rate} "
                           f"--duration {args.after + args.seconds + 10} --hard-limit 150"}
    env.setdefault("COUP_BENCH_PYTHON", str(HERE.parent / ".venv" / "bin" / "python"))
    subprocess.run(["bash", str(HERE / "cluster.sh")], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=400)


def per_message(out: Path) -> tuple[int, dict[str, float]]:
    """Client messages counted by the nodes, and bytecodes per message per function."""
    messages = 0
    counts: collections.Counter[str] = collections.Counter()
    files = sorted(out.glob("*.txt"))
    if len(files) != 3:
        raise SystemExit(f"expected the counts of 3 nodes in {out}, found {len(files)}: did the run fail?")
    for path in files:
        first, *lines = path.read_text().splitlines()
        messages += int(first.split()[1])
        for line in lines:
            count, key = line.split("\t", 1)
            counts[key] += int(count)
    if not messages:
        raise SystemExit(f"no client message counted in {out}: the counting missed the chat phase")
    return messages, {key: n / messages for key, n in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.3, help="messages per second per client")
    parser.add_argument("--after", type=float, default=15, help="seconds after the nodes start before counting")
    parser.add_argument("--seconds", type=float, default=20, help="seconds counted")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coup-bytecodes-") as tmp:
        figures = {}
        for mode, window in (("off", "0"), ("on", "120")):
            run({"COUP_BENCH_RECOVERY_WINDOW": window}, Path(tmp) / mode, args)
            figures[mode] = per_message(Path(tmp) / mode)
    (m_off, off), (m_on, on) = figures["off"], figures["on"]
    print(f"chat scenario, {args.clients} clients, {args.rate} messages/s each, {args.seconds:.0f} s counted "
          f"({m_off} and {m_on} messages)")
    print_added(off, on, "client message (3 nodes)", args.top)


if __name__ == "__main__":
    main()
