"""What a platform's Python buildpack does, done by hand: a clean clone, a NON-editable install
into a fresh virtualenv elsewhere, then `coup serve --demo` from a third folder after the
clone is gone. The demo page and every file it references (scripts, styles, the vendored
client, the ES modules it imports, recursively) must answer 200: they come from the wheel.

Slow (a virtualenv and a pip install: ~10-60 s with a warm pip cache), bounded by the
timeout below and the timeouts of each step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.conftest import require
from tests.paas.bed import ROOT, CoupServe, http_get

pytestmark = pytest.mark.timeout(420)

#: ES module imports: `import x from "./a.js"`, `import "./b.js"`, `export * from "./c.js"`, `import("./d.js")`;
#: only URLs (a browser cannot load a bare name like "socket.io-client" without an import map)
_IMPORTS = re.compile(r"""(?:\bimport\s*(?:[\w*{}\s,]+\s*from\s*)?|\bexport\s*[\w*{}\s,]+\s*from\s*"""
                      r"""|\bimport\s*\()\s*["']((?:\.{1,2}/|/)[^"']+)["']""")
_COMMENTS = re.compile(r"/\*.*?\*/|^\s*//.*?$", re.DOTALL | re.MULTILINE)
_CSS_URLS = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)""")


class References(HTMLParser):
    """The URLs a page loads: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.found.append(("module" if values.get("type") == "module" else "script", values["src"] or ""))
        elif tag == "link" and values.get("href") and values.get("rel") in ("stylesheet", "icon", "manifest"):
            self.found.append((values.get("rel") or "", values["href"] or ""))
        elif tag == "img" and values.get("src") and not (values.get("src") or "").startswith("data:"):
            self.found.append(("img", values["src"] or ""))


def crawl(base: str) -> dict[str, int]:
    """GET the page and, transitively, everything it references on the same origin: {path: status}."""
    status, body = http_get(base + "/")
    seen: dict[str, int] = {"/": status}
    parser = References()
    parser.feed(body.decode("utf-8", "replace"))
    queue = [(kind, urljoin(base + "/", ref)) for kind, ref in parser.found]
    while queue:
        kind, url = queue.pop()
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != base or parts.path in seen:
            continue
        status, body = http_get(url)
        seen[parts.path] = status
        text = body.decode("utf-8", "replace")
        if kind == "module":
            queue += [("module", urljoin(url, ref)) for ref in _IMPORTS.findall(_COMMENTS.sub("", text))]
        elif kind == "stylesheet":
            queue += [("asset", urljoin(url, ref)) for ref in _CSS_URLS.findall(text) if not ref.startswith("data:")]
    return seen


def run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_non_editable_install_serves_the_demo_page_and_everything_it_loads(tmp_path: Path) -> None:
    require(shutil.which("git") is not None and (ROOT / ".git").exists(), "git and a git checkout")
    clone, venv, elsewhere = tmp_path / "clone", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], tmp_path, 120)
    # a venv without its own pip (ensurepip took 9 s): this pip installs into it through --python
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, 120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check",
           "--no-input"]
    # what the buildpack installs from: the project itself, with the PostgreSQL driver (resolved
    # while the install runs; a dry run changes nothing)
    planning = subprocess.Popen([*pip, "install", "--quiet", "--dry-run", "--ignore-installed", "--report", "-",
                                 "-r", "requirements.txt"], cwd=clone, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        run([*pip, "install", "--quiet", "."], clone, 300)  # NOT -e
        out, err = planning.communicate(timeout=300)
    finally:
        planning.kill()
    assert planning.returncode == 0, f"the dry run of requirements.txt failed:\n{out}\n{err}"
    report = json.loads(out)
    planned = {item["metadata"]["name"].lower() for item in report["install"]}
    assert {"coup-realtime", "psycopg2-binary"} <= planned, planned
    assert (clone / ".python-version").read_text().strip().startswith("3.")
    shutil.rmtree(clone)  # nothing may come from the checkout any more

    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    # the package as installed: no PostgreSQL driver, so such a URL is refused by name
    refused = subprocess.run([str(venv / "bin" / "coup"), "serve"], cwd=elsewhere, capture_output=True, text=True,
                             timeout=60, env={**env, "JWT_SECRET": "tV3q-8kLmZ0pXw2rYc7nB4hJ6dF1gS9a-eU5o",
                                              "DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    assert refused.returncode == 2 and "DATABASE_URL is a PostgreSQL URL but its driver is not installed" \
        in refused.stderr, refused.stderr

    server = CoupServe("installed", env, tmp_path, program=(str(venv / "bin" / "coup"),), args=("--demo",),
                       cwd=elsewhere)
    try:
        server.start().wait_ready(60)
        seen = crawl(server.url)
        print(f"\nfetched from the installed package: {seen}")
        assert all(status == 200 for status in seen.values()), seen
        expected = {"/", "/css/app.css", "/favicon.svg", "/vendor/socket.io.min.js", "/js/main.js", "/js/api.js",
                    "/js/connection.js", "/js/chat.js"}
        assert expected <= set(seen), f"the crawl missed files the page loads: {expected - set(seen)}"
        assert http_get(f"{server.url}/sockjs-coup.js")[0] == 200
        assert http_get(f"{server.url}/vendor/sockjs.min.js")[0] == 200
    finally:
        server.stop(grace=15)
