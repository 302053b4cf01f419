"""Structured logs of a real `coup serve`: JSON parsed line by line, logfmt-like text by default."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import socketio
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from coup.domain.auth import TokenService

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "a-jwt-secret-for-the-log-tests-0123456789"


class Served:
    """A `coup serve` whose stdout and stderr go to files (a full pipe would stall it)."""

    def __init__(self, directory: Path, port: int, env: dict[str, str]) -> None:
        self.out, self.err = directory / "stdout.log", directory / "stderr.log"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "coup", "serve", "--demo", "--port", str(port)],
                                         env=env, cwd=directory, stdout=out, stderr=err)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> tuple[str, str]:
        """SIGTERM, then what the server wrote: (stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.out.read_text(), self.err.read_text()


@pytest_asyncio.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `coup serve --demo` with extra environment; every one is stopped by its PID."""
    started: list[Served] = []

    async def start(**env: str) -> Served:
        sock, port = bind_unused_port()
        sock.close()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "JWT_", "DATABASE_"))}
        full_env.update(PYTHONPATH=str(ROOT), JWT_SECRET=SECRET, COUP_NODE_ID="logs1",
                        DATABASE_URL=f"sqlite:///{tmp_path / f'coup{len(started)}.db'}",
                        COUP_PLUGINS="tests.ops.log_plugin", **env)
        directory = tmp_path / f"node{len(started)}"
        directory.mkdir()
        served = Served(directory, port, full_env)
        started.append(served)
        http = AsyncHTTPClient()
        for _ in range(200):
            try:
                if (await http.fetch(served.url + "/readyz", raise_error=False)).code == 200:
                    return served
            except OSError:
                pass
            assert served.proc.poll() is None, served.stop()
            await asyncio.sleep(0.05)
        raise AssertionError("coup serve did not become ready")

    try:
        yield start
    finally:
        for served in started:
            served.stop()


async def exercise(served: Served) -> str:
    """An API call, a polling client that fails one event on purpose, then goes; its Engine.IO sid."""
    token = TokenService(SECRET, "HS256", 10).issue(1, ttl=600)
    response = await AsyncHTTPClient().fetch(served.url + "/api/me", headers={"Authorization": f"Bearer {token}"})
    assert json.loads(response.body)["id"] == 1
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(served.url, auth={"userId": 1, "token": token}, transports=["polling"], wait_timeout=5)
        ack = await client.call("boom", {}, timeout=5)
        assert ack["ok"] is False, ack
        sid: str = client.eio.sid
        return sid
    finally:
        await client.disconnect()
        await client.shutdown()


async def test_json_logs_are_one_object_per_line_with_node_sid_user_and_exception(serve: Any) -> None:
    served = await serve(COUP_LOG_FORMAT="json", COUP_LOG_LEVEL="DEBUG")
    sid = await exercise(served)
    out, err = served.stop()
    entries = [json.loads(line) for line in out.splitlines()]  # every stdout line parses alone
    assert entries and err == ""  # json goes to stdout, nothing else is written
    assert all({"time", "level", "logger", "node", "message"} <= e.keys() for e in entries)
    assert all(e["node"] == "logs1" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"])
               for e in entries)
    failure = next(e for e in entries if "failed on socket" in e["message"])
    assert failure["level"] == "ERROR" and failure["user"] == "1" and failure["sid"] == sid
    assert "RuntimeError: boom, on purpose" in failure["exception"]
    access = [e for e in entries if e["logger"] == "coup.access"]
    api = next(e for e in access if e["path"] == "/api/me")
    assert api["level"] == "INFO" and api["status"] == 200 and api["method"] == "GET" and "duration_ms" in api
    polls = [e for e in access if e["path"].startswith("/socket.io")]
    assert polls and all(e["level"] == "DEBUG" for e in polls)


async def test_text_logs_are_logfmt_and_polling_stays_out_of_info(serve: Any) -> None:
    served = await serve()  # the defaults: text, INFO
    await exercise(served)
    out, err = served.stop()
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("time=")]
    pair = r'[a-z_]+=(?:"(?:[^"\\]|\\.)*"|\S+)'
    for line in lines:
        assert re.fullmatch(rf"{pair}(?: {pair})*", line), line
    assert any("logger=coup.access" in line and "path=/api/me" in line and "level=INFO" in line for line in lines)
    assert not any("path=/socket.io" in line for line in lines)  # polling requests are DEBUG only
    failure = next(line for line in lines if "failed on socket" in line)
    assert "level=ERROR" in failure and "user=1" in failure and "node=logs1" in failure
    assert "RuntimeError: boom, on purpose" in err  # the traceback follows its line
