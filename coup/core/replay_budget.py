"""The bounds of the connection-state-recovery store, kept in one place for every adapter.

Every event broadcast while recovery is on is kept for the recovery window so that a
client that drops briefly gets what it missed. A store bounded only by age and packet
count let one client grow the process by hundreds of MB (echoed error replies of 500 KB)
and push everyone else's resume data out in seconds. So the store is also bounded by
bytes, and each origin (the socket whose event handler caused the broadcast; see
`current_origin`) may hold only a share of it: past that share its broadcasts are still
delivered, but without an offset and not kept for replay, so the others' resume data
stays. Replies to one socket that are not room broadcasts (the `error` event) are never
stored (`Socket.send_error`).
"""

from __future__ import annotations

import logging
from collections import deque
from contextvars import ContextVar
from typing import Protocol, TypeVar

from coup.core.options import RecoveryOptions

log = logging.getLogger(__name__)

#: the socket whose event handler is running (set by `Socket` around each handler call):
#: broadcasts made from it, directly or through a room command run in the same task, are its
current_origin: ContextVar[str | None] = ContextVar("coup_origin", default=None)


class StoredEntry(Protocol):
    @property
    def at(self) -> float: ...

    @property
    def size(self) -> int: ...

    @property
    def origin(self) -> str | None: ...


_E = TypeVar("_E", bound=StoredEntry)


class ReplayBudget:
    """Admits and evicts entries of one recovery store (oldest first, as replay needs)."""

    __slots__ = ("_origins", "_refused", "bytes", "options", "origin_bytes", "origin_packets")

    def __init__(self, options: RecoveryOptions) -> None:
        self.options = options
        #: bytes held by the store now
        self.bytes = 0
        self.origin_packets = max(1, int(options.max_packets * options.max_origin_share))
        self.origin_bytes = max(1, int(options.max_bytes * options.max_origin_share))
        #: origin -> [packets, bytes] it holds in the store
        self._origins: dict[str, list[int]] = {}
        #: origins refused since they last held nothing (logged once each)
        self._refused: set[str] = set()

    def admit(self, origin: str | None, size: int) -> bool:
        """May a packet of `size` bytes from `origin` be stored? False: deliver it unstored."""
        if size > self.origin_bytes:
            return False
        if origin is None:
            return True
        held = self._origins.get(origin)
        if held is None or (held[0] < self.origin_packets and held[1] + size <= self.origin_bytes):
            return True
        if origin not in self._refused:
            self._refused.add(origin)
            log.warning("socket %s holds %d packets / %d bytes of the recovery store: its further broadcasts "
                        "are not kept for replay", origin, held[0], held[1])
        return False

    def add(self, entries: deque[_E], entry: _E, now: float) -> None:
        """Append an admitted entry, then drop the oldest while over any bound."""
        entries.append(entry)
        self.bytes += entry.size
        origin = entry.origin
        if origin is not None:
            held = self._origins.get(origin)
            if held is None:
                self._origins[origin] = [1, entry.size]
            else:
                held[0] += 1
                held[1] += entry.size
        options = self.options
        horizon = now - options.max_disconnection_duration
        while entries and (entries[0].at < horizon or len(entries) > options.max_packets
                           or self.bytes > options.max_bytes):
            self._forget(entries.popleft())

    def _forget(self, entry: StoredEntry) -> None:
        self.bytes -= entry.size
        origin = entry.origin
        if origin is not None:
            held = self._origins[origin]
            held[0] -= 1
            held[1] -= entry.size
            if not held[0]:
                del self._origins[origin]
                self._refused.discard(origin)
