"""Who is online, counted by an application key (CoUp uses the user id) across sockets.

`attach` / `detach` say when a key changes state, so the caller emits each transition once.
The in-memory version serves one process; the cluster version keeps the counts in Redis and
reports keys lost with a crashed node through `on_lost`.

Grace: a socket that drops (`detach` with ``linger``) keeps its entry for `grace` seconds.
A reconnect inside the grace finds the key still online, so neither an offline nor an
online is announced (a restart or a network blip is no presence flap); when the grace
ends with no socket back, the key goes offline then and the `on_lost` callbacks announce
it. The same socket id coming back (connection state recovery) on this node simply
cancels its own lingering entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

log = logging.getLogger(__name__)

LostCallback = Callable[[str], Awaitable[None]]


class Presence(Protocol):
    """What the core and the domain use; `PresenceGrace` gives implementations the grace."""

    async def attach(self, key: str, sid: str) -> bool:
        """Record socket `sid` for `key`; True when `key` just came online."""
        ...

    async def detach(self, key: str, sid: str, *, linger: bool = True) -> bool:
        """Forget socket `sid`; True when `key` just went offline (its last socket is gone).
        `linger`: it dropped rather than left, so the grace applies."""
        ...

    async def online(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that is online."""
        ...

    def on_lost(self, callback: LostCallback) -> None:
        """`callback(key)` runs when a key goes offline without a `detach` answering True
        (a node died; a dropped socket's grace ended)."""
        ...

    async def settle(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until every lingering entry has ended and what went
        offline was announced: a draining node does this before it leaves. True when done."""
        ...


class PresenceGrace:
    """The grace (see the module's docstring) over an implementation's `_add` / `_remove`."""

    def __init__(self, grace: float = 0.0) -> None:
        #: seconds a dropped socket's entry lingers before its key may go offline
        self.grace = grace
        self._lost_callbacks: list[LostCallback] = []
        #: (key, sid) -> the timer that removes its entry when the grace ends
        self._lingering: dict[tuple[str, str], asyncio.TimerHandle] = {}
        #: removals whose grace ended, running (and announcing) now
        self._settling: set[asyncio.Task[None]] = set()

    async def _add(self, key: str, sid: str) -> bool:
        raise NotImplementedError

    async def _remove(self, key: str, sid: str) -> bool:
        raise NotImplementedError

    async def attach(self, key: str, sid: str) -> bool:
        handle = self._lingering.pop((key, sid), None)
        if handle is not None:  # the same socket is back (recovered) before its entry left
            handle.cancel()
            return False
        return await self._add(key, sid)

    async def detach(self, key: str, sid: str, *, linger: bool = True) -> bool:
        """With a grace and `linger` (the socket dropped, it did not leave on purpose) the entry
        stays `grace` seconds and this answers False; if the key then goes offline, the
        `on_lost` callbacks run for it."""
        handle = self._lingering.pop((key, sid), None)
        if handle is not None:
            handle.cancel()
        if linger and self.grace > 0:
            self._lingering[key, sid] = asyncio.get_running_loop().call_later(self.grace, self._expire, key, sid)
            return False
        return await self._remove(key, sid)

    def on_lost(self, callback: LostCallback) -> None:
        self._lost_callbacks.append(callback)

    async def announce_lost(self, key: str) -> None:
        for callback in self._lost_callbacks:
            try:
                await callback(key)
            except Exception:
                log.exception("presence lost-callback failed for %s", key)

    def _expire(self, key: str, sid: str) -> None:
        if self._lingering.pop((key, sid), None) is None:
            return
        task = asyncio.get_running_loop().create_task(self._settle(key, sid))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, key: str, sid: str) -> None:
        if await self._remove(key, sid):
            await self.announce_lost(key)

    @property
    def lingering(self) -> int:
        """Entries in their grace or being settled now."""
        return len(self._lingering) + len(self._settling)

    async def settle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._lingering or self._settling:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._settling:
                await asyncio.wait(list(self._settling), timeout=min(left, 0.1))
            else:
                await asyncio.sleep(min(left, 0.05))
        return True


class MemoryPresence(PresenceGrace):
    def __init__(self, grace: float = 0.0) -> None:
        super().__init__(grace)
        self._sockets: dict[str, set[str]] = {}

    async def _add(self, key: str, sid: str) -> bool:
        sids = self._sockets.get(key)
        if sids is None:
            self._sockets[key] = {sid}
            return True
        sids.add(sid)
        return False

    async def _remove(self, key: str, sid: str) -> bool:
        sids = self._sockets.get(key)
        if sids is None or sid not in sids:
            return False
        sids.discard(sid)
        if sids:
            return False
        del self._sockets[key]
        return True

    async def online(self, keys: Iterable[str]) -> set[str]:
        return {k for k in keys if k in self._sockets}
