"""The database connection and the threads its queries run on.

peewee is synchronous, so no query may run on the IOLoop thread: `Database.run(fn, ...)`
runs `fn` in a bounded thread pool (`COUP_DB_WORKERS` threads, one connection each, kept
open); chat messages go through a `BatchWriter` instead (`writer`: one thread of its own
that group-commits, coup/domain/writer.py). SQLite runs in WAL mode, so readers never wait
for the writer; write transactions begin IMMEDIATE so two writers queue on the lock instead
of failing a read-to-write upgrade.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar
from urllib.parse import urlsplit

import peewee as pw
from playhouse.db_url import connect

from coup.config import StartError, database_kind, url_for_logs
from coup.domain.migrations import MigrationReport, migrate
from coup.domain.models import database_proxy
from coup.domain.writer import BatchWriter, Numbering

if TYPE_CHECKING:
    from coup.metrics import Metrics

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
W = TypeVar("W")

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", 10_000),
)


def open_database(url: str) -> pw.Database:
    """A peewee database for `url` (sqlite:///file.db, postgresql://user@host/db)."""
    kind = database_kind(url)
    db: pw.Database
    if kind == "sqlite":
        db = connect(url, pragmas=SQLITE_PRAGMAS, lock_type="IMMEDIATE", timeout=10)
    elif kind == "postgresql":
        db = connect(url)
    else:
        raise ValueError(f"DATABASE_URL must be sqlite:/// or postgresql://, got scheme {urlsplit(url).scheme!r}")
    return db


class Database:
    """One database and its worker threads. Models are bound to it on construction."""

    def __init__(self, url: str, *, workers: int = 4, metrics: Metrics | None = None, prepare: bool = True) -> None:
        self.url = url
        #: whether statements may be prepared on the server (`COUP_DB_PREPARE`: off behind PgBouncer)
        self.prepare = prepare
        #: query times by query function name (measured on the database thread)
        self.metrics = metrics
        self.db = open_database(url)
        database_proxy.initialize(self.db)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coup-db")
        self._writers: list[BatchWriter[Any, Any]] = []

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a synchronous query function on a database thread and return its result."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.call, fn, *args, **kwargs)
        if self.metrics is None:
            return await loop.run_in_executor(self._executor, call)
        timed = _Timed(call)
        try:
            return await loop.run_in_executor(self._executor, timed)
        finally:  # observed here, on the loop thread: the histograms take no lock
            self.metrics.db_query(getattr(fn, "__name__", "query"), timed.seconds, failed=timed.failed)

    def writer(self, write: Callable[[Sequence[W]], list[T]], *, name: str,
               numbering: Numbering[W, T] | None = None) -> BatchWriter[W, T]:
        """A group-committing writer for `write` on a thread of its own, stopped by `close`."""
        writer: BatchWriter[W, T] = BatchWriter(self, write, name=name, numbering=numbering)
        self._writers.append(writer)
        return writer

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` here, on a database thread (a pool thread or a writer's)."""
        try:
            return fn(*args, **kwargs)
        except (pw.OperationalError, pw.InterfaceError):
            # the connection may be broken (server restarted): drop it so the next call reconnects
            if not self.db.is_closed() and not self.db.in_transaction():
                try:
                    self.db.close()
                except pw.PeeweeException:
                    log.debug("closing a broken connection failed", exc_info=True)
            raise

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            await self.run(self._ping)
        except Exception as exc:  # any driver error means "not ready"
            log.warning("database not reachable: %s", exc)
            return False
        return True

    def _ping(self) -> None:
        self.db.execute_sql("SELECT 1").fetchone()  # type: ignore[no-untyped-call]

    def create_schema(self, *, allow_newer: bool = False) -> MigrationReport:
        """Bring the schema to this release's (`coup.domain.migrations`; idempotent, and safe
        from several processes at once). Synchronous: CLI and start-up.

        The first thing a node or `coup migrate` does with the database, so a database that
        cannot be reached is reported here by its variable, not as a driver's traceback.
        """
        try:
            return migrate(self.db, allow_newer=allow_newer)
        except pw.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise StartError(f"DATABASE_URL {url_for_logs(self.url)} cannot be used: {reason}") from exc

    def close(self) -> None:
        """Stop the writers (after what was submitted to them) and the worker threads (their
        connections close with them)."""
        for writer in self._writers:
            writer.close()
        self._executor.shutdown(wait=True, cancel_futures=False)
        if not self.db.is_closed():
            self.db.close()


class _Timed(Generic[T]):
    """Runs a call on a database thread and keeps how long it took there (not the queueing)."""

    __slots__ = ("call", "failed", "seconds")

    def __init__(self, call: Callable[[], T]) -> None:
        self.call = call
        self.seconds = 0.0
        self.failed = True

    def __call__(self) -> T:
        started = time.perf_counter()
        try:
            result = self.call()
            self.failed = False
            return result
        finally:
            self.seconds = time.perf_counter() - started


def initdb(url: str) -> MigrationReport:
    """`coup initdb` / `coup migrate`: bring the schema of `url` to this release's; running it
    again changes nothing."""
    database = Database(url, workers=1)
    try:
        return database.create_schema()
    finally:
        database.close()


__all__ = ["Database", "initdb", "open_database"]
