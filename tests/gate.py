"""`Gate`: something a connect awaits (a middleware, a subscription), which a test holds shut
to act while the connect waits, then opens."""

from __future__ import annotations

import asyncio
from typing import Any


class Gate:
    """Open until `close()`; `entered` is set once something waits at the closed gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()

    def close(self) -> None:
        self.entered.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        if not self._open.is_set():
            self.entered.set()
            await self._open.wait()

    async def middleware(self, socket: Any, auth: dict[str, Any]) -> None:
        """As connection middleware: a token check or a database read that takes a while."""
        await self.wait()
