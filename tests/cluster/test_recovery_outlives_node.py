"""Connection state recovery that outlives its node (issue 12.2), with real node processes.

A client's node is SIGKILLed or stopped while its rooms keep talking from another node; the
client comes back on a survivor or on a node started afterwards, with the `pid` and `offset`
it holds, and gets everything it missed once, in order. Beyond the window it gets a fresh
session and nothing of what it missed; a Redis restart makes old offsets "gone", never wrong;
the log in Redis stays within its bounds.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis

from coup.core.adapter import ONCE_WINDOW
from coup.core.hold import OriginVector
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import NodeProcess, Peer, RedisServer, api, say_retrying, start_node, wait_until
from tests.cluster.rawclient import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


class Nodes:
    """Node processes of one cluster (one prefix); `add` starts one more, at any time."""

    def __init__(self, redis: RedisServer, log_dir: Path, **env: str) -> None:
        self.redis = redis
        self.log_dir = log_dir
        self.prefix = "r" + secrets.token_hex(3)
        self.env = env
        self.all: list[NodeProcess] = []

    async def add(self) -> NodeProcess:
        node = NodeProcess(self.redis.url, self.prefix, f"n{len(self.all)}", self.log_dir, **self.env)
        self.all.append(node)
        node.start()
        await node.wait_ready()
        return node

    def stop(self) -> None:
        for node in self.all:
            node.stop()

    def session_key(self, pid: str) -> str:
        return f"{self.prefix}:session:{NAMESPACE}:{pid}"

    def log_lists(self) -> list[tuple[list[bytes], int]]:
        """The namespace's recovery log, one list per origin (docs/recovery.md): each list's
        entries and its time to live (ms)."""
        return self.redis.lists(f"{self.prefix}:rlog:{NAMESPACE}:o:*")


@pytest_asyncio.fixture
async def cluster(own_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Callable[..., Nodes]]:
    made: list[Nodes] = []

    def make(**env: str) -> Nodes:
        nodes = Nodes(own_redis, tmp_path, **env)
        made.append(nodes)
        return nodes

    yield make
    for nodes in made:
        nodes.stop()


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[Callable[[], RawClient]]:
    made: list[RawClient] = []

    def make() -> RawClient:
        client = RawClient()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def say(peer: Peer, room: str, text: str) -> int:
    """A chat message through the room's owner (per-room seq)."""
    return int((await say_retrying(peer, room, text))["seq"])


async def ring_size(node: NodeProcess) -> int:
    return len((await api(node, "/api/cluster"))[1]["nodes"])


async def wait_ring(nodes: list[NodeProcess], size: int) -> None:
    deadline = time.monotonic() + 10
    while {await ring_size(n) for n in nodes} != {size}:
        assert time.monotonic() < deadline, f"rings never reached {size} nodes"
        await asyncio.sleep(0.1)


def texts(client: RawClient) -> list[str]:
    return [m["text"] for m in client.received("said")]


async def client_in_rooms(node: NodeProcess, raw: Callable[[], RawClient], user: str) -> RawClient:
    client = raw()
    await client.connect(node.url, {"user": user})
    await client.call("join", {"room": "study:1"})
    return client


async def dropped_and_recovered(client: RawClient, node: NodeProcess, sender: Peer,
                                raw: Callable[[], RawClient], user: str) -> None:
    """`client` (in study:1) drops, a message is said meanwhile, and it comes back on `node`
    recovered: the missed message, then a marker, each once."""
    pid, offset = client.pid, client.offset
    await client.drop()
    await say(sender, "study:1", "missed")
    again = raw()
    reply = await again.connect(node.url, {"user": user, "pid": pid, "offset": offset})
    assert reply["sid"] == client.sid
    await wait_until(lambda: texts(again) == ["missed"], what="the missed message")
    await say(sender, "study:1", "marker")
    await wait_until(lambda: texts(again) == ["missed", "marker"], what="the marker, once")


