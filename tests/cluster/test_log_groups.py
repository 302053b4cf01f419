"""Recovery log groups: one namespace's rooms over several Redis Cluster slots (and primaries).

With `COUP_RECOVERY_LOG_GROUPS` = G a room's channel and its log sit in the slot of its group
(``{P:NSP:g}``) and a packet's recovery offset is a vector, one offset per group. What must
hold is what holds with one log: a client that comes back, on any node, gets every broadcast
it missed once, in order per room, or a fresh session; never a duplicate, also after a
restore that drops again (its stamps then come from the restoring node) and after stamps of
another node (docs/cluster.md#redis-cluster, "Log groups").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from coup.cluster.options import ClusterOptions
from tests.clients.jsclient import JsClient, node_available
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import (
    CLUSTER_LOG_GROUPS,
    Node,
    Peer,
    RedisClusterSet,
    quiet,
    session_stored,
    start_node,
    wait_until,
)
from tests.cluster.rawclient import RawClient
from tests.cluster.roundrobin import RoundRobinRouter
from tests.cluster.test_recovery_late_push import subscriptions_unread
from tests.cluster.test_redis_cluster import shard_channels
from tests.conftest import require

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


def spread_prefix(cluster: RedisClusterSet) -> str:
    """A key prefix whose log groups of our namespace are not all on one primary."""
    while True:
        prefix = "g" + secrets.token_hex(3)
        options = ClusterOptions(prefix=prefix, sharded=True, log_groups=CLUSTER_LOG_GROUPS)
        owners = {cluster.owner(options.nsp_key("rlog", NAMESPACE, group=g)).port for g in range(CLUSTER_LOG_GROUPS)}
        if len(owners) > 1:
            return prefix


def rooms_of_groups(options: ClusterOptions) -> list[str]:
    """One room name per log group, the room of group g at index g."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < options.groups:
        found.setdefault(options.group_of(f"room{i}"), f"room{i}")
        i += 1
    return [found[g] for g in range(options.groups)]


@pytest_asyncio.fixture
async def spread(shared_redis_cluster: RedisClusterSet) -> AsyncIterator[tuple[list[Node], ClusterOptions]]:
    """Three nodes on the Redis Cluster, their namespace's log groups on several primaries."""
    prefix = spread_prefix(shared_redis_cluster)
    nodes: list[Node] = []
    try:
        for i in range(3):
            nodes.append(await start_node(shared_redis_cluster.url, prefix, f"n{i}"))
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 3  # type: ignore[union-attr]
                                     for n in nodes), what="every node on every ring")
        yield nodes, ClusterOptions(prefix=prefix, sharded=True, log_groups=CLUSTER_LOG_GROUPS)
    finally:
        for node in nodes:
            await node.node.stop()


async def test_rooms_of_one_namespace_land_on_several_primaries(spread, shared_redis_cluster, peers):
    """Each room's channel is a shard channel on the primary of its group's slot, next to
    that group's log; the groups' logs are on more than one primary."""
    nodes, options = spread
    rooms = rooms_of_groups(options)
    sender = await peers("sender").connect(nodes[1].url)
    members = []
    for i, room in enumerate(rooms):
        member = await peers(f"m{i}").connect(nodes[i % 3].url)
        await member.call("join", {"room": room})
        members.append(member)
    for room in rooms:
        await sender.call("emit", {"rooms": [room], "event": "m", "data": room})
    for member, room in zip(members, rooms, strict=True):
        assert await member.wait_for("m") == [room]
    holders = set()
    for g, room in enumerate(rooms):
        channel = options.nsp_key("r", NAMESPACE, room, group=g)
        log = options.nsp_key("rlog", NAMESPACE, group=g)
        home = shared_redis_cluster.owner(log)
        assert home is shared_redis_cluster.owner(channel)
        assert channel in shard_channels(home, options.prefix)
        assert home.cli("LLEN", log) != "0"  # the broadcast to the room is in its group's log
        holders.add(home.port)
    assert len(holders) > 1


async def send_to_groups(sender: Peer, rooms: list[str], tag: str) -> list[Any]:
    """One broadcast to each room, one to two rooms of different groups, one namespace-wide:
    what a client in all of `rooms` must get, in this order."""
    sent = []
    for room in rooms:
        await sender.call("emit", {"rooms": [room], "event": "m", "data": f"{tag}-{room}"})
        sent.append(f"{tag}-{room}")
    await sender.call("emit", {"rooms": rooms[:2], "event": "m", "data": f"{tag}-both"})
    await sender.call("emit", {"rooms": [], "event": "m", "data": f"{tag}-all"})
    return [*sent, f"{tag}-both", f"{tag}-all"]


def per_room(received: list[Any], rooms: list[str]) -> dict[str, list[Any]]:
    """What a client got, split by room (the order only holds per room, i.e. per group)."""
    return {room: [m for m in received if str(m).endswith("-" + room)] for room in rooms}


