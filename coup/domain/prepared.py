"""Hot-path statements rendered to SQL once, then executed with fresh parameters.

Rendering a query is most of what peewee costs per statement: profiled on a message write
(7 statements), SQL building took most of the time (docs/domain.md). A `Prepared` statement is written as a
normal peewee query with placeholder values, rendered once per database (dialect, quoting
and parameter style stay peewee's), and bound to new values on every run. Values are passed
as the database expects them (`field.db_value` for anything peewee would convert).

`PreparedBatch` is the same for a statement whose shape grows with a batch (an INSERT of `n`
rows, an IN list of `n` values): rendered once per database and `n`, so a group commit of
any size costs no rendering after the first batch of that size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import peewee as pw

from coup.domain.models import database_proxy


class PreparedBatch:
    """``PreparedBatch(lambda n: query with n placeholder rows / values)``."""

    __slots__ = ("_build", "_rendered")

    def __init__(self, build: Callable[[int], Any]) -> None:
        self._build = build
        self._rendered: weakref.WeakKeyDictionary[pw.Database, dict[int, str]] = weakref.WeakKeyDictionary()

    def _sql(self, db: pw.Database, n: int) -> str:
        by_size = self._rendered.get(db)
        if by_size is None:
            by_size = self._rendered[db] = {}
        sql = by_size.get(n)
        if sql is None:
            sql = by_size[n] = str(self._build(n).sql()[0])
        return sql

    def run(self, n: int, params: Sequence[Any]) -> Any:
        """Run the `n`-sized statement on this thread's connection; return the cursor."""
        db: pw.Database = database_proxy.obj
        return db.execute_sql(self._sql(db, n), params)  # type: ignore[no-untyped-call]

    def rows(self, n: int, params: Sequence[Any]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = self.run(n, params).fetchall()
        return rows


class Prepared(PreparedBatch):
    """``Prepared(lambda: query with placeholder values)``: one fixed shape."""

    __slots__ = ()

    def __init__(self, build: Callable[[], Any]) -> None:
        super().__init__(lambda _n: build())

    def execute(self, *params: Any) -> Any:
        """Run on this thread's connection of the current database; return the cursor."""
        return self.run(1, params)

    def first(self, *params: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self.execute(*params).fetchone()
        return row

    def all(self, *params: Any) -> list[Sequence[Any]]:
        return self.rows(1, params)
