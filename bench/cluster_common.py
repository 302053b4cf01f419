"""What the cluster benchmark scripts share: free ports, a throw-away redis-server, the go signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[tuple[str, int]]:
    """A redis-server on a free loopback port, without persistence: (url, port)."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        stdout=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.3)
        yield f"redis://127.0.0.1:{port}", port
    finally:
        server.terminate()
        await server.wait()


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def serve_until_stopped(go: str, open_shared_port: Callable[[], Awaitable[None]]) -> None:
    """Wait for the launcher's go file, open the shared port, then run until SIGTERM/SIGINT."""
    while not _exists(go):  # noqa: ASYNC110 - the launcher's signal is a file
        await asyncio.sleep(0.05)
    await open_shared_port()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
