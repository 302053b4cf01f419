"""Summarise py-spy collapsed stacks (``py-spy record --format raw``): top functions by own and
inclusive samples, so a profile fits in a report.

    python bench/pyspy_top.py /tmp/coup-profile.txt [N]
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("/coup/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) + 1:]
            break
    return f"{match['fn']} ({path})"


def main() -> None:
    path = sys.argv[1]
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [_short(f) for f in stack.split(";")[1:] if f.strip()]  # first is the thread
            total += count
            if not frames:
                idle += count
                continue
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    print(f"{total} samples (idle / no Python frame: {idle})")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"\n top {top_n} by {title} time")
        for frame, count in counter.most_common(top_n):
            print(f"  {100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
