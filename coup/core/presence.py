"""Who is online, counted by an application key (CoUp uses the user id) across sockets.

`attach` / `detach` say when a key changes state, so the caller emits each transition once.
The in-memory version serves one process; the cluster version keeps the counts in Redis and
reports keys lost with a crashed node through `on_lost`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

LostCallback = Callable[[str], Awaitable[None]]


class Presence:
    async def attach(self, key: str, sid: str) -> bool:
        """Record socket `sid` for `key`; True when `key` just came online."""
        raise NotImplementedError

    async def detach(self, key: str, sid: str) -> bool:
        """Forget socket `sid`; True when `key` just went offline (its last socket is gone)."""
        raise NotImplementedError

    async def online(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that is online."""
        raise NotImplementedError

    def on_lost(self, callback: LostCallback) -> None:
        """`callback(key)` runs when a key goes offline without a `detach` (a node died)."""


class MemoryPresence(Presence):
    def __init__(self) -> None:
        self._sockets: dict[str, set[str]] = {}

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
