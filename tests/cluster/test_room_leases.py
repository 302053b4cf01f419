"""A room is owned by the node that first needed it (its lease in Redis), not by the ring
(issue 18.3: small-room chat then costs 2.0 Redis pushes per message instead of 3 - 2/N).

Real redis-server, three in-process nodes, clients on chosen nodes; `say` answers with the
node that ran it and the room's `seq`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from coup.cluster import leases
from tests.cluster.conftest import Node, start_node, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def node_id(node: Node) -> str:
    return node.node.sio.node_id


def room_owned_by_ring(node: Node) -> str:
    """A room the ring gives to `node` (so a lease held by another node shows)."""
    registry = node.node.cluster.registry  # type: ignore[union-attr]
    return next(r for r in (f"leased-{i}" for i in range(1000)) if registry.owner(r) == node_id(node))


async def room_held_by_old_and_known_elsewhere(nodes: list[Node], peers: Any) -> tuple[str, Any, Any]:
    """(room, a member on nodes[0], a member on nodes[1]): nodes[0] holds the room's lease and
    nodes[1] knows it (its member's command went there)."""
    old, caller, _ = nodes
    room = room_owned_by_ring(caller)
    first = await peers("first").connect(old.url)
    asker = await peers("asker").connect(caller.url)
    for peer in (first, asker):
        await peer.call("join", {"room": room})
    assert (await first.call("say", {"room": room}))["owner"] == node_id(old)
    assert (await asker.call("say", {"room": room}))["owner"] == node_id(old)
    return room, first, asker


async def test_a_rooms_commands_run_on_the_node_of_its_first_caller(redis_nodes, peers):
    ring_owner, first, other = redis_nodes
    room = room_owned_by_ring(ring_owner)
    alice = await peers("alice").connect(first.url)
    bob = await peers("bob").connect(first.url)
    carol = await peers("carol").connect(other.url)
    for peer in (alice, bob, carol):
        await peer.call("join", {"room": room})
    replies = [await alice.call("say", {"room": room, "text": "hi"}), await bob.call("say", {"room": room}),
               await carol.call("say", {"room": room})]
    assert [r["owner"] for r in replies] == [node_id(first)] * 3
    assert [r["seq"] for r in replies] == sorted(r["seq"] for r in replies)
    # the members on the holder's node cost no request to another node's inbox
    assert first.node.cluster.rooms.stats["remote"] == 0  # type: ignore[union-attr]
    assert await first.node.cluster.rooms.current_owner(room) == node_id(first)  # type: ignore[union-attr]


async def test_a_draining_holders_room_goes_to_the_first_node_that_needs_it(redis_nodes, peers):
    """Not to the ring's owner: through a rolling restart a room stays with a member's node."""
    holder, ring_owner, third = redis_nodes
    room, _, asker = await room_held_by_old_and_known_elsewhere(redis_nodes, peers)
    late = await peers("late").connect(third.url)
    await late.call("join", {"room": room})
    before = await asker.call("say", {"room": room})
    await holder.node.cluster.drain(5.0)  # type: ignore[union-attr]
    await wait_until(lambda: all(node_id(holder) in n.node.cluster.registry.ring.draining  # type: ignore[union-attr]
                                 for n in redis_nodes), what="every node seeing the holder drain")
    after = [await late.call("say", {"room": room}), await asker.call("say", {"room": room}),
             await late.call("say", {"room": room})]
    assert {r["owner"] for r in after} == {node_id(third)}
    assert [before["seq"]] + [r["seq"] for r in after] == sorted([before["seq"]] + [r["seq"] for r in after])
    cluster = ring_owner.node.cluster
    assert cluster is not None
    assert await cluster.redis.get(cluster.options.spread("lease", room)) == node_id(third).encode()


async def test_nodes_that_need_a_draining_holders_room_at_once_agree_on_one_owner(redis_nodes, peers):
    holder, _, third = redis_nodes
    room, _, asker = await room_held_by_old_and_known_elsewhere(redis_nodes, peers)
    late = await peers("late").connect(third.url)
    await late.call("join", {"room": room})
    await holder.node.cluster.drain(5.0)  # type: ignore[union-attr]
    await wait_until(lambda: all(node_id(holder) in n.node.cluster.registry.ring.draining  # type: ignore[union-attr]
                                 for n in redis_nodes), what="every node seeing the holder drain")
    raced = await asyncio.gather(*[peer.call("say", {"room": room}) for peer in (late, asker) for _ in range(3)])
    assert len({r["owner"] for r in raced}) == 1
    assert len({r["seq"] for r in raced}) == 6
    orders = [[m["seq"] for m in await peer.wait_for("said", count)][-6:] for peer, count in ((late, 6), (asker, 8))]
    assert orders[0] == orders[1] == sorted(r["seq"] for r in raced)  # one writer: `seq` order everywhere


async def test_a_holder_whose_lease_went_to_another_node_sends_callers_on(redis_nodes, peers, monkeypatch):
    """A lease runs out when its holder ran no command of the room for 3/4 of its TTL; another
    node may take it then, and a caller that still knows the old holder is sent on."""
    monkeypatch.setattr(leases, "RENEW_AFTER", 0.0)  # every command checks its lease
    old, _, new = redis_nodes
    room, first, asker = await room_held_by_old_and_known_elsewhere(redis_nodes, peers)
    cluster = new.node.cluster
    assert cluster is not None
    # as if the lease had expired and `new` had been the next to need the room
    await cluster.redis.set(cluster.options.spread("lease", room), node_id(new))
    reply = await asker.call("say", {"room": room})
    assert reply["owner"] == node_id(new)
    assert (await first.call("say", {"room": room}))["owner"] == node_id(new)
    assert old.node.cluster.leases.stats["lost"] >= 1  # type: ignore[union-attr]


async def test_a_holders_tenure_breaks_when_its_lease_went_elsewhere_and_came_back(redis_nodes, peers, monkeypatch):
    """What an owner keeps about a room (the users present, coup.domain.study_rooms) holds only
    while it holds the lease without a break: in between another node ran the room's commands,
    with no ring change to say so."""
    monkeypatch.setattr(leases, "RENEW_AFTER", 0.0)  # every command checks its lease
    old, _, new = redis_nodes
    room, first, _ = await room_held_by_old_and_known_elsewhere(redis_nodes, peers)
    router = old.node.cluster.rooms  # type: ignore[union-attr]
    held, moves = router.tenure(room), router.moves
    assert (await first.call("say", {"room": room}))["owner"] == node_id(old)
    assert router.tenure(room) == held  # held all along
    key = old.node.cluster.options.spread("lease", room)  # type: ignore[union-attr]
    await old.node.cluster.redis.set(key, node_id(new))  # type: ignore[union-attr]  # it lapsed; `new` took it
    assert (await first.call("say", {"room": room}))["owner"] == node_id(new)
    await old.node.cluster.redis.set(key, node_id(old))  # type: ignore[union-attr]  # and it came back
    router.leases.forget(room)
    assert (await first.call("say", {"room": room}))["owner"] == node_id(old)
    assert router.tenure(room) == router.tenure(room) != held
    assert router.moves == moves  # no ring change said it


async def test_without_leases_the_ring_decides(redis_server, peers):
    prefix = "nl" + secrets.token_hex(3)
    nodes = [await start_node(redis_server.url, prefix, f"n{i}", room_leases=False) for i in range(2)]
    try:
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 2 for n in nodes),  # type: ignore[union-attr]
                         what="both nodes on both rings")
        room = room_owned_by_ring(nodes[0])
        peer = await peers("p").connect(nodes[1].url)
        await peer.call("join", {"room": room})
        assert (await peer.call("say", {"room": room}))["owner"] == "n0"
        cluster = nodes[0].node.cluster
        assert cluster is not None
        assert await cluster.redis.get(cluster.options.spread("lease", room)) is None
    finally:
        for node in nodes:
            await node.node.stop()


async def test_a_node_back_under_its_id_sends_callers_that_remember_its_old_lease_on(redis_nodes, peers):
    """A holder restarted under its id after its rooms went to others (it drained, or died and
    was reaped): callers that remember it as the holder reach it, and it sends them on instead
    of writing the room beside the new holder."""
    old, _, new = redis_nodes
    room, first, asker = await room_held_by_old_and_known_elsewhere(redis_nodes, peers)
    cluster = new.node.cluster
    assert cluster is not None
    await cluster.redis.set(cluster.options.spread("lease", room), node_id(new))  # the lease went on meanwhile
    old.node.cluster.leases.forget_all()  # type: ignore[union-attr]  # a new process knows no lease
    replies = [await asker.call("say", {"room": room}), await first.call("say", {"room": room})]
    assert {r["owner"] for r in replies} == {node_id(new)}
    assert replies[0]["seq"] < replies[1]["seq"]
