"""typing, read, notification-read, and events nobody knows."""

from __future__ import annotations

from typing import Any

import pytest

from coup.domain.models import MessageRead, Notification
from tests.domain.support import SERVICE_TOKEN, Client, ClientFactory, DomainNode, NodeFactory, refused

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


def receipts() -> list[tuple[int, int]]:
    return [(r.message_id, r.user_id) for r in MessageRead.select().order_by(MessageRead.id)]


def read_marks() -> dict[int, bool]:
    return {n.id: n.read_at is not None for n in Notification.select()}


# ---------------------------------------------------------------------- typing


async def test_typing_goes_to_the_others_with_the_sockets_own_user(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    alice_tab2 = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    chloe = await connect(3)  # not in the room
    # the payload's userId is ignored: the socket says who is typing
    assert await alice.call("typing", {"studyId": 1, "userId": 3}) == {"ok": True}
    assert await bob.wait("typing") == {"userId": 1, "userName": "Alice", "studyId": 1}
    await alice.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message")
    assert alice.got("typing") == [] and alice_tab2.got("typing") == [] and chloe.got("typing") == []


async def test_typing_is_throttled_per_user(make_node: NodeFactory, transport: str) -> None:
    node = await make_node(typing_interval=60.0)
    alice1, alice2, bob = Client(node, transport), Client(node, transport), Client(node, transport)
    try:
        for client, user in ((alice1, 1), (alice2, 1), (bob, 2)):
            await client.connect(user)
            await client.call("join-study", {"studyId": 1})
        assert await alice1.call("typing", {"studyId": 1}) == {"ok": True}
        # the same user again, even from another tab, within the interval: dropped
        assert await alice1.call("typing", {"studyId": 1}) == {"ok": True, "throttled": True}
        assert await alice2.call("typing", {"studyId": 1}) == {"ok": True, "throttled": True}
        assert await bob.call("typing", {"studyId": 1}) == {"ok": True}  # another user is not throttled
        await alice1.call("message", {"studyId": 1, "content": "sentinel"})
        await bob.wait("message")
        assert bob.got("typing") == [{"userId": 1, "userName": "Alice", "studyId": 1}]
        # Alice's other tab does not hear her own typing, only Bob's
        assert alice2.got("typing") == [{"userId": 2, "userName": "Bob", "studyId": 1}]
    finally:
        for client in (alice1, alice2, bob):
            await client.close()


@pytest.mark.parametrize(("payload", "code"), [
    ({}, "BAD_REQUEST"), ({"studyId": "1"}, "BAD_REQUEST"), ({"studyId": 2}, "NOT_IN_STUDY"),
    ({"studyId": 99}, "NOT_IN_STUDY"),
])
async def test_bad_typing_is_refused(connect: ClientFactory, payload: dict[str, Any], code: str) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    await refused(alice, "typing", payload, code=code)
    await alice.call("message", {"studyId": 1, "content": "sentinel"})
    await bob.wait("message")
    assert bob.got("typing") == []


# ---------------------------------------------------------------------- read receipts


async def test_read_is_stored_once_and_told_to_the_others(domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    chloe = await connect(3, join=(1,))
    sent = await alice.call("message", {"studyId": 1, "content": "read me"})
    mid = sent["id"]
    assert await bob.call("read", {"messageId": mid}) == {"ok": True, "messageId": mid, "studyId": 1, "new": True}
    expected = {"messageId": mid, "userId": 2, "studyId": 1}
    assert await alice.wait("read") == expected
    assert await chloe.wait("read") == expected
    assert await domain_node.db(receipts) == [(mid, 2)]
    # again: acknowledged, not stored or told twice
    assert (await bob.call("read", {"messageId": mid}))["new"] is False
    await bob.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message", lambda m: m["content"] == "sentinel")
    assert alice.got("read") == [expected] and bob.got("read") == []
    assert await domain_node.db(receipts) == [(mid, 2)]


async def test_read_needs_active_membership_of_the_messages_study(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1, 2))
    in_study_2 = await alice.call("message", {"studyId": 2, "content": "study 2 only"})
    bob = await connect(2)
    await refused(bob, "read", {"messageId": in_study_2["id"]}, code="NOT_MEMBER")
    await refused(bob, "read", {"messageId": 123456}, code="NOT_FOUND")
    for bad in ({}, {"messageId": "1"}, {"messageId": 0}, {"messageId": None}):
        await refused(bob, "read", bad, code="BAD_REQUEST")
    assert await domain_node.db(receipts) == []
    assert alice.got("read") == []


# ---------------------------------------------------------------------- notification-read


async def create_notification(node: DomainNode, user_id: int, **extra: Any) -> dict[str, Any]:
    status, body = await node.http("POST", "/api/notifications", body={
        "userId": user_id, "type": "ANNOUNCEMENT", "message": "Meeting at 7", **extra},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def test_notification_read_marks_it_and_tells_the_users_other_tabs(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    tab1 = await connect(1)
    tab2 = await connect(1)
    bob = await connect(2)
    note = await create_notification(domain_node, 1)
    await tab1.wait("notification")
    await tab2.wait("notification")
    nid = note["id"]
    assert await tab1.call("notification-read", {"notificationId": nid}) == {
        "ok": True, "notificationId": nid, "changed": True}
    assert await tab2.wait("notification-read") == {"notificationId": nid}
    assert await domain_node.db(read_marks) == {nid: True}
    # again: fine, nobody told twice
    assert (await tab1.call("notification-read", {"notificationId": nid}))["changed"] is False
    await create_notification(domain_node, 1)
    await tab2.wait("notification", lambda n: n["id"] != nid)
    assert tab2.got("notification-read") == [{"notificationId": nid}]
    assert tab1.got("notification-read") == [] and bob.got("notification-read") == []


async def test_notification_read_of_someone_elses_is_refused(domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1)
    bob = await connect(2)
    note = await create_notification(domain_node, 1)
    await alice.wait("notification")
    await refused(bob, "notification-read", {"notificationId": note["id"]}, code="NOT_FOUND")
    await refused(bob, "notification-read", {"notificationId": 987654}, code="NOT_FOUND")
    await refused(bob, "notification-read", {"notificationId": "1"}, code="BAD_REQUEST")
    assert await domain_node.db(read_marks) == {note["id"]: False}
    assert alice.got("notification-read") == []


# ---------------------------------------------------------------------- unknown events


async def test_unknown_event_gets_an_error_and_the_socket_lives_on(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    error = await refused(alice, "delete-everything", {"studyId": 1}, code="UNKNOWN_EVENT")
    assert error["event"] == "delete-everything"
    await alice.emit("no-ack-either", 1, 2, 3)
    assert (await alice.wait("error", lambda e: e["event"] == "no-ack-either"))["code"] == "UNKNOWN_EVENT"
    assert (await alice.call("message", {"studyId": 1, "content": "still fine"}))["ok"] is True
