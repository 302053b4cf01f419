"""Connection state recovery on memory and across nodes: a client may come back on another node."""

from __future__ import annotations

import asyncio

import pytest

from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import quiet, session_stored, wait_until
from tests.cluster.rawclient import RawClient
from tests.gate import Gate

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_a_dropped_client_recovers_on_another_node_with_what_it_missed(nodes, peers):
    sender = await peers("sender").connect(nodes[1].url)
    await sender.call("join", {"room": "r"})
    witness = await peers("witness").connect(nodes[0].url)  # on the node that will hold the session
    client = RawClient()
    try:
        await client.connect(nodes[0].url, {"user": "rc"})
        assert await client.call("join", {"room": "r"}) == {"node": client_node(nodes, 0)}
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
        await wait_until(lambda: client.received("m") == [1], what="first message")
        sid, pid, offset = client.sid, client.pid, client.offset
        assert offset is not None

        await client.drop()
        await session_stored(nodes[0], pid)
        for n in (2, 3):
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": n})
        await sender.call("emit", {"rooms": ["elsewhere"], "event": "m", "data": "not for us"})
        await quiet(nodes[1], witness)  # the node that held the session has heard 2 and 3

        back = RawClient()
        try:
            reply = await back.connect(nodes[2].url, {"user": "rc", "pid": pid, "offset": offset})
            assert reply["sid"] == sid  # recovered: same socket id, rooms restored
            await wait_until(lambda: back.received("m") == [2, 3], what="the missed messages")
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 4})
            await wait_until(lambda: back.received("m") == [2, 3, 4], what="live traffic after recovery")
            found = await sender.call("fetch", {"room": "r"})
            assert sid in [s["id"] for s in found]
        finally:
            await back.close()
    finally:
        await client.close()


@pytest.mark.parametrize("offset", ["999999", "1.2.3.4", "1.2.3", "1.2.3.4.5", "a.b.c.d", "1..2.3", "", "1.2.3.-4"])
async def test_an_unknown_offset_gives_a_fresh_session(nodes, peers, offset):
    """Never given, or of another layout (one number where the nodes have log groups, a vector
    of another length, garbage): a fresh session, and the node serves it."""
    client = RawClient()
    try:
        await client.connect(nodes[0].url, {"user": "rc"})
        await client.call("join", {"room": "r"})
        pid = client.pid
        await client.drop()
        await session_stored(nodes[0], pid)
        back = RawClient()
        try:
            reply = await back.connect(nodes[1].url, {"user": "rc", "pid": pid, "offset": offset})
            assert reply["sid"] != client.sid
            assert await back.call("join", {"room": "r"}) == {"node": client_node(nodes, 1)}
        finally:
            await back.close()
    finally:
        await client.close()


def client_node(nodes, index: int) -> str:
    return nodes[index].node.sio.node_id


@pytest.mark.parametrize("back_to", [0, 2], ids=["same-node", "other-node"])
async def test_broadcasts_during_the_middleware_reach_a_recovering_client(nodes, peers, back_to):
    """The middleware of the node it comes back to is slow (a token check, a database read);
    what the room gets meanwhile reaches the client once, in order, after its CONNECT reply."""
    gate = Gate()
    for node in {id(n.node): n.node for n in nodes}.values():
        node.sio.of(NAMESPACE).use(gate.middleware)
    sender = await peers("sender").connect(nodes[1].url)
    await sender.call("join", {"room": "r"})
    watcher = await peers("watcher").connect(nodes[back_to].url)  # tells when that node heard a broadcast
    await watcher.call("join", {"room": "r"})
    client = RawClient()
    back = RawClient()
    try:
        await in_room_r_with_a_first_message(client, nodes[0], sender)
        pid, offset = client.pid, client.offset
        await client.drop()
        await session_stored(nodes[0], pid)
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 2})  # missed while away

        gate.close()
        connecting = asyncio.create_task(back.connect(nodes[back_to].url, {"user": "rc", "pid": pid, "offset": offset}))
        await asyncio.wait_for(gate.entered.wait(), 5)
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})  # while the middleware waits
        await watcher.wait_for("m", 3)
        gate.open()
        reply = await connecting
        assert reply["sid"] == client.sid
        await wait_until(lambda: back.received("m") == [2, 3], what="the missed messages")
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 4})
        await wait_until(lambda: back.received("m") == [2, 3, 4], what="live traffic after recovery")
        await quiet(nodes[0], back)  # nothing comes twice: not from the node that held the session,
        await quiet(nodes[1], back)  # nor from the sender's
        assert back.transcript[0] == "connect"
        assert back.received("m") == [2, 3, 4]
    finally:
        gate.open()
        await back.close()
        await client.close()