async def test_a_client_in_rooms_of_several_groups_recovers_on_other_nodes_exactly_once(spread, peers):
    """Rooms in three groups; away twice: back on another node, then (stamped by that node)
    away again and back on a third: each missed broadcast once, in order per room."""
    nodes, options = spread
    rooms = rooms_of_groups(options)[1:]  # groups 1.. : the namespace-wide ones are in group 0
    sender = await peers("sender").connect(nodes[1].url)
    client = RawClient()
    backs: list[RawClient] = []
    try:
        await client.connect(nodes[0].url, {"user": "rc"})
        for room in rooms:
            await client.call("join", {"room": room})
        first = await send_to_groups(sender, rooms, "a")
        await wait_until(lambda: sorted(map(str, client.received("m"))) == sorted(first), what="the first round")
        assert client.offset is not None and client.offset.count(".") == CLUSTER_LOG_GROUPS - 1
        pid, offset = client.pid, client.offset
        await client.drop()
        await session_stored(nodes[0], pid)

        for round_, (to, tag) in enumerate([(2, "b"), (1, "c")]):
            missed = await send_to_groups(sender, rooms, tag)
            await quiet(nodes[1])
            back = RawClient()
            backs.append(back)
            reply = await back.connect(nodes[to].url, {"user": "rc", "pid": pid, "offset": offset})
            assert reply["sid"] == client.sid, f"round {round_}: not recovered"
            await wait_until(lambda b=back, m=missed: len(b.received("m")) >= len(m), what="the missed broadcasts")
            live = f"{tag}-live"
            await sender.call("emit", {"rooms": rooms[:1], "event": "m", "data": live})
            await wait_until(lambda b=back, live=live: live in b.received("m"), what="live traffic after the restore")
            await quiet(nodes[1], back)
            got = [m for m in back.received("m") if m != live]
            assert sorted(got) == sorted(missed), f"round {round_}: {got}"  # each once, nothing else
            assert per_room(got, rooms) == per_room(missed, rooms)  # in order per room
            assert back.offset is not None
            pid, offset = back.pid, back.offset
            await back.drop()
            await session_stored(nodes[to], pid)
    finally:
        for back in backs:
            await back.close()
        await client.close()


async def test_entries_of_two_groups_logged_during_the_restore_reach_the_client_once(spread, peers, monkeypatch):
    """The restoring node hears nothing while the replay reads two groups' logs, and entries
    are logged in both meanwhile: the replay waits for both groups' markers, and the late live
    copies are dropped by their (group, offset), not delivered a second time."""
    nodes, options = spread
    rooms = rooms_of_groups(options)[1:3]
    sender = await peers("sender").connect(nodes[1].url)
    witness = await peers("witness").connect(nodes[0].url)
    for room in rooms:
        await witness.call("join", {"room": room})
    client, back = RawClient(), RawClient()
    log: Any = nodes[2].node.sio.of(NAMESPACE).adapter.recovery_log
    read = log.after

    async def read_while_the_pushes_are_late(offset: str, check_only: bool = False, **rooms_: Any) -> Any:
        if check_only:
            return await read(offset, check_only)
        with subscriptions_unread(nodes[2]):
            for room in rooms:
                await sender.call("emit", {"rooms": [room], "event": "m", "data": f"late-{room}"})
            await witness.wait_for("m", 4)  # logged and pushed, to node 2 too (unread there)
            reading = asyncio.ensure_future(read(offset, check_only, **rooms_))
            await asyncio.wait({reading}, timeout=0.5)
        return await reading

    try:
        await client.connect(nodes[0].url, {"user": "rc"})
        for room in rooms:
            await client.call("join", {"room": room})
        for room in rooms:
            await sender.call("emit", {"rooms": [room], "event": "m", "data": f"before-{room}"})
        await wait_until(lambda: len(client.received("m")) == 2, what="the first messages")
        pid, offset = client.pid, client.offset
        await client.drop()
        await session_stored(nodes[0], pid)
        monkeypatch.setattr(log, "after", read_while_the_pushes_are_late)
        reply = await back.connect(nodes[2].url, {"user": "rc", "pid": pid, "offset": offset})
        assert reply["sid"] == client.sid
        await sender.call("emit", {"rooms": rooms, "event": "m", "data": "live"})
        await wait_until(lambda: "live" in back.received("m"), what="live traffic after recovery")
        await quiet(nodes[2], back)
        assert sorted(back.received("m")) == sorted([f"late-{room}" for room in rooms] + ["live"])
    finally:
        await back.close()
        await client.close()


def non_decreasing(stamps: list[str]) -> bool:
    """Each stamp at least the one before, group by group: a lower one would make the next
    restore replay what the client already has."""
    vectors = [tuple(int(p) for p in stamp.split(".")) for stamp in stamps]
    return all(all(b >= a for a, b in zip(x, y, strict=True)) for x, y in itertools.pairwise(vectors))


