"""Redis Sentinel (issue 17): nodes that find their Redis through sentinels, and a failover.

`REDIS_URL=redis+sentinel://...` must hold on every connection a node opens (the redis-py
clients, our own pub/sub link) and on the emitter and `coup status`; when the primary dies
the sentinels promote the replica and every connection must find the new primary, with
chat resuming within 5 s of the switch, no acknowledged message lost and presence right.
The contract tests also run through Sentinel (the ``sentinel`` parameter of `nodes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from coup.cluster.resp import RespConnection
from coup.cluster.status import read_status
from coup.domain.roomnames import study_room
from coup.emitter import Emitter
from coup.redis_clients import async_client
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import Node, NodeProcess, Peer, RedisServer, SentinelSet, free_port, start_node, wait_until
from tests.cluster.test_domain_nodes import ALICE, BOB, CHLOE, STUDY, User, token

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def client_names(server: RedisServer) -> list[str]:
    return [field.split("=", 1)[1] for line in server.cli("CLIENT", "LIST").splitlines()
            for field in line.split() if field.startswith("name=")]


@contextlib.asynccontextmanager
async def three_nodes_in_a_room(url: str, prefix: str, peers: Callable[..., Peer]
                                ) -> AsyncIterator[tuple[list[Node], list[Peer]]]:
    """Three in-process nodes on `url`, a client on each, all three in the room ``chat``."""
    nodes: list[Node] = []
    try:
        for i in range(3):
            nodes.append(await start_node(url, prefix, f"n{i}"))
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 3 for n in nodes),  # type: ignore[union-attr]
                         what="every node on every ring")
        members = []
        for i, node in enumerate(nodes):
            peer = await peers(f"{prefix}-{i}").connect(node.url)
            await peer.call("join", {"room": "chat"})
            members.append(peer)
        yield nodes, members
    finally:
        for node in nodes:
            await node.node.stop()


async def test_every_connection_goes_to_the_primary_the_sentinels_name(module_sentinel_set: SentinelSet, peers):
    sentinels = module_sentinel_set
    prefix = "s" + secrets.token_hex(3)
    emitter = Emitter(sentinels.url, prefix=prefix, namespace=NAMESPACE)
    try:
        async with three_nodes_in_a_room(sentinels.url, prefix, peers) as (nodes, members):
            replies = [await members[i % 3].call("say", {"room": "chat", "text": f"m{i}"}) for i in range(9)]
            assert [r["seq"] for r in replies] == list(range(1, 10))
            for peer in members:
                assert [m["text"] for m in await peer.wait_for("said", 9)] == [f"m{i}" for i in range(9)]
            assert await asyncio.to_thread(emitter.to("chat").emit, "news", "from a backend") == 3
            for peer in members:
                assert await peer.wait_for("news") == ["from a backend"]
            # the pub/sub links and the redis-py clients are all on the primary, none on the replica
            on_primary = client_names(sentinels.primary)
            for i in range(3):
                assert f"{prefix}:n{i}:pub" in on_primary and f"{prefix}:n{i}:sub" in on_primary
            assert f"{prefix}:ctl" in on_primary
            assert not [n for n in client_names(sentinels.replica) if n.startswith(prefix)]
            status = await read_status(sentinels.url, nodes[0].node.cluster.options)  # type: ignore[union-attr]
            assert [n["id"] for n in status["nodes"]] == ["n0", "n1", "n2"]
    finally:
        emitter.close()


async def test_a_counter_never_gives_a_number_twice_when_redis_forgets(redis_server: RedisServer):
    """A failover that lost the last writes (asynchronous replication) leaves the new primary
    with an older counter; here the older value is written directly, as the replica would have it."""
    prefix = "c" + secrets.token_hex(3)
    node = await start_node(redis_server.url, prefix, "n0")
    client = async_client(redis_server.url)
    try:
        stored = {"max": 0}

        async def stored_max(ident: int) -> int:
            return stored["max"]

        counter = node.node.cluster.counter("study", stored_max)  # type: ignore[union-attr]
        given = [await counter.next(5) for _ in range(10)]
        assert given == list(range(1, 11))
        await client.set(f"{prefix}:seq:study:5", 7)  # the last three INCRs were lost
        assert await counter.next(5) == 11
        await client.delete(f"{prefix}:seq:study:5")  # all of it (a restart without data)
        assert await counter.next(5) == 12
        await counter.give_back(5, 12)  # a number not used is still handed out again, no gap
        assert await counter.next(5) == 12
        assert counter.stats["went_back"] == 2
    finally:
        await client.aclose()
        await node.node.stop()


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


async def test_the_primary_killed_during_chat(sentinel_set: SentinelSet, tmp_path: Path):
    prefix = "sf" + secrets.token_hex(3)
    nodes = [NodeProcess(sentinel_set.url, prefix, f"n{i}", tmp_path) for i in range(3)]
    chatting: list[asyncio.Task[None]] = []
    people: list[TimedUser] = []
    try:
        nodes[0].start()  # the first one creates and seeds the shared database
        await nodes[0].wait_ready()
        for node in nodes[1:]:
            node.start()
        await asyncio.gather(*[n.wait_ready() for n in nodes])
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
        emitter = Emitter(sentinel_set.url, prefix=prefix)  # a backend, connected before the failover
        assert await asyncio.to_thread(emitter.to(study_room(STUDY)).emit, "notice", "before") == 3

        async with sentinel_set.watching() as switched:
            old_primary = sentinel_set.primary_port()
            sentinel_set.primary.kill()
            killed_at = time.monotonic()
            switched_at = await asyncio.wait_for(switched, 30)
        assert sentinel_set.primary_port() == sentinel_set.replica.port != old_primary

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
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the emitter never found the new primary"
        emitter.close()
        assert heard == 3
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
        assert resumed < 5.0, f"delivery resumed {resumed:.2f} s after +switch-master"
        print(f"Sentinel failover: +switch-master {switched_at - killed_at:.2f} s after the SIGKILL, "
              f"cross-node delivery back {resumed:.2f} s after it; {len(acked)} messages acknowledged, "
              f"none lost; refused and resent: {dict(refused)}; missed live (fetched): "
              f"{sum(len(m) for m in missed.values())}")
        for node in nodes:
            assert "Traceback" not in node.log_text()
    finally:
        for task in chatting:
            task.cancel()
        await asyncio.gather(*chatting, return_exceptions=True)
        for person in people:
            await person.close()
        for node in nodes:
            node.stop()



async def test_a_planned_failover_moves_every_link_off_the_demoted_primary(sentinel_set: SentinelSet, peers):
    """``SENTINEL FAILOVER``: the old primary stays up as a replica and keeps our connections
    open; PUBLISH still works there, so only the sentinels' ``+switch-master`` tells a node
    that its pub/sub link now talks to a server the other nodes have left."""
    prefix = "sp" + secrets.token_hex(3)
    async with three_nodes_in_a_room(sentinel_set.url, prefix, peers) as (nodes, members):
        old, new = sentinel_set.primary, sentinel_set.replica
        assert f"{prefix}:n0:sub" in client_names(old)
        async with sentinel_set.watching() as switched:
            assert sentinel_set.sentinel_cli(sentinel_set.sentinel_ports[1], "SENTINEL", "FAILOVER", "mymaster") == "OK"
            switched_at = await asyncio.wait_for(switched, 30)
        for i in range(3):
            await wait_until(lambda i=i: {f"{prefix}:n{i}:pub", f"{prefix}:n{i}:sub"} <= set(client_names(new)),
                             timeout=5, what=f"n{i}'s links on the new primary")
        moved = time.monotonic() - switched_at
        assert not [n for n in client_names(old) if n.startswith(f"{prefix}:n")]
        await wait_until(lambda: all(n.node.cluster.ready for n in nodes), what="every node ready")  # type: ignore[union-attr]
        assert new.cli("SCRIPT", "FLUSH") == "OK"  # a primary without our scripts: NOSCRIPT, loaded again
        reply = await members[0].call("say", {"room": "chat", "text": "after"})
        for peer in members:
            assert (await peer.wait_for("said"))[-1] == {**reply, "room": "chat", "text": "after", "by": f"{prefix}-0"}
        print(f"planned failover: every link on the new primary {moved:.2f} s after +switch-master")


async def test_a_dead_sentinel_first_in_the_list_costs_no_time(module_sentinel_set: SentinelSet):
    """The next sentinel is asked at once: no retries with backoff against the dead one."""
    dead = free_port()
    url = f"redis+sentinel://127.0.0.1:{dead}," + module_sentinel_set.url.split("://", 1)[1]
    started = time.monotonic()
    client = async_client(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
    conn = await RespConnection.open(url, name="probe", timeout=2)
    try:
        assert conn.address == ("127.0.0.1", module_sentinel_set.primary.port)
    finally:
        conn.close()
    took = time.monotonic() - started
    assert took < 1.0, f"{took:.2f} s"
