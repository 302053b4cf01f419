"""CPU samples of `perf record` per innermost Python function, and the difference between two runs.

A cProfile of the nodes charges every call the profiler's own cost, which hid most of what the
recovery log adds there; py-spy samples wall-clock time, which on the harness's shared core
charges a node for the time it waited for the core. `perf record` samples CPU only, and with
Python 3.12's perf trampolines (``PYTHONPERFSUPPORT=1``) each Python frame appears in the
call chain as ``py::function:file``. A sample goes to the innermost such frame (C code it
called included: a `write` system call to its caller) or, with none, to its innermost
symbol. `bench/perf_nodes.sh` records the nodes of the cluster chat scenario this way.

    python bench/perf_frames.py A.perf.txt [B.perf.txt] [N]     # `perf script` output

One file: the top N functions. Two: the N that grew most from A to B and the few that shrank.
Small functions come out dearer than they are (each Python call goes through a trampoline);
compare runs of the same set-up, not functions with each other.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def samples(path: Path) -> tuple[int, Counter[str]]:
    """Samples of a `perf script` output, per innermost Python frame (else innermost symbol)."""
    per_frame: Counter[str] = Counter()
    total = 0
    chain: list[str] = []

    def close() -> None:
        nonlocal total
        if chain:
            total += 1
            python = next((sym for sym in chain if sym.startswith("py::")), None)
            per_frame[python or f"[native] {chain[0]}"] += 1
            chain.clear()

    with path.open(errors="replace") as lines:
        for line in lines:
            if not line.strip():
                close()
            elif line[0] in " \t":
                parts = line.split(None, 1)
                if len(parts) == 2:
                    chain.append(_OFFSET.sub("", parts[1].rsplit(" (", 1)[0].strip()))
    close()
    return total, per_frame


def main() -> None:
    paths = [Path(a) for a in sys.argv[1:] if not a.isdigit()]
    top_n = next((int(a) for a in sys.argv[1:] if a.isdigit()), 30)
    if len(paths) == 1:
        total, frames = samples(paths[0])
        print(f"{total} samples")
        for frame, count in frames.most_common(top_n):
            print(f"  {100 * count / total:5.1f}%  {count:6d}  {frame[:140]}")
        return
    (total_a, a), (total_b, b) = samples(paths[0]), samples(paths[1])
    print(f"samples: A {total_a}, B {total_b} ({(total_b / total_a - 1) * 100:+.1f} %)")
    changed = sorted(set(a) | set(b), key=lambda f: b[f] - a[f], reverse=True)
    print(f"{'A':>6} {'B':>6} {'B-A':>6}")
    for frame in changed[:top_n]:
        print(f"{a[frame]:6d} {b[frame]:6d} {b[frame] - a[frame]:+6d}  {frame[:140]}")
    print("  ...")
    for frame in changed[-8:]:
        print(f"{a[frame]:6d} {b[frame]:6d} {b[frame] - a[frame]:+6d}  {frame[:140]}")


if __name__ == "__main__":
    main()
