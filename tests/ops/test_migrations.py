"""`coup migrate` on SQLite and PostgreSQL: a first-release database with data keeps every row,
steps apply in order once, two runners at the same time take turns, a newer database is refused."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import peewee as pw
import pytest
from playhouse.migrate import SchemaMigrator

from coup.domain.database import open_database
from coup.domain.migrations import MIGRATIONS, PG_LOCK_KEY, VERSION_TABLE, Migration, MigrationError, migrate
from coup.domain.models import MODELS, Message
from tests.conftest import require
from tests.domain.conftest import POSTGRES_ENV

pytestmark = [pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
V1 = Path(__file__).resolve().parent / "schema_v1"
#: the tables of the first released schema, each with a column that orders its rows
V1_TABLES = {"users": "id", "groups": "id", "group_members": "id", "studies": "id", "study_members": "id",
             "messages": "id", "message_reads": "id", "notifications": "id", "tasks": "id", "server_settings": "key"}


class Target:
    """One empty database: a SQLite file, or a PostgreSQL schema of its own."""

    def __init__(self, kind: str, url: str, schema: str | None = None) -> None:
        self.kind = kind
        self.url = url
        self.schema = schema

    def db(self) -> pw.Database:
        return open_database(self.url)

    def run(self, *statements: str) -> None:
        db = self.db()
        try:
            with db.connection_context():
                for statement in statements:
                    db.execute_sql(statement)
        finally:
            db.close()

    def load_first_release(self, *, with_data: bool = True) -> None:
        files = [V1 / f"{self.kind}.sql"] + ([V1 / "data.sql"] if with_data else [])
        self.run(*(s for f in files for s in _statements(f.read_text())))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        db = self.db()
        try:
            with db.connection_context():
                return [tuple(row) for row in db.execute_sql(sql).fetchall()]
        finally:
            db.close()

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        return {table: self.query(f'SELECT * FROM "{table}" ORDER BY "{order}"') for table, order in V1_TABLES.items()}

    def versions(self) -> list[int]:
        return [int(v) for (v,) in self.query(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines(keepends=True) if not line.startswith("--")]
    return [s.strip() for s in "".join(lines).split(";\n") if s.strip()]


@pytest.fixture(params=["sqlite", "postgresql"])
def targets(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``targets()``: a new empty database of this test's kind (PostgreSQL: a fresh schema)."""
    made: list[str] = []
    files = iter(range(100))
    base = os.environ.get(POSTGRES_ENV)
    if request.param == "postgresql":
        require(bool(base), f"PostgreSQL ({POSTGRES_ENV})")
    admin = None

    def make() -> Target:
        nonlocal admin
        if request.param == "sqlite":
            return Target("sqlite", f"sqlite:///{tmp_path / f'db{next(files)}.db'}")
        import psycopg2

        assert base is not None
        if admin is None:
            admin = psycopg2.connect(base)
            admin.autocommit = True
        schema = f"coup_mig_{os.getpid()}_{secrets.token_hex(4)}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        made.append(schema)
        parts = urlsplit(base)
        query = (parts.query + "&" if parts.query else "") + urlencode({"options": f"-csearch_path={schema}"})
        return Target("postgresql", urlunsplit(parts._replace(query=query)), schema)

    try:
        yield make
    finally:
        if admin is not None:
            with admin.cursor() as cur:
                for schema in made:
                    cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
            admin.close()


