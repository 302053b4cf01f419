"""A membership ended in the database takes effect on live sockets across nodes: the
removed member's socket (on another node than the room's owner, in one of the two cases)
leaves the room, is told so, and no longer receives its messages; the room hears
`member-left` once."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from tests.cluster.conftest import NodeProcess, RedisServer, wait_until
from tests.cluster.test_domain_nodes import ALICE, BOB, CHLOE, STUDY, User, connect, start_all

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def set_status(log_dir: Path, user_id: int, status: str) -> None:
    with sqlite3.connect(log_dir / "coup.db", timeout=10) as db:
        db.execute("UPDATE study_members SET status = ? WHERE study_id = ? AND user_id = ?", (status, STUDY, user_id))


@pytest.mark.parametrize("interval", ["600", "1"], ids=["at-the-next-message", "by-the-periodic-check"])
async def test_a_removed_member_leaves_the_room_on_every_node(redis_server: RedisServer, tmp_path: Path,
                                                            interval: str) -> None:
    prefix = "lm" + secrets.token_hex(3)
    nodes = [NodeProcess(redis_server.url, prefix, f"n{i}", tmp_path, COUP_MEMBERSHIP_CHECK_INTERVAL=interval)
             for i in range(2)]
    users: list[User] = []
    try:
        await start_all(nodes)
        alice = await connect(users, ALICE, nodes[0])
        bob = await connect(users, BOB, nodes[1])
        chloe_here = await connect(users, CHLOE, nodes[0])
        chloe_there = await connect(users, CHLOE, nodes[1])
        for user in (alice, bob, chloe_here, chloe_there):
            assert (await user.call("join-study", {"studyId": STUDY}))["ok"] is True
        set_status(tmp_path, CHLOE, "INACTIVE")
        if interval == "600":
            ack = await alice.call("message", {"studyId": STUDY, "content": "after the removal"})
            assert ack["ok"] is True
            await wait_until(lambda: any(m["content"] == "after the removal" for m in bob.events["message"]),
                             what="Bob got the message")
        for tab in (chloe_here, chloe_there):
            await wait_until(lambda t=tab: t.events["removed-from-study"] == [
                {"studyId": STUDY, "code": "NOT_MEMBER", "message": "스터디 멤버가 아닙니다"}], what="removed")
            assert not [m for m in tab.events["message"] if m["content"] == "after the removal"]
        await wait_until(lambda: alice.count("member-left", CHLOE) >= 1, what="member-left")
        ack = await alice.call("message", {"studyId": STUDY, "content": "later"})
        assert ack["ok"] is True
        await wait_until(lambda: any(m["content"] == "later" for m in bob.events["message"]), what="later")
        for tab in (chloe_here, chloe_there):
            assert not [m for m in tab.events["message"] if m["content"] == "later"]
            typing = await tab.call("typing", {"studyId": STUDY})
            assert typing["ok"] is False and typing["error"]["code"] == "NOT_IN_STUDY"
        assert alice.count("member-left", CHLOE) == 1 and bob.count("member-left", CHLOE) == 1
    finally:
        for user in users:
            await user.close()
        for node in nodes:
            node.stop()
