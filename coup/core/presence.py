"""Who is online, counted by an application key (CoUp uses the user id) across sockets.

`attach` / `detach` say when a key changes state, so the caller emits each transition once.
The in-memory version serves one process; the cluster version keeps the counts in Redis and
reports keys lost with a crashed node through `on_lost`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

LostCallback = Callable[[str], Awaitable[None]]


class Presence(Protocol):
    async def attach(self, key: str, sid: str) -> bool:
        """Record socket `sid` for `key`; True when `key` just came online."""
        ...

    async def detach(self, key: str, sid: str) -> bool:
        """Forget socket `sid`; True when `key` just went offline (its last socket is gone)."""
        ...

    async def online(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that is online."""
        ...

    def on_lost(self, callback: LostCallback) -> None:
        """`callback(key)` runs when a key goes offline without a `detach` (a node died)."""
        ...


class MemoryPresence:
    def __init__(self) -> None:
        self._sockets: dict[str, set[str]] = {}

    def on_lost(self, callback: LostCallback) -> None:
        """One process: no key is ever lost without a detach."""

    async def attach(self, key: str, sid: str) -> bool:
        sids = self._sockets.get(key)
        if sids is None:
            self._sockets[key] = {sid}
            return True
        sids.add(sid)
        return False

    async def detach(self, key: str, sid: str) -> bool:
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
