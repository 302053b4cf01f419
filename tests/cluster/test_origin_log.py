"""The recovery log the nodes sequence themselves (`coup.cluster.origin_log`, one Redis): the
cases its design has to get right beyond those every recovery test covers (docs/recovery.md,
"A log the nodes sequence themselves")."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_asyncio

from coup.cluster.bus import Transaction
from coup.cluster.options import ClusterOptions
from coup.cluster.origin_log import OriginLog, OwnOrigins
from coup.cluster.resp import RedisUnavailable
from coup.core.hold import OriginVector
from coup.core.options import RecoveryOptions
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import Node, RedisServer, quiet, session_stored, start_node, wait_until
from tests.cluster.rawclient import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest_asyncio.fixture
async def two_nodes(own_redis: RedisServer) -> AsyncIterator[list[Node]]:
    prefix = "o" + secrets.token_hex(3)
    started = [await start_node(own_redis.url, prefix, f"n{i}") for i in range(2)]
    yield started
    for node in started:
        await node.node.stop()


def origin_log(node: Node) -> Any:
    return node.node.sio.of(NAMESPACE).adapter.recovery_log  # type: ignore[attr-defined]


@contextmanager
def writes_lost(node: Node) -> Iterator[None]:
    """Nothing `node` queues for Redis gets there meanwhile, as if it died before its write
    (its waiters fail as on a broken link, so nothing of it hangs)."""
    bus: Any = node.node.cluster.bus  # type: ignore[union-attr]
    flush = bus._flush

    def lost() -> None:
        bus._flush_scheduled = False
        batches, bus._outbox, bus._open, bus._fold = bus._outbox, [], {}, None
        for batch in batches:
            if batch[2] is not None and not batch[2].done():
                batch[2].set_exception(RedisUnavailable("the node died before its write"))

    bus._flush = lost
    try:
        yield
    finally:
        bus._flush = flush


async def in_room(node: Node, user: str) -> RawClient:
    client = RawClient()
    await client.connect(node.url, {"user": user})
    await client.call("join", {"room": "r"})
    return client


async def away_after(node: Node, client: RawClient, sender: Any, data: int) -> tuple[str, str | None]:
    """`client` on `node` gets message `data` from `sender`, then drops: its pid and offset."""
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": data})
    await wait_until(lambda: client.received("m") == [data], what=f"message {data}")
    pid, offset = client.pid, client.offset
    await client.drop()
    await session_stored(node, pid)
    return pid, offset


async def test_a_client_ahead_of_the_log_recovers_elsewhere(two_nodes, peers):
    """Its node delivered a broadcast to it and died before the append reached Redis: the
    client's number of that origin is above the log's head. It comes back on another node
    recovered, with what the others sent meanwhile, once each; nobody else ever got the lost
    broadcast, and later traffic reaches it with offsets that a next restore takes."""
    a, b = two_nodes
    sender = await peers("sender").connect(b.url)
    await sender.call("join", {"room": "r"})
    client = await in_room(a, "ahead")
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 1})
    await wait_until(lambda: client.received("m") == [1], what="the first message")
    await session_stored(a, client.pid)

    origin = origin_log(a).origin
    with writes_lost(a):
        a.node.sio.of(NAMESPACE).to("r").emit("m", "never logged")
        await wait_until(lambda: client.received("m") == [1, "never logged"], what="the local delivery")
        pid, offset = client.pid, client.offset
        assert offset is not None
        vector = OriginVector.parse(offset)
        assert vector is not None and vector.counts.get(origin, 0) >= 1  # ahead of the log's head
        await client.drop()
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 2})  # missed while away

    back = RawClient()
    try:
        reply = await back.connect(b.url, {"user": "ahead", "pid": pid, "offset": offset})
        assert reply["sid"] == client.sid  # recovered
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})
        await wait_until(lambda: back.received("m")[-1:] == [3], what="live traffic after the restore")
        await quiet(b, back)
        assert back.received("m") == [2, 3]
        assert "never logged" not in sender.events["m"]  # it never left its node

        # the offsets it holds now restore again, with nothing twice
        pid, offset = back.pid, back.offset
        await back.drop()
        await session_stored(b, pid)
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 4})
        again = RawClient()
        try:
            reply = await again.connect(a.url, {"user": "ahead", "pid": pid, "offset": offset})
            assert reply["sid"] == client.sid
            await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 5})
            await wait_until(lambda: again.received("m")[-1:] == [5], what="live traffic after the second restore")
            await quiet(a, again)
            assert again.received("m") == [4, 5]
        finally:
            await again.close()
    finally:
        await back.close()
        await client.close()


async def test_an_origin_born_after_the_clients_last_packet_is_replayed_whole(own_redis, peers):
    """A node that linked up after the client's last packet (its origin is in no offset the
    client holds) broadcast to the client's room while it was away: the client gets those
    entries and the other origins' ones, merged by time, once each."""
    prefix = "o" + secrets.token_hex(3)
    a = await start_node(own_redis.url, prefix, "n0")
    late: Node | None = None
    client = RawClient()
    back = RawClient()
    try:
        sender_a = await peers("sender-a").connect(a.url)
        client = await in_room(a, "early")
        await sender_a.call("emit", {"rooms": ["r"], "event": "m", "data": "a1"})
        await wait_until(lambda: client.received("m") == ["a1"], what="the first message")
        pid, offset = client.pid, client.offset
        await client.drop()
        await session_stored(a, pid)

        late = await start_node(own_redis.url, prefix, "n1")
        assert origin_log(late).origin is not None
        assert OriginVector.parse(offset or "") is not None
        assert origin_log(late).origin not in OriginVector.parse(offset or "").counts  # type: ignore[union-attr]
        sender_late = await peers("sender-late").connect(late.url)
        for text in ("late1", "late2"):
            await sender_late.call("emit", {"rooms": ["r"], "event": "m", "data": text})
        await sender_a.call("emit", {"rooms": ["r"], "event": "m", "data": "a2"})
        await sender_late.call("emit", {"rooms": ["r"], "event": "m", "data": "late3"})

        reply = await back.connect(late.url, {"user": "early", "pid": pid, "offset": offset})
        assert reply["sid"] == client.sid
        await wait_until(lambda: len(back.received("m")) >= 4, what="the replay")
        await sender_a.call("emit", {"rooms": ["r"], "event": "m", "data": "live"})
        await wait_until(lambda: back.received("m")[-1:] == ["live"], what="live traffic")
        await quiet(late, back)
        assert back.received("m") == ["late1", "late2", "a2", "late3", "live"]
    finally:
        await back.close()
        await client.close()
        if late is not None:
            await late.node.stop()
        await a.node.stop()


