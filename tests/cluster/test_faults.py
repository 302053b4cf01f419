"""Redis faults: outage and restart, a deaf subscription, a killed link, a stalled (zombie) node."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.cluster.conftest import Node, RedisServer, TcpProxy, quiet, start_node, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


@pytest_asyncio.fixture
async def pair(own_redis: RedisServer) -> AsyncIterator[list[Node]]:
    prefix = "f" + secrets.token_hex(3)
    made = [await start_node(own_redis.url, prefix, f"n{i}") for i in range(2)]
    try:
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 2 for n in made),  # type: ignore[union-attr]
                         what="both nodes on both rings")
        yield made
    finally:
        for n in made:
            await n.node.stop()


async def readyz(node: Node) -> int:
    async with aiohttp.ClientSession() as session, session.get(node.url + "/readyz") as response:
        return response.status


async def delivered_within(sender, receiver, seconds: float, tag: str) -> float:
    """Emit every 50 ms until `receiver` hears one; return how long that took."""
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        n += 1
        await sender.call("emit", {"rooms": ["r"], "event": tag, "data": n})
        await asyncio.sleep(0.05)
        if receiver.events[tag]:
            return time.monotonic() - start
    raise AssertionError(f"no cross-node delivery within {seconds} s")


async def test_redis_down_then_back(pair, peers, own_redis):
    a = await peers("ua").connect(pair[0].url)
    c = await peers("uc").connect(pair[0].url)
    b = await peers("ub").connect(pair[1].url)
    for peer in (a, b, c):
        await peer.call("join", {"room": "r"})
    assert [await readyz(n) for n in pair] == [200, 200]

    own_redis.kill()
    await wait_until(lambda: not pair[0].node.cluster.ready and not pair[1].node.cluster.ready,  # type: ignore[union-attr]
                     what="both nodes noticing the outage")
    assert [await readyz(n) for n in pair] == [503, 503]
    await a.call("emit", {"rooms": ["r"], "event": "local"})
    assert await c.wait_for("local") == [None]  # local sockets are still served
    assert (await b.call("whoami"))["node"] == "n1"
    late = await peers("late").connect(pair[1].url)  # connecting during the outage works too
    await late.call("join", {"room": "r"})

    await asyncio.sleep(2.5)  # long enough for every backoff to reach its cap
    own_redis.start()
    assert await delivered_within(a, b, 3.0, "back") < 3.0
    await wait_until(lambda: all(n.node.cluster.ready for n in pair), what="ready again")  # type: ignore[union-attr]
    assert [await readyz(n) for n in pair] == [200, 200]
    await late.wait_for("back")
    # presence was re-synced into the new (empty) Redis
    assert await b.call("online", {"users": ["ua", "ub", "uc", "late", "nobody"]}) == ["late", "ua", "ub", "uc"]
    reply = await b.call("say", {"room": "r", "text": "after"})
    assert reply["seq"] >= 1


async def test_a_deaf_subscription_is_found_by_the_probe_and_rebuilt(own_redis, peers):
    proxy = TcpProxy(own_redis.port)
    await proxy.start()
    prefix = "d" + secrets.token_hex(3)
    made = [await start_node(proxy.url, prefix, f"n{i}") for i in range(2)]
    try:
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 2 for n in made),  # type: ignore[union-attr]
                         what="ring")
        a = await peers("a").connect(made[0].url)
        b = await peers("b").connect(made[1].url)
        for peer in (a, b):
            await peer.call("join", {"room": "r"})
        proxy.deafen()  # connections stay open but carry nothing: no error is ever raised
        await wait_until(lambda: all(n.node.cluster.bus.stats["deaf_repairs"] >= 1 for n in made),  # type: ignore[union-attr]
                         timeout=10, what="both nodes detecting the deaf link")
        await wait_until(lambda: all(n.node.cluster.ready for n in made), timeout=10,  # type: ignore[union-attr]
                         what="links rebuilt")
        assert await delivered_within(a, b, 5.0, "heard") < 5.0
    finally:
        for n in made:
            await n.node.stop()
        await proxy.stop()


async def test_a_killed_subscriber_connection_is_replaced(pair, peers, own_redis):
    a = await peers("a").connect(pair[0].url)
    b = await peers("b").connect(pair[1].url)
    for peer in (a, b):
        await peer.call("join", {"room": "r"})
    before = pair[1].node.cluster.bus.connections  # type: ignore[union-attr]
    assert own_redis.cli("CLIENT", "KILL", "TYPE", "pubsub") != "0"
    await wait_until(lambda: pair[1].node.cluster.bus.connections > before and pair[1].node.cluster.ready,  # type: ignore[union-attr]
                     what="a new link")
    assert await delivered_within(a, b, 3.0, "again") < 3.0


async def test_a_stalled_node_declared_dead_drops_its_sockets_and_rejoins(pair, peers, own_redis):
    watcher = await peers("watcher").connect(pair[0].url)
    victim = await peers("stalled-user").connect(pair[1].url)
    await wait_until(lambda: any(e["user"] == "stalled-user" for e in watcher.events["user-online"]),
                     what="online")
    registry = pair[1].node.cluster.registry  # type: ignore[union-attr]
    heartbeats = registry._tasks[0]
    heartbeats.cancel()  # the node stalls: no heartbeat
    prefix = pair[1].node.settings.redis_prefix
    own_redis.cli("ZADD", f"{prefix}:nodes", "0", "n1")  # ...for longer than dead_after
    # reaping starts once a node has been linked for dead_after (the grace after an outage)
    offline = await watcher.wait_for("user-offline", timeout=10)
    assert offline[0]["user"] == "stalled-user" and offline[0]["lost"] is True and offline[0]["node"] == "n0"
    await wait_until(lambda: pair[0].node.cluster.registry.ring.nodes == ("n0",), what="n1 off the ring")  # type: ignore[union-attr]
    await registry.heartbeat()  # the node wakes up and learns it was declared dead
    await wait_until(lambda: not victim.sio.connected, what="the zombie's sockets dropped")
    await wait_until(lambda: pair[0].node.cluster.registry.ring.nodes == ("n0", "n1"), what="n1 back")  # type: ignore[union-attr]
    await quiet(pair[1], watcher)  # whatever the zombie node sent as it dropped its sockets has arrived
    await quiet(pair[0], watcher)
    assert len(watcher.events["user-offline"]) == 1  # the dropped socket's own detach reported nothing twice


async def test_study_numbers_survive_a_change_of_writer_and_never_go_back(pair):
    stored = {"max": 41}

    async def stored_max(study_id: int) -> int:
        return stored["max"]

    first = pair[0].node.cluster.counter("study", stored_max)  # type: ignore[union-attr]
    second = pair[1].node.cluster.counter("study", stored_max)  # type: ignore[union-attr]
    assert await first.next(9) == 42  # seeded from the database
    assert await second.next(9) == 43  # another node continues the same numbering
    await second.give_back(9, 43)  # not stored: handed out again, no gap
    assert await first.next(9) == 43
    await first.give_back(9, 40)  # not the last one given: changes nothing
    assert await first.current(9) == 43
    stored["max"] = 50  # the database has more than the counter (a clash was caught)
    await second.resync(9)
    assert await first.next(9) == 51
    stored["max"] = 10
    await first.resync(9)  # never lowered
    assert await second.next(9) == 52


async def test_a_node_started_while_redis_is_down_serves_and_joins_later(own_redis, peers):
    own_redis.kill()
    node = await start_node(own_redis.url, "s" + secrets.token_hex(3), "late")
    try:
        assert await readyz(node) == 503
        a = await peers("a").connect(node.url)
        b = await peers("b").connect(node.url)
        for peer in (a, b):
            await peer.call("join", {"room": "r"})
        await a.call("emit", {"rooms": ["r"], "event": "local"})
        await b.wait_for("local")  # local sockets are served without Redis
        own_redis.start()
        await wait_until(lambda: node.node.cluster.ready, timeout=3, what="ready once Redis is up")  # type: ignore[union-attr]
        assert await readyz(node) == 200
        assert node.node.cluster.registry.ring.nodes == ("late",)  # type: ignore[union-attr]
    finally:
        await node.node.stop()
