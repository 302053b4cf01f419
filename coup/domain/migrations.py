"""Schema versions: `coup migrate` brings any released schema to the one `models.py` describes.

The tool is peewee's own `playhouse.migrate` (it ships with peewee, so it moves with it);
this module adds what it lacks: the ordered list of migrations, the applied versions kept in
the database (`schema_migrations`, one row per version), and a lock, so that two nodes (or a
release phase and a starting node) running it at the same time apply each step once.
peewee-migrate 2.3 (maintained, peewee >= 4.4) was the alternative: it has no lock either, and
would add click and its own history table for what this small module does.

- An empty database gets the current schema from the models and every version recorded:
  the same result as applying each migration in turn, which `tests/ops/test_migrations.py`
  checks against the first released schema.
- A database made before this module (tables, no `schema_migrations`) is at version 1, the
  first released schema (commit a71a09a; `models.py` has not changed since).
- A later change to `models.py` comes with a `Migration` at the end of `MIGRATIONS`, whose
  `up(migrator, db)` runs `playhouse.migrate` operations (add_column, add_index, ...).

The lock: on PostgreSQL a session advisory lock named after the database and schema; on
SQLite the database's write lock (``BEGIN IMMEDIATE``) held for the whole run, with foreign
keys off meanwhile (a table rebuild would otherwise cascade-delete the rows that point at
it) and `PRAGMA foreign_key_check` before the commit. Either way the version is read again
once the lock is held, so the second runner finds nothing left to do.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import peewee as pw
from playhouse.migrate import SchemaMigrator

from coup.domain.models import MODELS

log = logging.getLogger(__name__)

VERSION_TABLE = "schema_migrations"
#: the PostgreSQL advisory lock key: one per database and schema
PG_LOCK_KEY = "hashtext(current_database() || '.' || current_schema() || '.coup-migrate')"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    #: the step from the previous version; None only for version 1 (databases start there)
    up: Callable[[SchemaMigrator, pw.Database], None] | None = None


#: every schema version ever released, oldest first; append, never edit a released one
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the first released schema (a71a09a)"),
)


class MigrationError(RuntimeError):
    """The database cannot be brought to this release's schema (its message says why)."""


@dataclass
class MigrationReport:
    #: the version found (None: an empty database)
    before: int | None
    after: int
    applied: list[int] = field(default_factory=list)
    #: seconds spent waiting for another runner's lock
    waited: float = 0.0


def head(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return migrations[-1].version


def _is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


def _execute(db: pw.Database, sql: str, params: Sequence[object] = ()) -> Any:
    """A cursor for `sql` (peewee's `execute_sql` is untyped)."""
    return db.execute_sql(sql, params)  # type: ignore[no-untyped-call]


def _pragma(db: pw.Database, name: str, value: int | None = None) -> Any:
    if value is None:
        return _execute(db, f"PRAGMA {name}").fetchone()[0]
    return _execute(db, f"PRAGMA {name} = {value:d}")


def current_version(db: pw.Database) -> int | None:
    """The applied version: None for an empty database, 1 for one made before versions were kept."""
    if db.table_exists(VERSION_TABLE):
        row = _execute(db, f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()
        if row is not None and row[0] is not None:
            return int(row[0])
    if any(db.table_exists(model._meta.table_name) for model in MODELS):
        return 1
    return None


def _record(db: pw.Database, migration: Migration) -> None:
    _execute(db, f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
             "name VARCHAR(200) NOT NULL, applied_at VARCHAR(32) NOT NULL)")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _execute(db, f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES ({db.param}, {db.param}, "
             f"{db.param})", (migration.version, migration.name, now))


def migrate(db: pw.Database, migrations: Sequence[Migration] = MIGRATIONS, *, lock_timeout: float = 600.0,
            on_wait: Callable[[str], None] | None = None, allow_newer: bool = False) -> MigrationReport:
    """Bring `db` to the newest version in `migrations`; safe to run from several processes at once.

    Raises `MigrationError` when the database is newer than `migrations` know (unless
    `allow_newer`: a node of the previous release still starting during a deploy), or when
    the lock is not had within `lock_timeout` seconds. `on_wait(message)` hears that we wait.
    """
    with db.connection_context(), _locked(db, lock_timeout, on_wait) as waited:
        before = current_version(db)
        report = MigrationReport(before, before or 0, waited=waited)
        newest = head(migrations)
        if before is not None and before > newest:
            if allow_newer:
                log.warning("the database is at schema version %d, newer than this release knows (%d)",
                            before, newest)
                report.after = before
                return report
            raise MigrationError(f"the database is at schema version {before}, newer than this release "
                                 f"knows ({newest}); run a newer release's `coup migrate`")
        if before is None:  # empty: the current schema at once, every version recorded
            with db.bind_ctx(MODELS):
                db.create_tables(MODELS)
            for migration in migrations:
                _record(db, migration)
            report.applied = [m.version for m in migrations]
        else:
            if not db.table_exists(VERSION_TABLE):  # made before versions were kept
                _record(db, migrations[0])
            migrator = SchemaMigrator.from_database(db)
            for migration in [m for m in migrations if m.version > before]:
                if migration.up is None:
                    raise MigrationError(f"migration {migration.version} has no step")
                log.info("schema: applying %d (%s)", migration.version, migration.name)
                # SQLite runs inside the lock's transaction already; PostgreSQL's DDL is
                # transactional, so each step commits together with its record
                with nullcontext() if _is_sqlite(db) else db.atomic():
                    migration.up(migrator, db)
                    _record(db, migration)
                report.applied.append(migration.version)
        report.after = newest
        return report


@contextmanager
def _locked(db: pw.Database, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[float]:
    """Hold the migration lock (yielding how long we waited for it)."""
    started = time.monotonic()
    told = False

    def waiting(what: str) -> None:
        nonlocal told
        if time.monotonic() - started > timeout:
            raise MigrationError(f"waited {timeout:.0f} s for {what}; is a migration stuck?")
        if not told:
            told = True
            message = f"waiting for {what} (another `coup migrate` is running)"
            log.info(message)
            if on_wait is not None:
                on_wait(message)

    if _is_sqlite(db):
        _pragma(db, "foreign_keys", 0)  # only takes effect outside a transaction
        busy_timeout = int(_pragma(db, "busy_timeout"))
        _pragma(db, "busy_timeout", 100)  # short tries, so that we can say we wait
        try:
            while True:
                try:
                    transaction = db.atomic(lock_type="IMMEDIATE")
                    transaction.__enter__()
                    break
                except pw.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    waiting("the SQLite write lock")
            _pragma(db, "busy_timeout", busy_timeout)
            try:
                yield time.monotonic() - started
                broken = _execute(db, "PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise MigrationError(f"the migration broke foreign keys: {broken[:5]}")
            except BaseException as exc:
                transaction.__exit__(type(exc), exc, exc.__traceback__)
                raise
            transaction.__exit__(None, None, None)
        finally:
            _pragma(db, "busy_timeout", busy_timeout)
            _pragma(db, "foreign_keys", 1)
        return
    while not _execute(db, f"SELECT pg_try_advisory_lock({PG_LOCK_KEY})").fetchone()[0]:
        waiting("the migration lock")
        time.sleep(0.1)
    try:
        yield time.monotonic() - started
    finally:
        _execute(db, f"SELECT pg_advisory_unlock({PG_LOCK_KEY})")


__all__ = ["MIGRATIONS", "PG_LOCK_KEY", "VERSION_TABLE", "Migration", "MigrationError", "MigrationReport",
           "current_version", "head", "migrate"]