def coup_migrate(url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "DATABASE_", "JWT_"))}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=url)
    return subprocess.Popen([sys.executable, "-m", "coup", "migrate", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def schema_of(target: Target) -> dict[str, Any]:
    """Tables, columns, indexes and foreign keys as the database reports them."""
    db = target.db()
    try:
        with db.connection_context():
            tables = sorted(t for t in db.get_tables() if t != VERSION_TABLE)
            return {t: {
                "columns": sorted((c.name, c.data_type.lower(), c.null, c.primary_key) for c in db.get_columns(t)),
                "indexes": sorted((i.name, tuple(i.columns), i.unique) for i in db.get_indexes(t)),
                "foreign_keys": sorted((f.column, f.dest_table, f.dest_column) for f in db.get_foreign_keys(t)),
            } for t in tables}
    finally:
        db.close()


# ---------------------------------------------------------------------- the first released schema


def test_a_first_release_database_keeps_every_row_and_matches_the_models(targets: Any) -> None:
    old, fresh = targets(), targets()
    old.load_first_release()
    before = old.rows()
    assert all(before.values()), "every table of the fixture has rows"

    proc = coup_migrate(old.url)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "at version 1" in out

    assert old.rows() == before
    assert old.versions() == [1]
    # an empty database gets the schema from the models: the same tables, columns and indexes
    assert migrate(fresh.db()).before is None
    assert schema_of(old) == schema_of(fresh)
    # and the application writes to the migrated one (sequences and defaults still right)
    db = old.db()
    try:
        with db.connection_context(), db.bind_ctx(MODELS):
            message = Message.create(study=1, user=2, seq=4, content="after the migration")
            assert message.id == max(row[0] for row in before["messages"]) + 1
    finally:
        db.close()


def _add_edited_at(migrator: SchemaMigrator, db: pw.Database) -> None:
    from playhouse.migrate import migrate as run

    run(migrator.add_column("messages", "edited_at", pw.DateTimeField(null=True)),
        migrator.add_index("messages", ("edited_at",), False))


def _rebuild_users(migrator: SchemaMigrator, db: pw.Database) -> None:
    """On SQLite this rebuilds `users`, the table most others point at (ON DELETE CASCADE)."""
    from playhouse.migrate import migrate as run

    run(migrator.drop_not_null("users", "created_at"))


def test_steps_apply_in_order_once_and_keep_every_row(targets: Any) -> None:
    target = targets()
    target.load_first_release()
    before = target.rows()
    steps = (*MIGRATIONS, Migration(2, "messages.edited_at", _add_edited_at), Migration(3, "rebuild users",
                                                                                        _rebuild_users))
    report = migrate(target.db(), steps)
    assert (report.before, report.after, report.applied) == (1, 3, [2, 3])
    assert target.versions() == [1, 2, 3]
    after = target.rows()
    assert {t: [row[:len(before[t][0])] for row in rows] for t, rows in after.items()} == before
    assert all(row[-1] is None for row in after["messages"])  # the new column, empty
    again = migrate(target.db(), steps)
    assert again.applied == [] and target.versions() == [1, 2, 3]


def test_a_failing_step_changes_nothing(targets: Any) -> None:
    target = targets()
    target.load_first_release()
    before = target.rows()

    def half_done(migrator: SchemaMigrator, db: pw.Database) -> None:
        _add_edited_at(migrator, db)
        raise RuntimeError("the step fails after its first change")

    with pytest.raises(RuntimeError):
        migrate(target.db(), (*MIGRATIONS, Migration(2, "fails", half_done)))
    assert target.rows() == before
    assert "edited_at" not in {c for c, *_ in schema_of(target)["messages"]["columns"]}
    # the release before the failed one recorded its version; the failed step did not
    assert target.versions() == [1] if target.kind == "postgresql" else target.query(
        f"SELECT count(*) FROM sqlite_master WHERE name = '{VERSION_TABLE}'") == [(0,)]


# ---------------------------------------------------------------------- two runners at once


class HeldLock:
    """The migration lock taken by the test, as another `coup migrate` would hold it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        if target.kind == "sqlite":
            self.sqlite = sqlite3.connect(urlsplit(target.url).path[1:], isolation_level=None)
            self.sqlite.execute("PRAGMA journal_mode = wal")  # as every coup process opens it
            self.sqlite.execute("BEGIN IMMEDIATE")
        else:
            import psycopg2

            self.pg = psycopg2.connect(target.url)
            self.pg.autocommit = True
            with self.pg.cursor() as cur:
                cur.execute(f"SELECT pg_advisory_lock({PG_LOCK_KEY})")

    def release(self) -> None:
        if self.target.kind == "sqlite":
            self.sqlite.execute("COMMIT")
            self.sqlite.close()
        else:
            self.pg.close()


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    """Lines of `proc`'s stderr up to one containing `text` (fails after `timeout` seconds)."""
    assert proc.stderr is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if text in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert found.wait(timeout), (text, lines)
    return lines


@pytest.mark.parametrize("start", ["empty", "first release"])
def test_two_nodes_migrating_at_once_take_turns(targets: Any, start: str) -> None:
    target = targets()
    if start == "first release":
        target.load_first_release()
    before = target.rows() if start == "first release" else None
    lock = HeldLock(target)
    procs = [coup_migrate(target.url), coup_migrate(target.url)]
    try:
        for proc in procs:  # the barrier: both are waiting for the lock
            _wait_for_line(proc, "waiting for", 30)
    finally:
        lock.release()
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    outs = sorted(out for out, _ in results)
    assert any("nothing to do" in out for out in outs), outs  # the second found it done
    assert target.versions() == [1]
    if before is not None:
        assert target.rows() == before
    else:
        assert set(schema_of(target)) == {m._meta.table_name for m in MODELS}


# ---------------------------------------------------------------------- newer than this release


def test_a_database_newer_than_the_release(targets: Any) -> None:
    target = targets()
    migrate(target.db())
    target.run(f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (7, 'from the future', 'x')")
    proc = coup_migrate(target.url)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "newer than this release" in err
    with pytest.raises(MigrationError):
        migrate(target.db())
    assert migrate(target.db(), allow_newer=True).after == 7  # what a node of the old release does
    check = coup_migrate(target.url, "--check")
    check.communicate(timeout=60)
    assert check.returncode == 1
