"""Every query the domain runs. Synchronous: call them through `Database.run`, never on the
IOLoop. They return plain JSON-able dicts (payload shapes of the events and the HTTP API),
so no peewee row, with its lazy foreign keys, ever reaches the loop thread.

Writes that belong together run in one transaction (a message, and the notifications it
causes). Unique constraints are the last word on "stored once": a write that breaks one is
answered from the row that won.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from coup.domain import message_statement
from coup.domain.models import (
    Group,
    GroupMember,
    Message,
    MessageRead,
    Notification,
    ServerSetting,
    Study,
    StudyMember,
    Task,
    User,
    database_proxy,
    iso,
    utcnow,
)
from coup.domain.prepared import Prepared, PreparedBatch

log = logging.getLogger(__name__)

ACTIVE = "ACTIVE"
NEW_MESSAGE = "NEW_MESSAGE"
TASK_ASSIGNED = "TASK_ASSIGNED"
PREVIEW_CHARS = 100

# ---------------------------------------------------------------------- payload shapes


def message_payload(message: Message, user_name: str) -> dict[str, Any]:
    """The `message` event (and HTTP item): ids are row numbers, content exactly as stored."""
    return _message_body(message.id, message.study_id, message.seq, message.content, message.file_id,
                         message.user_id, user_name, message.created_at, message.client_message_id)


def _message_body(message_id: int, study_id: int, seq: int, content: str, file_id: int | None, user_id: int,
                  user_name: str, created_at: dt.datetime | str, client_message_id: str | None) -> dict[str, Any]:
    """A message's payload; `created_at` as a datetime, or already in `iso` form."""
    return {
        "id": message_id,
        "studyId": study_id,
        "seq": seq,
        "content": content,
        "fileId": file_id,
        "user": {"id": user_id, "name": user_name},
        "createdAt": created_at if isinstance(created_at, str) else iso(created_at),
        "clientMessageId": client_message_id,
    }


def notification_payload(notification: Notification) -> dict[str, Any]:
    """The `notification` event: {id, type, message, studyId?, data?} plus its times."""
    body: dict[str, Any] = {
        "id": notification.id,
        "type": notification.type,
        "message": notification.message,
        "createdAt": iso(notification.created_at),
        "readAt": iso(notification.read_at),
    }
    if notification.study_id is not None:
        body["studyId"] = notification.study_id
    if notification.data is not None:
        body["data"] = notification.data
    return body


def task_payload(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "studyId": task.study_id,
        "title": task.title,
        "status": task.status,
        "assigneeId": task.assignee_id,
        "updatedBy": task.updated_by_id,
        "updatedAt": iso(task.updated_at),
    }


# ---------------------------------------------------------------------- users and memberships


def user(user_id: int) -> dict[str, Any] | None:
    row = User.get_or_none(User.id == user_id)
    return None if row is None else {"id": row.id, "name": row.name}


def all_users() -> list[dict[str, Any]]:
    return [{"id": u.id, "name": u.name} for u in User.select().order_by(User.id)]


@dataclass(frozen=True)
class ConnectContext:
    """What a socket needs at connect: who it is, its group rooms, its studies for presence."""

    user_id: int
    name: str
    group_ids: tuple[int, ...]
    active_study_ids: tuple[int, ...]


# every connect (and every reconnect of a drained node's clients, a thousand at once) runs
# these three: rendered once, they cost a third of what the peewee queries did
_USER_NAME = Prepared(lambda: User.select(User.name).where(User.id == 0))
_USER_GROUPS = Prepared(lambda: GroupMember.select(GroupMember.group).where(GroupMember.user == 0))
_ACTIVE_STUDIES = Prepared(lambda: StudyMember.select(StudyMember.study).where(
    (StudyMember.user == 0) & (StudyMember.status == "")).order_by(StudyMember.study))


def connect_context(user_id: int) -> ConnectContext | None:
    row = _USER_NAME.first(user_id)
    if row is None:
        return None
    groups = sorted(group_id for (group_id,) in _USER_GROUPS.all(user_id))
    return ConnectContext(user_id, str(row[0]), tuple(groups), tuple(active_study_ids(user_id)))


def active_study_ids(user_id: int) -> list[int]:
    return [study_id for (study_id,) in _ACTIVE_STUDIES.all(user_id, ACTIVE)]


