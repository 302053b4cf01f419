"""SockJS fixtures: a node with test handlers, the Node sockjs-client driver, raw SockJS access."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from coup.core.errors import ClientError, ConnectRefused
from coup.core.server import SocketServer
from coup.core.socket import Socket
from tests.clients.records import Record, RecordLog
from tests.conftest import NodeStarter, RunningNode, require

JS_DIR = Path(__file__).resolve().parent / "js"
DRIVER = JS_DIR / "driver.js"
AUTH_FAILED = "인증 실패"


def node_modules_ready() -> bool:
    """Install the pinned sockjs-client (package-lock.json) once if it is missing."""
    if (JS_DIR / "node_modules" / "sockjs-client").is_dir():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return (JS_DIR / "node_modules" / "sockjs-client").is_dir()


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Bad input and lost clients must never show up as a crash (an ERROR in the log).

    Tornado's access log is not a crash: it logs the 500s the SockJS protocol prescribes
    (a missing callback, broken JSON) at ERROR level.
    """
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.get_records("call") + caplog.get_records("teardown")
              if r.levelno >= logging.ERROR and r.name != "tornado.access"]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture(scope="session")
def node_js() -> str:
    node = shutil.which("node")
    require(node is not None, "node (Node.js 20)")
    require(node_modules_ready(), "npm sockjs-client in tests/sockjs/js (npm ci)")
    assert node is not None
    return node


def install_test_handlers(sio: SocketServer) -> None:
    """Stand-ins for the domain: token auth, a personal room, study rooms, room chat."""
    nsp = sio.main

    async def authenticate(socket: Socket, auth: dict[str, Any]) -> None:
        user = auth.get("userId")
        if not isinstance(user, int) or auth.get("token") != f"token-{user}":
            raise ConnectRefused(AUTH_FAILED)
        socket.data["userId"] = user

    async def on_connect(socket: Socket) -> None:
        await socket.join(f"user:{socket.data['userId']}")

    async def join_study(socket: Socket, args: list[Any]) -> dict[str, Any]:
        study = args[0].get("studyId") if args and isinstance(args[0], dict) else None
        if not isinstance(study, int) or study < 0:
            raise ClientError("BAD_REQUEST", "studyId must be a number")
        await socket.join(f"study:{study}")
        return {"ok": True, "studyId": study}

    def message(socket: Socket, args: list[Any]) -> dict[str, Any]:
        payload = args[0] if args and isinstance(args[0], dict) else {}
        study = payload.get("studyId")
        if f"study:{study}" not in socket.rooms:
            raise ClientError("FORBIDDEN", "not in this study")
        nsp.to(f"study:{study}").emit("message", {"content": payload.get("content"),
                                                  "user": socket.data["userId"]})
        return {"ok": True}

    nsp.use(authenticate)
    nsp.on_connect(on_connect)
    nsp.on("join-study", join_study)
    nsp.on("message", message)


@pytest_asyncio.fixture
async def sockjs_node(node_factory: NodeStarter) -> RunningNode:
    """A node whose core has the stand-in handlers, serving /socket.io and /sockjs."""
    return await node_factory(setup=lambda coup_node: install_test_handlers(coup_node.sio))


class NodeClient:
    """One `node driver.js` process: sockjs-client + static/sockjs-coup.js over one transport.

    What it prints lands in a `RecordLog` (tests/clients/records.py): ``expect("event",
    event="message")`` returns successive matching records.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log = RecordLog()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, node: str, url: str, transport: str) -> NodeClient:
        process = await asyncio.create_subprocess_exec(
            node, str(DRIVER), url, transport,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={**os.environ})
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.log.add(json.loads(line))
        self.log.close()

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())

    async def expect(self, type_: str, **match: Any) -> Record:
        return await self.log.expect(type_, timeout=15.0, **match)

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest_asyncio.fixture
async def node_client(node_js: str) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await node_client(url, transport)``; every process is killed at teardown."""
    async with contextlib.AsyncExitStack() as stack:
        async def make(url: str, transport: str) -> NodeClient:
            client = await NodeClient.start(node_js, url, transport)
            stack.push_async_callback(client.close)
            return client

        yield make


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def read_until(response: aiohttp.ClientResponse, marker: bytes, limit: float = 3.0) -> bytes:
    """Read a streaming answer until `marker` shows up (or it ends, or `limit` seconds pass)."""
    data = b""
    async with asyncio.timeout(limit):
        while marker not in data:
            chunk = await response.content.read(4096)
            if not chunk:
                break
            data += chunk
    return data
