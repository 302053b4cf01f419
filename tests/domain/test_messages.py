"""`message`: persisted once, then broadcast to the room (sender included), with `seq`."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from coup.domain.models import Message, Notification, StudyMember
from tests.domain.support import Client, ClientFactory, DomainNode, NodeFactory, boom_refused, refused

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

XSS = "<img src=x onerror=alert(1)> & \"quotes\" 'single' \\ 한국어 🎉 \u200b\n  spaces  "


def stored_messages() -> list[dict[str, Any]]:
    return [{"id": m.id, "study": m.study_id, "user": m.user_id, "seq": m.seq, "content": m.content,
             "fileId": m.file_id, "cmid": m.client_message_id} for m in Message.select().order_by(Message.id)]


def stored_notifications() -> list[dict[str, Any]]:
    return [{"user": n.user_id, "type": n.type, "study": n.study_id, "data": n.data, "read": n.read_at is not None}
            for n in Notification.select().order_by(Notification.id)]


async def test_message_is_stored_then_broadcast_to_the_room_sender_included(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    dan = await connect(4)  # PENDING in study 1: not in the room
    ack = await alice.call("message", {"studyId": 1, "content": XSS, "fileId": 7, "clientMessageId": "c-1"})
    assert ack["ok"] is True and ack["duplicate"] is False and ack["seq"] == 1 and ack["studyId"] == 1
    created = dt.datetime.strptime(ack["createdAt"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((dt.datetime.now(dt.UTC).replace(tzinfo=None) - created).total_seconds()) < 60
    expected = {"id": ack["id"], "studyId": 1, "seq": 1, "content": XSS, "fileId": 7,
                "user": {"id": 1, "name": "Alice"}, "createdAt": ack["createdAt"], "clientMessageId": "c-1"}
    assert await bob.wait("message") == expected
    assert await alice.wait("message") == expected
    assert await domain_node.db(stored_messages) == [
        {"id": ack["id"], "study": 1, "user": 1, "seq": 1, "content": XSS, "fileId": 7, "cmid": "c-1"}]
    # seq goes on without gaps; fileId and clientMessageId are optional
    second = await bob.call("message", {"studyId": 1, "content": "second"})
    assert second["seq"] == 2
    assert (await alice.wait("message", lambda m: m["seq"] == 2))["clientMessageId"] is None
    assert dan.got("message") == []


async def test_exactly_4000_characters_is_fine(domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    content = "가" * 4000
    ack = await alice.call("message", {"studyId": 1, "content": content})
    assert ack["ok"] is True
    assert (await alice.wait("message"))["content"] == content


@pytest.mark.parametrize(("payload", "code"), [
    ({"studyId": 1}, "BAD_REQUEST"),
    ({"studyId": 1, "content": None}, "BAD_REQUEST"),
    ({"studyId": 1, "content": 42}, "BAD_REQUEST"),
    ({"studyId": 1, "content": ["x"]}, "BAD_REQUEST"),
    ({"studyId": 1, "content": ""}, "BAD_REQUEST"),
    ({"studyId": 1, "content": " \n\t "}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "x" * 4001}, "CONTENT_TOO_LONG"),
    ({"studyId": 1, "content": "a\x00b"}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "lone \ud800 surrogate"}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "x", "fileId": "7"}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "x", "fileId": -7}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "x", "clientMessageId": 5}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "x", "clientMessageId": ""}, "BAD_REQUEST"),
    ({"studyId": 1, "content": "x", "clientMessageId": "c" * 65}, "BAD_REQUEST"),
    ({"content": "x"}, "BAD_REQUEST"),
    ({"studyId": "1", "content": "x"}, "BAD_REQUEST"),
    ({"studyId": 2, "content": "x"}, "NOT_IN_STUDY"),   # Alice is a member of 2, but not in its room
    ({"studyId": 99, "content": "x"}, "NOT_IN_STUDY"),
])
async def test_bad_messages_are_refused_and_change_nothing(
        domain_node: DomainNode, connect: ClientFactory, payload: dict[str, Any], code: str) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    await refused(alice, "message", payload, code=code)
    assert await domain_node.db(stored_messages) == []
    ack = await alice.call("message", {"studyId": 1, "content": "sentinel"})
    assert ack["seq"] == 1  # the refusal used no sequence number
    await bob.wait("message")
    assert [m["content"] for m in bob.got("message")] == ["sentinel"]


async def test_retry_with_the_same_client_message_id_is_stored_and_delivered_once(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    first = await alice.call("message", {"studyId": 1, "content": "hello", "clientMessageId": "retry-1"})
    again = await alice.call("message", {"studyId": 1, "content": "hello", "clientMessageId": "retry-1"})
    assert again["id"] == first["id"] and again["seq"] == first["seq"] == 1
    assert again["createdAt"] == first["createdAt"]
    assert first["duplicate"] is False and again["duplicate"] is True
    await alice.call("message", {"studyId": 1, "content": "sentinel"})
    await bob.wait("message", lambda m: m["content"] == "sentinel")
    assert [m["content"] for m in bob.got("message")] == ["hello", "sentinel"]
    assert [m["seq"] for m in await domain_node.db(stored_messages)] == [1, 2]
    # the same id from another user is another message
    other = await bob.call("message", {"studyId": 1, "content": "mine", "clientMessageId": "retry-1"})
    assert other["id"] != first["id"] and other["duplicate"] is False


async def test_concurrent_duplicates_from_two_tabs_are_stored_once(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    tabs = [await connect(1, join=(1,)) for _ in range(3)]
    bob = await connect(2, join=(1,))
    acks = await asyncio.gather(*(
        tab.call("message", {"studyId": 1, "content": "once", "clientMessageId": "same"}) for tab in tabs))
    assert len({a["id"] for a in acks}) == 1
    assert sorted(a["duplicate"] for a in acks) == [False, True, True]
    await tabs[0].call("message", {"studyId": 1, "content": "sentinel"})
    await bob.wait("message", lambda m: m["content"] == "sentinel")
    assert [m["content"] for m in bob.got("message")] == ["once", "sentinel"]
    assert len(await domain_node.db(stored_messages)) == 2


async def test_client_message_id_reused_in_another_study_is_a_conflict(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1, 2))
    await alice.call("message", {"studyId": 1, "content": "in 1", "clientMessageId": "x"})
    await refused(alice, "message", {"studyId": 2, "content": "in 2", "clientMessageId": "x"}, code="CONFLICT")
    assert [m["study"] for m in await domain_node.db(stored_messages)] == [1]


async def test_seq_is_per_study_and_gap_free_under_concurrency(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1, 2))
    bob = await connect(2, join=(1,))
    dan = await connect(4, join=(2,))
    sends = [alice.call("message", {"studyId": 1 + i % 2, "content": f"a{i}"}) for i in range(20)]
    sends += [bob.call("message", {"studyId": 1, "content": f"b{i}"}) for i in range(10)]
    sends += [dan.call("message", {"studyId": 2, "content": f"d{i}"}) for i in range(10)]
    acks = await asyncio.gather(*sends)
    by_study: dict[int, list[int]] = {1: [], 2: []}
    for ack in acks:
        by_study[ack["studyId"]].append(ack["seq"])
    assert sorted(by_study[1]) == list(range(1, 21))
    assert sorted(by_study[2]) == list(range(1, 21))
    # every receiver sees one study's messages in seq order
    await bob.wait("message", lambda m: len(bob.got("message")) == 20)
    assert [m["seq"] for m in bob.got("message")] == list(range(1, 21))
    rows = await domain_node.db(stored_messages)
    assert sorted((r["study"], r["seq"]) for r in rows) == sorted(
        [(1, s) for s in range(1, 21)] + [(2, s) for s in range(1, 21)])


async def test_new_message_notifies_active_members_not_in_the_room(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    chloe = await connect(3)          # ACTIVE in study 1, connected, not in the room
    dan = await connect(4)            # PENDING: never notified
    ack = await alice.call("message", {"studyId": 1, "content": "x" * 150})
    note = await chloe.wait("notification")
    assert note["type"] == "NEW_MESSAGE" and note["studyId"] == 1 and note["data"] == {"messageId": ack["id"]}
    assert note["message"].startswith("Alice: ") and isinstance(note["id"], int)
    await bob.wait("message")
    assert alice.got("notification") == [] and bob.got("notification") == [] and dan.got("notification") == []
    assert await domain_node.db(stored_notifications) == [
        {"user": 3, "type": "NEW_MESSAGE", "study": 1, "data": {"messageId": ack["id"]}, "read": False}]
    # Chloe offline still gets it stored (and Bob too once he left the room)
    await chloe.close()
    await bob.call("leave-study", {"studyId": 1})
    second = await alice.call("message", {"studyId": 1, "content": "again"})
    assert [n for n in await domain_node.db(stored_notifications) if n["data"] == {"messageId": second["id"]}] == [
        {"user": 2, "type": "NEW_MESSAGE", "study": 1, "data": {"messageId": second["id"]}, "read": False},
        {"user": 3, "type": "NEW_MESSAGE", "study": 1, "data": {"messageId": second["id"]}, "read": False},
    ]
    assert (await bob.wait("notification"))["data"] == {"messageId": second["id"]}


async def test_who_is_away_follows_joins_and_leaves_between_messages(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    """The room's owner keeps who is in the room from its joins and leaves, not by asking at
    every message: a join after a message, a leave, a closed tab and the other tab still in
    each change who the next message notifies."""
    alice = await connect(1, join=(1,))

    async def notified(content: str) -> bool:
        """Whether Chloe got a notification of Alice's message (stored with it, before the ack)."""
        ack = await alice.call("message", {"studyId": 1, "content": content})
        assert ack["ok"] is True, ack
        return [n["user"] for n in await domain_node.db(stored_notifications)
                if n["data"] == {"messageId": ack["id"]}].count(3) == 1

    assert await notified("before Chloe joined")
    tab1 = await connect(3, join=(1,))
    tab2 = await connect(3, join=(1,))
    assert not await notified("Chloe is in")
    await tab1.close()                  # her other tab is still in the room
    assert not await notified("one tab left")
    await tab2.call("leave-study", {"studyId": 1})
    assert await notified("Chloe left")
    await tab2.call("join-study", {"studyId": 1})
    assert not await notified("Chloe back")
    await tab2.close()                  # closed on purpose: she leaves at once
    # the room heard it (a disconnect is handled after the close)
    await alice.wait("member-left", lambda _: [m["userId"] for m in alice.got("member-left")].count(3) == 2)
    assert await notified("Chloe closed her last tab")