_MEMBER_STATUS = Prepared(lambda: StudyMember.select(StudyMember.status).where(
    (StudyMember.study == 0) & (StudyMember.user == 0)))
_STUDY_EXISTS = Prepared(lambda: Study.select(Study.id).where(Study.id == 0))


def membership(study_id: int, user_id: int) -> str | None:
    """The user's status in the study; raises `LookupError` when the study does not exist."""
    row = _MEMBER_STATUS.first(study_id, user_id)
    if row is not None:
        return str(row[0])
    if _STUDY_EXISTS.first(study_id) is None:
        raise LookupError(study_id)
    return None


def active_pairs(pairs: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Those of the (study, user) `pairs` that are ACTIVE memberships now."""
    wanted = set(pairs)
    found: set[tuple[int, int]] = set()
    users = sorted({user for _, user in wanted})
    for start in range(0, len(users), 500):
        query = (StudyMember.select(StudyMember.study, StudyMember.user)
                 .where(StudyMember.user.in_(users[start:start + 500]) & (StudyMember.status == ACTIVE))
                 .tuples())
        found.update(pair for pair in query if pair in wanted)  # type: ignore[misc]
    return found


def my_studies(user_id: int) -> list[dict[str, Any]]:
    query = (StudyMember.select(StudyMember, Study, Group)
             .join(Study).join(Group)
             .where(StudyMember.user == user_id)
             .order_by(Study.id))
    return [{
        "id": m.study.id, "name": m.study.name, "groupId": m.study.group.id, "groupName": m.study.group.name,
        "role": m.role, "status": m.status,
    } for m in query]


def study_members(study_id: int) -> list[dict[str, Any]]:
    query = (StudyMember.select(StudyMember, User).join(User)
             .where(StudyMember.study == study_id).order_by(User.id))
    return [{"userId": m.user.id, "name": m.user.name, "role": m.role, "status": m.status} for m in query]


# ---------------------------------------------------------------------- messages


@dataclass(frozen=True)
class NewMessage:
    study_id: int
    user_id: int
    user_name: str
    content: str
    file_id: int | None
    client_message_id: str | None


def max_seq(study_id: int) -> int:
    value = Message.select(pw.fn.MAX(Message.seq)).where(Message.study == study_id).scalar()
    return int(value or 0)


@dataclass(frozen=True)
class MessageWrite:
    """One message of a group commit: what to store, its `seq`, and the users with a socket in
    its study room (they get the `message` event, so no NEW_MESSAGE notification)."""

    new: NewMessage
    seq: int
    present: frozenset[int]


_STORED_BY_CLIENT = PreparedBatch(lambda n: Message.select(
    Message.id, Message.study, Message.seq, Message.content, Message.file_id, Message.created_at, Message.user,
    Message.client_message_id,
).where(Message.user.in_([0] * n) & Message.client_message_id.in_([""] * n)))
_ACTIVE_IN = PreparedBatch(lambda n: StudyMember.select(StudyMember.study, StudyMember.user).where(
    StudyMember.study.in_([0] * n) & (StudyMember.status == "")))
_STUDIES_IN = PreparedBatch(lambda n: Study.select(Study.id).where(Study.id.in_([0] * n)))
#: a row that breaks a unique constraint (a clientMessageId stored by a concurrent writer, a
#: seq another owner took) is skipped, not fatal: the batch's other messages stay stored
_INSERT_MESSAGES = PreparedBatch(lambda n: Message.insert_many(
    [(0, 0, 0, "", None, "", utcnow())] * n,
    fields=[Message.study, Message.user, Message.seq, Message.content, Message.file_id, Message.client_message_id,
            Message.created_at]).on_conflict_ignore().returning(Message.id, Message.study, Message.seq, Message.user))
_INSERT_NOTIFICATIONS = PreparedBatch(lambda n: Notification.insert_many(
    [(0, "", "", 0, "", utcnow())] * n,
    fields=[Notification.user, Notification.type, Notification.message, Notification.study, Notification.data,
            Notification.created_at]).returning(Notification.id, Notification.user, Notification.data))
#: rows per notification INSERT (6 parameters each, well under SQLite's 32,766)
NOTIFICATION_CHUNK = 500

ClientKey = tuple[int, str]


def _client_key(new: NewMessage) -> ClientKey | None:
    return None if new.client_message_id is None else (new.user_id, new.client_message_id)


def _stored_by_client(news: Sequence[NewMessage]) -> dict[ClientKey, dict[str, Any]]:
    """The messages already stored under these (user, clientMessageId) pairs, as payloads
    (named as each `new` names its author: the same user)."""
    wanted = {key: new for new in news if (key := _client_key(new)) is not None}
    if not wanted:
        return {}
    users = [user for user, _ in wanted]
    rows = _STORED_BY_CLIENT.rows(len(wanted), users + [cmid for _, cmid in wanted])
    found: dict[ClientKey, dict[str, Any]] = {}
    for message_id, study_id, seq, content, file_id, created_at, user_id, cmid in rows:
        new = wanted.get((user_id, cmid))
        if new is not None:
            found[(user_id, cmid)] = _message_body(
                message_id, study_id, seq, content, file_id, user_id, new.user_name,
                Message.created_at.python_value(created_at), cmid)  # type: ignore[no-untyped-call]
    return found


def _active_members(study_ids: Sequence[int]) -> dict[int, set[int]]:
    """The ACTIVE members of each study (studies without any are absent)."""
    active: dict[int, set[int]] = {}
    if study_ids:
        for study_id, user_id in _ACTIVE_IN.rows(len(study_ids), [*study_ids, ACTIVE]):
            active.setdefault(study_id, set()).add(user_id)
    return active


#: outcomes of a write that used its `seq` (stored, or another writer's message holds it)
NUMBERED = frozenset({"stored", "seq_clash"})


def uses_number(outcome: dict[str, Any] | BaseException) -> bool:
    """Whether a message write's outcome used its `seq` (the later ones of its study keep theirs)."""
    return not isinstance(outcome, BaseException) and outcome.get("outcome") in NUMBERED


class _Renumber(Exception):
    """Some writes turned out to be duplicates only at the INSERT, after later writes of their
    study were numbered past them: the transaction is rolled back and written again with
    these outcomes known."""

    def __init__(self, decided: dict[int, dict[str, Any]]) -> None:
        super().__init__(f"{len(decided)} duplicates found at the INSERT")
        self.decided = decided


#: writes from which a batch is one statement on PostgreSQL (docs/domain.md): below, at a moderate
#: load, the transaction's extra round trips cost the idle loop nothing, and it had the lower ack
#: p50 at 1,300 messages/s (batches of 2-3) in every A/B round (bench/README.md)
ONE_STATEMENT_FROM = 8


def store_messages(writes: Sequence[MessageWrite], *, prepare: bool = True,
                   one_statement_from: int = ONE_STATEMENT_FROM) -> list[dict[str, Any]]:
    """Store a batch of messages (the group commit of `BatchWriter`), answering as
    `store_messages_in_transaction` does.

    On PostgreSQL, outside a transaction, a batch of `one_statement_from` writes or more is one
    statement (`message_statement`: one round trip, one WAL flush; `prepare`: prepared on the
    server, `COUP_DB_PREPARE`); when that statement fails (the database refuses a row, or a
    write was skipped at the INSERT, which one snapshot cannot explain), nothing of it was
    stored and the batch is written the transactional way, which answers every case. SQLite
    always takes the transactional way.
    """
    if (len(writes) >= one_statement_from and message_statement.applies()
            and not database_proxy.in_transaction()):
        try:
            results = _store_in_one_statement(writes, prepare=prepare)
        except pw.DatabaseError as exc:
            message_statement.COUNTS.fallbacks += 1
            log.debug("the one-statement write of %d messages failed (%s): writing them in a transaction",
                      len(writes), " ".join(str(exc).split()))
        else:
            message_statement.COUNTS.batches += 1
            return results
    return store_messages_in_transaction(writes)


def _store_in_one_statement(writes: Sequence[MessageWrite], *, prepare: bool) -> list[dict[str, Any]]:
    """`message_statement.run`'s rows as `_store_round`'s outcomes."""
    created_at = utcnow()
    created_iso = str(iso(created_at))
    rows = message_statement.run(writes, created_at, PREVIEW_CHARS, prepare=prepare)
    if len(rows) != len(writes):
        raise pw.DatabaseError(f"{len(rows)} rows for {len(writes)} writes")
    results: list[dict[str, Any]] = []
    first: dict[ClientKey, dict[str, Any]] = {}  # the stored result of each key's first write
    for i, (row, write) in enumerate(zip(rows, writes, strict=True)):
        ordinal, outcome, message_id, seq, e_study, e_seq, e_content, e_file, e_created, evict, users, ids = row
        assert ordinal == i + 1, "the statement answers in order"
        new = write.new
        key = _client_key(new)
        result: dict[str, Any]
        if outcome == "stored":
            assert message_id is not None
            message = _message_body(message_id, new.study_id, seq, new.content, new.file_id, new.user_id,
                                    new.user_name, created_iso, new.client_message_id)
            result = {"outcome": "stored", "message": message, "evict": list(evict or ()),
                      "notifications": _notified(new, message_id, users or (), ids or (), created_iso)}
            if key is not None:
                first[key] = result
        elif outcome == "existing":
            assert message_id is not None and e_study is not None and e_seq is not None and e_content is not None
            result = _duplicate(_message_body(
                message_id, e_study, e_seq, e_content, e_file, new.user_id, new.user_name,
                Message.created_at.python_value(e_created), new.client_message_id), new)  # type: ignore[no-untyped-call]
        elif outcome == "repeat":  # the first write of its clientMessageId in this batch was stored
            assert key is not None
            stored = first[key]["message"]
            result = _duplicate({**stored, "user": {"id": new.user_id, "name": new.user_name}}, new)
        else:  # again, not_member, no_study
            result = {"outcome": outcome}
        results.append(result)
    return results


def _notified(new: NewMessage, message_id: int, users: Sequence[int], ids: Sequence[int],
              created_iso: str) -> list[dict[str, Any]]:
    """A stored message's NEW_MESSAGE notifications, as `_with_notifications` shapes them."""
    if not users:
        return []
    text = _new_message_text(new)
    return [_new_message_notification(uid, nid, text, new.study_id, message_id, created_iso)
            for uid, nid in zip(users, ids, strict=True)]


def _new_message_text(new: NewMessage) -> str:
    """A NEW_MESSAGE notification's text (message_statement's SQL writes the same)."""
    preview = new.content if len(new.content) <= PREVIEW_CHARS else new.content[:PREVIEW_CHARS] + "…"
    return f"{new.user_name}: {preview}"


def _new_message_notification(user_id: int, notification_id: int, text: str, study_id: int, message_id: int,
                              created_iso: str) -> dict[str, Any]:
    """A stored NEW_MESSAGE notification as the results carry it to its user."""
    return {"userId": user_id, "notification": {
        "id": notification_id, "type": NEW_MESSAGE, "message": text, "createdAt": created_iso, "readAt": None,
        "studyId": study_id, "data": {"messageId": message_id}}}


def store_messages_in_transaction(writes: Sequence[MessageWrite]) -> list[dict[str, Any]]:
    """Store a batch of messages in one transaction (the group commit of `BatchWriter`): each
    with its `seq`, and a NEW_MESSAGE notification for every ACTIVE member of its study not in
    its room (`present`) nor its author. A handful of statements for the whole batch.

    A study may have several writes in a batch, with consecutive numbers (its room submits
    its next message before the last one committed). A write that is not stored gives its
    number up, and the later stored writes of its study move down to close the gap: a
    study's stored messages keep consecutive numbers.

    One result per write, in order: ``{"outcome": ...}``, ``stored`` (with `message`,
    `notifications` and `evict`: users in the room who are no longer ACTIVE members),
    ``duplicate`` (this user already stored that clientMessageId, in this batch or before:
    `message` is the first one), ``reused`` (that clientMessageId belongs to another study),
    ``no_study``, ``not_member``, ``seq_clash`` (another writer took `seq`), or ``again``
    (its clientMessageId's first write in this batch was not stored: number it and write it
    again).
    """
    decided: dict[int, dict[str, Any]] = {}
    while True:  # each turn decides at least one more write, so this ends
        try:
            with database_proxy.atomic():
                return _store_round(writes, decided)
        except _Renumber as redo:
            decided.update(redo.decided)


def _store_round(writes: Sequence[MessageWrite], decided: dict[int, dict[str, Any]], *,
                 second: bool = False) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any] | None] = [decided.get(i) for i in range(len(writes))]
    # a clientMessageId twice in one batch (two tabs retrying at once): the later ones wait
    # for a second round in the same transaction, which finds the first one stored
    seen: set[ClientKey] = set()
    later: list[int] = []
    for i, write in enumerate(writes):
        key = _client_key(write.new)
        if key is not None:
            if key in seen and outcomes[i] is None:
                later.append(i)
                outcomes[i] = {}
            seen.add(key)
    # a retry (clientMessageId stored before) is found by the INSERT's conflict below: the
    # common batch, all new messages, costs no lookup. Only a refused one is looked up, so a
    # retry still gets its stored message, as it did when this user was a member.
    studies = sorted({w.new.study_id for i, w in enumerate(writes) if outcomes[i] is None})
    active = _active_members(studies)
    unknown = [s for s in studies if s not in active]  # no ACTIVE member: does the study exist?
    existing = {row[0] for row in _STUDIES_IN.rows(len(unknown), unknown)} if unknown else set()
    inserting: list[int] = []
    refused: list[int] = []
    for i, write in enumerate(writes):
        if outcomes[i] is not None:
            continue
        study_id = write.new.study_id
        if write.new.user_id in active.get(study_id, ()):
            if second:  # its number was given up in the first round: stored already, or again
                refused.append(i)
                outcomes[i] = {"outcome": "again"}
            else:
                inserting.append(i)
        else:
            refused.append(i)
            outcomes[i] = {"outcome": "not_member" if study_id in active or study_id in existing else "no_study"}
    stored_before = _stored_by_client([writes[i].new for i in refused])
    for i in refused:
        key = _client_key(writes[i].new)
        if key is not None and key in stored_before:
            outcomes[i] = _duplicate(stored_before[key], writes[i].new)
    # the numbers: each write not inserted gives its number up to the later writes of its study
    seqs: dict[int, int] = {}
    given_up: dict[int, int] = {}
    inserting_now = set(inserting)
    for i, write in enumerate(writes):
        study_id = write.new.study_id
        if i in inserting_now:
            seqs[i] = write.seq - given_up.get(study_id, 0)
        else:
            given_up[study_id] = given_up.get(study_id, 0) + 1
    created_at = utcnow()
    ids: dict[tuple[int, int, int], int] = {}
    if inserting:
        params: list[Any] = []
        for i in inserting:
            new = writes[i].new
            params += (new.study_id, new.user_id, seqs[i], new.content, new.file_id, new.client_message_id,
                       created_at)
        for message_id, study_id, seq, user_id in _INSERT_MESSAGES.rows(len(inserting), params):
            ids[(study_id, seq, user_id)] = message_id
    skipped = [i for i in inserting if (writes[i].new.study_id, seqs[i], writes[i].new.user_id) not in ids]
    stored_now = _stored_by_client([writes[i].new for i in skipped]) if skipped else {}
    duplicates: dict[int, dict[str, Any]] = {}
    for i in skipped:
        key = _client_key(writes[i].new)
        if key is not None and key in stored_now:  # a concurrent duplicate won the race
            duplicates[i] = _duplicate(stored_now[key], writes[i].new)
    if any(j > i and writes[j].new.study_id == writes[i].new.study_id for i in duplicates for j in inserting):
        raise _Renumber(duplicates)  # later writes of its study were numbered past it
    stored: list[tuple[int, int]] = []
    for i in inserting:
        write = writes[i]
        message_id_or_none = ids.get((write.new.study_id, seqs[i], write.new.user_id))
        if message_id_or_none is not None:
            stored.append((i, message_id_or_none))
        else:
            outcomes[i] = duplicates.get(i) or {"outcome": "seq_clash"}
    for i, result in _with_notifications(writes, stored, seqs, active, created_at):
        outcomes[i] = result
    if later:
        for i, result in zip(later, _store_round([writes[i] for i in later], {}, second=True), strict=True):
            outcomes[i] = result
    done = [outcome for outcome in outcomes if outcome]
    assert len(done) == len(writes), "every write has an outcome"
    return done


