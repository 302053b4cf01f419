"""A real `coup serve` process to attack, and the honest clients that must not notice.

Attacks run against the CLI exactly as deployed (`python -m coup serve --demo` on uvloop,
its own SQLite file with the demo data), so memory is the resident size of that process,
read from /proc. `JWT_SECRET` is set by the test, so tests sign tokens of any lifetime.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import socketio
from tornado.testing import bind_unused_port

ROOT = Path(__file__).resolve().parents[2]
#: environment a developer's shell may carry that would change what the server is
_DROP_ENV = ("REDIS_URL", "JWT_SECRET", "DATABASE_URL", "PORT", "HOST", "COUP_DEMO", "COUP_STATIC_DIR",
             "COUP_SERVICE_TOKEN", "COUP_ALLOWED_ORIGINS", "COUP_NODE_ID", "COUP_TRUSTED_PROXIES", "DYNO")
SERVICE_TOKEN = "adversarial-service-token-5Qz9"


class Target:
    """`python -m coup serve --demo` on a free loopback port; `env` adds or overrides variables."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        sock, self.port = bind_unused_port()
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.database = workdir / "coup.db"
        self.log_path = workdir / "server.log"
        self.secret = secrets.token_urlsafe(48)
        self.env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        self.env.update({"PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{self.database}",
                         "JWT_SECRET": self.secret, "COUP_SERVICE_TOKEN": SERVICE_TOKEN,
                         "PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Target:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coup", "serve", "--demo", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coup serve exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self.http_status("/readyz") == 200:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"coup serve did not become ready: {self.log()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    # ---- what the tests measure ------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the server process, in MB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def up(self) -> bool:
        """The process runs and answers /healthz."""
        return self.proc is not None and self.proc.poll() is None and self.http_status("/healthz") == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http_status(self, path: str, method: str = "GET", body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except (urllib.error.URLError, OSError):
            return 0

    def token(self, user_id: int, ttl: float = 3600.0) -> str:
        now = dt.datetime.now(dt.UTC)
        return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + dt.timedelta(seconds=ttl)},
                          self.secret, algorithm="HS256")

    def set_membership(self, study_id: int, user_id: int, status: str) -> None:
        """Change a membership behind the server's back, as the main app's database writes do."""
        with sqlite3.connect(self.database, timeout=10) as db:
            db.execute("UPDATE study_members SET status = ? WHERE study_id = ? AND user_id = ?",
                       (status, study_id, user_id))


class Honest:
    """A signed-in python-socketio client in study 1 that records what it receives."""

    def __init__(self, target: Target, user_id: int, *, address: str | None = None) -> None:
        self.target = target
        self.user_id = user_id
        self.client = socketio.AsyncClient(reconnection=False)
        self.messages: list[dict[str, Any]] = []
        self.events: list[tuple[str, Any]] = []
        self.disconnects = 0
        self._arrived = asyncio.Event()

        @self.client.on("*")
        async def any_event(event: str, *args: Any) -> None:
            payload = args[0] if args else None
            self.events.append((event, payload))
            if event == "message" and isinstance(payload, dict):
                self.messages.append(payload)
            self._arrived.set()

        @self.client.event
        async def disconnect(*_: Any) -> None:
            self.disconnects += 1

    async def connect(self) -> Honest:
        await self.client.connect(self.target.url, transports=["websocket"], wait_timeout=10,
                                  auth={"userId": self.user_id, "token": self.target.token(self.user_id)})
        ack = await self.client.call("join-study", {"studyId": 1}, timeout=10)
        assert ack["ok"] is True, ack
        return self

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"user {self.user_id}: condition not met; got {self.events[-5:]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.client.disconnect()


class HonestPair:
    """Alice and Bob in study 1: `exchange` proves a message still goes from one to the other."""

    def __init__(self, target: Target) -> None:
        self.alice = Honest(target, 1)
        self.bob = Honest(target, 2)
        self.sent: list[str] = []

    async def connect(self) -> HonestPair:
        await self.alice.connect()
        await self.bob.connect()
        return self

    async def exchange(self) -> None:
        tag = f"honest-{secrets.token_hex(4)}"
        ack = await self.alice.client.call("message", {"studyId": 1, "content": tag}, timeout=10)
        assert ack["ok"] is True, ack
        self.sent.append(tag)
        await self.bob.wait_for(lambda: any(m.get("content") == tag for m in self.bob.messages))

    def assert_unaffected(self) -> None:
        """Never disconnected, and every message Alice sent reached Bob exactly once, in order."""
        assert self.alice.disconnects == 0 and self.bob.disconnects == 0
        got = [m["content"] for m in self.bob.messages if str(m.get("content", "")).startswith("honest-")]
        assert got == self.sent, (got, self.sent)

    async def close(self) -> None:
        await self.alice.close()
        await self.bob.close()
