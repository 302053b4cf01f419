"""One contract, two adapters: every case runs on the in-memory node and on three Redis-linked nodes.

With memory, the three "nodes" are the same process; with Redis, clients are spread over
three nodes, so each case also proves the behaviour holds across nodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.cluster.conftest import Node, Peer, disconnect_handled, quiet, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def spread(nodes: list[Node], peers: Callable[..., Peer], count: int, room: str | None = "r",
                 users: list[str] | None = None) -> list[Peer]:
    """`count` clients, client i on node i % 3, each in `room`."""
    made = []
    for i in range(count):
        peer = await peers(users[i] if users else f"u{i}").connect(nodes[i % len(nodes)].url)
        if room is not None:
            await peer.call("join", {"room": room})
        made.append(peer)
    return made


async def test_room_broadcast_reaches_members_on_every_node_and_nobody_else(nodes, peers):
    members = await spread(nodes, peers, 3)
    outsider = await peers("x").connect(nodes[1].url)
    await members[0].call("emit", {"rooms": ["r"], "event": "news", "data": {"n": 1}})
    for peer in members:
        assert await peer.wait_for("news") == [{"n": 1}]
    await quiet(nodes[0], outsider)
    assert outsider.events["news"] == []


async def test_socket_to_excludes_the_sender_and_except_excludes_a_room(nodes, peers):
    members = await spread(nodes, peers, 3)
    await members[2].call("join", {"room": "quiet"})
    await members[0].call("emit", {"rooms": ["r"], "event": "a", "from_socket": True})
    await members[0].call("emit", {"rooms": ["r"], "except": ["quiet"], "event": "b"})
    await members[1].wait_for("a")
    await members[2].wait_for("a")
    await members[1].wait_for("b")
    await quiet(nodes[0], members[0], members[2])
    assert members[0].events["a"] == []
    assert members[2].events["b"] == []


async def test_namespace_wide_and_multi_room_broadcasts_arrive_once_per_socket(nodes, peers):
    members = await spread(nodes, peers, 3, room="r1")
    for peer in members[:2]:
        await peer.call("join", {"room": "r2"})
    lone = await peers("lone").connect(nodes[2].url)
    await lone.call("join", {"room": "r2"})
    await members[0].call("emit", {"rooms": ["r1", "r2"], "event": "both"})
    await members[0].call("emit", {"event": "everyone"})
    for peer in [*members, lone]:
        await peer.wait_for("both")
        await peer.wait_for("everyone")
    await quiet(nodes[0], *members, lone)  # after every copy of "both" (one per room)
    for peer in [*members, lone]:
        assert len(peer.events["both"]) == 1
        assert len(peer.events["everyone"]) == 1


async def test_messages_of_one_sender_arrive_in_order_everywhere(nodes, peers):
    members = await spread(nodes, peers, 3)
    for i in range(50):
        await members[1].call("emit", {"rooms": ["r"], "event": "n", "data": i})
    for peer in members:
        assert await peer.wait_for("n", 50) == list(range(50))


async def test_a_burst_sent_in_one_loop_turn_arrives_whole_and_in_order(nodes, peers):
    members = await spread(nodes, peers, 3)
    await members[0].call("emit", {"rooms": ["r"], "event": "burst", "times": 200})
    for peer in members:
        assert await peer.wait_for("burst", 200) == list(range(200))
    if nodes[0] is not nodes[1]:  # through Redis, the 200 took a few PUBLISH commands, not 200
        assert nodes[0].node.cluster.bus.stats["published"] < 50


async def test_room_command_runs_on_one_owner_with_consecutive_sequence_numbers(nodes, peers):
    members = await spread(nodes, peers, 3)
    results = await asyncio.gather(*[members[i % 3].call("say", {"room": "r", "text": f"m{i}"}) for i in range(30)])
    assert sorted(r["seq"] for r in results) == list(range(1, 31))
    assert len({r["owner"] for r in results}) == 1
    orders = []
    for peer in members:
        said = await peer.wait_for("said", 30)
        orders.append([m["seq"] for m in said])
    assert orders[0] == list(range(1, 31))
    assert orders[0] == orders[1] == orders[2]


async def test_room_command_refusal_reaches_the_caller_as_an_error(nodes, peers):
    (peer,) = await spread(nodes, peers, 1, room=None)
    reply = await peer.call("say", {"room": "nowhere", "text": "x"})
    assert reply == {"ok": False, "error": {"code": "NOT_IN_ROOM", "message": "join first"}}


async def test_acks_from_members_on_every_node(nodes, peers):
    members = await spread(nodes, peers, 3)
    for i, peer in enumerate(members):
        peer.answer = f"a{i}"
    reply = await members[0].call("ask", {"room": "r", "q": "ready?"})
    assert reply == {"ok": True, "acks": ["a0", "a1", "a2"]}
    assert all(p.acks_given == ["ready?"] for p in members)


async def test_ack_timeout_returns_the_acks_that_came(nodes, peers):
    members = await spread(nodes, peers, 3)
    members[2].answer = None
    reply = await members[0].call("ask", {"room": "r", "q": "?", "timeout": 0.5})
    assert reply == {"ok": False, "acks": ["yes", "yes"]}


async def test_fetch_sockets_lists_members_on_every_node(nodes, peers):
    members = await spread(nodes, peers, 3)
    await peers("not-in-room").connect(nodes[0].url)
    found = await members[0].call("fetch", {"room": "r"})
    assert sorted(s["user"] for s in found) == ["u0", "u1", "u2"]
    assert all("r" in s["rooms"] and "user:" + s["user"] in s["rooms"] for s in found)
    if nodes[0] is not nodes[1]:
        assert sorted(s["node"] for s in found) == ["n0", "n1", "n2"]


async def test_sockets_join_leave_and_disconnect_across_nodes(nodes, peers):
    members = await spread(nodes, peers, 3)
    await members[0].call("remote", {"op": "join", "target": "user:u2", "room": "extra"})
    await members[0].call("emit", {"rooms": ["extra"], "event": "x"})
    await members[2].wait_for("x")
    await members[0].call("remote", {"op": "leave", "target": "user:u2", "room": "extra"})
    await members[0].call("emit", {"rooms": ["extra"], "event": "y"})
    await members[1].call("remote", {"op": "disconnect", "target": "user:u2"})
    await wait_until(lambda: not members[2].sio.connected, what="u2 disconnected")
    # "y" was sent before the disconnect: it came before it on u2's connection, or never will
    assert members[2].events["y"] == []
    assert [s["user"] for s in await members[0].call("fetch", {"room": "r"})] != []
    assert "u2" not in [s["user"] for s in await members[0].call("fetch", {"room": "r"})]


async def test_leaving_a_room_stops_its_traffic(nodes, peers):
    members = await spread(nodes, peers, 3)
    await members[1].call("leave", {"room": "r"})
    await members[0].call("emit", {"rooms": ["r"], "event": "after"})
    await members[2].wait_for("after")
    await quiet(nodes[0], members[1])
    assert members[1].events["after"] == []


async def test_two_tabs_of_one_user_on_two_nodes_make_one_online_and_one_offline(nodes, peers):
    watcher = await peers("watcher").connect(nodes[2].url)
    tab1 = await peers("alice").connect(nodes[0].url)
    tab2 = await peers("alice").connect(nodes[1].url)
    await wait_until(lambda: any(e["user"] == "alice" for e in watcher.events["user-online"]), what="alice online")
    assert await watcher.call("online", {"users": ["alice", "bob", "watcher"]}) == ["alice", "watcher"]
    await disconnect_handled(nodes[0], tab1)
    await quiet(nodes[0], watcher)  # after a user-offline, had the close of tab1 sent one
    assert watcher.events["user-offline"] == []
    assert await watcher.call("online", {"users": ["alice"]}) == ["alice"]
    await disconnect_handled(nodes[1], tab2)
    await watcher.wait_for("user-offline")
    await quiet(nodes[1], watcher)
    await quiet(nodes[0], watcher)
    assert [e["user"] for e in watcher.events["user-online"] if e["user"] == "alice"] == ["alice"]
    assert [e["user"] for e in watcher.events["user-offline"]] == ["alice"]
    assert await watcher.call("online", {"users": ["alice"]}) == []


async def test_long_polling_client_works_on_any_node(nodes, peers):
    member = await peers("ws").connect(nodes[0].url)
    await member.call("join", {"room": "r"})
    poller = await peers("poll").connect(nodes[1].url, transport="polling")
    await poller.call("join", {"room": "r"})
    await member.call("emit", {"rooms": ["r"], "event": "hello", "data": 1})
    assert await poller.wait_for("hello") == [1]