async def listening_on_a(nodes: Nodes, peers: Callable[[str], Peer], raw: Callable[[], RawClient],
                         user: str) -> tuple[NodeProcess, NodeProcess, Peer, RawClient]:
    """Nodes A and B; a sender on B and `user`'s client on A in study:1, which got one message."""
    a, b = await nodes.add(), await nodes.add()
    await wait_ring([a, b], 2)
    sender = await peers("sender").connect(b.url)
    await sender.call("join", {"room": "study:1"})
    client = await client_in_rooms(a, raw, user)
    await say(sender, "study:1", "before")
    await wait_until(lambda: texts(client) == ["before"], what="the first message")
    return a, b, sender, client


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
@pytest.mark.parametrize("back_to", ["survivor", "new-node"])
async def test_a_client_whose_node_went_away_recovers_everything_it_missed(cluster, peers, raw, how, back_to):
    nodes = cluster()
    a, b, sender, client = await listening_on_a(nodes, peers, raw, "rc")
    sid, pid, offset = client.sid, client.pid, client.offset
    assert offset is not None

    a.signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    a.process.wait()  # type: ignore[union-attr]
    await client.drop()
    missed = [await say(sender, "study:1", f"missed {i}") for i in range(5)]
    await sender.call("emit", {"rooms": ["user:rc"], "event": "notification", "data": "for rc"})
    await sender.call("emit", {"rooms": ["elsewhere"], "event": "said", "data": {"text": "not for rc"}})
    back_node = b if back_to == "survivor" else await nodes.add()

    back = raw()
    reply = await back.connect(back_node.url, {"user": "rc", "pid": pid, "offset": offset})
    assert reply["sid"] == sid  # recovered: the same socket, in its rooms
    await wait_until(lambda: back.received("notification") == ["for rc"], what="the missed notification")
    assert [m["seq"] for m in back.received("said")] == missed  # once each, in order
    assert texts(back) == [f"missed {i}" for i in range(5)]
    await say(sender, "study:1", "live")
    await wait_until(lambda: texts(back)[-1:] == ["live"], what="live traffic after recovery")
    assert texts(back) == [*(f"missed {i}" for i in range(5)), "live"]
    assert back.transcript[0] == "connect"
    print(f"{how}, back on {back_to}: {len(missed)} messages and 1 notification replayed")


async def test_beyond_the_window_nothing_is_replayed(cluster, peers, raw):
    nodes = cluster(COUP_RECOVERY_WINDOW="3")
    a, b, sender, client = await listening_on_a(nodes, peers, raw, "late")
    pid, offset = client.pid, client.offset
    assert nodes.redis.cli("EXISTS", nodes.session_key(pid)) == "1"

    a.signal(signal.SIGKILL)
    a.process.wait()  # type: ignore[union-attr]
    await client.drop()
    await say(sender, "study:1", "missed")
    await wait_until(lambda: nodes.redis.cli("EXISTS", nodes.session_key(pid)) == "0", timeout=5,
                     what="the session record to expire with the window")
    back = raw()
    reply = await back.connect(b.url, {"user": "late", "pid": pid, "offset": offset})
    assert reply["sid"] != client.sid  # a fresh session: recovered is false
    await back.call("join", {"room": "study:1"})
    await say(sender, "study:1", "marker")
    await wait_until(lambda: "marker" in texts(back), what="the marker")
    assert texts(back) == ["marker"]  # nothing partial came before it


async def test_a_redis_restart_makes_old_offsets_gone_and_new_ones_work(cluster, peers, raw):
    nodes = cluster()
    a, b = await nodes.add(), await nodes.add()
    await wait_ring([a, b], 2)
    sender = await peers("sender").connect(b.url)
    await sender.call("join", {"room": "study:1"})
    stale = await client_in_rooms(a, raw, "stale")
    steady = await client_in_rooms(a, raw, "steady")
    await say(sender, "study:1", "before")
    await wait_until(lambda: texts(stale) == ["before"] and texts(steady) == ["before"], what="the first message")
    stale_pid, stale_offset = stale.pid, stale.offset
    await stale.drop()

    nodes.redis.kill()
    nodes.redis.start()  # empty: the log, its offsets and the session records are gone
    await wait_ring([a, b], 2)
    await wait_until(lambda: nodes.redis.cli("EXISTS", nodes.session_key(steady.pid)) == "1", timeout=10,
                     what="the connected socket's record written again")

    back = raw()
    reply = await back.connect(b.url, {"user": "stale", "pid": stale_pid, "offset": stale_offset})
    assert reply["sid"] != stale.sid  # its record died with Redis: a fresh session, nothing replayed

    await say(sender, "study:1", "after restart")
    await wait_until(lambda: texts(steady)[-1:] == ["after restart"], what="a message after the restart")
    assert steady.offset is not None and stale_offset is not None
    new, old = OriginVector.parse(steady.offset), OriginVector.parse(stale_offset)
    assert new is not None and old is not None and new.epoch != old.epoch  # the new logs' offsets are their own
    await dropped_and_recovered(steady, b, sender, raw, "steady")


