"""Keep what a process builds at start-up out of the cyclic garbage collector's full passes.

Modules, routes, compiled regexes and the domain's objects live as long as the process. A full
(generation 2) collection walks every tracked object, so with them in the heap one full pass
stops the loop long enough to be a latency spike for every socket (docs/operations.md).
`gc.freeze()` moves them to a permanent generation that collections skip; only objects made
afterwards (connections, rooms, messages) are walked. Called once by the process entry points
(`coup serve`, `bench/server.py`), not by the library: tests build many nodes in one process.

The youngest generation is also collected less often (`YOUNG_THRESHOLD` allocations, not
CPython's 700). At 700 a message's short-lived objects (its task, futures, packets) were
still alive at most collections, so they were walked and promoted, and the older
generations filled with them: under the product path benchmark the collector took 17 % of
the server's CPU, a full pass (65 ms: the replay buffer's packets) every second or so.
With 10,000 most of them die by reference count before a collection sees them
(bench/README.md, "The collector's young threshold and one commit in flight").
"""

from __future__ import annotations

import gc

#: allocations (net of frees) between collections of the youngest generation
YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> int:
    """Collect start-up garbage, then freeze the survivors; returns how many objects were frozen.
    From then on the youngest generation is collected every `YOUNG_THRESHOLD` allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    return gc.get_freeze_count()
