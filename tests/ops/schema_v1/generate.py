"""Rebuild the first released schema's DDL (sqlite.sql, postgresql.sql) from git history.

    .venv/bin/python tests/ops/schema_v1/generate.py

The first release's `coup/domain/models.py` is commit a71a09a (`git log -p
coup/domain/models.py`); its `coup initdb` ran ``create_tables(MODELS)``. This script loads
that file from git and writes the statements peewee generated from it, so the migration
tests start from exactly what a deployed first-release database holds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import peewee as pw

FIRST_RELEASE = "a71a09a"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def ddl(models: tuple[type[pw.Model], ...], db: pw.Database) -> list[str]:
    statements = []
    with db.bind_ctx(models):
        for model in models:
            sql, params = model._schema._create_table(safe=True).query()
            assert not params
            statements.append(sql)
            for index in model._schema._create_indexes(safe=True):
                sql, params = index.query()
                assert not params
                statements.append(sql)
    return statements


def main() -> None:
    source = subprocess.run(["git", "show", f"{FIRST_RELEASE}:coup/domain/models.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "models_v1.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("models_v1", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["models_v1"] = module
        spec.loader.exec_module(module)
    header = f"-- the schema `coup initdb` created at commit {FIRST_RELEASE}; written by generate.py\n"
    for name, db in (("sqlite", pw.SqliteDatabase(":memory:")), ("postgresql", pw.PostgresqlDatabase("v1"))):
        (HERE / f"{name}.sql").write_text(header + "".join(s + ";\n" for s in ddl(module.MODELS, db)))


if __name__ == "__main__":
    main()
