"""Group commit of chat messages (coup/domain/writer.py, `queries.store_messages`): many rooms'
messages in one transaction, acked only after it committed, a refused write failing alone.

Failures are the database's own: a trigger that refuses messages whose content starts with
"boom" (SQLite and PostgreSQL). Batches are formed for real: a second connection holds the
write lock while messages queue behind the first batch.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import peewee as pw
import pytest

from coup.domain import message_statement, queries
from coup.domain.demo import seed_demo
from coup.domain.models import Notification, Study, StudyMember, database_proxy
from coup.domain.queries import MessageWrite, NewMessage
from tests.domain.support import Client, ClientFactory, DomainNode, boom_refused
from tests.domain.test_messages import stored_messages
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

@contextmanager
def write_lock(url: str) -> Iterator[None]:
    """Another connection holds the messages table's write lock: the writer's next batch waits."""
    if url.startswith("sqlite"):
        lite = sqlite3.connect(urlsplit(url).path[1:], isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    import psycopg2

    parts = urlsplit(url)
    options = parse_qs(parts.query).get("options", [""])[0]
    conn = psycopg2.connect(parts._replace(query="").geturl(), options=options)
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE messages IN SHARE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


def write(user_id: int, name: str, study_id: int, seq: int, content: str, cmid: str | None,
          present: frozenset[int] = frozenset()) -> MessageWrite:
    return MessageWrite(NewMessage(study_id, user_id, name, content, None, cmid), seq, present)


def more_studies() -> None:
    """Studies 3 and 4, Alice, Bob and Dan ACTIVE in both: a room each for the messages of a
    batch (several messages of one room in a batch: tests/domain/test_room_pipeline.py)."""
    for study_id in (3, 4):
        Study.create(id=study_id, group=1, name=f"study {study_id}")
        for user_id in (1, 2, 4):
            StudyMember.create(study=study_id, user=user_id, status="ACTIVE")


async def clients_in_three_rooms(node: DomainNode, connect: ClientFactory, *,
                                 second_tab: bool = False) -> tuple[Client, ...]:
    """Alice in study 1, Bob in 3, Dan in 2 (and, with `second_tab`, Dan again in 4: a socket
    handles its events in order, so one socket cannot have two sends in one batch)."""
    await node.db(more_studies)
    clients = [await connect(1, join=(1,)), await connect(2, join=(3,)), await connect(4, join=(2,))]
    if second_tab:
        clients.append(await connect(4, join=(4,)))
    return tuple(clients)


async def queued_behind_a_blocked_batch(node: DomainNode, url: str, first: Client,
                                        sends: list[tuple[Client, dict[str, Any]]]) -> list[Any]:
    """`first` sends to study 1; its batch waits on a held write lock while `sends` queue up
    behind it (each in a room of its own), then the lock goes. Returns the acks of `sends`
    and `first`'s last, once the queued messages were written as one batch."""
    writer = node.domain.rooms.messages
    batches = writer.batches
    with write_lock(url):
        blocked = asyncio.ensure_future(first.call("message", {"studyId": 1, "content": "first"}))
        await eventually(lambda: writer.writing == 1, "the first batch started")
        pending = [asyncio.ensure_future(client.call("message", payload)) for client, payload in sends]
        await eventually(lambda: writer.handed - writer.writes - writer.writing == len(sends),
                         "the messages queued behind the first batch")
        assert not blocked.done()  # not acked before its commit
    acks = list(await asyncio.gather(*pending, blocked))
    assert writer.batches == batches + 2, "the queued messages were written as one batch"
    return acks


