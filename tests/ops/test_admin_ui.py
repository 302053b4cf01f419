"""The real Socket.IO Admin UI (npm @socket.io/admin-ui 0.5.1, its built `ui/dist`) in Chromium,
signed in to a real `coup serve`: it lists our node, a client's socket with its transport, and
its rooms. (`npm ci --prefix tests/js` installs the package; Chromium as for tests/demo.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from tornado.testing import bind_unused_port

from coup.domain.auth import TokenService
from tests.conftest import require
from tests.demo.conftest import CHROMIUM_ARGS, chromium_path

pytestmark = [pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
UI_DIST = ROOT / "tests" / "js" / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
ARTIFACTS = ROOT / "test-artifacts" / "admin"
SECRET = "a-jwt-secret-for-the-admin-ui-test-0123456789"
USER, PASSWORD = "admin", "a-long-admin-password"
NODE_ID = "admin-ui-node"


def _free_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


def _wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for proc in started:  # each by its PID
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_the_stock_admin_ui_shows_our_node_sockets_and_rooms(tmp_path: Path,
                                                              processes: list[subprocess.Popen[Any]]) -> None:
    path = chromium_path()
    require(path is not None, "Debian chromium (/usr/bin/chromium)")
    require(UI_DIST.joinpath("index.html").exists(), "@socket.io/admin-ui in tests/js (npm ci --prefix tests/js)")
    ui_port, port = _free_port(), _free_port()
    ui_origin = f"http://127.0.0.1:{ui_port}"
    # the UI's own page, served as admin.socket.io would serve it: from another origin
    ui = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(ui_port),
                           "--directory", str(UI_DIST)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(ui)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "JWT_", "DATABASE_", "REDIS_"))}
    env.update(PYTHONPATH=str(ROOT), JWT_SECRET=SECRET, COUP_NODE_ID=NODE_ID, COUP_ADMIN_USER=USER,
               COUP_ADMIN_PASSWORD=bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode(),
               COUP_ALLOWED_ORIGINS=ui_origin, DATABASE_URL=f"sqlite:///{tmp_path / 'coup.db'}")
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "coup", "serve", "--demo", "--port", str(port)], env=env,
                                  cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    processes.append(server)
    _wait_http(f"{ui_origin}/index.html", ui)
    _wait_http(f"http://127.0.0.1:{port}/readyz", server)

    # a CoUp client in study 1: the stock socket.io-client, scripted (tests/js/client.mjs)
    token = TokenService(SECRET, "HS256", 10).issue(1, ttl=600)
    script = [
        {"cmd": "connect", "socket": "alice", "url": f"http://127.0.0.1:{port}",
         "options": {"transports": ["websocket"], "auth": {"userId": 1, "token": token}}},
        {"cmd": "wait", "for": "connect", "socket": "alice"},
        {"cmd": "emit", "socket": "alice", "event": "join-study", "args": [{"studyId": 1}], "ack": True},
    ]
    alice = subprocess.Popen(["node", str(ROOT / "tests" / "js" / "client.mjs"),
                              json.dumps({"commands": script, "lifetime_ms": 100_000})],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    processes.append(alice)
    assert alice.stdout is not None
    records = []
    for line in alice.stdout:
        records.append(json.loads(line))
        if records[-1]["type"] in ("ack", "ack_error", "error", "connect_error"):
            break
    assert records[-1]["type"] == "ack" and records[-1]["args"][0]["ok"] is True, records
    alice_sid = next(r["sid"] for r in records if r["type"] == "connect")

    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{ui_origin}/index.html")
            page.get_by_label("Server URL").fill(f"http://127.0.0.1:{port}")
            page.get_by_label("Username").fill(USER)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Connect").click()
            expect(page.get_by_label("Server URL")).to_be_hidden(timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

            page.goto(f"{ui_origin}/index.html#/servers/")
            expect(page.get_by_text(NODE_ID).first).to_be_visible(timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "servers.png"))

            page.goto(f"{ui_origin}/index.html#/sockets/")
            row = page.get_by_role("row").filter(has_text=alice_sid)
            expect(row).to_be_visible(timeout=15_000)
            expect(row).to_contain_text("WebSocket")  # the UI names the transport so
            page.screenshot(path=str(ARTIFACTS / "sockets.png"))

            page.goto(f"{ui_origin}/index.html#/rooms/")
            expect(page.get_by_text("study:1").first).to_be_visible(timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "rooms.png"))
        finally:
            browser.close()
