"""Browser tests of the demo page: a real `coup serve --demo` process, Debian's Chromium
driven by Playwright (no `playwright install`: see ../shared/DEPENDENCIES.md).

Each test gets its own server (fresh SQLite file with the demo data) on a free loopback
port, so a test can stop it and start it again on the same port with the same database.
Screenshots go to test-artifacts/demo/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.testing import bind_unused_port

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "demo"
#: the flags that make Debian's Chromium run headless in a container (DEPENDENCIES.md)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
SERVICE_TOKEN = "demo-tests-service-token-0123456789"
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
#: environment a developer's shell may carry that would change what the server is
_DROP_ENV = ("REDIS_URL", "JWT_SECRET", "DATABASE_URL", "PORT", "HOST", "COUP_DEMO", "COUP_STATIC_DIR",
             "COUP_SERVICE_TOKEN", "COUP_ALLOWED_ORIGINS", "COUP_NODE_ID")


def chromium_path() -> str | None:
    found = os.environ.get("COUP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).exists() else None


class DemoServer:
    """`python -m coup serve --demo` as a user starts it, on a fixed port and database file."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str] | None = None) -> None:
        sock, self.port = bind_unused_port()
        sock.close()  # the server binds it; restarting reuses the same port
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.database = workdir / "demo.db"
        self.log_path = ARTIFACTS / f"{name}.server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: extra environment (settings) for the server
        self.env = env or {}
        self._tokens: dict[int, str] = {}

    def start(self) -> None:
        assert self.proc is None, "already running"
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        env.update({
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": f"sqlite:///{self.database}",
            "COUP_SERVICE_TOKEN": SERVICE_TOKEN,
            "PYTHONUNBUFFERED": "1",
            # a closed page's user goes offline after 0.5 s instead of the default grace's 3 s
            # (the grace itself is tested in tests/domain and tests/paas)
            "COUP_PRESENCE_GRACE": "0.5",
            **self.env,
        })
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coup", "serve", "--demo", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coup serve --demo exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"coup serve --demo did not become ready; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    # ---- the HTTP API, as a backend or a second client would use it -----------------------

    def token(self, user_id: int) -> str:
        if user_id not in self._tokens:
            self._tokens[user_id] = self.call("POST", "/api/dev/token", {"userId": user_id})["token"]
        return self._tokens[user_id]

    def call(self, method: str, path: str, body: Any = None, *, user: int | None = None,
             bearer: str | None = None) -> Any:
        """One API request; waits out 429 (Retry-After) so bulk set-up respects the rate limit."""
        headers = {"Content-Type": "application/json"}
        if user is not None:
            bearer = self.token(user)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        data = None if body is None else json.dumps(body).encode()
        for _ in range(50):
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    raw = reply.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as err:
                if err.code != 429:
                    raise AssertionError(f"{method} {path}: {err.code} {err.read().decode(errors='replace')}") from None
                time.sleep(float(err.headers.get("Retry-After") or 1))
        raise AssertionError(f"{method} {path}: still rate limited")


class DemoPage:
    """One browser tab on the demo page, recording page errors and dialogs."""

    def __init__(self, context: Any, page: Any) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)

    def sign_in(self, user_id: int, *, study_id: int = 1) -> DemoPage:
        self.page.locator(f".user-choice[data-user-id='{user_id}']").click()
        self.wait_ready(study_id)
        return self

    def wait_ready(self, study_id: int = 1) -> None:
        """Connected, and the socket is in the open study's room (the join ack came back)."""
        self.page.wait_for_selector("body[data-connection='connected']", state="attached")
        self.page.wait_for_selector(f"#chat[data-joined='{study_id}']", state="attached")

    def send(self, text: str) -> None:
        box = self.page.locator("#composer-input")
        box.fill(text)
        box.press("Enter")

    def messages(self) -> Any:
        return self.page.locator("#messages .msg")

    def message(self, text: str) -> Any:
        return self.page.locator("#messages .msg").filter(
            has=self.page.locator(".msg-text").get_by_text(text, exact=True))

    def member(self, user_id: int) -> Any:
        return self.page.locator(f"#member-list .member[data-user-id='{user_id}']")

    def view(self, name: str) -> None:
        """Phone layout: pick a view in the tab bar (no-op on a desktop-wide page)."""
        tab = self.page.locator(f".tabbar button[data-view='{name}']")
        if tab.is_visible():
            tab.click()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module; closed before other modules' asyncio tests run."""
    path = chromium_path()
    require(path is not None, "Debian chromium (/usr/bin/chromium; apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def demo_env() -> dict[str, str]:
    """Extra settings (environment) for the demo server; a test module overrides this fixture."""
    return {}


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest, browser: Any,
           demo_env: dict[str, str]) -> Iterator[DemoServer]:
    demo = DemoServer(tmp_path, request.node.name, env=demo_env)
    demo.log_path.unlink(missing_ok=True)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture
def open_page(browser: Any, server: DemoServer) -> Iterator[Callable[..., DemoPage]]:
    """open_page(user_id=None, layout=DESKTOP, query="", context=None, base=None, clock=False) -> a signed-in DemoPage.

    `base` opens the page through another address than the server's (a proxy in front of it).
    `clock` installs Playwright's clock in a new context: time runs as usual until the test
    moves it on (`page.clock.fast_forward`), so it need not wait out the client's backoff.
    """
    pages: list[DemoPage] = []
    contexts: list[Any] = []

    def open_(user_id: int | None = None, layout: dict[str, Any] = DESKTOP, query: str = "",
              context: Any = None, base: str | None = None, clock: bool = False) -> DemoPage:
        if context is None:
            context = browser.new_context(**layout)
            contexts.append(context)
            if clock:
                context.clock.install()
        page = context.new_page()
        page.set_default_timeout(20_000)
        demo = DemoPage(context, page)
        pages.append(demo)
        page.goto(f"{base or server.url}/{query}")
        if user_id is not None:
            demo.sign_in(user_id)
        return demo

    yield open_
    for context in contexts:
        context.close()
    errors = [error for demo in pages for error in demo.errors]
    assert not errors, f"JavaScript errors on the page: {errors}"
