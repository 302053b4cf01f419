"""A broadcast with a `once` key goes out once cluster-wide, whichever node repeats it
(`coup.core.adapter.BroadcastOptions.once`: how a resent command's broadcast reaches every
receiver exactly once), with the recovery log on (the log script decides) or off (its own
script decides; on a Redis Cluster it marks the key and the broadcast goes out as any other),
on one Redis and on a Redis Cluster, and in one process (the memory adapter)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import Node, RedisServer, quiet, start_node

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest_asyncio.fixture(params=["memory", "redis+recovery", "redis", "cluster+recovery", "cluster"])
async def two_nodes(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[list[Node]]:
    url = request.getfixturevalue("shared_redis_cluster").url if request.param.startswith("cluster") \
        else redis_server.url
    if request.param == "memory":
        single = await start_node(None, "", "solo")
        try:
            yield [single, single]
        finally:
            await single.node.stop()
        return
    prefix = "o" + secrets.token_hex(4)
    window = 120.0 if request.param.endswith("+recovery") else 0.0
    started = [await start_node(url, prefix, f"n{i}", recovery_window=window) for i in range(2)]
    logged = started[0].node.sio.of(NAMESPACE).adapter.recovery_log is not None  # type: ignore[attr-defined]
    assert logged is (window > 0)
    try:
        yield started
    finally:
        for node in started:
            await node.node.stop()


async def test_a_repeat_with_the_same_once_key_is_not_sent_again(two_nodes, peers):
    a, b = two_nodes
    listener = await peers("listener").connect(b.url)
    await listener.call("join", {"room": "r"})
    senders = [await peers(f"s{i}").connect(node.url) for i, node in enumerate(two_nodes)]
    await senders[0].call("emit", {"rooms": ["r"], "event": "news", "data": 1, "once": "message:1"})
    assert await listener.wait_for("news") == [1]
    for sender in senders:  # repeats, from the node that sent it and from another
        await sender.call("emit", {"rooms": ["r"], "event": "news", "data": 1, "once": "message:1"})
    await senders[1].call("emit", {"rooms": ["r"], "event": "news", "data": 2, "once": "message:2"})
    await listener.wait_for("news", count=2)
    await quiet(a, listener)
    await quiet(b, listener)
    assert listener.events["news"] == [1, 2]