def _with_notifications(writes: Sequence[MessageWrite], stored: list[tuple[int, int]], seqs: dict[int, int],
                        active: dict[int, set[int]], created_at: dt.datetime) -> list[tuple[int, dict[str, Any]]]:
    """The stored messages' results, their NEW_MESSAGE notifications stored (one INSERT per
    `NOTIFICATION_CHUNK` rows for the whole batch)."""
    rows: list[tuple[int, str, str, int, str | None, dt.datetime]] = []
    #: the result each row's notification belongs to
    owners: list[dict[str, Any]] = []
    results: list[tuple[int, dict[str, Any]]] = []
    created_iso = str(iso(created_at))  # one time for the whole batch
    for i, message_id in stored:
        write = writes[i]
        new = write.new
        members = active[new.study_id]
        present = set(write.present)
        #: users with a socket in the room who are no longer ACTIVE members: the room evicts them
        evict = sorted(present - members)
        present.add(new.user_id)
        message = _message_body(message_id, new.study_id, seqs[i], new.content, new.file_id, new.user_id,
                                new.user_name, created_iso, new.client_message_id)
        result = {"outcome": "stored", "message": message, "notifications": [], "evict": evict}
        results.append((i, result))
        away = members - present
        if not away:  # everyone is in the room (the usual chat): no notification to render
            continue
        text = _new_message_text(new)
        stored_data = Notification.data.db_value({"messageId": message_id})
        for uid in sorted(away):
            rows.append((uid, NEW_MESSAGE, text, new.study_id, stored_data, created_at))
            owners.append(result)
    if rows:
        by_row: dict[tuple[int, str | None], int] = {}
        for start in range(0, len(rows), NOTIFICATION_CHUNK):
            chunk = rows[start:start + NOTIFICATION_CHUNK]
            for nid, uid, data in _INSERT_NOTIFICATIONS.rows(len(chunk), [v for row in chunk for v in row]):
                by_row[(uid, data)] = nid
        for (uid, _, text, study_id, data, _), owner in zip(rows, owners, strict=True):
            owner["notifications"].append(_new_message_notification(
                uid, by_row[(uid, data)], text, study_id, owner["message"]["id"], created_iso))
    return results


