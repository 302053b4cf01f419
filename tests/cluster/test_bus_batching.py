"""Requests to one inbox published in one loop turn share a PUBLISH (issue 18.3).

Real redis-server, two `Bus` links: what the receiver hears (pushes and the messages in
them, in order) and what each request's future says (how many nodes heard it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from coup.cluster.bus import Bus, channel_bytes
from coup.cluster.options import ClusterOptions
from tests.cluster.conftest import RedisServer
from tests.waiting import eventually


@pytest_asyncio.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[tuple[Bus, Bus, list[bytes]]]:
    options = ClusterOptions(prefix="batching")
    heard: list[bytes] = []
    receiver = Bus(redis_server.url, "rx", options, lambda channel, data: heard.append(data))
    sender = Bus(redis_server.url, "tx", options, lambda channel, data: None)
    await receiver.start(wait=5)
    await sender.start(wait=5)
    assert receiver.ready and sender.ready
    try:
        yield sender, receiver, heard
    finally:
        await sender.stop()
        await receiver.stop()


@pytest.mark.asyncio
async def test_requests_to_one_inbox_in_one_turn_travel_in_one_push_in_order(
        links: tuple[Bus, Bus, list[bytes]]) -> None:
    sender, receiver, heard = links
    pushes = receiver.stats["received"]
    inbox = receiver.inbox
    first = sender.publish(inbox, b"J1")
    sender.publish_nowait(inbox, b"J2")
    third = sender.publish(inbox, b"J3")
    counts = await asyncio.gather(first, third)
    assert counts == [1, 1]  # each request learns how many nodes heard it
    await eventually(lambda: len(heard) == 3)
    assert heard == [b"J1", b"J2", b"J3"]
    assert receiver.stats["received"] - pushes == 1


@pytest.mark.asyncio
async def test_a_request_given_up_leaves_the_others_of_its_publish_answered(
        links: tuple[Bus, Bus, list[bytes]]) -> None:
    sender, receiver, heard = links
    inbox = receiver.inbox
    given_up = sender.publish(inbox, b"Ja")
    kept = sender.publish(inbox, b"Jb")
    given_up.cancel()
    assert await kept == 1
    await eventually(lambda: heard == [b"Ja", b"Jb"])  # a request already queued still goes out


@pytest.mark.asyncio
async def test_requests_to_a_channel_nobody_hears_are_told_so(links: tuple[Bus, Bus, list[bytes]]) -> None:
    sender, _, _ = links
    nobody = channel_bytes("batching:n:gone")
    assert await asyncio.gather(sender.publish(nobody, b"J1"), sender.publish(nobody, b"J2")) == [0, 0]


@pytest.mark.asyncio
async def test_a_transaction_batches_only_messages_for_one_channel_in_a_row(
        links: tuple[Bus, Bus, list[bytes]]) -> None:
    """A loop turn's transaction: consecutive messages for one channel travel as one PUBLISH,
    none is reordered across channels, and its other commands run too."""
    sender, receiver, heard = links
    a, b = channel_bytes("batching:r:a"), channel_bytes("batching:r:b")
    await receiver.acquire([a, b])
    await sender.command("DEL", "batching:list")
    for channels, expected_pushes in (([a, b, a], 3), ([a, a, b, a, a], 3)):
        pushes = receiver.stats["received"]
        heard.clear()
        tx = sender.open_transaction()
        assert tx is not None
        for i, channel in enumerate(channels):
            tx.publish(channel, b"J%d" % i)
        count = len(channels)
        tx.command("RPUSH", "batching:list", str(count))
        await eventually(lambda count=count: len(heard) == count)
        assert heard == [b"J%d" % i for i in range(len(channels))]
        assert receiver.stats["received"] - pushes == expected_pushes
        await eventually(tx.done)  # its EXEC reply comes on the other connection than the pushes
    assert await sender.command("LRANGE", "batching:list", 0, -1) == [b"3", b"5"]
