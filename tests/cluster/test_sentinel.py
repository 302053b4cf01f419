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
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coup.cluster.resp import RespConnection
from coup.cluster.status import read_status
from coup.emitter import Emitter
from coup.redis_clients import async_client
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import Node, Peer, RedisServer, SentinelSet, free_port, start_node, wait_until
from tests.cluster.failover import chat_through_a_failover

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


async def chat_and_emit(members: list[Peer], emitter: Emitter) -> None:
    """Nine numbered messages from the three members reach all of them in order, and so does
    a backend's emit: commands, scripts, pub/sub and the emitter all work on this Redis."""
    replies = [await members[i % 3].call("say", {"room": "chat", "text": f"m{i}"}) for i in range(9)]
    assert [r["seq"] for r in replies] == list(range(1, 10))
    for peer in members:
        assert [m["text"] for m in await peer.wait_for("said", 9)] == [f"m{i}" for i in range(9)]
    assert await asyncio.to_thread(emitter.to("chat").emit, "news", "from a backend") == 3
    for peer in members:
        assert await peer.wait_for("news") == ["from a backend"]


async def test_every_connection_goes_to_the_primary_the_sentinels_name(shared_sentinel_set: SentinelSet, peers):
    sentinels = shared_sentinel_set
    prefix = "s" + secrets.token_hex(3)
    emitter = Emitter(sentinels.url, prefix=prefix, namespace=NAMESPACE)
    try:
        async with three_nodes_in_a_room(sentinels.url, prefix, peers) as (nodes, members):
            await chat_and_emit(members, emitter)
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


async def test_the_primary_killed_during_chat(sentinel_set: SentinelSet, tmp_path: Path):
    async def fail_over() -> tuple[float, float]:
        async with sentinel_set.watching() as switched:
            old_primary = sentinel_set.primary_port()
            sentinel_set.primary.kill()
            killed_at = time.monotonic()
            switched_at = await asyncio.wait_for(switched, 30)
        assert sentinel_set.primary_port() == sentinel_set.replica.port != old_primary
        return killed_at, switched_at

    await chat_through_a_failover(sentinel_set.url, "sf" + secrets.token_hex(3), tmp_path, fail_over,
                                  "Sentinel failover (+switch-master)")


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


async def test_a_dead_sentinel_first_in_the_list_costs_no_time(shared_sentinel_set: SentinelSet):
    """The next sentinel is asked at once: no retries with backoff against the dead one."""
    dead = free_port()
    url = f"redis+sentinel://127.0.0.1:{dead}," + shared_sentinel_set.url.split("://", 1)[1]
    started = time.monotonic()
    client = async_client(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
    conn = await RespConnection.open(url, name="probe", timeout=2)
    try:
        assert conn.address == ("127.0.0.1", shared_sentinel_set.primary.port)
    finally:
        conn.close()
    took = time.monotonic() - started
    assert took < 1.0, f"{took:.2f} s"
