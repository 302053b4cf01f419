"""A room whose owner died (its inbox unheard, not reaped yet) keeps one writer: every caller
sends its commands to the owner of the ring without the dead node, the one all nodes agree on
after the reap. When each caller ran such a command itself, a crashed owner's room had as many
writers as nodes until the reap, and its clients got `seq` out of order (issue 12)."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Node

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

ROOM = "unheard-room"


async def crash(node: Node) -> None:
    """As a SIGKILL looks to the others until the reap: no heartbeat, nobody on its inbox."""
    cluster = node.node.cluster
    assert cluster is not None
    await cluster.registry.stop()
    await cluster.bus.stop()


async def test_commands_for_a_dead_owners_room_run_on_one_successor(redis_nodes, peers):
    registry = redis_nodes[0].node.cluster.registry
    owner_id = registry.owner(ROOM)
    dead = next(n for n in redis_nodes if n.node.cluster.node_id == owner_id)
    survivors = [n for n in redis_nodes if n is not dead]
    successor = registry.ring.without(frozenset({owner_id})).owner(ROOM)
    assert successor in {n.node.cluster.node_id for n in survivors}
    callers = []
    for node in survivors:
        peer = await peers(f"caller-on-{node.node.cluster.node_id}").connect(node.url)
        await peer.call("join", {"room": ROOM})
        callers.append(peer)
    for node in survivors:  # nobody reaps the dead node during the test: its room stays unheard
        await node.node.cluster.registry.stop()
    await crash(dead)
    replies = [await caller.call("say", {"room": ROOM, "text": f"t{i}"}) for i in range(2) for caller in callers]
    assert {r["owner"] for r in replies} == {successor}
    seqs = [r["seq"] for r in replies]
    assert seqs == sorted(seqs)
