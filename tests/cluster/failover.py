"""Chat on three node processes while a Redis primary is killed (Sentinel, Redis Cluster; issue 17).

One scenario for every way Redis fails over, so each kind is held to the same promises.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis

from coup.domain.roomnames import study_room
from coup.emitter import Emitter
from tests.cluster.conftest import NodeProcess, log_groups_for, wait_until
from tests.cluster.test_domain_nodes import ALICE, BOB, CHLOE, STUDY, User, start_all, token

#: kills a primary; returns (monotonic time of the kill, monotonic time the failover ended)
FailOver = Callable[[], Awaitable[tuple[float, float]]]


class TimedUser(User):
    """A CoUp client that also notes when each `message` arrived."""

    def __init__(self, user_id: int) -> None:
        super().__init__(user_id)
        self.arrived: dict[int, float] = {}

    async def _record(self, event: str, *args: Any) -> None:
        await super()._record(event, *args)
        if event == "message" and args and isinstance(args[0], dict):
            self.arrived.setdefault(int(args[0]["seq"]), time.monotonic())


async def stored_messages(node: NodeProcess) -> dict[str, int]:
    """clientMessageId -> seq of every message of the study in the database (through `node`)."""
    found: dict[str, int] = {}
    before = ""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{node.url}/api/studies/{STUDY}/messages?limit=100{before}",
                                   headers={"Authorization": f"Bearer {token(ALICE)}"}) as response:
                assert response.status == 200
                page = await response.json()
            for item in page["items"]:
                if item["clientMessageId"]:
                    assert item["clientMessageId"] not in found, "a message stored twice"
                    found[item["clientMessageId"]] = item["seq"]
            if not page["hasMore"]:
                return found
            before = f"&before={page['nextBefore']}"


async def chat_through_a_failover(url: str, prefix: str, tmp_path: Path, fail_over: FailOver, what: str) -> None:
    """Three node processes on `url`, a user on each chatting in one study; `fail_over()` kills
    a Redis primary and returns when it did and when the failover ended. Delivery across nodes
    resumes within 5 s of the end, no acknowledged message is lost or numbered twice, a backend's
    emitter follows, presence is right afterwards. `what` names the failover in the printed figures."""
    nodes = [NodeProcess(url, prefix, f"n{i}", tmp_path) for i in range(3)]
    chatting: list[asyncio.Task[None]] = []
    people: list[TimedUser] = []
    try:
        await start_all(nodes)
        for user_id, node in zip((ALICE, BOB, CHLOE), nodes, strict=True):
            person = TimedUser(user_id)
            await person.connect(node)
            assert (await person.call("join-study", {"studyId": STUDY}))["ok"] is True
            people.append(person)
        alice, bob, chloe = people
        await wait_until(lambda: alice.count("user-online", CHLOE) == 1, what="chloe online")

        acked: dict[str, int] = {}
        acked_at: dict[int, float] = {}
        refused: dict[str, int] = defaultdict(int)
        stop = asyncio.Event()

        async def chat(person: User, tag: str) -> None:
            """Send, and send a refused message again with the same clientMessageId (what a client does)."""
            for i in range(10_000):
                if stop.is_set():
                    return
                cid = f"{tag}-{i}"
                while True:
                    try:
                        reply = await person.sio.call("message", {"studyId": STUDY, "content": cid,
                                                                  "clientMessageId": cid}, timeout=6)
                    except TimeoutError:
                        reply = {"ok": False, "error": {"code": "TIMEOUT"}}
                    if reply.get("ok"):
                        acked[cid] = reply["seq"]
                        acked_at[reply["seq"]] = time.monotonic()
                        break
                    refused[reply["error"]["code"]] += 1
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.05)

        chatting = [asyncio.create_task(chat(p, f"u{p.user_id}")) for p in people]
        await wait_until(lambda: len(acked) >= 15, timeout=10, what="chat going")
        # a backend, connected before the failover
        emitter = Emitter(url, prefix=prefix, log_groups=log_groups_for(url))
        assert await asyncio.to_thread(emitter.to(study_room(STUDY)).emit, "notice", "before") == 3

        killed_at, switched_at = await fail_over()

        def everyone_after_switch() -> list[int]:
            """Messages acknowledged after the switch that all three received."""
            return [s for s, at in acked_at.items() if at > switched_at and all(s in p.arrived for p in people)]

        await wait_until(lambda: bool(everyone_after_switch()), timeout=10, what="chat after the failover")
        resumed = min(max(p.arrived[s] for p in people) for s in everyone_after_switch()) - switched_at
        seq_after = max(acked_at)
        await wait_until(lambda: sum(1 for s in acked_at if s > seq_after) >= 15, timeout=10, what="more chat")
        stop.set()
        await asyncio.gather(*chatting)
        chatting = []

        # a backend's emitter follows too: its first emit may fail (the connection broke), the next reaches all
        deadline = time.monotonic() + 5
        while True:
            try:
                heard = await asyncio.to_thread(emitter.to(study_room(STUDY)).emit, "notice", "after")
                break
            except redis.RedisError:  # ConnectionError; on a Redis Cluster also ClusterDownError
                assert time.monotonic() < deadline, "the emitter never found the new primary"
        emitter.close()
        assert heard == 3, f"the emitter's notice after the failover was heard by {heard} nodes, not 3"
        for person in people:
            await wait_until(lambda p=person: p.events["notice"] == ["before", "after"], what="the emitter's notices")

        # presence right afterwards: nobody went offline for the failover, and a transition shows
        assert alice.count("user-offline", CHLOE) == 0 and alice.count("user-offline", BOB) == 0
        await chloe.close()
        await wait_until(lambda: alice.count("user-offline", CHLOE) == 1 and bob.count("user-offline", CHLOE) == 1,
                         timeout=5, what="chloe offline after the failover")

        # no acknowledged message lost, no number given twice
        seqs = sorted(acked.values())
        assert len(set(seqs)) == len(seqs), "a seq acknowledged twice"
        stored = await stored_messages(nodes[1])
        assert {cid: stored.get(cid) for cid in acked} == acked
        numbers = sorted(stored.values())
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a gap in seq"
        # every client saw every stored message: live, or (a broadcast lost with the old primary)
        # from the history its node serves, as a client does when it sees a gap in seq
        missed = {p.user_id: sorted(set(numbers) - set(p.arrived)) for p in people}
        for person, node in zip(people, nodes, strict=True):
            assert set(missed[person.user_id]) <= set((await stored_messages(node)).values())
            late = [s for s in missed[person.user_id] if acked_at.get(s, 0) > switched_at + resumed + 1.0]
            assert late == [], f"user {person.user_id} missed messages sent after the resume: {late}"
        assert resumed < 5.0, f"delivery resumed {resumed:.2f} s after the failover"
        print(f"{what}: failover done {switched_at - killed_at:.2f} s after the SIGKILL, "
              f"cross-node delivery back {resumed:.2f} s after it; {len(acked)} messages acknowledged, "
              f"none lost; refused and resent: {dict(refused)}; missed live (fetched): "
              f"{sum(len(m) for m in missed.values())}")
        for node in nodes:
            text = node.log_text()
            assert "Traceback" not in text, text[max(0, text.index("Traceback") - 1500):][:5000]
    finally:
        for task in chatting:
            task.cancel()
        await asyncio.gather(*chatting, return_exceptions=True)
        for person in people:
            await person.close()
        for node in nodes:
            node.stop()