def _duplicate(existing: dict[str, Any], new: NewMessage) -> dict[str, Any]:
    if existing["studyId"] != new.study_id:
        return {"outcome": "reused"}
    return {"outcome": "duplicate", "message": existing}


def message_page(study_id: int, before: int | None, limit: int) -> dict[str, Any]:
    """Newest first; `before` is a message id; one extra row tells whether more exist."""
    query = Message.select(Message, User).join(User).where(Message.study == study_id)
    if before is not None:
        query = query.where(Message.id < before)
    rows = list(query.order_by(Message.id.desc()).limit(limit + 1))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [message_payload(m, m.user.name) for m in rows],
        "hasMore": has_more,
        "nextBefore": rows[-1].id if has_more and rows else None,
    }


def message_study(message_id: int) -> int | None:
    row = Message.select(Message.study).where(Message.id == message_id).first()
    return None if row is None else int(row.study_id)


def mark_message_read(message_id: int, user_id: int) -> dict[str, Any]:
    """Store a read receipt once. Outcome ``read`` (new), ``already``, ``no_message`` or ``not_member``."""
    db = database_proxy
    with db.atomic():
        message = Message.select(Message.id, Message.study).where(Message.id == message_id).first()
        if message is None:
            return {"outcome": "no_message"}
        study_id = int(message.study_id)
        member = StudyMember.get_or_none((StudyMember.study == study_id) & (StudyMember.user == user_id))
        if member is None or member.status != ACTIVE:
            return {"outcome": "not_member", "studyId": study_id}
        try:
            with db.atomic():
                MessageRead.create(message=message_id, user=user_id, read_at=utcnow())
        except pw.IntegrityError:
            return {"outcome": "already", "studyId": study_id}
        return {"outcome": "read", "studyId": study_id}


