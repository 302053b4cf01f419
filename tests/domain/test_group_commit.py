"""Group commit of chat messages (coup/domain/writer.py, `queries.store_messages`): many rooms'
messages in one transaction, acked only after it committed, a refused write failing alone.

Failures are the database's own: a trigger that refuses messages whose content starts with
"boom" (SQLite and PostgreSQL). Batches are formed for real: a second connection holds the
write lock while messages queue behind the first batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import peewee as pw
import pytest

from coup.domain import queries
from coup.domain.models import Study, StudyMember
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
