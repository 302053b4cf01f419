"""Redis Cluster (issue 17.2): nodes on a cluster of three primaries with a replica each.

`REDIS_URL=redis+cluster://...` puts the control plane (registry, presence) in one slot, each
namespace's recovery log, session records and room channels in another, and spreads inboxes
and counters (docs/cluster.md#redis-cluster). Room channels are shard channels: a node
subscribes on the primary of each channel's slot. When a primary dies its replica takes over
and every node rebuilds its link from the new slot map, with chat resuming within 5 s.
The contract tests also run here (the ``cluster`` parameter of `nodes` / `redis_nodes`).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from coup.cluster.options import SLOTS, ClusterOptions, group_tag
from coup.cluster.scripts import HEARTBEAT, LOG_PUBLISH, REAP, publishing
from coup.cluster.status import read_status
from coup.domain.roomnames import study_room
from coup.emitter import Emitter
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.conftest import CLUSTER_LOG_GROUPS, Peer, RedisClusterSet, RedisServer, wait_until
from tests.cluster.failover import chat_through_a_failover
from tests.cluster.test_domain_nodes import STUDY
from tests.cluster.test_sentinel import chat_and_emit, client_names, three_nodes_in_a_room

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.parametrize(("sharded", "names"), [
    (False, ["coup:nodes", "coup:n:n1", "coup:r:/chat:study:1", "coup:rlog:/chat", "coup:session:/chat:p"]),
    (True, ["{coup}:nodes", "coup:n:n1", "{coup:/chat}:r:study:1", "{coup:/chat}:rlog", "{coup:/chat}:session:p"]),
])
def test_names_carry_hash_tags_only_on_a_cluster(sharded: bool, names: list[str]) -> None:
    """One Redis keeps the names it always had (nodes of an older release still meet them)."""
    options = ClusterOptions(sharded=sharded)
    made = [options.key("nodes"), options.spread("n", "n1"), options.nsp_key("r", "/chat", "study:1"),
            options.nsp_key("rlog", "/chat"), options.nsp_key("session", "/chat", "p")]
    assert made == names
    assert options.room_channel_parts(names[2]) == ("/chat", "study:1")
    assert options.room_channel_parts(names[0]) is None
    assert ClusterOptions().for_url("redis+cluster://h:7000").sharded
    assert not ClusterOptions(sharded=True).for_url("redis://h").sharded


def test_log_groups_tag_a_namespace_per_group_only_on_a_cluster() -> None:
    """With log groups a room's channel, its group's log and our channel in it share
    ``{P:NSP:g}``; one Redis (and one group) keep the names above."""
    spread = ClusterOptions(sharded=True, log_groups=4)
    group = spread.group_of("study:1")
    assert group == zlib.crc32(b"study:1") % 4
    channel = spread.nsp_key("r", "/chat", "study:1", group=group)
    tag = group_tag("coup", "/chat", group, 4)
    assert tag.split(".")[0] == "coup:/chat:" + str(group)
    assert channel == "{" + tag + "}:r:study:1"
    assert spread.room_channel_parts(channel) == ("/chat", "study:1")
    assert spread.group_of_channel(channel.encode()) == group
    assert spread.nsp_key("rlog", "/chat", group=group) == "{" + tag + "}:rlog"
    assert key_slot(channel.encode()) == key_slot(spread.nsp_key("rlog", "/chat", group=group).encode())
    one = ClusterOptions(sharded=False, log_groups=4)
    assert one.groups == 1 and one.nsp_key("r", "/chat", "study:1", group=0) == "coup:r:/chat:study:1"
    assert ClusterOptions(sharded=True).nsp_key("r", "/chat", "x") == "{coup:/chat}:r:x"


@pytest.mark.parametrize("groups", [2, 3, 4, 6, 64])
def test_each_log_group_takes_the_middle_of_its_share_of_the_slots(groups: int) -> None:
    """So equal runs of slots per primary (how clusters are made) carry equal numbers of groups."""
    options = ClusterOptions(prefix="p" + secrets.token_hex(2), sharded=True, log_groups=groups)
    width = SLOTS / groups
    for group in range(groups):
        slot = key_slot(options.nsp_key("rlog", "/", group=group).encode())
        assert group * width + width / 4 <= slot < group * width + 3 * width / 4
        assert key_slot(options.nsp_key("r", "/", "room", group=group).encode()) == slot


@pytest.mark.parametrize("groups", [3, 6])
def test_log_groups_share_the_primaries_of_a_cluster_evenly(shared_redis_cluster: RedisClusterSet,
                                                            groups: int) -> None:
    """On the tests' 3-primary cluster (made by ``redis-cli --cluster create``), G = 3 or 6 puts
    G/3 groups on each primary, whatever the prefix (hashing ``P:NSP:g`` alone put two of four
    groups of the bench's names on one primary)."""
    for _ in range(3):
        options = ClusterOptions(prefix="e" + secrets.token_hex(3), sharded=True, log_groups=groups)
        owners = [shared_redis_cluster.owner(options.nsp_key("rlog", NAMESPACE, group=g)).port
                  for g in range(groups)]
        assert sorted(collections.Counter(owners).values()) == [groups // 3] * 3, owners


def test_scripts_publish_on_shard_channels_on_a_cluster() -> None:
    for script in (HEARTBEAT, REAP, LOG_PUBLISH):
        assert "'SPUBLISH'" in publishing(script, True) and "'PUBLISH'" not in publishing(script, True)
        assert publishing(script, False) == script


def shard_channels(server: RedisServer, prefix: str) -> set[str]:
    return set(server.cli("PUBSUB", "SHARDCHANNELS", f"*{prefix}*").split())


@pytest.mark.asyncio
async def test_keys_and_channels_land_where_the_layout_says(shared_redis_cluster: RedisClusterSet, peers):
    cluster = shared_redis_cluster
    prefix = "k" + secrets.token_hex(3)
    options = ClusterOptions(prefix=prefix, sharded=True, log_groups=CLUSTER_LOG_GROUPS)
    emitter = Emitter(cluster.url, prefix=prefix, namespace=NAMESPACE, log_groups=CLUSTER_LOG_GROUPS)
    try:
        async with three_nodes_in_a_room(cluster.url, prefix, peers) as (_nodes, members):
            await chat_and_emit(members, emitter)
            # the room's channel is a shard channel on the primary of its log group's slot, next to its log
            group = options.group_of("chat")
            room = options.nsp_key("r", NAMESPACE, "chat", group=group)
            assert room.startswith("{" + group_tag(prefix, NAMESPACE, group, CLUSTER_LOG_GROUPS) + "}")
            home = cluster.owner(room)
            assert home is cluster.owner(options.nsp_key("rlog", NAMESPACE, group=group))
            assert room in shard_channels(home, prefix)
            assert not any(room in shard_channels(s, prefix) for s in cluster.primaries() if s is not home)
            assert home.cli("EXISTS", options.nsp_key("rlog", NAMESPACE, group=group)) == "1"
            # the control plane in one slot; each inbox on the primary of its own slot
            control = cluster.owner(options.key("nodes"))
            assert control.cli("ZCARD", options.key("nodes")) == "3"
            for i in range(3):
                inbox = options.spread("n", f"n{i}")
                assert inbox in shard_channels(cluster.owner(inbox), prefix)
            # every node holds a publishing and a subscribing link on every primary, none on a replica
            for server in cluster.primaries():
                names = client_names(server)
                for i in range(3):
                    assert f"{prefix}:n{i}:pub" in names and f"{prefix}:n{i}:sub" in names
            for server in set(cluster.servers) - set(cluster.primaries()):
                assert not [n for n in client_names(server) if n.startswith(f"{prefix}:n")]
            status = await read_status(cluster.url, ClusterOptions(prefix=prefix, log_groups=CLUSTER_LOG_GROUPS))
            assert [n["id"] for n in status["nodes"]] == ["n0", "n1", "n2"]
            assert [(r["room"], r["nodes"]) for r in status["rooms"]] == [(f"user:{prefix}-{i}", 1) for i in range(3)]
    finally:
        emitter.close()


@pytest.mark.asyncio
async def test_a_slot_that_moves_rebuilds_the_link(redis_cluster: RedisClusterSet, peers: Callable[..., Peer]):
    """A resharding moves the room's slot to another primary: the server ends our shard
    subscription (``sunsubscribe``) and answers MOVED; every node re-reads the slot map and
    subscribes on the new owner, and chat goes on."""
    cluster = redis_cluster
    prefix = "m" + secrets.token_hex(3)
    options = ClusterOptions(prefix=prefix, sharded=True, log_groups=CLUSTER_LOG_GROUPS)
    async with three_nodes_in_a_room(cluster.url, prefix, peers) as (nodes, members):
        room = options.nsp_key("r", NAMESPACE, "chat", group=options.group_of("chat"))
        source = cluster.owner(room)
        target = next(s for s in cluster.primaries() if s is not source)
        slot = source.cli("CLUSTER", "KEYSLOT", room)
        ids = {s.port: s.cli("CLUSTER", "MYID") for s in (source, target)}
        links = [n.node.cluster.bus.connections for n in nodes]  # type: ignore[union-attr]
        # the manual slot migration (the log's keys move with it: the slot is the namespace's)
        assert target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port]) == "OK"
        assert source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port]) == "OK"
        while keys := source.cli("CLUSTER", "GETKEYSINSLOT", slot, "100").split():
            assert source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys) == "OK"
        for server in (target, source):
            assert server.cli("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port]) == "OK"
        started = time.monotonic()
        await wait_until(lambda: all(n.node.cluster.bus.connections > links[i]  # type: ignore[union-attr]
                                     and n.node.cluster.ready for i, n in enumerate(nodes)),  # type: ignore[union-attr]
                         timeout=10, what="every node's link rebuilt")
        await wait_until(lambda: room in shard_channels(target, prefix), what="the room heard on its new owner")
        reply = await members[1].call("say", {"room": "chat", "text": "after the move"})
        for peer in members:
            assert (await peer.wait_for("said"))[-1]["text"] == "after the move"
        assert reply["seq"] == 1
        print(f"slot moved: every link rebuilt {time.monotonic() - started:.2f} s after the migration ended")


@pytest.mark.asyncio
async def test_the_primary_of_the_chat_killed_during_chat(redis_cluster: RedisClusterSet, tmp_path: Path):
    """The primary that holds the study's room channel and the recovery log is SIGKILLed; its
    replica takes its slots (``cluster-node-timeout`` 1 s)."""
    prefix = "cf" + secrets.token_hex(3)

    async def fail_over() -> tuple[float, float]:
        options = ClusterOptions(prefix=prefix, sharded=True, log_groups=CLUSTER_LOG_GROUPS)
        study = options.group_of(study_room(STUDY))
        victim = redis_cluster.owner(options.nsp_key("rlog", "/", group=study))
        victim.kill()
        killed_at = time.monotonic()
        await wait_until(lambda: asyncio.to_thread(redis_cluster.failed_over, victim), timeout=30, poll=0.1,
                         what="a replica promoted in the killed primary's place")
        return killed_at, time.monotonic()

    await chat_through_a_failover(redis_cluster.url, prefix, tmp_path, fail_over, "Redis Cluster failover")


@pytest.mark.asyncio
async def test_a_deaf_subscription_on_any_primary_is_found(shared_redis_cluster: RedisClusterSet, peers):
    """The self-probe publishes on a channel of ours on every primary, not only on the one of
    the node's inbox: a subscription that stopped hearing there is found and the link rebuilt."""
    prefix = "d" + secrets.token_hex(3)
    async with three_nodes_in_a_room(shared_redis_cluster.url, prefix, peers) as (nodes, members):
        bus = nodes[0].node.cluster.bus  # type: ignore[union-attr]
        inbox_primary = bus._owners[key_slot(bus.inbox)]
        elsewhere = next(a for a in bus._probe_channels if a != inbox_primary)
        channel = bus._probe_channels[elsewhere]
        links = bus.connections
        bus._shards[elsewhere][1].send(("SUNSUBSCRIBE", channel))  # deaf there, and only there
        await wait_until(lambda: bus.stats["deaf_repairs"] == 1 and bus.connections > links and bus.ready,
                         timeout=10, what="the deaf subscription found and the link rebuilt")
        reply = await members[0].call("say", {"room": "chat", "text": "heard again"})
        for peer in members:
            assert (await peer.wait_for("said"))[-1]["seq"] == reply["seq"]
