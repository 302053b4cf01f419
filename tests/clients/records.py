"""What a test client saw, in order, and a bounded way to wait for the next thing.

Both real clients (python-socketio and the Node driver) report into a `RecordLog` with the
same record shapes: ``{"type": "connect", "socket": ns, "sid": ...}``, ``{"type": "event",
"socket": ns, "event": name, "args": [...]}``, ``{"type": "disconnect", "socket": ns,
"reason": ...}``, so one test can assert on either client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]
#: default seconds to wait for one record
TIMEOUT = 10.0


class RecordTimeout(AssertionError):
    """The record a test waited for did not come in time."""


class RecordLog:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.closed = False
        self._changed = asyncio.Event()
        #: per query, how far `expect` has already read (so repeated calls return successive matches)
        self._cursor: dict[str, int] = {}

    def add(self, record: Record) -> None:
        self.records.append(record)
        self._changed.set()

    def close(self) -> None:
        """No more records will come (the client process ended)."""
        self.closed = True
        self._changed.set()

    def seen(self, type_: str, **match: Any) -> list[Record]:
        """All records so far of this type whose fields equal `match`."""
        return [r for r in self.records if r["type"] == type_ and all(r.get(k) == v for k, v in match.items())]

    async def expect(self, what: str | Callable[[Record], bool], *, timeout: float = TIMEOUT,
                     **match: Any) -> Record:
        """The next matching record.

        `what` is a record type (then `match` filters on fields): repeated calls with the same
        type and fields return successive records. Or a predicate: the first record so far
        that satisfies it.
        """
        predicate: Callable[[Record], bool]
        key: str | None = None
        if isinstance(what, str):
            type_ = what

            def predicate(r: Record) -> bool:
                return r["type"] == type_ and all(r.get(k) == v for k, v in match.items())
            key = json.dumps([type_, match], sort_keys=True, default=repr)
        else:
            predicate = what
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = self._cursor.get(key, 0) if key is not None else 0
        wanted = key or getattr(what, "__qualname__", "a record")
        while True:
            while index < len(self.records):
                record = self.records[index]
                index += 1
                if predicate(record):
                    if key is not None:
                        self._cursor[key] = index
                    return record
            if self.closed:
                raise RecordTimeout(f"the client ended before {wanted}; last records: {self.records[-20:]}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RecordTimeout(f"no {wanted} within {timeout} s; last records: {self.records[-20:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