async def test_membership_is_rechecked_when_the_message_is_stored(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))

    def deactivate() -> None:
        StudyMember.update(status="INACTIVE").where((StudyMember.study == 1) & (StudyMember.user == 2)).execute()

    await domain_node.db(deactivate)
    await refused(bob, "message", {"studyId": 1, "content": "sneaky"}, code="NOT_MEMBER")
    assert await domain_node.db(stored_messages) == []
    assert alice.got("message") == []


async def test_message_flood_is_rate_limited_with_a_clear_error(
        make_node: NodeFactory, transport: str) -> None:
    node = await make_node(message_rate=0.5, message_burst=3)
    alice = Client(node, transport)
    try:
        await alice.connect(1)
        await alice.call("join-study", {"studyId": 1})
        for i in range(3):
            assert (await alice.call("message", {"studyId": 1, "content": f"m{i}"}))["ok"] is True
        error = await refused(alice, "message", {"studyId": 1, "content": "too many"}, code="RATE_LIMITED")
        assert 0 < error["retryAfter"] <= 2
        assert [m["content"] for m in await node.db(stored_messages)] == ["m0", "m1", "m2"]
        assert alice.sio.connected
    finally:
        await alice.close()


@pytest.mark.errors_logged
async def test_a_database_failure_is_a_retryable_refusal_and_the_seq_is_given_back(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    async with boom_refused(domain_node):  # the database refuses the INSERT
        await refused(alice, "message", {"studyId": 1, "content": "boom?", "clientMessageId": "r-1"}, code="RETRY")
    ack = await alice.call("message", {"studyId": 1, "content": "boom?", "clientMessageId": "r-1"})
    assert ack["ok"] is True and ack["seq"] == 1 and ack["duplicate"] is False
    await bob.wait("message")
    assert [m["content"] for m in bob.got("message")] == ["boom?"]