async def test_a_duplicate_client_message_id_inside_one_batch_is_stored_once(domain_node: DomainNode) -> None:
    results = await domain_node.db(queries.store_messages, [
        write(1, "Alice", 1, 1, "first", "tab", frozenset({1, 2})),
        write(1, "Alice", 1, 2, "first", "tab", frozenset({1, 2})),   # the other tab's retry, same batch
        write(2, "Bob", 1, 3, "bob's", "tab", frozenset({1, 2})),     # another user's id may be the same
        write(1, "Alice", 2, 1, "elsewhere", "tab"),                  # the same id in another study
        write(1, "Alice", 2, 2, "second", None),
        write(4, "Dan", 1, 4, "pending member", None),                # PENDING in study 1
        write(1, "Alice", 99, 1, "no such study", None),
    ])
    outcomes = [r["outcome"] for r in results]
    assert outcomes == ["stored", "duplicate", "stored", "reused", "stored", "not_member", "no_study"]
    assert results[1]["message"] == results[0]["message"]
    assert results[0]["message"]["seq"] == 1 and results[0]["message"]["user"] == {"id": 1, "name": "Alice"}
    # Chloe is ACTIVE in study 1 and not in its room: notified of each message stored there;
    # Dan (ACTIVE in study 2, not in its room) of Alice's message there
    assert [n["userId"] for n in results[0]["notifications"]] == [3]
    assert [n["userId"] for n in results[2]["notifications"]] == [3]
    assert [n["userId"] for n in results[4]["notifications"]] == [4]
    note = results[4]["notifications"][0]["notification"]
    assert note["data"] == {"messageId": results[4]["message"]["id"]} and note["message"] == "Alice: second"
    rows = await domain_node.db(stored_messages)
    # the numbers the duplicate and the reused id left unused went to the later messages of their study
    assert [(r["study"], r["seq"], r["user"], r["cmid"]) for r in rows] == [
        (1, 1, 1, "tab"), (1, 2, 2, "tab"), (2, 1, 1, None)]
    assert (results[2]["message"]["seq"], results[4]["message"]["seq"]) == (2, 1)
    # written again (a batch retried one write at a time): the same answers, nothing more stored
    again = await domain_node.db(queries.store_messages, [write(1, "Alice", 1, 5, "first", "tab")])
    assert again[0]["outcome"] == "duplicate" and again[0]["message"] == results[0]["message"]


async def test_a_failing_batch_stores_nothing(domain_node: DomainNode) -> None:
    async with boom_refused(domain_node):
        with pytest.raises(pw.PeeweeException):
            await domain_node.db(queries.store_messages, [
                write(1, "Alice", 1, 1, "fine", "a"), write(1, "Alice", 2, 1, "boom", "b")])
    assert await domain_node.db(stored_messages) == []


@pytest.mark.errors_logged
async def test_a_failing_batch_acks_nothing_and_gives_its_seqs_back(
        domain_node: DomainNode, connect: ClientFactory, database_url: str) -> None:
    alice, bob, dan = await clients_in_three_rooms(domain_node, connect)
    async with boom_refused(domain_node):
        *refusals, first = await queued_behind_a_blocked_batch(domain_node, database_url, alice, [
                (dan, {"studyId": 2, "content": "boom", "clientMessageId": "d"}),
                (bob, {"studyId": 3, "content": "boom too"})])
    assert first["seq"] == 1
    assert [(r["ok"], r["error"]["code"]) for r in refusals] == [(False, "RETRY"), (False, "RETRY")]
    # nothing of the failed batch is stored or broadcast; its seq numbers are handed out again
    ack = await dan.call("message", {"studyId": 2, "content": "fine now", "clientMessageId": "d"})
    assert ack["ok"] is True and ack["seq"] == 1 and ack["duplicate"] is False
    assert (await bob.call("message", {"studyId": 3, "content": "mine"}))["seq"] == 1
    await dan.wait("message", lambda m: m["content"] == "fine now")
    assert [m["content"] for m in dan.got("message")] == ["fine now"]
    assert [(r["study"], r["seq"], r["content"]) for r in await domain_node.db(stored_messages)] == [
        (1, 1, "first"), (2, 1, "fine now"), (3, 1, "mine")]


@pytest.mark.errors_logged
async def test_one_bad_message_fails_alone_and_its_batch_mates_are_stored_and_acked(
        domain_node: DomainNode, connect: ClientFactory, database_url: str) -> None:
    alice, bob, dan, dan_tab = await clients_in_three_rooms(domain_node, connect, second_tab=True)
    async with boom_refused(domain_node):
        failed, from_bob, from_dan, first = await queued_behind_a_blocked_batch(domain_node, database_url, alice, [
                (dan, {"studyId": 2, "content": "boom"}),
                (bob, {"studyId": 3, "content": "from bob"}),
                (dan_tab, {"studyId": 4, "content": "from dan"})])
    assert first["seq"] == 1
    assert failed["ok"] is False and failed["error"]["code"] == "RETRY"
    assert (from_bob["ok"], from_bob["seq"], from_dan["ok"], from_dan["seq"]) == (True, 1, True, 1)
    await bob.wait("message", lambda m: m["content"] == "from bob")
    await dan_tab.wait("message", lambda m: m["content"] == "from dan")
    assert [m["content"] for m in dan_tab.got("message")] == ["from dan"]
    assert sorted((r["study"], r["seq"]) for r in await domain_node.db(stored_messages)) == [(1, 1), (3, 1), (4, 1)]
    retry = await dan.call("message", {"studyId": 2, "content": "better"})
    assert retry["seq"] == 1  # the refused message's seq was given back: no gap


