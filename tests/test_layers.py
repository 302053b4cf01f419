"""The layer boundaries of docs/architecture.md, checked on every module's imports.

Imports are read from the source (including those under ``if TYPE_CHECKING:`` and inside
functions), so a boundary cannot be crossed by a lazy import either. A package that does not
exist yet (the domain, before its issue lands) simply has no modules to check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COUP = ROOT / "coup"


def modules(package: str) -> list[Path]:
    return sorted((COUP / package).rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    """Fully qualified module names imported by `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in modules(package):
        for name in sorted(imported_names(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_protocol_imports_only_the_standard_library() -> None:
    bad = []
    for path in modules("protocol"):
        for name in sorted(imported_names(path)):
            top = name.split(".")[0]
            if name.startswith("coup.") and not name.startswith("coup.protocol"):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif top != "coup" and top not in sys.stdlib_module_names and top != "__future__":
                bad.append(f"{path.relative_to(ROOT)} imports {name} (not the standard library)")
    assert modules("protocol") and bad == []


def test_protocol_does_no_io_and_reads_no_clock() -> None:
    assert violations("protocol", ("asyncio", "socket", "select", "selectors", "threading", "time",
                                   "datetime", "os", "io", "logging")) == []


def test_importing_the_protocol_pulls_in_no_event_loop_or_framework() -> None:
    code = ("import sys; import coup.protocol.engineio, coup.protocol.socketio, coup.protocol.websocket, "
            "coup.protocol.wire, coup.protocol.heartbeat; "
            "print(' '.join(m for m in ('asyncio', 'tornado', 'redis', 'peewee') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(("package", "forbidden"), [
    ("engine", ("coup.core", "coup.domain", "coup.cluster", "coup.transports", "tornado", "redis")),
    ("transports", ("coup.core", "coup.domain", "coup.cluster", "redis")),
    ("core", ("tornado", "redis", "coup.transports", "coup.domain", "coup.cluster", "peewee")),
    ("domain", ("coup.transports", "coup.protocol", "coup.cluster", "coup.engine", "redis",
                "tornado.websocket", "tornado.iostream")),
    # the cluster is generic: it serves any app on the core, so it never learns about studies
    ("cluster", ("coup.domain", "coup.app", "coup.cli", "peewee", "jwt")),
])
def test_layer_boundaries(package: str, forbidden: tuple[str, ...]) -> None:
    assert violations(package, forbidden) == []


def test_importing_the_emitter_stays_light() -> None:
    """Backends import `coup.emitter` to push events: it must not drag in the node, the domain
    or a web framework (an eager package `__init__` once loaded peewee, PyJWT and tornado.web)."""
    heavy = ("peewee", "jwt", "tornado", "uhashring", "coup.core", "coup.domain", "coup.engine",
             "coup.transports", "coup.cluster.node", "coup.app")
    code = ("import sys; import coup.emitter; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == ""


def test_package_inits_import_nothing_heavy() -> None:
    """Importing one module of the cluster or the domain must not import the whole package."""
    for package in ("cluster", "domain"):  # coup.core's __init__ is its public API, on purpose
        init = COUP / package / "__init__.py"
        assert not [n for n in imported_names(init) if n.startswith("coup.")], f"{init} imports modules"


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that passes because it reads nothing."""
    assert "coup.protocol.wire.Outbound" in imported_names(COUP / "core" / "adapter.py")
    assert "coup.engine.session.Session" in imported_names(COUP / "core" / "socket.py")  # TYPE_CHECKING
    assert any(n.startswith("tornado") for n in imported_names(COUP / "transports" / "polling.py"))
