"""Background tasks held until they end, and stopped together.

The loop keeps only a weak reference to a task: one nobody holds can be collected mid-run. The
server core and the cluster both keep their background tasks this way (core may not import
coup.cluster, so the helpers live here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def spawn_kept(tasks: set[asyncio.Task[Any]], coro: Coroutine[Any, Any, Any],
               loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[Any]:
    """Run `coro` as a task held in `tasks` until it ends (the loop keeps only a weak
    reference: an unheld task can be collected mid-run), so its owner can wait for or stop it.
    `loop`: the running loop, when the caller has it (finding it is a getpid system call on
    Python 3.11, and a socket spawns a task per event)."""
    task = (loop or asyncio.get_running_loop()).create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel background loops and wait until they are gone.

    `asyncio.gather` rather than awaiting each in ``try/except CancelledError``: that would
    also swallow a cancellation of the caller itself. The loops also check a running flag:
    on Python 3.11 a cancellation that lands while a timeout around an await expires can be
    lost (seen in our tests: a loop kept waiting, "cancelling", forever).
    """
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