async def test_a_remote_broadcast_during_the_subscription_waits_for_the_connect_reply(redis_nodes, peers,
                                                                                       monkeypatch):
    """A connecting socket is a local member of its rooms while the node subscribes to them in
    Redis; a broadcast heard meanwhile reaches the client after its CONNECT reply, not before."""
    nodes = redis_nodes
    gate = Gate()
    bus = nodes[2].node.cluster.bus
    subscribe = bus.acquire

    async def slow_acquire(channels):
        await subscribe(channels)
        if not any(b":user:" in c for c in channels):  # the other peers' connect handlers join theirs
            await gate.wait()

    monkeypatch.setattr(bus, "acquire", slow_acquire)
    sender = await peers("sender").connect(nodes[1].url)
    watcher = await peers("watcher").connect(nodes[2].url)
    client = RawClient()
    try:
        gate.close()
        connecting = asyncio.create_task(client.connect(nodes[2].url, {"user": "early"}))
        await asyncio.wait_for(gate.entered.wait(), 5)
        await sender.call("emit", {"event": "everyone", "data": 1})  # namespace-wide, from node 1
        await watcher.wait_for("everyone")
        gate.open()
        await connecting
        await wait_until(lambda: client.received("everyone") == [1], what="the broadcast")
        # other peers' user-online broadcasts may come in between, but nothing before the reply
        assert [e for e in client.transcript if e != "user-online"][:2] == ["connect", "everyone"]
    finally:
        gate.open()
        await client.close()


async def test_a_client_the_server_put_out_cannot_restore_its_session(nodes, peers):
    """A kicked socket ("server namespace disconnect") leaves nothing to restore, on any node:
    recovery must not let a removed member back into its rooms."""
    sender = await peers("sender").connect(nodes[1].url)
    client = RawClient()
    back = RawClient()
    try:
        await client.connect(nodes[0].url, {"user": "kicked"})
        await client.call("join", {"room": "r"})
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
        await wait_until(lambda: client.received("m") == [1], what="first message")
        sid, pid, offset = client.sid, client.pid, client.offset
        await sender.call("remote", {"target": sid, "op": "disconnect"})
        deadline = asyncio.get_running_loop().time() + 5
        while sid in [s["id"] for s in await sender.call("fetch", {"room": "r"})]:
            assert asyncio.get_running_loop().time() < deadline, "the kicked socket is still in its room"
        await client.drop()
        reply = await back.connect(nodes[2].url, {"user": "kicked", "pid": pid, "offset": offset})
        assert reply["sid"] != sid  # a fresh session
    finally:
        await back.close()
        await client.close()


async def test_a_draining_node_persists_its_sockets_and_closes_them_recoverably(nodes, peers):
    """What a drain does (issue 12.1): `persist_sockets()`, then close its clients; each comes
    back on another node recovered, with what was broadcast while it was away."""
    sender = await peers("sender").connect(nodes[1].url)
    client = RawClient()
    back = RawClient()
    try:
        await client.connect(nodes[0].url, {"user": "drained"})
        await client.call("join", {"room": "r"})
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
        await wait_until(lambda: client.received("m") == [1], what="first message")
        sid, pid, offset = client.sid, client.pid, client.offset
        nsp = nodes[0].node.sio.of(NAMESPACE)
        assert await nsp.adapter.persist_sockets() == len(nsp.sockets) >= 1
        nsp.sockets[sid].client.close("server shutting down")
        await client.drop()
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 2})
        reply = await back.connect(nodes[2].url, {"user": "drained", "pid": pid, "offset": offset})
        assert reply["sid"] == sid
        await wait_until(lambda: back.received("m") == [2], what="what was sent while it was away")
    finally:
        await back.close()
        await client.close()


async def test_a_client_back_while_its_old_connection_looks_alive_takes_its_session_over(redis_nodes, peers):
    """A request of a client failed through the router (another node died while relaying it):
    the client opens a new connection while its old one is still open on its node. The new one
    gets the session (same socket id, what it missed, its rooms), the old one is closed, and
    the room has the socket once. (Back on another node, the old connection lingers until its
    ping timeout: docs/recovery.md.)"""
    nodes = redis_nodes
    sender = await peers("sender").connect(nodes[1].url)
    await sender.call("join", {"room": "r"})
    client = RawClient()
    back = RawClient()
    try:
        await in_room_r_with_a_first_message(client, nodes[0], sender)
        sid, pid, offset = client.sid, client.pid, client.offset
        await session_stored(nodes[0], pid)  # saved at connect, while the socket lives
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 2})
        await wait_until(lambda: client.received("m") == [1, 2], what="second message, on the old connection")

        reply = await back.connect(nodes[0].url, {"user": "rc", "pid": pid, "offset": offset})
        assert reply["sid"] == sid
        await wait_until(lambda: back.received("m") == [2], what="what the new connection had not seen")
        await wait_until(lambda: client.ws is not None and client.ws.closed, what="the old connection closed")
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})
        await wait_until(lambda: back.received("m") == [2, 3], what="live traffic on the new connection")
        found = await sender.call("fetch", {"room": "r"})
        assert [s["id"] for s in found].count(sid) == 1
        await quiet(nodes[1], back)
        assert back.received("m") == [2, 3] and client.received("m") == [1, 2]
    finally:
        await back.close()
        await client.close()


async def in_room_r_with_a_first_message(client: RawClient, node, sender) -> None:
    """`client` connected to `node`, in room "r", has received `sender`'s message 1."""
    await client.connect(node.url, {"user": "rc"})
    await client.call("join", {"room": "r"})
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
    await wait_until(lambda: client.received("m") == [1], what="first message")
