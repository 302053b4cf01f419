"""Waiting without fixed sleeps: `eventually` awaits a condition with a deadline.

A test that must see state change behind its back (a task stores a record, a close runs on the
next loop turn) polls with `eventually`; it returns as soon as the condition holds and fails,
naming what it waited for, once the deadline passes. A test that must show that *nothing*
arrived sends a marker after and awaits it instead: what was sent before it would have come
first. A fixed `sleep` stays only where time itself is the subject (a timeout being waited out),
with a comment saying so.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: how long a condition may take before the test fails (generous: the machine may be loaded)
TIMEOUT = 10.0


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str = "the condition",
                     timeout: float = TIMEOUT, *, poll: float = 0.01) -> None:
    """Return once `condition()` (a plain or an async function) is true; fail after `timeout` seconds.

    A condition that asks a server (HTTP, Redis) should poll less often: ``poll=0.1``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(poll)


def eventually_sync(condition: Callable[[], bool], what: str = "the condition", *, timeout: float = TIMEOUT,
                    poll: float = 0.02) -> None:
    """`eventually` for code outside an event loop (a thread, a subprocess being watched)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(poll)