async def test_one_users_client_message_id_in_two_rooms_of_one_batch_is_stored_once(
        domain_node: DomainNode, connect: ClientFactory, database_url: str) -> None:
    alice, bob, dan, dan_tab = await clients_in_three_rooms(domain_node, connect, second_tab=True)
    in_2, in_4, from_bob, first = await queued_behind_a_blocked_batch(domain_node, database_url, alice, [
            (dan, {"studyId": 2, "content": "dan", "clientMessageId": "x"}),
            (dan_tab, {"studyId": 4, "content": "dan", "clientMessageId": "x"}),
            (bob, {"studyId": 3, "content": "bob", "clientMessageId": "x"})])
    assert (first["seq"], from_bob["seq"]) == (1, 1)
    # whichever of Dan's two tabs came first in the batch is stored; the other is a conflict
    stored, conflict = (in_2, in_4) if in_2["ok"] else (in_4, in_2)
    assert stored["ok"] is True and stored["seq"] == 1 and stored["duplicate"] is False
    assert conflict["ok"] is False and conflict["error"]["code"] == "CONFLICT"
    rows = await domain_node.db(stored_messages)
    assert sorted((r["study"], r["seq"], r["user"]) for r in rows) == sorted(
        [(1, 1, 1), (stored["studyId"], 1, 4), (3, 1, 2)])


async def test_a_retry_is_answered_with_the_stored_message_even_after_membership_ended(
        domain_node: DomainNode) -> None:
    first = await domain_node.db(queries.store_messages, [write(2, "Bob", 1, 1, "hi", "b-1")])
    await domain_node.db(lambda: StudyMember.update(status="INACTIVE").where(
        (StudyMember.study == 1) & (StudyMember.user == 2)).execute())
    again = await domain_node.db(queries.store_messages, [
        write(2, "Bob", 1, 2, "hi", "b-1"), write(2, "Bob", 1, 2, "new one", "b-2")])
    assert again[0] == {"outcome": "duplicate", "message": first[0]["message"]}
    assert again[1] == {"outcome": "not_member"}


# ---------------------------------------------------------------------- one statement (PostgreSQL)

LONG = "긴 메시지 " * 20  # 120 characters, past the notification preview's 100
#: what an array literal must quote (the statement takes its arrays in PostgreSQL's array syntax)
TRICKY = 'first "quoted", {braced} \\ back\\slash NULL'


def all_notifications() -> list[dict[str, Any]]:
    return [{"id": n.id, "user": n.user_id, "type": n.type, "message": n.message, "study": n.study_id,
             "data": n.data, "read": n.read_at} for n in Notification.select().order_by(Notification.id)]


def comparable(case: dict[str, Any]) -> Any:
    """`every_case`'s answer without what two equal runs may differ in: the time, and the message
    ids' values (a skipped INSERT row or a rolled-back one uses an id up), kept in their order."""
    rank = {row["id"]: place for place, row in enumerate(case["messages"], 1)}

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            message = "clientMessageId" in value  # a message payload: its id is a message id
            return {k: walk(v, "messageId" if message and k == "id" else k) for k, v in value.items()
                    if k != "createdAt"}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return rank.get(value, ("gone", value)) if key == "messageId" else value

    messages = [{**row, "id": rank[row["id"]]} for row in case["messages"]]
    results = walk(case["results"])
    return {"results": results, "messages": messages, "notifications": walk(case["notifications"])}


