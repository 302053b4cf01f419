"""The pieces of the Redis tunnel: framing, alarms, and its bounds on in-process nodes."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from coup.cluster.alarms import Alarms
from coup.cluster.tunnel import decode, encode
from coup.redis_clients import async_client
from tests.cluster.conftest import wait_until
from tests.cluster.test_no_sticky import RoundRobinPoller

pytestmark = [pytest.mark.timeout(60)]

UNKNOWN = {"code": 1, "message": "Session ID unknown"}


def test_a_tunnel_message_carries_any_body_bytes() -> None:
    body = b"\n\x00\xff 4hello\n"
    header, got = decode(encode({"k": "data", "id": "a:1", "n": 3}, body))
    assert header == {"k": "data", "id": "a:1", "n": 3} and got == body


def test_alarms_count_every_failure_and_warn_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    alarms = Alarms(interval=60)
    with caplog.at_level(logging.WARNING, logger="coup.cluster"):
        for _ in range(50):
            alarms.raise_("relay_not_taken", "node x did not take a request")
        alarms.raise_("relay_home_gone", "node y left")
    assert alarms.snapshot() == {"relay_not_taken": 50, "relay_home_gone": 1}
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["relay_not_taken", "relay_home_gone"]


async def _get(url: str) -> tuple[int, object, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(content_type=None), time.monotonic() - started


@pytest.mark.asyncio
async def test_a_home_whose_inbox_nobody_hears_costs_no_wait(redis_nodes):
    a, b = redis_nodes[0], redis_nodes[1]
    poller = RoundRobinPoller([b.url])
    try:
        await poller.open()
        await b.node.cluster.bus.stop()  # b is still in the ring, but nothing listens on its inbox
        status, body, _ = await _get(f"{a.url}/socket.io/?EIO=4&transport=polling&sid={poller.sid}")
        assert (status, body) == (400, UNKNOWN)
        assert a.node.cluster.alarms.counts["relay_home_not_listening"] == 1
    finally:
        await poller.session.close()


@pytest.mark.asyncio
async def test_a_home_that_hears_but_never_takes_costs_one_bounded_delay(redis_nodes):
    """Something subscribed to a live-looking node's inbox that never answers: the take timeout, then 400."""
    a = redis_nodes[0]
    cluster = a.node.cluster
    cluster.tunnel.take_timeout = 0.3
    raw = async_client(cluster.url)  # the nodes' Redis, whether named directly or by sentinels
    silent = raw.pubsub()
    try:
        now_ms = int((await raw.time())[0] * 1000)  # before a cluster's pubsub: the slot map is read now
        inbox = cluster.options.spread("n", "ghost")
        await (silent.ssubscribe(inbox) if cluster.options.sharded else silent.subscribe(inbox))
        await raw.zadd(cluster.options.key("nodes"), {"ghost": now_ms})
        await raw.incr(cluster.options.key("epoch"))
        await wait_until(lambda: "ghost" in cluster.registry.ring.nodes, what="ghost on the ring")
        status, body, took = await _get(f"{a.url}/socket.io/?EIO=4&transport=polling&sid=ghost.abc")
        assert (status, body) == (400, UNKNOWN)
        assert 0.3 <= took < 2.0
        assert cluster.alarms.counts["relay_not_taken"] == 1
    finally:
        await silent.aclose()
        await raw.zrem(cluster.options.key("nodes"), "ghost")
        await raw.aclose()


@pytest.mark.asyncio
async def test_a_client_hanging_up_on_a_relayed_poll_releases_it_at_home(redis_nodes):
    a, b = redis_nodes[0], redis_nodes[1]
    poller = RoundRobinPoller([b.url])
    try:
        await poller.open()
        session = b.node.engine.sessions[poller.sid]
        url = f"{a.url}/socket.io/?EIO=4&transport=polling&sid={poller.sid}"
        client = aiohttp.ClientSession()
        held = asyncio.create_task(client.get(url).__aenter__())
        await wait_until(lambda: session.transport.waiting, what="the relayed poll held at home")  # type: ignore[attr-defined]
        held.cancel()
        await client.close()
        await wait_until(lambda: not session.transport.waiting, what="the home letting go")  # type: ignore[attr-defined]
        assert b.node.cluster.tunnel.describe()["serving"] == 0
        assert session.open  # a hang-up is not the end of the session
        await poller.post("2")  # a ping: the home answers PONG at once, not at the next heartbeat
        assert await poller.poll() == ["3"]  # and the next poll, elsewhere, is served
    finally:
        await poller.session.close()
