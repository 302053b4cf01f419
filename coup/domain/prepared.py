"""Hot-path statements rendered to SQL once, then executed with fresh parameters.

Rendering a query is most of what peewee costs per statement: profiled on a message write
(7 statements), SQL building took most of the time (docs/domain.md). A `Prepared` statement is written as a
normal peewee query with placeholder values, rendered once per database (dialect, quoting
and parameter style stay peewee's), and bound to new values on every run. Values are passed
as the database expects them (`field.db_value` for anything peewee would convert).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import peewee as pw

from coup.domain.models import database_proxy


class Prepared:
    __slots__ = ("_build", "_rendered")

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._rendered: weakref.WeakKeyDictionary[pw.Database, tuple[str, bool]] = weakref.WeakKeyDictionary()

    def _sql(self, db: pw.Database) -> tuple[str, bool]:
        rendered = self._rendered.get(db)
        if rendered is None:
            sql, _ = self._build().sql()
            rendered = self._rendered[db] = (sql, " RETURNING " in sql)
        return rendered

    def execute(self, *params: Any) -> Any:
        """Run on this thread's connection of the current database; return the cursor."""
        db: pw.Database = database_proxy.obj
        sql, _ = self._sql(db)
        return db.execute_sql(sql, params)  # type: ignore[no-untyped-call]

    def first(self, *params: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self.execute(*params).fetchone()
        return row

    def all(self, *params: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = self.execute(*params).fetchall()
        return rows

    def insert(self, *params: Any) -> int:
        """Run an INSERT and return the new row's id (RETURNING where the database has it)."""
        db: pw.Database = database_proxy.obj
        sql, returning = self._sql(db)
        cursor = db.execute_sql(sql, params)  # type: ignore[no-untyped-call]
        return int(cursor.fetchone()[0] if returning else cursor.lastrowid)
