"""The CoUp domain on three node processes (`coup serve`, demo data, one shared database).

Message numbers (`seq`), presence events and the members API, as users see them when their
sockets land on different nodes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
import socketio

from tests.cluster.conftest import JWT_SECRET, NodeProcess, RedisServer, api, wait_until
from tests.cluster.rawclient import is_offset

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ALICE, BOB, CHLOE, DAN = 1, 2, 3, 4
STUDY = 1  # "Graph Theory": Alice, Bob, Chloe ACTIVE; Dan PENDING


def token(user_id: int) -> str:
    now = dt.datetime.now(dt.UTC)
    return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + dt.timedelta(hours=1)}, JWT_SECRET,
                      algorithm="HS256")


class User:
    """A CoUp client: python-socketio with `{userId, token}`, recording every event."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.node: NodeProcess | None = None
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.sio.on("*", self._record)

    async def _record(self, event: str, *args: Any) -> None:
        if args and is_offset(args[-1]):
            args = args[:-1]  # recovery offset
        self.events[event].append(args[0] if args else None)

    async def connect(self, node: NodeProcess) -> User:
        self.node = node
        await self.sio.connect(node.url, transports=["websocket"], auth={"userId": self.user_id,
                                                                        "token": token(self.user_id)},
                               wait_timeout=10)
        return self

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=15)

    def count(self, event: str, user_id: int) -> int:
        return sum(1 for e in self.events[event] if isinstance(e, dict) and e.get("userId") == user_id)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


