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
    """``PreparedBatch(lambda n: query with n placeholder rows / values)``.

    A size is rendered by peewee once; past 3, when the renderings of 1, 2 and 3 show that
    each further row (value) repeats one piece (a multi-row VALUES, an IN list), the SQL for
    `n` is that piece repeated: rendering a 256-row INSERT took peewee 7 ms, and a group
    commit meets every batch size from 1 to 256 (about 1 s of the writer's CPU, holding the
    GIL, after each start).
    """

    __slots__ = ("_build", "_pieces", "_rendered")

    def __init__(self, build: Callable[[int], Any]) -> None:
        self._build = build
        self._rendered: weakref.WeakKeyDictionary[pw.Database, dict[int, str]] = weakref.WeakKeyDictionary()
        #: per database: (head, each further row, tail), or None when the SQL does not repeat
        self._pieces: weakref.WeakKeyDictionary[pw.Database, tuple[str, str, str] | None] = (
            weakref.WeakKeyDictionary())

    def _sql(self, db: pw.Database, n: int) -> str:
        by_size = self._rendered.get(db)
        if by_size is None:
            by_size = self._rendered[db] = {}
        sql = by_size.get(n)
        if sql is None:
            pieces = self._repeating(db, by_size) if n > 3 else None
            if pieces is None:
                sql = str(self._build(n).sql()[0])
            else:
                head, row, tail = pieces
                sql = head + row * (n - 1) + tail
            by_size[n] = sql
        return sql

    def _repeating(self, db: pw.Database, by_size: dict[int, str]) -> tuple[str, str, str] | None:
        if db not in self._pieces:
            one, two, three = (by_size.get(k) or by_size.setdefault(k, str(self._build(k).sql()[0]))
                               for k in (1, 2, 3))
            self._pieces[db] = _pieces(one, two, three)
        return self._pieces[db]

    def run(self, n: int, params: Sequence[Any]) -> Any:
        """Run the `n`-sized statement on this thread's connection; return the cursor."""
        db: pw.Database = database_proxy.obj
        return db.execute_sql(self._sql(db, n), params)  # type: ignore[no-untyped-call]

    def rows(self, n: int, params: Sequence[Any]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = self.run(n, params).fetchall()
        return rows


def _pieces(one: str, two: str, three: str) -> tuple[str, str, str] | None:
    """(head, row, tail) with ``one == head + tail``, ``two == head + row + tail`` and
    ``three == head + row + row + tail``; None when the SQL does not grow that way."""
    common = 0
    while common < len(one) and one[common] == two[common]:
        common += 1
    head, tail = one[:common], one[common:]
    if not two.endswith(tail):
        return None
    row = two[common:len(two) - len(tail)]
    if not row or three != head + row + row + tail:
        return None
    return head, row, tail


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
