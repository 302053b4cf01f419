"""A restore's replay and the live pushes it overlaps: each entry reaches the client once.

A node reads the recovery log on its publishing connection and hears the log's pushes on its
subscribing one. Redis sends an entry's push before the read's reply when the entry was
logged first, but the two sockets are read independently: the reply can be handled first.
The restored socket then got the entry in its replay and, once its hold was released, live
again (the paas crash test saw one chat message twice). Here the push is made late for sure:
the node stops reading its subscriptions from before the entry is logged until after the read
is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import Node, quiet, session_stored, wait_until
from tests.cluster.rawclient import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

#: how long the late node's subscriptions stay unread once the read went out (its answer is
#: in well before: without the barrier the replay is out by then)
PAUSE = 0.5


@contextlib.contextmanager
def subscriptions_unread(node: Node) -> Iterator[None]:
    """`node` reads none of its subscribing connections meanwhile (Redis's pushes wait)."""
    bus: Any = node.node.cluster.bus  # type: ignore[union-attr]
    connections = [bus._sub] if not bus._shards else [sub for _, sub in bus._shards.values()]
    transports: list[asyncio.Transport] = [c._transport for c in connections]
    for transport in transports:
        transport.pause_reading()
    try:
        yield
    finally:
        for transport in transports:
            transport.resume_reading()


async def away_with_one_missed(node: Node, client: RawClient, sender: Any) -> tuple[str, str | None]:
    """`client` on `node` in room r gets message 1, drops, and misses 2: its pid and offset."""
    await client.connect(node.url, {"user": "rc"})
    await client.call("join", {"room": "r"})
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
    await wait_until(lambda: client.received("m") == [1], what="first message")
    pid, offset = client.pid, client.offset
    await client.drop()
    await session_stored(node, pid)
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 2})  # missed while away
    return pid, offset


async def recovers_once(node: Node, back: RawClient, client: RawClient, sender: Any, pid: str,
                        offset: str | None) -> None:
    """`client`'s session comes back to `node` as `back`: recovered, with messages 2 and 3
    (missed, and logged during the restore or a failed attempt) once each, then live traffic."""
    reply = await back.connect(node.url, {"user": "rc", "pid": pid, "offset": offset})
    assert reply["sid"] == client.sid  # recovered
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 4})
    await wait_until(lambda: 4 in back.received("m"), what="live traffic after recovery")
    await quiet(node, back)
    assert back.received("m") == [2, 3, 4]


@pytest.mark.parametrize("sent_from", [1, 2], ids=["another-node", "the-restoring-node"])
async def test_an_entry_logged_during_the_restore_reaches_the_client_once(redis_nodes, peers, monkeypatch,
                                                                          sent_from):
    """From another node the live copy is decoded from the push; from the node the client
    comes back to, it is the broadcast the node kept (`coup.cluster.own_broadcasts`): either
    way it names the replayed one's entry (its text with one log; with log groups the texts
    differ and the hold compares (group, offset)), which is how the hold drops it."""
    nodes = redis_nodes
    sender = await peers("sender").connect(nodes[sent_from].url)
    await sender.call("join", {"room": "r"})
    witness = await peers("witness").connect(nodes[0].url)  # hears what Redis pushed to every node
    await witness.call("join", {"room": "r"})
    client, back = RawClient(), RawClient()
    log: Any = nodes[2].node.sio.of(NAMESPACE).adapter.recovery_log
    read = log.after

    async def read_while_the_push_is_late(offset: str, check_only: bool = False, **rooms: Any) -> Any:
        if check_only:  # the restore's first look, before the socket joins its rooms
            return await read(offset, check_only)
        with subscriptions_unread(nodes[2]):
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})
            await witness.wait_for("m", 3)  # logged and pushed, to node 2 too (unread there)
            reading = asyncio.ensure_future(read(offset, check_only, **rooms))
            await asyncio.wait({reading}, timeout=PAUSE)
        return await reading

    try:
        pid, offset = await away_with_one_missed(nodes[0], client, sender)

        monkeypatch.setattr(log, "after", read_while_the_push_is_late)
        await recovers_once(nodes[2], back, client, sender, pid, offset)
    finally:
        await back.close()
        await client.close()


