"""`python -m coup` with a memory probe, for `bench/soak.py --probe FILE`: each SIGUSR1 appends
to FILE (`COUP_SOAK_PROBE`) obmalloc's allocated blocks, the object types whose counts grew
most since the last signal, and the large containers that grew. RSS that climbs while the
Python heap does not says native memory; types that climb at the rate of connects or messages
say what is kept per connect or per message (docs: bench/README.md, "Soak").
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
import time
from types import FrameType
from typing import Any

#: containers at least this long are followed from one signal to the next
FOLLOWED = 500

_last: dict[str, Any] = {}


def _probe(signum: int, frame: FrameType | None) -> None:
    objects = gc.get_objects()
    counts = collections.Counter(type(o).__qualname__ for o in objects)
    sizes = {id(o): (len(o), type(o).__name__, repr(list(o)[:3])[:160]) for o in objects
             if isinstance(o, (dict, list, set, collections.deque)) and len(o) >= FOLLOWED}
    with open(os.environ["COUP_SOAK_PROBE"], "a") as out:
        out.write(f"{time.time():.0f} blocks {sys.getallocatedblocks()} gc_objects {len(objects)}\n")
        if _last:
            grown = sorted(((n - _last["counts"].get(k, 0), k) for k, n in counts.items()), reverse=True)[:15]
            out.write("  grown: " + ", ".join(f"{k} {d:+d}" for d, k in grown) + "\n")
            bigger = sorted(((size - _last["sizes"][i][0], size, kind, sample)
                             for i, (size, kind, sample) in sizes.items()
                             if i in _last["sizes"] and size > _last["sizes"][i][0]), reverse=True)[:6]
            for added, size, kind, sample in bigger:
                out.write(f"  {kind} of {size} (+{added}): {sample}\n")
    _last.update(counts=counts, sizes=sizes)


def main() -> None:
    signal.signal(signal.SIGUSR1, _probe)
    sys.argv = ["coup", *sys.argv[1:]]
    runpy.run_module("coup", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