def every_case(store: Callable[[Sequence[MessageWrite]], list[dict[str, Any]]]) -> dict[str, Any]:
    """On the demo data afresh (ids from 1): Bob's "b-1" and Alice's "a-x" (study 2) stored, Bob
    no longer a member of study 1, then one batch with every outcome `store` can give; what it
    answered and what the tables hold after it."""
    seed_demo(reset=True)
    queries.store_messages_in_transaction([write(2, "Bob", 1, 1, "hi", "b-1"), write(1, "Alice", 2, 1, "x", "a-x")])
    StudyMember.update(status="INACTIVE").where((StudyMember.study == 1) & (StudyMember.user == 2)).execute()
    results = store([
        write(1, "Alice", 1, 2, TRICKY, "tab", frozenset({1})),    # stored; Chloe notified
        write(1, "Alice", 1, 3, TRICKY, "tab", frozenset({1})),    # the first one again, same batch: duplicate
        write(2, "Bob", 1, 4, "hi", "b-1"),                        # a retry after his membership ended: duplicate
        write(4, "Dan", 1, 5, "pending", None),                    # PENDING in study 1: not_member
        write(1, "Alice", 1, 6, LONG, None, frozenset({1})),       # stored as seq 3, a cut preview
        write(1, "Alice", 1, 7, "who", None, frozenset({1, 2, 4})),  # Bob and Dan present, not ACTIVE: evicted
        write(4, "Dan", 2, 2, "dan", "d-1"),                       # stored; Alice notified
        write(4, "Dan", 2, 3, "dan", "d-1"),                       # duplicate of the one above
        write(1, "Alice", 99, 1, "nowhere", None),                 # no_study
        write(4, "Dan", 1, 8, "z", 'z "\\,}'),                   # not_member ...
        write(4, "Dan", 2, 4, "z", 'z "\\,}'),                   # ... so its repeat is to be written again
        write(4, "Dan", 2, 5, "NULL", None),                       # stored as seq 3 (a text, not a NULL)
        write(1, "Alice", 1, 9, "x", "a-x"),                       # that id is stored in study 2: reused
    ])
    return {"results": results, "messages": stored_messages(), "notifications": all_notifications()}


async def test_the_one_statement_answers_and_stores_as_the_transaction_does(domain_node: DomainNode) -> None:
    counts = message_statement.COUNTS
    batches, fallbacks = counts.batches, counts.fallbacks
    transactional = await domain_node.db(every_case, queries.store_messages_in_transaction)
    one = await domain_node.db(every_case, functools.partial(queries.store_messages, one_statement_from=1))
    unprepared = await domain_node.db(every_case, functools.partial(
        queries.store_messages, prepare=False, one_statement_from=1))
    postgres = domain_node.domain.settings.database_url.startswith("postgresql")
    # PostgreSQL took the statement both times (SQLite keeps the transaction)
    assert (counts.batches - batches, counts.fallbacks - fallbacks) == ((2, 0) if postgres else (0, 0))
    results = transactional["results"]
    assert [r["outcome"] for r in results] == [
        "stored", "duplicate", "duplicate", "not_member", "stored", "stored", "stored", "duplicate", "no_study",
        "not_member", "again", "stored", "reused"]
    assert [results[i]["message"]["seq"] for i in (0, 4, 5, 6, 11)] == [2, 3, 4, 2, 3]
    assert results[1]["message"] == results[0]["message"] and results[7]["message"] == results[6]["message"]
    assert results[2]["message"]["seq"] == 1 and results[2]["message"]["content"] == "hi"
    assert [[n["userId"] for n in results[i]["notifications"]] for i in (0, 4, 5, 6, 11)] == [[3], [3], [3], [1], [1]]
    assert results[4]["notifications"][0]["notification"]["message"] == f"Alice: {LONG[:100]}…"
    assert results[5]["evict"] == [2, 4] and results[0]["evict"] == []
    assert (results[0]["message"]["content"], results[11]["message"]["content"]) == (TRICKY, "NULL")
    assert len(transactional["notifications"]) == 3 + 5  # the first two messages notified Alice, Chloe and Dan
    for other in (one, unprepared):
        assert comparable(other) == comparable(transactional)
        assert other["results"][0]["message"]["createdAt"] == other["results"][1]["message"]["createdAt"]


def clash_then_fine() -> list[dict[str, Any]]:
    """Study 1's seq 1 is taken (no clientMessageId to explain it): the statement cannot answer
    the batch that writes seq 1 again."""
    queries.store_messages_in_transaction([write(2, "Bob", 1, 1, "taken", None)])
    return queries.store_messages([write(1, "Alice", 1, 1, "clash", None), write(1, "Alice", 2, 1, "fine", "f"),
                                   write(4, "Dan", 2, 2, "fine too", None)], one_statement_from=1)


async def test_a_batch_the_statement_cannot_answer_is_written_in_a_transaction(domain_node: DomainNode) -> None:
    counts = message_statement.COUNTS
    batches, fallbacks = counts.batches, counts.fallbacks
    results = await domain_node.db(clash_then_fine)
    if domain_node.domain.settings.database_url.startswith("postgresql"):
        assert (counts.batches - batches, counts.fallbacks - fallbacks) == (0, 1)
    assert [r["outcome"] for r in results] == ["seq_clash", "stored", "stored"]
    assert [(r["message"]["seq"], r["message"]["content"]) for r in results[1:]] == [(1, "fine"), (2, "fine too")]
    # nothing the failed statement wrote is left: each message stored once, under the transaction's ids
    rows = await domain_node.db(stored_messages)
    assert [(r["study"], r["seq"], r["content"]) for r in rows] == [(1, 1, "taken"), (2, 1, "fine"), (2, 2, "fine too")]
    assert [r["id"] for r in rows[1:]] == [results[1]["message"]["id"], results[2]["message"]["id"]]