async def test_the_log_lost_under_a_live_link_gives_a_new_epoch_and_no_origin_twice(cluster, peers, raw):
    """A FLUSHALL, or the log's keys evicted under memory pressure (each has a time to live, so
    ``volatile-lru`` may take them), while the nodes stay connected: each node takes a new
    origin of a new epoch within a refresh (a quarter window), numbered above the origins it
    knew. A node started meanwhile is not given a running node's number (that node would drop
    its pushes as its own), and a client that drops afterwards is recovered again."""
    nodes = cluster(COUP_RECOVERY_WINDOW="4")  # a refresh every second
    a, b = await nodes.add(), await nodes.add()
    await wait_ring([a, b], 2)
    sender = await peers("sender").connect(b.url)
    await sender.call("join", {"room": "study:1"})
    steady = await client_in_rooms(a, raw, "steady")
    old = None
    for i in range(50):  # until A's stamp names B's origin too (A's refresh syncs it)
        text = f"before {i}"
        await say(sender, "study:1", text)
        await wait_until(lambda text=text: texts(steady)[-1:] == [text], what="a message before")
        old = OriginVector.parse(steady.offset or "")
        if old is not None and len(old.counts) == 2:
            break
        await asyncio.sleep(0.2)
    assert old is not None and len(old.counts) == 2
    highest = max(old.counts)

    client = redis.Redis.from_url(nodes.redis.url)
    try:
        lost = client.keys(f"{nodes.prefix}:rlog:*") + client.keys(f"{nodes.prefix}:session:*")
        assert lost and all(client.pttl(key) > 0 for key in lost)  # what an eviction policy for keys with a TTL takes
        client.delete(*lost)

        def new_epoch() -> bool:
            epoch = client.hget(f"{nodes.prefix}:rlog:meta", "epoch")
            live = client.hkeys(f"{nodes.prefix}:rlog:{NAMESPACE}:live")
            return epoch is not None and epoch.decode() != old.epoch \
                and sum(int(origin) > highest for origin in live) == 2

        await wait_until(new_epoch, timeout=10, what="both nodes on a new epoch, above the old origins")
        await wait_until(lambda: client.exists(nodes.session_key(steady.pid)) == 1, timeout=10,
                         what="the connected socket's record written again")
    finally:
        client.close()

    c = await nodes.add()  # takes the next origin: none a running node holds
    await wait_ring([a, b, c], 3)
    on_c = await peers("on-c").connect(c.url)
    await on_c.call("emit", {"rooms": ["study:1"], "event": "said", "data": {"text": "from c"}})
    await wait_until(lambda: texts(steady)[-1:] == ["from c"], what="c's broadcast on a")
    await say(sender, "study:1", "after")
    await wait_until(lambda: texts(steady)[-1:] == ["after"], what="a message after the new epoch")
    new = OriginVector.parse(steady.offset or "")
    assert new is not None and new.epoch != old.epoch and len(new.counts) == 3

    await dropped_and_recovered(steady, a, sender, raw, "steady")


