"""The demo page's JavaScript: ESLint (eslint.config.js) passes, and the page's event names
(static/js/events.js) are exactly the ones the CoUp domain handles and emits."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
ESLINT = ROOT / "tests" / "js" / "node_modules" / ".bin" / "eslint"


def _js_events(kind: str) -> set[str]:
    """The values of `export const <kind> = Object.freeze({...})` in static/js/events.js."""
    text = (ROOT / "static" / "js" / "events.js").read_text(encoding="utf-8")
    block = re.search(rf"export const {kind} = Object\.freeze\(\{{(.*?)\}}\)", text, re.S)
    assert block, f"{kind} not found in static/js/events.js"
    return set(re.findall(r'"([a-z-]+)"', block.group(1)))


def _domain_events(*calls: str) -> set[str]:
    """Event names the domain passes as literals to any of `calls` (`on`: handles; `emit`,
    `_announce`: sends)."""
    names: set[str] = set()
    for path in (ROOT / "coup" / "domain").glob("*.py"):
        for call in calls:
            names |= set(re.findall(rf'\.{call}\(\s*"([a-z][a-z-]*)"', path.read_text(encoding="utf-8")))
    return names


def test_eslint_passes() -> None:
    require(shutil.which("node") is not None and ESLINT.exists(), "node and eslint (npm ci --prefix tests/js)")
    out = subprocess.run([str(ESLINT), "--max-warnings", "0", "."], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_lint_refuses_a_product_event_name_spelled_out() -> None:
    """Guard against a rule that passes because it matches nothing."""
    require(shutil.which("node") is not None and ESLINT.exists(), "node and eslint (npm ci --prefix tests/js)")
    code = 'export function f(socket) { socket.timeout(5).emit("join-study", {}); socket.on("user-online", f); }\n'
    out = subprocess.run([str(ESLINT), "--stdin", "--stdin-filename", "static/js/probe.js"], cwd=ROOT,
                         input=code, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout.count("events.js") == 2, out.stdout + out.stderr


def test_the_page_sends_exactly_the_events_the_domain_handles() -> None:
    assert _js_events("ClientEvent") == _domain_events("on")


def test_the_page_listens_to_exactly_the_events_the_domain_emits() -> None:
    # `error` is the core's refusal event (ServerOptions.error_event), sent for the domain's refusals
    assert _js_events("ServerEvent") == _domain_events("emit", "_announce") | {"error"}
