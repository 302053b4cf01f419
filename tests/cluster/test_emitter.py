"""The emitter: a process that is not a node pushes events through Redis to sockets on any node."""

from __future__ import annotations

import asyncio

import pytest

from coup.emitter import Emitter
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def emitter_for(nodes) -> Emitter:
    cluster = nodes[0].node.cluster
    return Emitter(cluster.url, prefix=cluster.options.prefix, log_groups=cluster.options.log_groups).of(NAMESPACE)


async def emitter_quiet(emitter: Emitter, *watched) -> None:
    """The emitter sends a marker to everyone; once `watched` have it, whatever it sent before has
    arrived (one Redis connection publishes in order, and each node delivers in arrival order)."""
    await asyncio.to_thread(emitter.emit, "marker", "quiet")
    for peer in watched:
        await wait_until(lambda p=peer: "quiet" in p.events["marker"], what="the emitter's marker")


async def test_emit_to_a_user_room_reaches_that_user_on_any_node(redis_nodes, peers):
    alice = await peers("alice").connect(redis_nodes[1].url)
    bob = await peers("bob").connect(redis_nodes[2].url)
    emitter = emitter_for(redis_nodes)
    try:
        heard = await asyncio.to_thread(emitter.to("user:alice").emit, "notification", {"id": 7, "message": "hi"})
        assert heard == 1  # only the node with a member of user:alice received it
        assert await alice.wait_for("notification") == [{"id": 7, "message": "hi"}]
        await emitter_quiet(emitter, bob)
        assert bob.events["notification"] == []
    finally:
        emitter.close()


async def test_rooms_exclusions_namespace_wide_and_binary(redis_nodes, peers):
    members = [await peers(f"u{i}").connect(redis_nodes[i].url) for i in range(3)]
    for peer in members:
        await peer.call("join", {"room": "r"})
    await members[2].call("join", {"room": "quiet"})
    emitter = emitter_for(redis_nodes)
    try:
        await asyncio.to_thread(emitter.to("r").except_("quiet").emit, "news", 1)
        await asyncio.to_thread(emitter.emit, "all", 2)
        await asyncio.to_thread(emitter.to("r", "quiet").emit, "once", 3)
        await asyncio.to_thread(emitter.to("user:u0").emit, "blob", b"\x00\x01binary")
        for peer in members:
            await peer.wait_for("all")
            await peer.wait_for("once")
        await members[0].wait_for("blob")
        await members[1].wait_for("news")
        await emitter_quiet(emitter, *members)
        assert members[2].events["news"] == []
        assert all(len(p.events["once"]) == 1 for p in members)  # two rooms, one delivery
        assert members[0].events["blob"] == [b"\x00\x01binary"]
        with pytest.raises(ValueError):
            emitter.emit("connect")
    finally:
        emitter.close()


async def test_remote_join_leave_and_disconnect(redis_nodes, peers):
    carol = await peers("carol").connect(redis_nodes[2].url)
    watcher = await peers("w").connect(redis_nodes[0].url)
    emitter = emitter_for(redis_nodes)
    try:
        await asyncio.to_thread(emitter.to("user:carol").sockets_join, "vip")
        found: list = []

        async def carol_in_vip() -> bool:
            found[:] = await watcher.call("fetch", {"room": "vip"})
            return [s["user"] for s in found] == ["carol"]

        await wait_until(carol_in_vip, what="carol in vip")
        await asyncio.to_thread(emitter.to("vip").emit, "vip-news", 1)
        await carol.wait_for("vip-news")
        await asyncio.to_thread(emitter.to("user:carol").disconnect_sockets)
        await wait_until(lambda: not carol.sio.connected, what="carol disconnected")
    finally:
        emitter.close()