async def test_a_restore_whose_pushes_are_not_heard_in_time_is_closed_and_the_next_one_recovers(
        redis_nodes, peers, monkeypatch):
    """The replay waits for the node to hear its marker; when it does not within the probe
    timeout (the subscriptions stalled), that attempt is closed with nothing delivered (its
    socket had joined its rooms already); the session record is still there, so the client's
    next attempt with the same pid and offset, the node hearing Redis again, recovers with
    what it missed: nothing partial, nothing twice."""
    nodes = redis_nodes
    sender = await peers("sender").connect(nodes[1].url)
    await sender.call("join", {"room": "r"})
    client, deaf, back = RawClient(), RawClient(), RawClient()
    log: Any = nodes[2].node.sio.of(NAMESPACE).adapter.recovery_log
    monkeypatch.setattr(log, "options", dataclasses.replace(log.options, probe_timeout=0.3))
    read = log.after

    async def read_while_deaf(offset: str, check_only: bool = False, **rooms: Any) -> Any:
        if check_only:
            return await read(offset, check_only)
        with subscriptions_unread(nodes[2]):
            # logged after the restore's first look: with log groups that look heard the log's
            # head already, so only an entry past it makes the replay wait for its marker
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})
            return await read(offset, check_only, **rooms)  # its marker cannot be heard: it gives up

    try:
        pid, offset = await away_with_one_missed(nodes[0], client, sender)

        monkeypatch.setattr(log, "after", read_while_deaf)
        attempt = asyncio.ensure_future(deaf.connect(nodes[2].url, {"user": "rc", "pid": pid, "offset": offset}))
        await wait_until(lambda: deaf.ws is not None and deaf.ws.closed, what="the deaf attempt closed")
        attempt.cancel()
        assert deaf.transcript == []  # no CONNECT, nothing replayed
        monkeypatch.setattr(log, "after", read)
        await recovers_once(nodes[2], back, client, sender, pid, offset)
    finally:
        await back.close()
        await deaf.close()
        await client.close()


async def test_a_restore_whose_link_breaks_while_it_waits_is_closed_and_the_next_one_recovers(
        redis_nodes, peers, monkeypatch):
    """The link to Redis breaks while the replay waits for its marker (the probe timeout is far
    off): the marker fails at once with the link, that attempt is closed with nothing delivered,
    and once the node's link is back the client's next attempt recovers exactly what it missed."""
    nodes = redis_nodes
    sender = await peers("sender").connect(nodes[1].url)
    await sender.call("join", {"room": "r"})
    client, cut, back = RawClient(), RawClient(), RawClient()
    log: Any = nodes[2].node.sio.of(NAMESPACE).adapter.recovery_log
    monkeypatch.setattr(log, "options", dataclasses.replace(log.options, probe_timeout=30.0))
    bus: Any = nodes[2].node.cluster.bus  # type: ignore[union-attr]
    read = log.after

    async def read_and_break(offset: str, check_only: bool = False, **rooms: Any) -> Any:
        if check_only:
            return await read(offset, check_only)
        with subscriptions_unread(nodes[2]):
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})
            reading = asyncio.ensure_future(read(offset, check_only, **rooms))
            await asyncio.wait({reading}, timeout=PAUSE)
            assert not reading.done()  # waiting for its marker
            subscribed = [bus._sub] if not bus._shards else [sub for _, sub in bus._shards.values()]
            for connection in subscribed:
                connection._transport.abort()  # the link breaks under the waiting replay
            return await reading

    try:
        pid, offset = await away_with_one_missed(nodes[0], client, sender)

        monkeypatch.setattr(log, "after", read_and_break)
        attempt = asyncio.ensure_future(cut.connect(nodes[2].url, {"user": "rc", "pid": pid, "offset": offset}))
        # well before the 30 s probe timeout: the broken link, not the timeout, ended the wait
        await wait_until(lambda: cut.ws is not None and cut.ws.closed, timeout=10, what="the attempt closed")
        attempt.cancel()
        assert cut.transcript == []  # no CONNECT, nothing replayed
        monkeypatch.setattr(log, "after", read)
        await wait_until(lambda: bus.ready, timeout=10, what="the node's link to Redis back")
        await recovers_once(nodes[2], back, client, sender, pid, offset)
    finally:
        await back.close()
        await cut.close()
        await client.close()