# ---------------------------------------------------------------------- notifications


def create_notification(user_id: int, type_: str, message: str, study_id: int | None,
                        data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Store one notification; None when the user (or the given study) does not exist."""
    with database_proxy.atomic():
        if not User.select().where(User.id == user_id).exists():
            return None
        if study_id is not None and not Study.select().where(Study.id == study_id).exists():
            return None
        row = Notification.create(user=user_id, type=type_, message=message, study=study_id, data=data,
                                  created_at=utcnow())
        return notification_payload(row)


def create_group_notifications(group_id: int, type_: str, message: str, study_id: int | None,
                               data: dict[str, Any] | None) -> list[tuple[int, dict[str, Any]]] | None:
    """Store one notification per member of the group (each has its own read state), in one
    transaction; ``[(user id, notification)]``, or None when the group (or the study) does not exist."""
    with database_proxy.atomic():
        if not Group.select().where(Group.id == group_id).exists():
            return None
        if study_id is not None and not Study.select().where(Study.id == study_id).exists():
            return None
        members = [gm.user_id for gm in GroupMember.select(GroupMember.user)
                   .where(GroupMember.group == group_id).order_by(GroupMember.user)]
        now = utcnow()
        return [(user_id, notification_payload(Notification.create(
            user=user_id, type=type_, message=message, study=study_id, data=data, created_at=now)))
            for user_id in members]


def notification_page(user_id: int, unread_only: bool, before: int | None, limit: int) -> dict[str, Any]:
    query = Notification.select().where(Notification.user == user_id)
    if unread_only:
        query = query.where(Notification.read_at.is_null())
    if before is not None:
        query = query.where(Notification.id < before)
    rows = list(query.order_by(Notification.id.desc()).limit(limit + 1))
    has_more = len(rows) > limit
    rows = rows[:limit]
    unread = Notification.select().where((Notification.user == user_id) & Notification.read_at.is_null()).count()
    return {
        "items": [notification_payload(n) for n in rows],
        "hasMore": has_more,
        "nextBefore": rows[-1].id if has_more and rows else None,
        "unreadCount": unread,
    }


def mark_notification_read(notification_id: int, user_id: int) -> str:
    """``read`` (now marked), ``already`` (was read), or ``not_found`` (absent or someone else's)."""
    with database_proxy.atomic():
        row = Notification.get_or_none((Notification.id == notification_id) & (Notification.user == user_id))
        if row is None:
            return "not_found"
        if row.read_at is not None:
            return "already"
        updated = (Notification.update(read_at=utcnow())
                   .where((Notification.id == notification_id) & Notification.read_at.is_null()).execute())
        return "read" if updated else "already"


# ---------------------------------------------------------------------- tasks


def study_tasks(study_id: int) -> list[dict[str, Any]]:
    return [task_payload(t) for t in Task.select().where(Task.study == study_id).order_by(Task.id)]


def task_study(task_id: int) -> int | None:
    row = Task.select(Task.study).where(Task.id == task_id).first()
    return None if row is None else int(row.study_id)


def update_task_status(task_id: int, user_id: int, status: str) -> dict[str, Any] | None:
    with database_proxy.atomic():
        updated = (Task.update(status=status, updated_by=user_id, updated_at=utcnow())
                   .where(Task.id == task_id).execute())
        if not updated:
            return None
        return task_payload(Task.get_by_id(task_id))


def assign_task(task_id: int, user_id: int, assignee_id: int) -> dict[str, Any]:
    """Outcome ``assigned`` (with `task` and the assignee's `notification`), ``no_task`` or ``not_member``."""
    with database_proxy.atomic():
        task = Task.get_or_none(Task.id == task_id)
        if task is None:
            return {"outcome": "no_task"}
        member = StudyMember.get_or_none((StudyMember.study == task.study_id) & (StudyMember.user == assignee_id))
        if member is None or member.status != ACTIVE:
            return {"outcome": "not_member"}
        now = utcnow()
        Task.update(assignee=assignee_id, updated_by=user_id, updated_at=now).where(Task.id == task_id).execute()
        task = Task.get_by_id(task_id)
        note = Notification.create(
            user=assignee_id, type=TASK_ASSIGNED, message=f"할 일이 배정되었습니다: {task.title}",
            study=task.study_id, data={"taskId": task_id}, created_at=now)
        return {"outcome": "assigned", "task": task_payload(task), "notification": notification_payload(note)}


# ---------------------------------------------------------------------- server settings


def setting(key: str) -> str | None:
    row = ServerSetting.get_or_none(ServerSetting.key == key)
    return None if row is None else str(row.value)


def setting_or_store(key: str, value: str) -> str:
    """The stored value of `key`, or `value` after storing it (the first writer wins)."""
    with database_proxy.atomic():
        try:
            with database_proxy.atomic():
                ServerSetting.insert(key=key, value=value).execute()
        except pw.IntegrityError:
            pass
        row = ServerSetting.get(ServerSetting.key == key)
        return str(row.value)


def has_users() -> bool:
    return bool(User.select().exists())
