"""Batch statements rendered once per size (coup/domain/prepared.py): past 3 rows the SQL is
built from the piece each row repeats, and must be exactly what peewee renders; a statement
that does not grow by one repeating piece is rendered by peewee. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from coup.domain import queries
from coup.domain.database import Database
from coup.domain.models import Message, User, database_proxy
from coup.domain.prepared import PreparedBatch


@pytest.fixture
def database(database_url: str) -> Any:
    db = Database(database_url, workers=1)
    try:
        with db.db.connection_context():
            yield db
    finally:
        db.close()


def test_every_batch_size_is_what_peewee_renders(database: Database) -> None:
    statements = {name: s for name, s in vars(queries).items() if isinstance(s, PreparedBatch)}
    assert {"_INSERT_MESSAGES", "_ACTIVE_IN", "_STORED_BY_CLIENT"} <= set(statements)
    db = database_proxy.obj
    for name, statement in statements.items():
        for n in (5, 1, 4, 2, 37, 3, 256):  # any order: the pieces come from 1, 2 and 3
            assert statement._sql(db, n) == str(statement._build(n).sql()[0]), (name, n)


def test_a_batch_built_from_pieces_runs(database: Database) -> None:
    params: list[Any] = []
    for seq in range(1, 6):
        params += (1, 1, 100 + seq, f"piece {seq}", None, f"pieces-{seq}", queries.utcnow())
    rows = queries._INSERT_MESSAGES.rows(5, params)
    assert sorted(row[2] for row in rows) == [101, 102, 103, 104, 105]
    stored = Message.select(Message.seq).where(Message.client_message_id.startswith("pieces-"))
    assert sorted(m.seq for m in stored) == [101, 102, 103, 104, 105]
    assert User.get_by_id(1).name == "Alice"
