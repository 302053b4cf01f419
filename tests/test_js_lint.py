"""The demo page's JavaScript: ESLint (eslint.config.js) passes, and the page's event names
(static/js/events.js) are the server's (coup/domain/event_names.py), each spelled once per side."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from coup.core.options import ServerOptions
from coup.domain.event_names import ClientEvent, ServerEvent, event_names
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
ESLINT = ROOT / "tests" / "js" / "node_modules" / ".bin" / "eslint"


def _js_events(kind: str) -> set[str]:
    """The values of `export const <kind> = Object.freeze({...})` in static/js/events.js."""
    text = (ROOT / "static" / "js" / "events.js").read_text(encoding="utf-8")
    block = re.search(rf"export const {kind} = Object\.freeze\(\{{(.*?)\}}\)", text, re.S)
    assert block, f"{kind} not found in static/js/events.js"
    return set(re.findall(r'"([a-z-]+)"', block.group(1)))


def _spelled_out_in_the_domain() -> list[str]:
    """Product event names written as literals in the domain's on/emit calls (there should be none)."""
    names = event_names(ClientEvent) | event_names(ServerEvent)
    found = []
    for path in sorted((ROOT / "coup" / "domain").glob("*.py")):
        for name in re.findall(r'\.(?:on|emit|_announce)\(\s*"([a-z][a-z-]*)"', path.read_text(encoding="utf-8")):
            if name in names:
                found.append(f"{path.name}: {name}")
    return found


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


def test_the_page_and_the_server_name_the_same_events() -> None:
    assert _js_events("ClientEvent") == event_names(ClientEvent)
    assert _js_events("ServerEvent") == event_names(ServerEvent)
    assert ServerEvent.ERROR == ServerOptions().error_event


def test_the_domain_spells_no_event_out() -> None:
    """coup/domain/event_names.py is the one place: an on/emit with a literal name fails here."""
    assert _spelled_out_in_the_domain() == []
