"""join-study / leave-study / disconnect: membership checks and member-joined / member-left."""

from __future__ import annotations

from typing import Any

import pytest

from coup.domain.models import StudyMember
from tests.domain.support import ClientFactory, DomainNode, refused
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def room_users(node: DomainNode, study_id: int) -> list[int]:
    sockets = await node.node.sio.main.in_(f"study:{study_id}").fetch_sockets()
    return sorted(s.data["userId"] for s in sockets)


async def test_join_acks_with_online_members_and_tells_the_others(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1)
    assert await alice.call("join-study", {"studyId": 1}) == {"ok": True, "studyId": 1, "online": [1]}
    bob = await connect(2)
    assert await bob.call("join-study", {"studyId": 1}) == {"ok": True, "studyId": 1, "online": [1, 2]}
    assert await alice.wait("member-joined") == {"studyId": 1, "userId": 2, "userName": "Bob"}
    assert await room_users(domain_node, 1) == [1, 2]

    # joining again is fine, acks again, and announces nothing
    assert await bob.call("join-study", {"studyId": 1}) == {"ok": True, "studyId": 1, "online": [1, 2]}
    # a second tab of Bob: in the room, but Bob was there already
    bob2 = await connect(2)
    assert (await bob2.call("join-study", {"studyId": 1}))["online"] == [1, 2]
    await bob.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message")
    assert alice.got("member-joined") == [{"studyId": 1, "userId": 2, "userName": "Bob"}]
    assert bob.got("member-joined") == [] and bob2.got("member-joined") == []


@pytest.mark.parametrize(("user_id", "study_id", "code"), [
    (4, 1, "NOT_MEMBER"),   # Dan is PENDING in study 1
    (5, 1, "NOT_MEMBER"),   # Eve is no member at all
    (2, 2, "NOT_MEMBER"),   # Bob is not in study 2
    (1, 99, "NOT_FOUND"),   # no such study
])
async def test_join_refused_without_active_membership(
        domain_node: DomainNode, connect: ClientFactory, user_id: int, study_id: int, code: str) -> None:
    watcher = await connect(1, join=(1,))
    client = await connect(user_id)
    error = await refused(client, "join-study", {"studyId": study_id}, code=code)
    if code == "NOT_MEMBER":
        assert error == {"message": "스터디 멤버가 아닙니다", "code": "NOT_MEMBER", "event": "join-study"}
    assert await room_users(domain_node, study_id) == ([1] if study_id == 1 else [])
    await watcher.call("message", {"studyId": 1, "content": "sentinel"})
    await watcher.wait("message")
    assert watcher.got("member-joined") == []


async def test_join_refusal_without_ack_still_gets_error_event(connect: ClientFactory) -> None:
    dan = await connect(4)
    await dan.emit("join-study", {"studyId": 1})
    assert await dan.wait("error") == {"message": "스터디 멤버가 아닙니다", "code": "NOT_MEMBER", "event": "join-study"}


BAD_STUDY_PAYLOADS: list[tuple[Any, ...]] = [
    (), (None,), ("1",), ([1],), ({},), ({"studyId": None},), ({"studyId": "1"},), ({"studyId": 1.5},),
    ({"studyId": 0},), ({"studyId": -1},), ({"studyId": True},), ({"studyId": 2**70},),
]


@pytest.mark.parametrize("event", ["join-study", "leave-study"])
async def test_bad_payloads_are_refused(domain_node: DomainNode, connect: ClientFactory, event: str) -> None:
    alice = await connect(1)
    for args in BAD_STUDY_PAYLOADS:
        await refused(alice, event, *args, code="BAD_REQUEST")
    assert await room_users(domain_node, 1) == []
    assert alice.sio.connected


async def test_leave_announces_member_left_once_the_user_has_no_socket_in_the_room(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob1 = await connect(2, join=(1,))
    bob2 = await connect(2, join=(1,))
    assert await bob1.call("leave-study", {"studyId": 1}) == {"ok": True, "studyId": 1}
    assert await room_users(domain_node, 1) == [1, 2]
    await bob2.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message")
    assert alice.got("member-left") == []
    assert await bob2.call("leave-study", {"studyId": 1}) == {"ok": True, "studyId": 1}
    assert await alice.wait("member-left") == {"studyId": 1, "userId": 2}
    assert await room_users(domain_node, 1) == [1]
    # leaving a room one is not in is fine and announces nothing
    assert await bob2.call("leave-study", {"studyId": 1}) == {"ok": True, "studyId": 1}
    await alice.call("message", {"studyId": 1, "content": "sentinel 2"})
    await alice.wait("message", lambda m: m["content"] == "sentinel 2")
    assert alice.got("member-left") == [{"studyId": 1, "userId": 2}]


async def test_disconnect_announces_member_left_after_the_last_tab(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob1 = await connect(2, join=(1,))
    bob2 = await connect(2, join=(1,))
    await bob1.close()
    await bob2.call("message", {"studyId": 1, "content": "sentinel"})
    await alice.wait("message")
    assert alice.got("member-left") == []
    await bob2.close()
    assert await alice.wait("member-left") == {"studyId": 1, "userId": 2}
    assert await room_users(domain_node, 1) == [1]


async def test_membership_ended_means_no_rejoin(domain_node: DomainNode, connect: ClientFactory) -> None:
    bob = await connect(2, join=(1,))

    def deactivate() -> None:
        StudyMember.update(status="INACTIVE").where((StudyMember.study == 1) & (StudyMember.user == 2)).execute()

    await domain_node.db(deactivate)
    await refused(bob, "join-study", {"studyId": 1}, code="NOT_MEMBER")
    assert await room_users(domain_node, 1) == []


def member_keys(node: DomainNode) -> dict[str, set[str]]:
    """The "user in study room" presence keys and their sockets (what a crashed node reports back)."""
    presence = node.node.sio.presence
    return {key: set(sids) for key, sids in presence._sockets.items() if key.startswith("study:")}  # type: ignore[attr-defined]


async def test_room_member_presence_follows_join_leave_refusal_and_disconnect(
        domain_node: DomainNode, connect: ClientFactory) -> None:
    alice = await connect(1, join=(1,))
    bob = await connect(2, join=(1,))
    assert set(member_keys(domain_node)) == {"study:1/1", "study:1/2"}
    await bob.call("join-study", {"studyId": 1})  # again: still one socket
    assert len(member_keys(domain_node)["study:1/2"]) == 1
    await bob.call("leave-study", {"studyId": 1})
    assert set(member_keys(domain_node)) == {"study:1/1"}
    await bob.call("join-study", {"studyId": 1})

    def deactivate() -> None:
        StudyMember.update(status="INACTIVE").where((StudyMember.study == 1) & (StudyMember.user == 2)).execute()

    await domain_node.db(deactivate)
    await refused(bob, "join-study", {"studyId": 1}, code="NOT_MEMBER")  # taken out of the room
    assert set(member_keys(domain_node)) == {"study:1/1"}
    await alice.close()
    await bob.close()
    await eventually(lambda: not member_keys(domain_node), "the presence keys are gone")
    assert member_keys(domain_node) == {}