async def test_a_component_a_count_trim_took_gives_a_fresh_session(two_nodes, peers, monkeypatch):
    """The sending node's list is trimmed past one client's number of its origin (a bound of
    20 entries): that client gets a fresh session, never a partial replay; a client whose
    number is above the trim recovers everything after it."""
    a, b = two_nodes
    log = origin_log(b)
    monkeypatch.setattr(log, "recovery", dataclasses.replace(log.recovery, max_packets=20))
    sender = await peers("sender").connect(b.url)
    early = await in_room(a, "early")
    early_pid, early_offset = await away_after(a, early, sender, 0)
    for i in range(1, 30):
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": i})
    recent = await in_room(a, "recent")
    recent_pid, recent_offset = await away_after(a, recent, sender, 30)
    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 31})
    assert log.stats["trims"] >= 1

    fresh, recovered = RawClient(), RawClient()
    try:
        reply = await fresh.connect(b.url, {"user": "early", "pid": early_pid, "offset": early_offset})
        assert reply["sid"] != early.sid  # its followers were trimmed: a fresh session
        reply = await recovered.connect(b.url, {"user": "recent", "pid": recent_pid, "offset": recent_offset})
        assert reply["sid"] == recent.sid
        await wait_until(lambda: recovered.received("m") == [31], what="the replay of what it missed")
        await quiet(b, fresh, recovered)
        assert fresh.received("m") == []
        assert recovered.received("m") == [31]
    finally:
        await fresh.close()
        await recovered.close()
        await early.close()
        await recent.close()


async def test_a_broadcast_while_the_link_comes_back_takes_no_number_of_the_old_origin(own_redis, two_nodes, peers):
    """Redis restarts empty. The reconnect hooks run on the new link before the log takes its
    new origin, and what they broadcast (a restore's `user-online`) went out under the old
    origin's next number: into a Redis whose counter gives that origin again, where the new
    numbers then start below it and a client holding it misses what follows."""
    a, b = two_nodes
    sender = await peers("sender").connect(b.url)
    await sender.call("join", {"room": "r"})
    client = await in_room(a, "steady")
    for data in (1, 2):  # a's origin has numbers above 1 before the restart
        a.node.sio.of(NAMESPACE).to("r").emit("m", data)
    await wait_until(lambda: client.received("m") == [1, 2], what="the first messages")
    old_origin = origin_log(a).origin
    bus: Any = a.node.cluster.bus  # type: ignore[union-attr]
    broadcast: list[str | None] = []

    async def while_linking() -> None:  # before every other hook: the node's own link-up
        a.node.sio.of(NAMESPACE).to("r").emit("m", "while linking")
        broadcast.append(origin_log(a).stamp)

    bus._reconnect_hooks.insert(0, while_linking)
    own_redis.kill()
    own_redis.start()
    await wait_until(lambda: broadcast and bus.ready and origin_log(a).origin is not None, timeout=15,
                     what="a's link up again")
    await wait_until(lambda: b.node.cluster.bus.ready and origin_log(b).origin is not None,  # type: ignore[union-attr]
                     timeout=15, what="b's link up again")
    await wait_until(lambda: client.received("m")[-1:] == ["while linking"], what="the local delivery")
    assert old_origin is not None

    await sender.call("emit", {"rooms": ["r"], "event": "m", "data": 3})
    await wait_until(lambda: client.received("m")[-1:] == [3], what="a message after the restart")
    # every list of the new Redis numbers its entries 1, 2, 3... (no number from before)
    for entries, _ttl in own_redis.lists(origin_log(a).list_prefix + "*"):
        numbers = [int(entry.split(b" ", 1)[0]) for entry in entries]
        assert numbers == list(range(1, len(numbers) + 1))

    pid, offset = client.pid, client.offset
    await client.drop()
    await session_stored(a, pid)
    for data in (4, 5):
        await sender.call("emit", {"rooms": ["r"], "event": "m", "data": data})
    back = RawClient()
    try:
        reply = await back.connect(b.url, {"user": "steady", "pid": pid, "offset": offset})
        assert reply["sid"] == client.sid
        await wait_until(lambda: back.received("m") == [4, 5], what="what it missed")
        await quiet(b, back)
        assert back.received("m") == [4, 5]
    finally:
        await back.close()
        await client.close()