@pytest.fixture(scope="module")
def domain_cluster(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    logs = tmp_path_factory.mktemp("domain-nodes")
    prefix = "dm" + secrets.token_hex(3)
    nodes = [NodeProcess(redis_server.url, prefix, f"n{i}", logs) for i in range(3)]
    try:
        nodes[0].start()  # the first one creates and seeds the shared database
        asyncio.run(nodes[0].wait_ready())
        for node in nodes[1:]:
            node.start()
        asyncio.run(_all_ready(nodes))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def _all_ready(nodes: list[NodeProcess]) -> None:
    await asyncio.gather(*[n.wait_ready() for n in nodes])


async def start_all(nodes: list[NodeProcess]) -> None:
    """The first node creates and seeds the shared database; the others start once it has."""
    nodes[0].start()
    await nodes[0].wait_ready()
    for node in nodes[1:]:
        node.start()
    await _all_ready(nodes)


@pytest_asyncio.fixture
async def users() -> AsyncIterator[list[User]]:
    made: list[User] = []
    yield made
    for user in made:
        try:
            await user.close()
        except Exception:
            pass
    # let the nodes announce these users offline now, not during the next test: the domain
    # announces a transition after a database query, so a late one could follow a newer one.
    # A node announces at once when presence says "offline", so wait for presence to say it.
    for user in made:
        if user.node is not None and user.node.alive:
            await wait_until(partial(offline, user.node, user.user_id), what=f"user {user.user_id} offline",
                             poll=0.05)


async def offline(node: NodeProcess, user_id: int) -> bool:
    """`user_id` is not online anywhere, as `node`'s members API says (True for a non-member)."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{node.url}/api/studies/{STUDY}/members", headers={"Authorization": f"Bearer {token(ALICE)}"}) as reply:
        assert reply.status == 200, await reply.text()
        members = {m["userId"]: m["online"] for m in (await reply.json())["items"]}
    return not members.get(user_id, False)


async def connect(users: list[User], user_id: int, node: NodeProcess) -> User:
    user = User(user_id)
    users.append(user)
    return await user.connect(node)


async def test_messages_carry_consecutive_seq_in_one_order_on_every_node(domain_cluster, users):
    alice = await connect(users, ALICE, domain_cluster[0])
    bob = await connect(users, BOB, domain_cluster[1])
    chloe = await connect(users, CHLOE, domain_cluster[2])
    for user in (alice, bob, chloe):
        reply = await user.call("join-study", {"studyId": STUDY})
        assert reply["ok"] is True
    senders = [alice, bob, chloe]
    acks = await asyncio.gather(*[senders[i % 3].call("message", {"studyId": STUDY, "content": f"m{i}",
                                                                  "clientMessageId": f"c{i}"})
                                  for i in range(30)])
    assert all(a["ok"] for a in acks)
    numbers = sorted(a["seq"] for a in acks)
    assert numbers == list(range(numbers[0], numbers[0] + 30))
    for user in senders:
        await wait_until(lambda u=user: len(u.events["message"]) >= 30, timeout=10, what="30 messages")
    orders = [[m["seq"] for m in user.events["message"]] for user in senders]
    assert orders[0] == orders[1] == orders[2] == numbers
    # a retry with the same clientMessageId is acknowledged with the first id, not stored again
    again = await bob.call("message", {"studyId": STUDY, "content": "m1", "clientMessageId": "c1"})
    assert again["id"] == acks[1]["id"] and again["seq"] == acks[1]["seq"]
    # a marker: Bob's next message reaches Alice after anything his retry could have sent
    marker = await bob.call("message", {"studyId": STUDY, "content": "marker", "clientMessageId": "c-marker"})
    await wait_until(lambda: any(m["seq"] == marker["seq"] for m in alice.events["message"]), what="the marker")
    assert [m["seq"] for m in alice.events["message"]] == [*orders[0], marker["seq"]]


async def test_presence_of_a_user_with_tabs_on_two_nodes(domain_cluster, redis_server, users):
    alice = await connect(users, ALICE, domain_cluster[2])
    await alice.call("join-study", {"studyId": STUDY})
    tab1 = await connect(users, CHLOE, domain_cluster[0])
    tab2 = await connect(users, CHLOE, domain_cluster[1])
    await wait_until(lambda: alice.count("user-online", CHLOE) == 1, what="user-online")
    # the CONNECT reply goes out before the connect handler counts the socket in (as Node's
    # server does): wait until both tabs are counted, or tab1's close is rightly the last one
    prefix = domain_cluster[0].env["COUP_REDIS_PREFIX"]
    await wait_until(lambda: int(redis_server.cli("HLEN", f"{prefix}:presence:{CHLOE}")) == 2,
                     what="both tabs counted", poll=0.05)
    await tab1.close()
    await asyncio.sleep(0.5)  # a watch (no hook in a node process): tab1's close announces nothing
    assert alice.count("user-offline", CHLOE) == 0  # the other tab still holds her online
    await tab2.close()
    await wait_until(lambda: alice.count("user-offline", CHLOE) == 1, what="user-offline")
    await asyncio.sleep(0.5)  # a watch: no second announcement follows
    assert alice.count("user-online", CHLOE) == 1
    assert alice.count("user-offline", CHLOE) == 1


async def test_members_api_shows_who_is_online_anywhere(domain_cluster, users):
    await connect(users, BOB, domain_cluster[0])
    async with aiohttp.ClientSession() as session:
        for node in domain_cluster:
            async with session.get(f"{node.url}/api/studies/{STUDY}/members",
                                   headers={"Authorization": f"Bearer {token(ALICE)}"}) as response:
                assert response.status == 200
                members = {m["userId"]: m["online"] for m in (await response.json())["items"]}
            assert members[BOB] is True, node.node_id
            assert members[DAN] is False


async def test_join_ack_lists_members_online_on_other_nodes(domain_cluster, users):
    alice = await connect(users, ALICE, domain_cluster[0])
    bob = await connect(users, BOB, domain_cluster[1])
    await alice.call("join-study", {"studyId": STUDY})
    reply = await bob.call("join-study", {"studyId": STUDY})
    assert set(reply["online"]) >= {ALICE, BOB}
    await wait_until(lambda: alice.count("member-joined", BOB) == 1, what="member-joined")


async def test_sigkill_takes_its_users_offline_within_five_seconds(redis_server, tmp_path: Path, users):
    prefix = "dk" + secrets.token_hex(3)
    nodes = [NodeProcess(redis_server.url, prefix, f"n{i}", tmp_path) for i in range(2)]
    try:
        await start_all(nodes)
        alice = await connect(users, ALICE, nodes[0])
        await alice.call("join-study", {"studyId": STUDY})
        await connect(users, BOB, nodes[1])
        await wait_until(lambda: alice.count("user-online", BOB) == 1, what="user-online")
        nodes[1].signal(signal.SIGKILL)
        killed = time.monotonic()
        await wait_until(lambda: alice.count("user-offline", BOB) == 1, timeout=5, what="user-offline")
        print(f"domain SIGKILL: user-offline after {time.monotonic() - killed:.2f} s")
        reply = await alice.call("message", {"studyId": STUDY, "content": "still here"})
        assert reply["ok"] is True
    finally:
        for node in nodes:
            node.stop()


async def test_sigkill_announces_member_left_for_the_rooms_its_sockets_held(redis_server, tmp_path: Path, users):
    """Bob's only socket in the study was on the killed node: member-left, once. Chloe still has
    a socket in the room on a survivor: no member-left for her."""
    prefix = "dl" + secrets.token_hex(3)
    nodes = [NodeProcess(redis_server.url, prefix, f"n{i}", tmp_path) for i in range(3)]
    try:
        await start_all(nodes)
        alice = await connect(users, ALICE, nodes[0])
        await alice.call("join-study", {"studyId": STUDY})
        bob = await connect(users, BOB, nodes[1])
        await bob.call("join-study", {"studyId": STUDY})
        chloe_doomed = await connect(users, CHLOE, nodes[1])
        await chloe_doomed.call("join-study", {"studyId": STUDY})
        chloe = await connect(users, CHLOE, nodes[2])
        await chloe.call("join-study", {"studyId": STUDY})
        await wait_until(lambda: alice.count("member-joined", BOB) == 1 and alice.count("member-joined", CHLOE) == 1,
                         what="member-joined")
        nodes[1].signal(signal.SIGKILL)
        killed = time.monotonic()
        await wait_until(lambda: alice.count("member-left", BOB) == 1, timeout=5, what="member-left")
        print(f"domain SIGKILL: member-left after {time.monotonic() - killed:.2f} s")
        assert chloe.count("member-left", BOB) == 1
        await asyncio.sleep(1.5)  # a watch: nothing more comes (the reaper's order of work is not observable)
        assert alice.count("member-left", BOB) == 1
        assert alice.count("member-left", CHLOE) == 0
        assert alice.count("user-offline", BOB) == 1
        assert alice.count("user-offline", CHLOE) == 0
        reply = await alice.call("join-study", {"studyId": STUDY})
        assert CHLOE in reply["online"] and BOB not in reply["online"]
    finally:
        for node in nodes:
            node.stop()


#: what the owner logs when a node did not say in time which sockets it holds in a room
NOT_IN_TIME = "not every node said in time"


async def call_while_stopped(node: NodeProcess, user: User, event: str, data: Any) -> Any:
    """`user`'s call made while `node` is stopped (SIGSTOP); the node goes on whatever happens."""
    node.signal(signal.SIGSTOP)
    try:
        return await user.call(event, data)
    finally:
        node.signal(signal.SIGCONT)


async def test_a_node_that_does_not_answer_in_time_delays_a_join_and_a_message_but_fails_neither(
        redis_server, tmp_path: Path, users):
    """The room's owner asks every node which sockets are in the room (for a join; for a message
    when it does not know). A node that does not answer (SIGSTOP here; in a Redis failover, one
    whose link is being rebuilt) is left out once `COUP_REQUEST_TIMEOUT` passed: the join and
    the message go through, nobody's copy is lost, nothing is logged as a crash. Each stop is
    shorter than the 3 s after which a silent node is declared dead."""
    prefix = "ds" + secrets.token_hex(3)
    nodes = [NodeProcess(redis_server.url, prefix, f"n{i}", tmp_path, COUP_REQUEST_TIMEOUT="1") for i in range(3)]
    stalled: NodeProcess | None = None
    try:
        await start_all(nodes)
        alice = await connect(users, ALICE, nodes[0])
        assert (await alice.call("join-study", {"studyId": STUDY}))["ok"] is True
        owner_id = (await api(nodes[0], f"/api/cluster/owner?room=study:{STUDY}"))[1]["node"]
        owner = next(n for n in nodes if n.node_id == owner_id)
        stalled, other = [n for n in nodes if n is not owner]
        bob = await connect(users, BOB, stalled)
        assert (await bob.call("join-study", {"studyId": STUDY}))["ok"] is True
        chloe = await connect(users, CHLOE, other)
        assert NOT_IN_TIME not in owner.log_text()

        joined = await call_while_stopped(stalled, chloe, "join-study", {"studyId": STUDY})
        assert joined["ok"] is True, joined
        assert owner.log_text().count(NOT_IN_TIME) == 1
        await wait_until(lambda: bob.count("member-joined", CHLOE) == 1, what="bob hears of chloe once awake")

        # what the join saw was incomplete, so it was not kept: the message asks again
        sent = await call_while_stopped(stalled, chloe, "message", {
            "studyId": STUDY, "content": "while one node stalls", "clientMessageId": "stall-1"})
        assert sent["ok"] is True, sent
        assert owner.log_text().count(NOT_IN_TIME) == 2
        for person in (alice, bob, chloe):
            await wait_until(lambda p=person: [m["seq"] for m in p.events["message"]] == [sent["seq"]],
                             what=f"user {person.user_id} has the message once")

        # Bob leaves with a second tab while the node of his first does not answer: the room's
        # owner cannot see that tab, but presence counts it, so no member-left
        bob_2 = await connect(users, BOB, other)
        assert (await bob_2.call("join-study", {"studyId": STUDY}))["ok"] is True
        left = await call_while_stopped(stalled, bob_2, "leave-study", {"studyId": STUDY})
        assert left["ok"] is True, left
        assert owner.log_text().count(NOT_IN_TIME) == 3
        marker = await alice.call("message", {"studyId": STUDY, "content": "after the leave",
                                              "clientMessageId": "stall-2"})
        await wait_until(lambda: any(m["seq"] == marker["seq"] for m in alice.events["message"]),
                         what="alice has the message sent after the leave")
        assert alice.count("member-left", BOB) == 0
        for node in nodes:
            assert "Traceback" not in node.log_text(), node.log_text()[-3000:]
    finally:
        if stalled is not None:
            stalled.signal(signal.SIGCONT)
        for node in nodes:
            node.stop()


def _store_without_broadcast(node: NodeProcess, seq: int, content: str, client_message_id: str) -> None:
    """What an owner that died between storing a message and broadcasting it leaves behind."""
    from coup.domain import queries
    from coup.domain.database import Database

    database = Database(node.env["DATABASE_URL"], workers=1)
    try:
        with database.db.connection_context():
            new = queries.NewMessage(STUDY, ALICE, "Alice", content, None, client_message_id)
            (result,) = queries.store_messages([queries.MessageWrite(new, seq, frozenset())])
            assert result["outcome"] == "stored"
    finally:
        database.close()


async def test_a_resend_of_a_message_stored_but_never_broadcast_is_announced_once(domain_cluster, redis_server,
                                                                                 users):
    """The owner stored Alice's message and was SIGKILLed before broadcasting it: her resend
    (same clientMessageId) is acknowledged as a duplicate and announced to the room then, once.
    Resending a message that was broadcast announces nothing."""
    alice = await connect(users, ALICE, domain_cluster[0])
    bob = await connect(users, BOB, domain_cluster[1])
    for user in (alice, bob):
        assert (await user.call("join-study", {"studyId": STUDY}))["ok"] is True
    before = await alice.call("message", {"studyId": STUDY, "content": "before", "clientMessageId": "nb-before"})
    # the dead owner had taken the next number from the study's counter and stored the message
    prefix = domain_cluster[0].env["COUP_REDIS_PREFIX"]
    seq = int(redis_server.cli("INCR", f"{prefix}:seq:study:{STUDY}"))
    assert seq == before["seq"] + 1
    await asyncio.to_thread(_store_without_broadcast, domain_cluster[0], seq, "lost in the crash", "nb-lost")
    resend = {"studyId": STUDY, "content": "lost in the crash", "clientMessageId": "nb-lost"}
    ack = await alice.call("message", resend)
    assert ack["ok"] is True and ack["duplicate"] is True and ack["seq"] == seq
    await wait_until(lambda: any(m["seq"] == seq for m in bob.events["message"]), what="the resent message")
    again = await alice.call("message", resend)  # announced now: a further resend is not
    assert again["duplicate"] is True
    assert (await alice.call("message", {**resend, "clientMessageId": "nb-before"}))["duplicate"] is True
    marker = await alice.call("message", {"studyId": STUDY, "content": "marker", "clientMessageId": "nb-marker"})
    for user in (alice, bob):
        await wait_until(lambda u=user: any(m["seq"] == marker["seq"] for m in u.events["message"]),
                         what="the marker")
        assert [m["seq"] for m in user.events["message"]] == [before["seq"], seq, marker["seq"]]


REFUSE_BOOM = """CREATE TRIGGER IF NOT EXISTS refuse_boom BEFORE INSERT ON messages
WHEN substr(NEW.content, 1, 4) = 'boom' BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"""


async def test_a_refused_message_mid_pipeline_leaves_no_gap_in_the_counter(domain_cluster, redis_server, users):
    """Five messages of study 1, sent through three nodes, are numbered by the room's owner
    while the shared database's write lock is held (the Redis counter moves while nothing is
    committed); the database refuses one of them. The other four get consecutive `seq`,
    reach every node in that order, and the next message follows without a gap: the owner
    gave the counter its last number back and moved the later messages down."""
    path = domain_cluster[0].env["DATABASE_URL"].removeprefix("sqlite:///")
    counter = f"{domain_cluster[0].env['COUP_REDIS_PREFIX']}:seq:study:{STUDY}"
    senders = [await connect(users, user_id, domain_cluster[i % 3])
               for i, user_id in enumerate((ALICE, BOB, CHLOE, ALICE, BOB))]
    for user in senders:
        assert (await user.call("join-study", {"studyId": STUDY}))["ok"] is True
    start = (await senders[0].call("message", {"studyId": STUDY, "content": "start"}))["seq"]
    lite = sqlite3.connect(path, isolation_level=None)
    try:
        lite.execute(REFUSE_BOOM)
        lite.execute("BEGIN IMMEDIATE")  # the owner's writer waits for it (busy timeout 10 s)
        try:
            contents = ["a", "boom", "b", "c", "d"]
            sending = [asyncio.ensure_future(user.call("message", {"studyId": STUDY, "content": content}))
                       for user, content in zip(senders, contents, strict=True)]
            await wait_until(lambda: int(redis_server.cli("GET", counter)) == start + 5,
                             what="five numbers handed out before any commit", poll=0.05)
            assert not any(s.done() for s in sending), "acked before its commit"
        finally:
            lite.execute("ROLLBACK")
        acks = dict(zip(contents, await asyncio.gather(*sending), strict=True))
    finally:
        lite.execute("DROP TRIGGER IF EXISTS refuse_boom")
        lite.close()
    assert acks.pop("boom")["error"]["code"] == "RETRY"
    assert sorted(ack["seq"] for ack in acks.values()) == [start + 1, start + 2, start + 3, start + 4]
    assert int(redis_server.cli("GET", counter)) == start + 4  # the refused one's number went back
    after = await senders[1].call("message", {"studyId": STUDY, "content": "after"})
    assert after["seq"] == start + 5
    for user in senders[:3]:
        await wait_until(lambda u=user: any(m["seq"] == after["seq"] for m in u.events["message"]),
                         what="the message after")
        seqs = [m["seq"] for m in user.events["message"] if m["seq"] > start]
        assert seqs == list(range(start + 1, start + 6)), seqs


async def _notified_of(node: NodeProcess, user_id: int, message_id: int) -> bool:
    """Whether `user_id` has a notification of message `message_id` (the members API's node)."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{node.url}/api/notifications?limit=100", headers={"Authorization": f"Bearer {token(user_id)}"}) as reply:
        assert reply.status == 200, await reply.text()
        return any(n["data"] == {"messageId": message_id} for n in (await reply.json())["items"])


async def test_who_is_away_follows_sockets_on_other_nodes(domain_cluster, users):
    """The room's owner keeps who is in the room from the room's joins and leaves wherever
    their sockets live: each changes who Alice's next message notifies."""
    alice = await connect(users, ALICE, domain_cluster[0])
    assert (await alice.call("join-study", {"studyId": STUDY}))["ok"] is True

    async def chloe_notified(content: str) -> bool:
        ack = await alice.call("message", {"studyId": STUDY, "content": content})
        assert ack["ok"] is True, ack
        return await _notified_of(domain_cluster[0], CHLOE, ack["id"])

    assert await chloe_notified("before Chloe joined")
    tab1 = await connect(users, CHLOE, domain_cluster[1])
    tab2 = await connect(users, CHLOE, domain_cluster[2])
    for tab in (tab1, tab2):
        assert (await tab.call("join-study", {"studyId": STUDY}))["ok"] is True
    assert not await chloe_notified("Chloe is in on two nodes")
    await tab1.close()  # her tab on the other node is still in the room
    assert not await chloe_notified("one tab left")
    assert (await tab2.call("leave-study", {"studyId": STUDY}))["ok"] is True
    assert await chloe_notified("Chloe left")
    assert (await tab2.call("join-study", {"studyId": STUDY}))["ok"] is True
    assert not await chloe_notified("Chloe back")
    await tab2.close()  # closed on purpose: she leaves at once
    await wait_until(lambda: alice.count("member-left", CHLOE) >= 2, what="member-left")
    assert await chloe_notified("Chloe closed her last tab")
