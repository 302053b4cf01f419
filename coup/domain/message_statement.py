"""A batch of chat messages stored by one PostgreSQL statement: one round trip, one WAL flush.

The transactional group commit (`queries.store_messages_in_transaction`) costs four round
trips per batch (BEGIN, the ACTIVE members, the INSERT, COMMIT) and a message waits for them
once or twice: on this machine our p50 was twice Node's one INSERT. Here the whole batch is
one statement run in autocommit, its parameters passed as arrays (`unnest`): CTEs check each
sender is an ACTIVE member of its study, look its clientMessageId up, number the study's
stored rows consecutively, insert the messages (`ON CONFLICT DO NOTHING`) and the NEW_MESSAGE
notifications, and return one row per write for `queries` to turn into the same outcomes.

It answers what the transactional path answers, decided the same way (README of the rules:
`queries.store_messages`), with one difference in *when* a duplicate is found: a
clientMessageId stored before the batch is seen by the statement's lookup, so the writes
after it are numbered right the first time (the transactional path finds it at the INSERT
and writes the batch again). A case it cannot answer from one snapshot (a row skipped at the
INSERT: a clientMessageId or a `seq` another writer committed while the statement ran) makes
it fail on purpose (`CANNOT_ANSWER`): nothing of it is stored, and the caller writes the
batch the transactional way, which can.

Prepared on the server once per connection (`PREPARE`, then `EXECUTE` per batch: no parse
and plan of a large statement per batch). A pooler in transaction mode (PgBouncer) hands
each statement to any server connection, where the prepared statement may not exist:
`COUP_DB_PREPARE=0` sends the statement whole with each batch instead, and a missing one is
noticed (SQLSTATE 26000), logged once, and preparing turned off for the process.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import peewee as pw

from coup.domain.models import database_proxy

if TYPE_CHECKING:
    from coup.domain.queries import MessageWrite

log = logging.getLogger(__name__)

NAME = "coup_store_messages"
#: what the statement raises (a failed cast, the only way plain SQL has) when it cannot answer
CANNOT_ANSWER = "coup: a write was skipped at the INSERT"
#: SQLSTATE of "prepared statement does not exist" (a pooler moved us to another server connection)
MISSING_PREPARED = "26000"

PARAMETER_TYPES = ("int[]", "int[]", "bigint[]", "text[]", "bigint[]", "text[]", "text[]", "text[]", "timestamp",
                   "int[]", "int")

#: $1 study, $2 user, $3 seq, $4 content, $5 file id, $6 clientMessageId, $7 present users
#: (an int[] literal per write), $8 author's name, $9 created_at (one for the batch), $10 the place
#: (from 1) of the first write in the batch with this write's clientMessageId (its own without one),
#: $11 the characters of a notification's preview (the caller's rule, `queries.PREVIEW_CHARS`)
STATEMENT = """
WITH w AS (
    SELECT w.ord, w.study_id, w.user_id, w.seq, w.content, w.file_id, w.cmid, w.present::int[] AS present, w.name,
           w.first
    FROM unnest($1::int[], $2::int[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[],
                $10::int[])
         WITH ORDINALITY AS w(study_id, user_id, seq, content, file_id, cmid, present, name, first, ord)
), members AS MATERIALIZED (
    -- the ACTIVE members of the batch's studies: one index scan for the batch, as the
    -- transaction's query (every later use reads these arrays, not the table)
    SELECT study_id, array_agg(user_id) AS users FROM study_members
    WHERE study_id = ANY ($1::int[]) AND status = 'ACTIVE' GROUP BY study_id
), checked AS MATERIALIZED (
    SELECT w.*, w.ord <> w.first AS repeat, coalesce(w.user_id = ANY (m.users), false) AS active,
           coalesce(m.users, '{}') AS users
    FROM w LEFT JOIN members m ON m.study_id = w.study_id
), numbered AS (
    SELECT c.*, c.seq - count(*) FILTER (WHERE NOT c.inserting) OVER (
               PARTITION BY c.study_id ORDER BY c.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS new_seq
    FROM (SELECT checked.*, NOT repeat AND active AS inserting FROM checked) c
), inserted AS (
    INSERT INTO messages (study_id, user_id, seq, content, file_id, client_message_id, created_at)
    SELECT study_id, user_id, new_seq, content, file_id, cmid, $9 FROM numbered WHERE inserting ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id, study_id, seq
), stored AS (
    SELECT n.ord, i.id, n.study_id, n.user_id, n.present, n.users, n.name, n.content,
           '{"messageId":' || i.id || '}' AS data
    FROM numbered n JOIN inserted i ON n.inserting AND i.study_id = n.study_id AND i.seq = n.new_seq
), notes AS (
    INSERT INTO notifications (user_id, type, message, study_id, data, created_at)
    -- queries.NEW_MESSAGE, and its text as queries._with_notifications writes it ($11: PREVIEW_CHARS)
    SELECT u, 'NEW_MESSAGE', s.name || ': ' || CASE WHEN char_length(s.content) <= $11 THEN s.content
                                                          ELSE left(s.content, $11) || '…' END,
           s.study_id, s.data, $9
    FROM stored s, unnest(s.users) u
    WHERE u <> s.user_id AND u <> ALL (s.present)
    ORDER BY s.ord, u
    RETURNING id, user_id, data
), noted AS MATERIALIZED (
    SELECT data, array_agg(user_id ORDER BY user_id) AS users, array_agg(id ORDER BY user_id) AS ids
    FROM notes GROUP BY data
)
SELECT n.ord,
       CASE WHEN s.id IS NOT NULL THEN 'stored'
            -- skipped at the INSERT: a clientMessageId stored before the batch, answered as a
            -- duplicate when no later row of its study was numbered past it; anything else
            -- (a seq taken, a row committed while this ran, a gap to close) the transaction answers
            WHEN n.inserting AND (e.id IS NULL OR EXISTS (
                     SELECT 1 FROM numbered x WHERE x.study_id = n.study_id AND x.ord > n.ord AND x.inserting))
                THEN ('""" + CANNOT_ANSWER + """ (write ' || n.ord || ')')::int::text
            WHEN e.id IS NOT NULL THEN 'existing'
            WHEN n.repeat AND EXISTS (SELECT 1 FROM stored f WHERE f.ord = n.first) THEN 'repeat'
            WHEN n.repeat AND n.active THEN 'again'
            WHEN EXISTS (SELECT 1 FROM studies s WHERE s.id = n.study_id) THEN 'not_member'
            ELSE 'no_study' END,
       coalesce(s.id, e.id), n.new_seq, e.study_id, e.seq, e.content, e.file_id, e.created_at,
       CASE WHEN s.id IS NULL THEN NULL WHEN n.present <@ n.users THEN '{}'
            ELSE ARRAY(SELECT p FROM unnest(n.present) p WHERE p <> ALL (n.users) ORDER BY p) END,
       t.users, t.ids
FROM numbered n
LEFT JOIN stored s ON s.ord = n.ord
LEFT JOIN noted t ON t.data = s.data
-- a write not stored: its clientMessageId stored before? (a duplicate is found by the INSERT's
-- conflict, as in the transaction: no lookup for the rows stored; LIMIT 1 keeps it an index probe)
LEFT JOIN LATERAL (SELECT * FROM messages e WHERE s.id IS NULL AND e.user_id = n.user_id
                   AND e.client_message_id = n.cmid LIMIT 1) e ON true
ORDER BY n.ord
"""

#: the statement sent whole (`COUP_DB_PREPARE=0`): psycopg2's placeholders, cast as PREPARE declares them
UNPREPARED = re.sub(r"\$(\d+)", lambda m: f"(%(p{m.group(1)})s::{PARAMETER_TYPES[int(m.group(1)) - 1]})", STATEMENT)
EXECUTE = f"EXECUTE {NAME} (" + ", ".join(f"%s::{kind}" for kind in PARAMETER_TYPES) + ")"
PREPARE = f"PREPARE {NAME} ({', '.join(PARAMETER_TYPES)}) AS {STATEMENT}"

#: (ord, outcome, id, seq, existing study, seq, content, file id, created_at, evict, notified users, their ids)
Row = tuple[int, str, int | None, int, int | None, int | None, str | None, int | None, dt.datetime | None,
            list[int] | None, list[int] | None, list[int] | None]


class Counts:
    """Batches this process stored with the statement, and those it left to the transaction."""

    def __init__(self) -> None:
        self.batches = 0
        self.fallbacks = 0


COUNTS = Counts()


class _Preparing:
    """Which connections hold the prepared statement, and whether to prepare at all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        #: turned off by the first missing prepared statement (a pooler in transaction mode)
        self.broken = False


_PREPARING = _Preparing()


def applies() -> bool:
    """Whether the current database can run the statement (PostgreSQL; SQLite keeps the
    transactional path: its writes are local and it has no `unnest`)."""
    return isinstance(database_proxy.obj, pw.PostgresqlDatabase)


def run(writes: Sequence[MessageWrite], created_at: dt.datetime, preview_chars: int, *,
        prepare: bool = True) -> list[Row]:
    """Store `writes` with one statement on this thread's connection (autocommit); one row per
    write, in order. Raises (storing nothing) when the database refuses a row or the
    statement cannot answer (`CANNOT_ANSWER`)."""
    db: pw.Database = database_proxy.obj
    params = _parameters(writes, created_at, preview_chars)
    if not prepare or _PREPARING.broken:
        named = {f"p{number}": value for number, value in enumerate(params, 1)}
        return list(db.execute_sql(UNPREPARED, named).fetchall())  # type: ignore[no-untyped-call]
    connection = db.connection()  # type: ignore[no-untyped-call]
    if connection not in _PREPARING.connections:
        # one plan for every batch: planning this statement took longer than running it, and
        # its lookups are index probes in any plan (only prepared statements follow this)
        db.execute_sql("SET plan_cache_mode = force_generic_plan")  # type: ignore[no-untyped-call]
        db.execute_sql(PREPARE)  # type: ignore[no-untyped-call]
        _PREPARING.connections.add(connection)
    try:
        return list(db.execute_sql(EXECUTE, params).fetchall())  # type: ignore[no-untyped-call]
    except pw.DatabaseError as exc:
        if _sqlstate(exc) == MISSING_PREPARED:
            _PREPARING.connections.discard(connection)
            with _PREPARING.lock:
                if not _PREPARING.broken:
                    _PREPARING.broken = True
                    log.warning("the prepared message statement vanished from its connection (a pooler in "
                                "transaction mode?): sending it whole from now on; set COUP_DB_PREPARE=0")
        raise


def _parameters(writes: Sequence[MessageWrite], created_at: dt.datetime, preview_chars: int) -> list[Any]:
    """The statement's parameters, each array as one literal in PostgreSQL's array syntax
    (`{1,2}`, `{"a","b"}`): parsed by `array_in` at run time, where psycopg2's own adaptation
    (`ARRAY[...]`) made the server parse and coerce every element as a constant of the
    statement (about 10 % of the statement's server CPU for a batch of 50)."""
    studies: list[str] = []
    users: list[str] = []
    seqs: list[str] = []
    contents: list[str] = []
    files: list[str] = []
    cmids: list[str] = []
    present: list[str] = []
    names: list[str] = []
    firsts: list[str] = []
    first_of: dict[tuple[int, str], int] = {}
    for place, write in enumerate(writes, 1):
        new = write.new
        cmid = new.client_message_id
        studies.append(str(new.study_id))
        users.append(str(new.user_id))
        seqs.append(str(write.seq))
        contents.append(_quoted(new.content))
        files.append("NULL" if new.file_id is None else str(new.file_id))
        cmids.append("NULL" if cmid is None else _quoted(cmid))
        present.append('"{' + ",".join(map(str, write.present)) + '}"')
        names.append(_quoted(new.user_name))
        firsts.append(str(place if cmid is None else first_of.setdefault((new.user_id, cmid), place)))
    return [_array(studies), _array(users), _array(seqs), _array(contents), _array(files), _array(cmids),
            _array(present), _array(names), created_at, _array(firsts), preview_chars]


def _array(elements: list[str]) -> str:
    return "{" + ",".join(elements) + "}"


def _quoted(text: str) -> str:
    """`text` as an element of an array literal: double-quoted, `\\` and `"` escaped."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if '"' in text:
        text = text.replace('"', '\\"')
    return f'"{text}"'


def _sqlstate(exc: BaseException) -> str | None:
    """The driver's SQLSTATE behind a peewee error (peewee wraps the psycopg2 exception)."""
    for cause in (exc, getattr(exc, "orig", None), exc.__cause__, exc.__context__):
        code = getattr(cause, "pgcode", None)
        if code:
            return str(code)
    return None


def prepare_off() -> bool:
    """Whether a vanished prepared statement turned preparing off for this process."""
    return _PREPARING.broken


def forget_prepared() -> None:
    """Prepare again on every connection, and try preparing again (tests, a changed pooler)."""
    _PREPARING.connections = weakref.WeakSet()
    _PREPARING.broken = False


__all__ = ["CANNOT_ANSWER", "COUNTS", "Row", "applies", "forget_prepared", "prepare_off", "run"]
