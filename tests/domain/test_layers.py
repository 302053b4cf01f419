"""The domain stays on its side of the boundary: core API only, no transports, codec or Redis."""

from __future__ import annotations

import ast
from pathlib import Path

import coup.domain

FORBIDDEN = ("coup.transports", "coup.protocol", "coup.engine", "coup.cluster", "coup.app", "redis")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_domain_imports_neither_transports_nor_codec_nor_redis() -> None:
    package = Path(coup.domain.__file__).parent
    offenders = {
        f"{path.name}: {name}"
        for path in package.glob("*.py")
        for name in imported_modules(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert not offenders
    assert len(list(package.glob("*.py"))) > 10  # the check saw the package
