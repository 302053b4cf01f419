"""A room keeps one writer while its owner changes (issue 12: `seq` out of order after a crash
and when a node joins).

- Its owner died (inbox unheard, not reaped yet): every caller sends the room's commands to
  the owner of the ring without the dead node, the one all nodes agree on after the reap.
  When each caller ran such a command itself, the room had as many writers as nodes.
- A node joined and owns the room now: before its first command of the room it fences the
  previous owner, which finishes the room's running commands first and answers "moved" after.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from coup.cluster.ring import Ring
from tests.cluster.conftest import Node, RedisServer, start_node, wait_until

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
    # the room's first command comes from the owner's node: it holds the room's lease (and is
    # its ring owner too, so with leases or without the successor is the same)
    first = await peers("caller-on-the-owner").connect(dead.url)
    await first.call("join", {"room": ROOM})
    # while alive, the owner ran the room's commands, and fenced the successor at the first one
    before = await first.call("say", {"room": ROOM, "text": "before"})
    assert before["owner"] == owner_id
    assert (await callers[0].call("say", {"room": ROOM, "text": "before"}))["owner"] == owner_id
    for node in survivors:  # nobody reaps the dead node during the test: its room stays unheard
        await node.node.cluster.registry.stop()
    await crash(dead)
    replies = [await caller.call("say", {"room": ROOM, "text": f"t{i}"}) for i in range(2) for caller in callers]
    assert {r["owner"] for r in replies} == {successor}
    seqs = [before["seq"]] + [r["seq"] for r in replies]
    assert seqs == sorted(seqs)


def room_moving_to(newcomer: str, nodes: list[str]) -> str:
    """A room owned by one of `nodes` until `newcomer` joins them, and by `newcomer` after."""
    before, after = Ring(nodes, 0), Ring([*nodes, newcomer], 0)
    return next(r for r in (f"moving-{i}" for i in range(10_000))
                if after.owner(r) == newcomer and before.owner(r) != newcomer)


async def test_a_node_that_joins_takes_a_room_over_after_its_running_command(redis_server: RedisServer):
    """On the ring alone (`COUP_ROOM_LEASES=0`; with leases a join moves no held room, and the
    ring decides only for rooms whose holder is gone)."""
    prefix = "f" + secrets.token_hex(4)
    room = room_moving_to("n2", ["n0", "n1"])
    events: list[tuple[str, str]] = []
    gate = asyncio.Event()

    def gated(node_id: str) -> Any:
        async def command(_room: str, payload: dict[str, Any]) -> str:
            events.append(("start", payload["tag"]))
            if payload["tag"] == "slow":
                await gate.wait()
            events.append(("end", payload["tag"]))
            return node_id
        return command

    nodes: list[Node] = []
    try:
        for node_id in ("n0", "n1"):
            nodes.append(await start_node(redis_server.url, prefix, node_id, room_leases=False))
        for node in nodes:
            node.node.sio.rooms.register("test.gated", gated(node.node.sio.node_id))
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 2 for n in nodes),
                         what="both nodes on both rings")
        old_owner = nodes[0].node.cluster.registry.owner(room)
        slow = asyncio.ensure_future(nodes[1].node.sio.rooms.call(room, "test.gated", {"tag": "slow"}))
        await wait_until(lambda: ("start", "slow") in events, what="the slow command running on its owner")
        nodes.append(await start_node(redis_server.url, prefix, "n2", room_leases=False))
        newcomer = nodes[2]
        newcomer.node.sio.rooms.register("test.gated", gated("n2"))
        assert newcomer.node.cluster.registry.owner(room) == "n2"
        old = next(n for n in nodes if n.node.sio.node_id == old_owner)
        served = old.node.cluster.rooms.stats["served"]
        fast = asyncio.ensure_future(newcomer.node.sio.rooms.call(room, "test.gated", {"tag": "fast"}))
        await wait_until(lambda: old.node.cluster.rooms.stats["served"] > served or ("start", "fast") in events,
                         what="the old owner asked to let the room go (or the new one running)")
        assert ("start", "fast") not in events, "the new owner ran while the old one still did"
        gate.set()
        assert await slow == old_owner and await fast == "n2"
        assert events == [("start", "slow"), ("end", "slow"), ("start", "fast"), ("end", "fast")]
        # the old owner, asked by a caller whose ring is older, sends it on to the new owner
        reply = await old.node.cluster.rooms.serve({"t": "call", "room": room, "name": "test.gated",
                                                    "p": {"tag": "late"}})
        assert reply == {"ok": False, "moved": True}
    finally:
        gate.set()
        for node in nodes:
            await node.node.stop()