def resent_mid_batch() -> dict[str, Any]:
    """Alice's "r" was stored; she sends it again with a new message after it in the same batch."""
    seed_demo(reset=True)
    queries.store_messages_in_transaction([write(1, "Alice", 1, 1, "resent", "r")])
    results = queries.store_messages([write(1, "Alice", 1, 2, "resent", "r", frozenset({1, 2, 3})),
                                      write(1, "Alice", 1, 3, "new", "n", frozenset({1, 2, 3}))], one_statement_from=1)
    return {"results": results, "messages": stored_messages(), "notifications": all_notifications()}


async def test_a_duplicate_found_at_the_insert_before_a_later_message_is_written_in_a_transaction(
        domain_node: DomainNode) -> None:
    counts = message_statement.COUNTS
    batches, fallbacks = counts.batches, counts.fallbacks
    case = await domain_node.db(resent_mid_batch)
    if domain_node.domain.settings.database_url.startswith("postgresql"):
        # the statement numbered "new" past the resent one, found a duplicate only at the INSERT
        assert (counts.batches - batches, counts.fallbacks - fallbacks) == (0, 1)
    duplicate, new = case["results"]
    assert duplicate["outcome"] == "duplicate" and duplicate["message"]["seq"] == 1
    assert new["outcome"] == "stored" and new["message"]["seq"] == 2  # the gap closed
    assert [(r["seq"], r["cmid"]) for r in case["messages"]] == [(1, "r"), (2, "n")]


def prepared_statement_lost() -> list[list[dict[str, Any]]]:
    """Three batches on one connection; the prepared statement is dropped behind the writer's
    back after the first (what a pooler in transaction mode does by moving us elsewhere)."""
    store = functools.partial(queries.store_messages, one_statement_from=1)
    first = store([write(1, "Alice", 1, 1, "one", None)])
    database_proxy.execute_sql(f"DEALLOCATE {message_statement.NAME}")
    second = store([write(1, "Alice", 1, 2, "two", None)])
    third = store([write(1, "Alice", 1, 3, "three", None)])
    return [first, second, third]


@pytest.mark.errors_logged
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # prepared statements: PostgreSQL
async def test_a_vanished_prepared_statement_turns_preparing_off(
        domain_node: DomainNode, caplog: pytest.LogCaptureFixture) -> None:
    counts = message_statement.COUNTS
    message_statement.forget_prepared()
    batches, fallbacks = counts.batches, counts.fallbacks
    try:
        results = await domain_node.db(prepared_statement_lost)
        assert message_statement.prepare_off()
    finally:
        message_statement.forget_prepared()
    # the second batch fell back to the transaction, the third was the statement sent whole
    assert (counts.batches - batches, counts.fallbacks - fallbacks) == (2, 1)
    assert [[r["outcome"] for r in batch] for batch in results] == [["stored"], ["stored"], ["stored"]]
    assert [r["seq"] for r in await domain_node.db(stored_messages)] == [1, 2, 3]
    assert any("COUP_DB_PREPARE=0" in r.getMessage() for r in caplog.records)


def small_then_large() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    small = [write(1, "Alice", 2, seq, f"small {seq}", None) for seq in range(1, queries.ONE_STATEMENT_FROM)]
    large = [write(1, "Alice", 2, seq, f"large {seq}", None)
             for seq in range(queries.ONE_STATEMENT_FROM, 2 * queries.ONE_STATEMENT_FROM)]
    return queries.store_messages(small), queries.store_messages(large)


async def test_a_batch_takes_the_statement_from_its_threshold_on(domain_node: DomainNode) -> None:
    counts = message_statement.COUNTS
    batches, fallbacks = counts.batches, counts.fallbacks
    small, large = await domain_node.db(small_then_large)
    postgres = domain_node.domain.settings.database_url.startswith("postgresql")
    assert (counts.batches - batches, counts.fallbacks - fallbacks) == ((1, 0) if postgres else (0, 0))
    assert [r["message"]["seq"] for r in small + large] == list(range(1, 2 * queries.ONE_STATEMENT_FROM))
    # Dan, ACTIVE in study 2 and not in its room, is notified of each, by either path
    assert [[n["userId"] for n in r["notifications"]] for r in small + large] == [[4]] * len(small + large)