async def test_the_log_in_redis_stays_within_its_bounds(cluster, peers, raw):
    max_bytes = 64 * 1024
    nodes = cluster(COUP_RECOVERY_MAX_BYTES=str(max_bytes))
    a = await nodes.add()
    senders = [await peers(f"s{i}").connect(a.url) for i in range(6)]
    client = await client_in_rooms(a, raw, "bounded")
    first_offset: str | None = None
    text = "x" * 1000
    for i, sender in enumerate(senders):
        await asyncio.gather(*[sender.call("emit", {"rooms": ["study:1"], "event": "said", "data": {"text": text},
                                                    "from_socket": True}) for _ in range(20)])
        if i == 0:
            await wait_until(lambda: len(client.received("said")) == 20, what=f"the first burst {client.transcript}")
            first_offset = client.offset
    await senders[0].call("emit", {"rooms": ["study:1"], "event": "said", "data": {"text": "marker"}})
    await wait_until(lambda: client.received("said")[-1:] == [{"text": "marker"}], what="the marker")

    # entries: NUMBER SP AT_US SP ORIGIN_SOCKET SP ENVELOPE; the bounds count envelope bytes
    lists = nodes.log_lists()
    entries = [entry.split(b" ", 3) for listed, _ in lists for entry in listed]
    held = sum(len(envelope) for *_, envelope in entries)
    assert 0 < held <= max_bytes
    assert len(entries) < 6 * 20  # trimmed: some of the 120 broadcasts are gone
    assert all(0 < ttl for _, ttl in lists)  # an idle log goes away
    # one origin socket holds at most a quarter of the bytes: later senders' resume data stayed
    shares: dict[bytes, int] = {}
    for _number, _at, origin, envelope in entries:
        shares[origin] = shares.get(origin, 0) + len(envelope)
    assert all(size <= max_bytes // 4 for origin, size in shares.items() if origin)

    # an offset whose followers were trimmed is "gone": a fresh session, not a partial replay
    pid = client.pid
    await client.drop()
    back = raw()
    reply = await back.connect(a.url, {"user": "bounded", "pid": pid, "offset": first_offset})
    assert reply["sid"] != client.sid


async def test_the_stock_client_behind_a_router_comes_back_recovered_after_a_sigkill(cluster, peers, js_client):
    """npm socket.io-client through a router without affinity: its node is SIGKILLed, it
    reconnects by itself (to the survivor) and reports `recovered === true`, with every
    message once, in order."""
    from tests.cluster.roundrobin import RoundRobinRouter

    nodes = cluster()
    a, b = await nodes.add(), await nodes.add()
    await wait_ring([a, b], 2)
    router = RoundRobinRouter({a.node_id: a.url, b.node_id: b.url})
    await router.start()
    js = await js_client()
    try:
        sender = await peers("sender").connect(b.url)
        await sender.call("join", {"room": "study:1"})
        first = await js.connect("c", router.url, namespace=NAMESPACE, transports=["websocket"], auth={"user": "js"},
                                 reconnectionDelay=50, reconnectionDelayMax=200, randomizationFactor=0)
        assert first["type"] == "connect" and first["recovered"] is False
        assert (await js.emit_with_ack("c", "whoami", None))[0]["node"] == a.node_id  # the router's first pick
        await js.emit_with_ack("c", "join", {"room": "study:1"})
        seqs = [await say(sender, "study:1", "before")]
        await js.expect(lambda r: r["type"] == "event" and r["event"] == "said", timeout=5)

        a.signal(signal.SIGKILL)
        killed = time.monotonic()
        a.process.wait()  # type: ignore[union-attr]
        seqs += [await say(sender, "study:1", f"while away {i}") for i in range(5)]
        again = await js.expect(lambda r: r["type"] == "connect" and r.get("socket") == "c" and r is not first,
                                timeout=15)
        assert again["recovered"] is True and again["sid"] == first["sid"]
        back_after = time.monotonic() - killed
        seqs.append(await say(sender, "study:1", "after"))

        def said() -> list[int]:
            return [e["args"][0]["seq"] for e in js.events("c", "said")]

        await wait_until(lambda: said()[-1:] == seqs[-1:], what="the message after the reconnect")
        assert said() == seqs  # every message once, in order, missed ones replayed
        print(f"stock client: back and recovered {back_after:.2f} s after the SIGKILL, {len(seqs)} messages once each")
    finally:
        await js.close()  # its WebSocket through the router first: the router waits for open ones
        await router.stop()


async def test_the_nodes_keep_the_log_a_minute_past_a_long_window(own_redis):
    """A window longer than the once-window (120 s): the log a node keeps alive must still live
    the window plus a minute after that node's last refresh, not the once-window's 120 s.
    The node's refresher runs `refresh` every quarter window (30 s at most): the test calls the
    method it calls instead of waiting for it."""
    window_s = 300
    prefix = "r" + secrets.token_hex(3)
    node = await start_node(own_redis.url, prefix, "n0", recovery_window=float(window_s))
    try:
        recovery_log = node.node.sio.of(NAMESPACE).adapter.recovery_log  # type: ignore[attr-defined]
        log_key = f"{prefix}:rlog:{NAMESPACE}:o:{recovery_log.origin}"
        node.node.sio.of(NAMESPACE).to("study:1").emit("said", {"text": "kept"})
        await wait_until(lambda: own_redis.cli("EXISTS", log_key) == "1", what="the log created")
        await recovery_log.refresh([])
        log_ttl_ms = (window_s + 60) * 1000
        for key in (log_key, f"{prefix}:rlog:{NAMESPACE}:live", f"{prefix}:rlog:meta"):
            assert ONCE_WINDOW * 1000 < int(own_redis.cli("PTTL", key)) <= log_ttl_ms, key
    finally:
        await node.node.stop()
