"""Drive the npm `socket.io-client` (tests/js/client.mjs) from pytest.

`JsClient` starts one Node process, sends it commands and reads the JSON-line records it
prints (the protocol is documented at the top of tests/js/client.mjs). Python `bytes` in
command arguments become binary attachments, and binary the client receives comes back as
`bytes`. Every wait has a timeout, and `close()` ends the process by its PID (stdin EOF,
then terminate, then kill), so a failing test never leaves Node behind.

Prefer the `js_client` fixture (tests/conftest.py): it requires Node and the npm packages
(a missing one fails in CI) and closes every client it made at teardown::

    async def test_x(node, js_client):
        js = await js_client()
        await js.connect("a", node.url, transports=["websocket"])
        assert await js.emit_with_ack("a", "echo", 1) == [1]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.clients.records import TIMEOUT, Record, RecordLog, RecordTimeout

JS_DIR = Path(__file__).resolve().parent.parent / "js"
DRIVER = JS_DIR / "client.mjs"


def node_available() -> bool:
    """Node is on PATH and `npm ci` has run in tests/js."""
    return shutil.which("node") is not None and (JS_DIR / "node_modules" / "socket.io-client").is_dir()


def _encode_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bin": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot send {type(value).__name__} to the Node driver")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get("$bin"), str):
        return base64.b64decode(obj["$bin"])
    return obj


class JsClientError(AssertionError):
    """The driver refused a command or did not answer it as expected."""


class JsClient:
    """One Node process running socket.io-client; it may hold several named sockets."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        #: every record the driver printed, in order
        self.log = RecordLog()
        self._ids = 0
        self._stderr_chunks: list[bytes] = []
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_stdout()), loop.create_task(self._read_stderr())]

    @classmethod
    async def start(cls, *, lifetime_ms: int = 120_000) -> JsClient:
        """Start the driver and wait for its "ready" record."""
        env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
        process = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), json.dumps({"commands": [], "lifetime_ms": lifetime_ms}),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(JS_DIR), env=env,
        )
        client = cls(process)
        try:
            await client.expect("ready")
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def records(self) -> list[Record]:
        return self.log.records

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr_chunks).decode("utf-8", "replace")

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                try:
                    record = json.loads(line, object_hook=_decode_hook)
                except ValueError:
                    record = {"type": "unparsed", "line": line.decode("utf-8", "replace")}
                self.log.add(record)
        finally:
            self.log.close()

    async def _read_stderr(self) -> None:
        # drained all along, so a chatty Node never blocks on a full pipe
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr_chunks.append(chunk)

    # ------------------------------------------------------------------ commands

    def send(self, cmd: str, **fields: Any) -> int:
        """Queue a command for the driver; return its id (the records it produces carry it)."""
        self._ids += 1
        assert self.process.stdin is not None
        line = json.dumps({"cmd": cmd, "id": self._ids, **fields}, default=_encode_default) + "\n"
        self.process.stdin.write(line.encode())
        return self._ids

    async def command(self, cmd: str, *, timeout: float = TIMEOUT, **fields: Any) -> Record:
        """Run a command and return the first record carrying its id."""
        cmd_id = self.send(cmd, **fields)
        record = await self.expect(lambda r: r.get("id") == cmd_id, timeout=timeout)
        if record["type"] == "error":
            raise JsClientError(f"{cmd} failed: {record['message']}")
        return record

    async def connect(self, name: str, url: str, *, namespace: str = "/", manager: str | None = None,
                      timeout: float = TIMEOUT, **options: Any) -> Record:
        """Open socket `name` and wait until it is connected; return its "connect" record.

        `options` go to ``io()`` unchanged (transports, auth, reconnectionDelay, ...). With
        `manager`, the socket shares that socket's Engine.IO connection.
        """
        fields: dict[str, Any] = {"socket": name, "url": url, "namespace": namespace, "options": options}
        if manager is not None:
            fields["manager"] = manager
        await self.command("connect", **fields)
        return await self.expect(
            lambda r: r["type"] in ("connect", "connect_error") and r.get("socket") == name, timeout=timeout)

    async def emit(self, name: str, event: str, *args: Any) -> None:
        """Emit without asking for an acknowledgement."""
        await self.command("emit", socket=name, event=event, args=list(args))

    async def emit_with_ack(self, name: str, event: str, *args: Any, timeout: float = TIMEOUT) -> list[Any]:
        """Emit and return the arguments of the server's acknowledgement."""
        cmd_id = self.send("emit", socket=name, event=event, args=list(args), ack=True,
                           timeout=int(timeout * 1000))
        record = await self.expect(lambda r: r.get("id") == cmd_id and r["type"] in ("ack", "ack_error", "error"),
                                   timeout=timeout + 2)
        if record["type"] != "ack":
            raise JsClientError(f"emit {event!r} with ack failed: {record}")
        return list(record["args"])

    async def reply(self, name: str, event: str, args: list[Any] | None) -> None:
        """Answer the server's `event` asking for an ack with `args` (None: echo what came)."""
        await self.command("reply", socket=name, event=event, args=args)

    async def state(self, name: str) -> Record:
        return await self.command("state", socket=name)

    # ------------------------------------------------------------------ records

    def seen(self, type_: str, **match: Any) -> list[Record]:
        return self.log.seen(type_, **match)

    def events(self, name: str, event: str) -> list[Record]:
        """The server events called `event` that socket `name` received so far."""
        return self.log.seen("event", socket=name, event=event)

    async def expect(self, what: str | Callable[[Record], bool], *, timeout: float = TIMEOUT,
                     **match: Any) -> Record:
        try:
            return await self.log.expect(what, timeout=timeout, **match)
        except RecordTimeout as exc:
            stderr = self.stderr
            raise RecordTimeout(f"{exc}\nnode stderr: {stderr[-2000:]}" if stderr else str(exc)) from None

    async def expect_event(self, name: str, event: str, *, timeout: float = TIMEOUT) -> Record:
        """The next `event` socket `name` receives (successive calls return successive ones)."""
        return await self.expect("event", socket=name, event=event, timeout=timeout)

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """End the driver: stdin EOF (it disconnects and exits), else terminate, else kill."""
        process = self.process
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