async def test_a_session_that_moved_between_nodes_and_drops_gets_every_broadcast_once(spread, peers):
    """The stock client opens on polling and upgrades on another node (the session moves
    there, `coup.cluster.moves`), then its transport is cut and it recovers through the
    router (on whichever node, moving again): a stream of broadcasts to rooms of two groups
    meanwhile reaches it once each, in order per room, and its offsets never go down."""
    require(node_available(), "node and npm socket.io-client (npm ci --prefix tests/js)")
    nodes, options = spread
    rooms = rooms_of_groups(options)[1:3]
    sender = await peers("sender").connect(nodes[1].url)
    router = RoundRobinRouter({n.node.sio.node_id: n.url for n in nodes})
    await router.start()
    js = await JsClient.start()
    stop = asyncio.Event()
    sent = {room: 0 for room in rooms}

    async def stream() -> None:
        while not stop.is_set():
            for room in rooms:
                await sender.call("emit", {"rooms": [room], "event": "tick", "data": [room, sent[room]]})
                sent[room] += 1
            await asyncio.sleep(0.01)

    streamer: asyncio.Task[None] | None = None
    try:
        connected = await js.connect("a", router.url, namespace=NAMESPACE, auth={"user": "js"},
                                     reconnectionDelay=100, randomizationFactor=0)
        assert connected["type"] == "connect"
        for room in rooms:
            assert await js.emit_with_ack("a", "join", {"room": room}) != []
        streamer = asyncio.create_task(stream())
        assert (await js.expect("upgrade", timeout=10))["transport"] == "websocket"
        await wait_until(lambda: len(js.events("a", "tick")) >= 20, timeout=10, what="ticks after the upgrade")
        await js.command("drop", socket="a")
        again = await js.expect(lambda r: r["type"] == "connect" and r.get("socket") == "a" and r is not connected,
                                timeout=15)
        assert again["recovered"], again
        await wait_until(lambda: len(js.events("a", "tick")) >= 60, timeout=15, what="ticks after the recovery")
        stop.set()
        await streamer
        for room in rooms:
            await sender.call("emit", {"rooms": [room], "event": "tick", "data": [room, "end"]})
        await wait_until(lambda: sum(e["args"][0][1] == "end" for e in js.events("a", "tick")) == len(rooms),
                         timeout=10, what="the last ticks")
        ticks = [e["args"] for e in js.events("a", "tick")]
        for room in rooms:
            got = [data[1] for data, *_ in ticks if data[0] == room][:-1]
            # from its first tick on (it joined mid-stream), every one exactly once and in order
            assert got == list(range(got[0], sent[room])), (room, got)
        stamps = [args[-1] for args in ticks if len(args) > 1]
        assert stamps and non_decreasing(stamps), stamps
    finally:
        stop.set()
        if streamer is not None:
            with contextlib.suppress(Exception):
                await streamer
        await js.close()
        await router.stop()


async def test_a_group_this_node_never_hears_does_not_keep_its_clients_from_restoring(shared_redis_cluster, peers):
    """Node 0 has no member in group 2's rooms, so it hears none of that log's pushes; its
    offset of group 2 (in every stamp it gives) must still move on, or once group 2's log
    trimmed past it (here: entries older than a 2 s window) its clients could not restore."""
    prefix = spread_prefix(shared_redis_cluster)
    options = ClusterOptions(prefix=prefix, sharded=True, log_groups=CLUSTER_LOG_GROUPS)
    quiet_room, busy_room = rooms_of_groups(options)[1:3]
    nodes = [await start_node(shared_redis_cluster.url, prefix, f"n{i}", recovery_window=2.0) for i in range(3)]
    client, back = RawClient(), RawClient()
    try:
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == 3  # type: ignore[union-attr]
                                     for n in nodes), what="every node on every ring")
        busy = await peers("busy").connect(nodes[1].url)
        await busy.call("join", {"room": busy_room})
        await client.connect(nodes[0].url, {"user": "rc"})
        await client.call("join", {"room": quiet_room})
        for round_ in range(2):  # the first round's entries are past the window when the second is logged
            await busy.call("emit", {"rooms": [busy_room], "event": "b", "times": 40})
            await busy.wait_for("b", 40 * (round_ + 1))
            if round_ == 0:
                await asyncio.sleep(2.5)
        log = options.nsp_key("rlog", NAMESPACE, group=2)
        assert int(shared_redis_cluster.owner(log).cli("LLEN", log)) < 80  # trimmed by age
        await busy.call("emit", {"rooms": [quiet_room], "event": "m", "data": 1})
        await wait_until(lambda: client.received("m") == [1], what="a message in the quiet room")
        pid, offset = client.pid, client.offset
        await client.drop()
        await session_stored(nodes[0], pid)
        reply = await back.connect(nodes[2].url, {"user": "rc", "pid": pid, "offset": offset})
        assert reply["sid"] == client.sid  # recovered
    finally:
        await back.close()
        await client.close()
        for node in nodes:
            await node.node.stop()
