"""Operating a cluster: every node exposes its own metrics, the admin UI sees every node, and
`coup status` reads nodes, ring, room owners and connection counts from Redis."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_asyncio

from coup.config import Secret
from tests.cluster.conftest import RedisServer, redis_server  # noqa: F401 - a fixture
from tests.domain.support import Client, DomainNode, NodeFactory
from tests.ops.scrape import scrape
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
HASH = bcrypt.hashpw(b"a-long-admin-password", bcrypt.gensalt(4)).decode()


@dataclass
class Pair:
    prefix: str
    redis_url: str
    nodes: list[DomainNode]
    clients: list[Client]

    def metrics_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.nodes[i].node.metrics_port}/metrics"

    async def owner_index(self, room: str) -> int:
        cluster = self.nodes[0].node.cluster
        assert cluster is not None
        owner = await cluster.rooms.current_owner(room)
        return next(i for i, n in enumerate(self.nodes) if n.node.sio.node_id == owner)


@pytest_asyncio.fixture
async def pair(make_node: NodeFactory, redis_server: RedisServer) -> AsyncIterator[Pair]:  # noqa: F811
    """Two nodes on one Redis, with metrics and the admin view; Alice on the first, Bob on the second."""
    prefix = "ops" + secrets.token_hex(3)
    nodes = [await make_node(redis_url=redis_server.url, redis_prefix=prefix, node_id=f"{prefix}n{i}",
                             metrics_port=0, admin_user="admin", admin_password_hash=Secret(HASH))
             for i in range(2)]

    async def both_on_the_ring() -> bool:
        return all(len(n.node.cluster.registry.ring.nodes) == 2 for n in nodes if n.node.cluster)

    await eventually(both_on_the_ring, poll=0.05)
    clients = [Client(nodes[0], "websocket"), Client(nodes[1], "websocket")]
    try:
        for user, client in zip((1, 2), clients, strict=True):
            await client.connect(user)
            assert (await client.call("join-study", {"studyId": 1}))["ok"] is True
        yield Pair(prefix, redis_server.url, nodes, clients)
    finally:
        for client in clients:
            await client.close()


async def test_every_node_exposes_its_own_counts(pair: Pair) -> None:
    owner = await pair.owner_index("study:1")
    caller = 1 - owner
    await pair.clients[caller].call("message", {"studyId": 1, "content": "through the owner"})
    await pair.clients[owner].wait("message", lambda m: m["content"] == "through the owner")

    async def probed() -> bool:  # the self-probe runs every second on each node
        got = [await scrape(pair.metrics_url(i)) for i in range(2)]
        return all(g.get("coup_redis_roundtrip_seconds_count") >= 1 and g.get("coup_pubsub_lag_seconds_count") >= 1
                   for g in got)

    await eventually(probed, timeout=10, poll=0.05)
    mine, theirs = await scrape(pair.metrics_url(caller)), await scrape(pair.metrics_url(owner))
    for got in (mine, theirs):
        assert got["coup_connections", {"namespace": "/", "transport": "websocket"}] == 1  # its own client only
        assert got["coup_cluster_nodes", {}] == 2 and got["coup_redis_up", {}] == 1
        assert got["coup_ring_epoch", {}] >= 2
        assert got["coup_redis_publishes_total", {}] > 0
        assert got["coup_relayed_requests_total", {"direction": "relayed"}] == 0  # WebSocket clients: none
        assert got["coup_session_moves_total", {"result": "moved_in"}] == 0
    assert mine["coup_room_commands_total", {"where": "routed"}] >= 1
    assert theirs["coup_room_commands_total", {"where": "served"}] >= 1
    assert mine.get("coup_room_command_timeouts_total") == 0


async def test_the_admin_view_of_one_node_shows_every_node(pair: Pair, js_client: Any) -> None:
    js = await js_client()
    record = await js.connect("ui", pair.nodes[0].url, namespace="/admin",
                              auth={"username": "admin", "password": "a-long-admin-password"})
    assert record["type"] == "connect"
    sockets = (await js.expect_event("ui", "all_sockets"))["args"][0]
    bob_sid = pair.clients[1].sio.get_sid("/")
    bob = next(s for s in sockets if s["id"] == bob_sid)  # a socket of the other node
    assert bob["transport"] == "websocket" and "study:1" in bob["rooms"]
    servers: set[str] = set()
    for _ in range(6):  # each node reports every 2 s
        servers.add((await js.expect_event("ui", "server_stats", timeout=5))["args"][0]["serverId"])
        if len(servers) == 2:
            break
    assert servers == {n.node.sio.node_id for n in pair.nodes}


def coup_status(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "REDIS_", "JWT_"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=pair.redis_url, COUP_REDIS_PREFIX=pair.prefix)
    return subprocess.run([sys.executable, "-m", "coup", "status", *args], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


async def test_coup_status_reads_the_cluster_from_redis(pair: Pair) -> None:
    owner = pair.nodes[await pair.owner_index("study:1")].node.sio.node_id
    epoch = pair.nodes[0].node.cluster.registry.ring.epoch  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    status: dict[str, Any] = {}

    async def reported() -> bool:  # each node writes its counts every 2 s
        nonlocal status
        result = await loop.run_in_executor(None, coup_status, pair, "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        return all(row["connections"] for row in status["nodes"])

    await eventually(reported, timeout=8, poll=0.05)
    assert status["epoch"] == epoch
    assert [n["id"] for n in status["nodes"]] == sorted(n.node.sio.node_id for n in pair.nodes)
    for row in status["nodes"]:
        assert row["connections"] == {"websocket": 1} and row["sockets"]["/"] == 1
        assert row["address"].startswith("127.0.0.1:") and row["last_heartbeat_ms"] < 3000
    study = next(r for r in status["rooms"] if r["room"] == "study:1")
    assert study == {"namespace": "/", "room": "study:1", "owner": owner, "nodes": 2}
    assert status["socket_rooms"] >= 2

    table = await loop.run_in_executor(None, coup_status, pair)
    assert table.returncode == 0, table.stderr
    assert f"ring epoch {epoch}" in table.stdout
    assert all(n.node.sio.node_id in table.stdout for n in pair.nodes)
    line = next(line for line in table.stdout.splitlines() if line.startswith("study:1 "))
    assert line.split() == ["study:1", "/", owner, "2"]


async def test_coup_status_without_redis_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "REDIS_", "JWT_"))}
    env["PYTHONPATH"] = str(ROOT)
    result = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [sys.executable, "-m", "coup", "status"], env=env, capture_output=True, text=True, timeout=30, check=False))
    assert result.returncode == 2 and "REDIS_URL is not set" in result.stderr
