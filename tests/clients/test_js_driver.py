"""The Node driver's own contract (tests/js/client.mjs), as other suites rely on it."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.clients.conftest import App
from tests.clients.jsclient import DRIVER, JS_DIR, node_available
from tests.conftest import require

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_driver_runs_a_scenario_given_on_argv(app: App) -> None:
    """Without anything on stdin: the scenario runs in order, then the driver exits 0."""
    require(node_available(), "node with tests/js/node_modules (npm ci in tests/js)")
    scenario = {"lifetime_ms": 20_000, "commands": [
        {"cmd": "emit", "id": 1, "socket": "nobody", "event": "x"},
        {"cmd": "connect", "id": 2, "socket": "a", "url": app.url, "options": {"transports": ["websocket"]}},
        {"cmd": "wait", "id": 3, "for": "connect", "socket": "a", "timeout": 10_000},
        {"cmd": "emit", "id": 4, "socket": "a", "event": "echo", "args": [1, {"$bin": "AAH/"}], "ack": True},
        {"cmd": "wait", "id": 5, "for": "ack", "socket": "a", "timeout": 10_000},
        {"cmd": "wait", "id": 6, "for": "never", "timeout": 50},
    ]}
    process = await asyncio.create_subprocess_exec(
        "node", str(DRIVER), json.dumps(scenario), cwd=str(JS_DIR),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    records = [json.loads(line) for line in out.decode().splitlines()]
    by_id = {r["id"]: r for r in records if "id" in r and r["type"] not in ("connect_called", "emitted")}

    assert process.returncode == 0, err.decode()
    assert records[0]["type"] == "ready" and records[0]["version"].startswith("4.8.")
    assert by_id[1]["type"] == "error" and "nobody" in by_id[1]["message"]
    assert by_id[3]["type"] == "waited"
    assert by_id[4] == {**by_id[4], "type": "ack", "args": [1, {"$bin": "AAH/"}]}
    assert by_id[6]["type"] == "wait_timeout" and by_id[6]["seen"] == 0
    connect = next(r for r in records if r["type"] == "connect")
    assert connect["transport"] == "websocket"
    assert app.log.seen("connect", socket="/", sid=connect["sid"]), "the server saw that socket connect"
    assert records[-1]["type"] == "exit" and records[-1]["code"] == 0
