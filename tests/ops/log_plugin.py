"""COUP_PLUGINS module for the log tests: an event whose handler fails, so the node logs an
exception while it handles one client (`setup(node)` runs when the node is built)."""

from __future__ import annotations

from typing import Any


def setup(node: Any) -> None:
    async def boom(socket: Any, args: list[Any]) -> None:
        raise RuntimeError("boom, on purpose")

    node.sio.main.on("boom", boom)
