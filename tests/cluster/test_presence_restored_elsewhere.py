"""A socket restored on another node (same id, connection state recovery) keeps its user online
whatever the node it left does afterwards: the grace ending there, that node restarting under
the same id, re-syncing, leaving or being reaped as dead (issue 12: the user-offline flap seen
by the demo page during a rolling restart).

Each test plays the race in a fixed order on real Redis, with the presence objects of two
nodes, "a" and "b", as `coup.cluster.node.Cluster` builds them.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import redis.asyncio as redis

from coup.cluster.node import make_client
from coup.cluster.options import ClusterOptions
from coup.cluster.presence import RedisPresence
from coup.cluster.registry import Registry
from tests.cluster.conftest import RedisServer

pytestmark = pytest.mark.asyncio

KEY = "user-1"
SID = "restored-socket"

Make = Callable[..., RedisPresence]


@pytest_asyncio.fixture
async def options(redis_server: RedisServer) -> ClusterOptions:
    return ClusterOptions(prefix="t" + secrets.token_hex(4))


@pytest_asyncio.fixture
async def clients(redis_server: RedisServer, options: ClusterOptions) -> AsyncIterator[list[redis.Redis]]:
    made = [make_client(redis_server.url, options, retries=2), make_client(redis_server.url, options, retries=0)]
    yield made
    for client in made:
        await client.aclose()


@pytest_asyncio.fixture
async def make(clients: list[redis.Redis], options: ClusterOptions) -> AsyncIterator[Make]:
    """A node's presence (a new one per call: a second call with one id is that node restarted)."""
    made: list[RedisPresence] = []

    def build(node_id: str, grace: float = 0.0) -> RedisPresence:
        presence = RedisPresence(clients[0], clients[1], node_id, options, grace=grace)
        presence.lost_keys = []  # type: ignore[attr-defined]

        async def lost(key: str) -> None:
            presence.lost_keys.append(key)  # type: ignore[attr-defined]

        presence.on_lost(lost)
        made.append(presence)
        return presence

    yield build
    for presence in made:
        for handle in presence._lingering.values():
            handle.cancel()


async def end_grace(presence: RedisPresence) -> None:
    """The grace of every entry lingering on `presence` ends now (its timer would do this later)."""
    for key, sid in list(presence._lingering):
        presence._lingering[key, sid].cancel()
        presence._expire(key, sid)
    assert await presence.settle(5.0)


async def holder(clients: list[redis.Redis], options: ClusterOptions) -> str | None:
    value = await clients[0].hget(options.key("presence", KEY), SID)
    return value.decode() if value is not None else None


async def test_restored_on_a_restarted_node_then_the_old_node_grace_ends(make, clients, options):
    """The demo page's flap: the socket moved a → b (its WebSocket upgrade landed on b), a was
    restarted, b drained, and the socket was restored on the new a. The new a's attach reused a
    call id of the old a process and was answered from the old answer without being recorded,
    so b's grace ending took the user's last entry: user-offline for a user who was back."""
    old_a, b = make("a"), make("b", grace=3600)
    assert await old_a.attach(KEY, SID) is True
    b.take_over(await old_a.hand_over({SID}, "b"))
    assert await holder(clients, options) == "b"
    new_a = make("a")  # a restarted: same node id, a new process
    assert await b.detach(KEY, SID) is False  # b drains: the socket dropped, its entry lingers
    assert await new_a.attach(KEY, SID) is False  # restored on the new a: back, no news
    assert await holder(clients, options) == "a"
    await end_grace(b)
    assert b.lost_keys == []  # type: ignore[attr-defined]
    assert await new_a.online([KEY]) == {KEY}
    assert await new_a.detach(KEY, SID, linger=False) is True  # and it goes offline once, later


async def test_restored_elsewhere_then_the_old_node_leaves(make, clients, options):
    """a's drain ran out of time with the entry still lingering, and a leaves: its leave takes
    only its own entries, not the one b holds now for the same socket id."""
    a, b = make("a", grace=3600), make("b")
    registry = Registry(clients[0], clients[1], "a", options)
    await registry.heartbeat()
    assert await a.attach(KEY, SID) is True
    assert await a.detach(KEY, SID) is False  # dropped: lingering on a
    assert await b.attach(KEY, SID) is False  # restored on b
    assert await registry.leave() == []
    assert await holder(clients, options) == "b"
    assert await b.detach(KEY, SID, linger=False) is True


async def test_restored_elsewhere_then_the_crashed_node_is_reaped(make, clients, options):
    """a crashed; its socket was restored on b before a survivor reaped a: the reap takes only
    a's own entries."""
    a, b = make("a"), make("b")
    dead = Registry(clients[0], clients[1], "a", options)
    await dead.heartbeat()
    assert await a.attach(KEY, SID) is True
    assert await b.attach(KEY, SID) is False  # restored on b
    survivor = Registry(clients[0], clients[1], "b", options)
    await survivor.heartbeat()
    # a's last heartbeat is long past (as if `dead_after` went by): the reap script declares it dead
    await clients[0].zadd(options.key("nodes"), {"a": 0})
    survivor._linked_at = -1e9
    lost: list[str] = []

    async def on_lost(keys: list[str]) -> None:
        lost.extend(keys)

    survivor.on_lost = on_lost
    await survivor.reap()
    assert survivor.stats["reaped"] == 1
    assert lost == []
    assert await holder(clients, options) == "b"
    assert await b.detach(KEY, SID, linger=False) is True


async def test_restored_elsewhere_then_the_old_node_restarts_and_resyncs(make, clients, options):
    """a crashed and came back under the same id (its re-sync says it holds nothing) after the
    socket was restored on b: the re-sync takes only a's own entries."""
    a, b = make("a"), make("b")
    assert await a.attach(KEY, SID) is True
    assert await b.attach(KEY, SID) is False  # restored on b
    new_a = make("a")
    await new_a.resync()
    assert await new_a.settle(5.0)
    assert new_a.lost_keys == []  # type: ignore[attr-defined]
    assert await holder(clients, options) == "b"
    assert await b.detach(KEY, SID, linger=False) is True


async def test_a_resync_does_not_take_a_socket_restored_elsewhere(make, clients, options):
    """a still lingers on a dropped socket's entry when its Redis link comes back; the socket was
    restored on b meanwhile. a's re-sync must not claim it back, or a's grace ending would take
    the user offline."""
    a, b = make("a", grace=3600), make("b")
    assert await a.attach(KEY, SID) is True
    assert await a.detach(KEY, SID) is False  # lingering on a
    assert await b.attach(KEY, SID) is False  # restored on b
    await a.resync()
    assert await holder(clients, options) == "b"
    await end_grace(a)
    assert a.lost_keys == []  # type: ignore[attr-defined]
    assert await b.online([KEY]) == {KEY}
