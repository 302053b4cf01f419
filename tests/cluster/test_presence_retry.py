"""A presence transition whose Redis call timed out is asked again and announced exactly once."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis_client
from redis.exceptions import TimeoutError as RedisTimeoutError

from coup.cluster.presence import RedisPresence
from tests.cluster.conftest import start_node, wait_until

pytestmark = pytest.mark.asyncio


Script = Callable[..., Awaitable[Any]]


def _times_out_once_after_running(script: Script) -> tuple[Script, list[int]]:
    """The script runs in Redis, but its answer is lost the first time (a socket timeout)."""
    calls: list[int] = []

    async def flaky(**kwargs: Any) -> Any:
        calls.append(1)
        result = await script(**kwargs)
        if len(calls) == 1:
            raise RedisTimeoutError("simulated: the answer did not arrive in time")
        return result

    return flaky, calls


async def test_timed_out_attach_does_not_announce_a_second_online(redis_nodes):
    first: RedisPresence = redis_nodes[0].node.sio.presence
    second: RedisPresence = redis_nodes[1].node.sio.presence
    assert await first.attach("retry-a", "s1") is True
    second._attach, calls = _times_out_once_after_running(second._attach)  # the script
    # the old fallback answered "first socket on this node" (True): a second user-online
    assert await second.attach("retry-a", "s2") is False
    assert len(calls) == 2


async def test_timed_out_detach_still_announces_the_offline(redis_nodes):
    first: RedisPresence = redis_nodes[0].node.sio.presence
    second: RedisPresence = redis_nodes[1].node.sio.presence
    assert await first.attach("retry-d", "s1") is True
    assert await second.attach("retry-d", "s2") is False
    assert await first.detach("retry-d", "s1", linger=False) is False
    second._detach, calls = _times_out_once_after_running(second._detach)
    # the old fallback answered False: the user-offline was never announced
    assert await second.detach("retry-d", "s2", linger=False) is True
    assert len(calls) == 2
    assert await first.online(["retry-d"]) == set()


async def test_a_socket_attached_again_is_no_second_transition(redis_nodes):
    """A recovered socket comes back with its old id: attaching it again is no new online, and
    it goes offline once (answers are remembered per call, not per socket)."""
    presence: RedisPresence = redis_nodes[0].node.sio.presence
    assert await presence.attach("retry-same", "s1") is True
    assert await presence.attach("retry-same", "s1") is False
    assert await presence.attach("retry-same", "s2") is False
    assert await presence.detach("retry-same", "s2", linger=False) is False
    assert await presence.detach("retry-same", "s1", linger=False) is True
    assert await presence.detach("retry-same", "s1", linger=False) is False
    assert await presence.attach("retry-same", "s1") is True  # back after it went offline: online again


async def test_a_detach_redis_refused_is_re_synced_while_the_link_stays_up(own_redis):
    """Redis refuses a detach's connection (its client limit reached here; after a Redis Cluster
    failover, a command client still on the old primary) while the node's pub/sub link stays
    up, so no reconnection re-syncs presence: the node re-syncs it itself shortly after, and
    the user goes offline."""
    node = await start_node(own_redis.url, "pr" + secrets.token_hex(3), "n0")
    admin = redis_client.Redis.from_url(own_redis.url)
    try:
        cluster = node.node.cluster
        assert cluster is not None
        presence: RedisPresence = node.node.sio.presence  # type: ignore[assignment]
        links = cluster.bus.connections
        assert await presence.attach("resync-a", "s1") is True
        limit = (await admin.config_get("maxclients"))["maxclients"]
        await admin.config_set("maxclients", 1)  # no new connection from now on
        try:
            for client in await admin.client_list():  # the command clients' pooled connections
                if not client["name"].endswith((":pub", ":sub")):  # not the link's (nor ours: skipped)
                    await admin.client_kill_filter(_id=client["id"])
            assert await presence.detach("resync-a", "s1", linger=False) is False  # refused: not announced
            assert cluster.bus.ready
        finally:
            await admin.config_set("maxclients", limit)

        async def offline() -> bool:
            return await presence.online(["resync-a"]) == set()

        await wait_until(offline, what="the refused detach re-synced", timeout=5, poll=0.05)
        assert cluster.bus.connections == links  # the link never broke
    finally:
        await admin.aclose()
        await node.node.stop()


async def test_a_detach_while_a_re_sync_is_on_its_way_is_not_undone_by_it(own_redis):
    """A re-sync sends the node's whole view; a detach that reached Redis before it would be
    undone (the user shown online for good). The detach waits for the re-sync instead."""
    node = await start_node(own_redis.url, "pr" + secrets.token_hex(3), "n0")
    try:
        presence: RedisPresence = node.node.sio.presence  # type: ignore[assignment]
        assert await presence.attach("resync-race", "s1") is True
        on_its_way, arrive = asyncio.Event(), asyncio.Event()
        script = presence._resync

        async def slow(**kwargs: Any) -> Any:  # the re-sync's call, held between the node and Redis
            on_its_way.set()
            await arrive.wait()
            return await script(**kwargs)

        presence._resync = slow  # type: ignore[assignment]
        resync = asyncio.create_task(presence.resync())
        await on_its_way.wait()
        detach = asyncio.create_task(presence.detach("resync-race", "s1", linger=False))
        await asyncio.sleep(0.1)
        assert not detach.done()  # it waits for the re-sync
        arrive.set()
        await resync
        assert await detach is True  # the user's last socket: offline, announced once
        assert await presence.online(["resync-race"]) == set()
    finally:
        await node.node.stop()


async def test_a_re_sync_waits_for_sockets_moving_in(own_redis):
    """Sockets moving in from another node (`moves.adopt`): that node moves their entries in
    Redis, then this one takes them into its view. A re-sync that read the view in between
    would drop them (their users reported offline); it waits, and then keeps them."""
    node = await start_node(own_redis.url, "pr" + secrets.token_hex(3), "n0")
    try:
        presence: RedisPresence = node.node.sio.presence  # type: ignore[assignment]
        async with presence.moving_in():
            resync = asyncio.create_task(presence.resync())
            await asyncio.sleep(0.1)
            assert not resync.done()
            presence.take_over([["moved-in", "s9"]])
        await resync
        assert await presence.online(["moved-in"]) == {"moved-in"}
    finally:
        await node.node.stop()
