"""A room numbers its next message before the last one committed (coup/domain/study_rooms.py
`_Line`, coup/domain/writer.py `Numbering`): several messages of one room in flight, with
`seq` still gap-free and broadcast in order when one of them is refused.

Failures are the database's own (a trigger refusing "boom" messages; a clientMessageId
stored before). The messages queue for real: a second connection holds the write lock while
one room's messages, from several sockets, are numbered behind the first batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.domain.support import Client, ClientFactory, DomainNode, boom_refused
from tests.domain.test_group_commit import write_lock
from tests.domain.test_messages import stored_messages
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def queued_in_one_room(node: DomainNode, url: str, first: Client,
                             sends: list[tuple[Client, dict[str, Any]]]) -> list[Any]:
    """`first`'s message to study 1 waits on a held write lock; `sends` (to study 1 too) are
    numbered behind it one by one, in this order, while nothing is acked; then the lock goes.
    Returns the acks of `sends`, then `first`'s."""
    writer = node.domain.rooms.messages
    with write_lock(url):
        blocked = asyncio.ensure_future(first.call("message", {"studyId": 1, "content": "first"}))
        await eventually(lambda: writer.writing == 1, "the first batch started")
        pending = []
        for n, (client, payload) in enumerate(sends, start=1):
            pending.append(asyncio.ensure_future(client.call("message", {"studyId": 1, **payload})))
            # numbered while the room's earlier messages are not committed: the room is not held
            await eventually(lambda n=n: writer.handed - writer.writes - writer.writing == n,
                             "the message was numbered and handed over")
        assert not any(f.done() for f in [blocked, *pending]), "acked before its commit"
    return list(await asyncio.gather(*pending, blocked))


async def in_the_room(connect: ClientFactory) -> tuple[Client, ...]:
    """Three tabs of Alice and two of Bob in study 1 (a socket handles its events one at a
    time, so each message in flight needs a socket of its own), and Chloe, who only listens."""
    return tuple([await connect(1, join=(1,)) for _ in range(3)] + [await connect(2, join=(1,)) for _ in range(2)]
                 + [await connect(3, join=(1,))])


async def received_in_order(listener: Client, count: int) -> list[tuple[int, str]]:
    await eventually(lambda: len(listener.got("message")) >= count, f"{count} messages broadcast")
    return [(m["seq"], m["content"]) for m in listener.got("message")]


@pytest.mark.errors_logged
@pytest.mark.parametrize("max_batch", [256, 1], ids=["one-batch", "batch-by-batch"])
async def test_a_refused_message_mid_pipeline_moves_the_rooms_later_messages_down(
        domain_node: DomainNode, connect: ClientFactory, database_url: str, max_batch: int) -> None:
    """one-batch: the queued messages form one batch, which fails and is written again write
    by write; batch-by-batch: each is a batch of its own, the later ones written before the
    room hears of the refusal (the writer's shift, until the loop gives the number back)."""
    alice, alice2, alice3, bob, bob2, chloe = await in_the_room(connect)
    domain_node.domain.rooms.messages.max_batch = max_batch
    async with boom_refused(domain_node):
        a, boom, b, c, first = await queued_in_one_room(domain_node, database_url, alice, [
            (alice2, {"content": "a"}), (bob, {"content": "boom", "clientMessageId": "bo"}),
            (alice3, {"content": "b"}), (bob2, {"content": "c"})])
    assert boom["ok"] is False and boom["error"]["code"] == "RETRY"
    assert [ack["seq"] for ack in (first, a, b, c)] == [1, 2, 3, 4]
    assert await received_in_order(chloe, 4) == [(1, "first"), (2, "a"), (3, "b"), (4, "c")]
    assert [(r["seq"], r["content"]) for r in await domain_node.db(stored_messages)] == [
        (1, "first"), (2, "a"), (3, "b"), (4, "c")]
    # the number went back to its source: the resend takes the next one, no gap
    again = await bob.call("message", {"studyId": 1, "content": "boom no more", "clientMessageId": "bo"})
    assert (again["ok"], again["seq"], again["duplicate"]) == (True, 5, False)
    assert (await alice.call("message", {"studyId": 1, "content": "next"}))["seq"] == 6
    assert [m["seq"] for m in await domain_node.db(stored_messages)] == [1, 2, 3, 4, 5, 6]


async def test_a_resent_message_mid_pipeline_is_stored_once_and_leaves_no_gap(
        domain_node: DomainNode, connect: ClientFactory, database_url: str) -> None:
    """The retry of a stored clientMessageId is found only by the INSERT's conflict, after a
    later message of the room was numbered past it: that batch is numbered again."""
    alice, alice2, _, bob, _, chloe = await in_the_room(connect)
    stored = await alice.call("message", {"studyId": 1, "content": "kept", "clientMessageId": "k"})
    assert stored["seq"] == 1
    resent, after, first = await queued_in_one_room(domain_node, database_url, alice, [
        (alice2, {"content": "kept", "clientMessageId": "k"}), (bob, {"content": "after"})])
    assert (resent["ok"], resent["duplicate"], resent["id"], resent["seq"]) == (True, True, stored["id"], 1)
    assert (first["seq"], after["seq"]) == (2, 3)
    assert await received_in_order(chloe, 3) == [(1, "kept"), (2, "first"), (3, "after")]
    rows = await domain_node.db(stored_messages)
    assert [(r["seq"], r["content"], r["cmid"]) for r in rows] == [
        (1, "kept", "k"), (2, "first", None), (3, "after", None)]
    assert (await bob.call("message", {"studyId": 1, "content": "then"}))["seq"] == 4


async def test_a_room_has_several_messages_in_one_batch(
        domain_node: DomainNode, connect: ClientFactory, database_url: str) -> None:
    alice, alice2, alice3, bob, bob2, chloe = await in_the_room(connect)
    writer = domain_node.domain.rooms.messages
    batches = writer.batches
    acks = await queued_in_one_room(domain_node, database_url, alice, [
        (client, {"content": f"m{i}"}) for i, client in enumerate((alice2, alice3, bob, bob2))])
    assert writer.batches == batches + 2, "the room's four queued messages were written as one batch"
    assert [ack["seq"] for ack in acks] == [2, 3, 4, 5, 1]
    assert await received_in_order(chloe, 5) == [(1, "first")] + [(i + 2, f"m{i}") for i in range(4)]
