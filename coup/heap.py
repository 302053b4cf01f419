"""Keep what a process builds at start-up out of the cyclic garbage collector's full passes.

Modules, routes, compiled regexes and the domain's objects live as long as the process. A full
(generation 2) collection walks every tracked object, so with them in the heap one full pass
stops the loop long enough to be a latency spike for every socket (docs/operations.md).
`gc.freeze()` moves them to a permanent generation that collections skip; only objects made
afterwards (connections, rooms, messages) are walked. Called once by the process entry points
(`coup serve`, `bench/server.py`), not by the library: tests build many nodes in one process.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up garbage, then freeze the survivors; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