class _Bus:
    """What `OriginLog.publish` asks of the bus, without Redis: one transaction per turn."""

    def __init__(self) -> None:
        self.tx = Transaction()

    def open_transaction(self) -> Transaction:
        return self.tx


def _log_of_origin_5(recovery: RecoveryOptions | None = None) -> Any:
    """An `OriginLog` without Redis, its origin 5 taken (as `link_up` leaves it) in epoch "ep"."""
    log = OriginLog(_Bus(), None, ClusterOptions(prefix="t"), NAMESPACE, "n0",  # type: ignore[arg-type]
                    recovery or RecoveryOptions(), b"inbox", OwnOrigins())
    log.epoch = "ep"
    log.origin, log._prefix, log._list_key = 5, b"S5-", "t:rlog:o:5"
    log._counts[5] = 0
    log._rebuild()
    return log


async def test_the_stamp_is_the_vector_through_publishes_pushes_and_a_new_origin():
    """The stamp is kept in pieces (a broadcast sent or heard changes one); whatever happens,
    it must read as the node's numbers."""
    log = _log_of_origin_5()

    def check() -> None:
        assert OriginVector.parse(log.stamp) is not None
        assert OriginVector.parse(log.stamp).counts == log.vector.counts  # type: ignore[union-attr]

    envelope = b'B["n0","n0:1","/",["r"],[],1]\n2["m",1]'
    for step in range(20):
        if step % 3 == 0:
            log.heard(2 + step % 2 * 7, step)  # origins 2 and 9, on either side of ours
        stamp = log.publish([b"t:r:r"], "sid", envelope)
        assert stamp == log.stamp
        check()
    assert log.vector.counts == {2: 18, 5: 20, 9: 15}
    log.link_down()  # origin 5 ends, its number stays
    check()
    log.origin, log._prefix, log.number = 11, b"S11-", 0  # as `link_up` leaves it
    log._counts[11] = 0
    log._rebuild()
    log.publish([b"t:r:r"], "", envelope)
    log.heard(9, 16)
    check()
    assert log.stamp == "ep~2-18~5-20~9-16~11-1"
    log._drop([2])
    check()
    assert log.stamp == "ep~5-20~9-16~11-1"


async def test_a_socket_past_its_share_is_not_kept_also_with_its_first_broadcast():
    """One origin socket may hold a quarter of the log's bytes and packets: a broadcast past that
    goes out unkept (None), its first one too when it alone is bigger; nothing is left booked
    for a refused socket, and the others' broadcasts are still kept."""
    log = _log_of_origin_5(RecoveryOptions(max_packets=40, max_bytes=4000))
    small = b'B["n0","n0:1","/",["r"],[],1]\n2["m",1]'
    assert log.publish([b"t:r:r"], "big", small + b" " * 1000) is None  # alone past 1000 bytes
    assert "big" not in log._shares and log.stats["refused"] == 1
    kept = [log.publish([b"t:r:r"], "chatty", small) for _ in range(12)]
    assert all(kept[:10]) and kept[10:] == [None, None]  # 10 packets: a quarter of 40
    assert log._shares["chatty"][0] == 10
    assert log.publish([b"t:r:r"], "other", small) is not None
    assert log.number == 11


async def test_of_two_epochs_the_newer_vector_wins_either_way():
    """A floor from before a Redis restart never lowers a packet of the new logs, nor the other way."""
    old = OriginVector.parse("mx9j0000~3-40")
    new = OriginVector.parse("mx9j2000~1-2")
    assert old is not None and new is not None
    assert old.highest(new) is new and new.highest(old) is new
    assert OriginVector.parse("mx9j2000~1-2~4-9").highest(new).text == "mx9j2000~1-2~4-9"  # type: ignore[union-attr]
    assert new.highest(OriginVector.parse("mx9j2000~1-5~7-1")).text == "mx9j2000~1-5~7-1"  # type: ignore[arg-type]
    assert OriginVector.parse("mx9j2000~1-x") is None and OriginVector.parse("~1-2") is None
