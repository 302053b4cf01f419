"""Cluster fixtures: a real redis-server per test module on a free port, nodes, clients."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import pytest_asyncio
import redis.asyncio
import socketio
from tornado.testing import bind_unused_port

from coup.app import CoupNode
from tests.cluster import cluster_testapp
from tests.cluster.cluster_testapp import NAMESPACE
from tests.cluster.rawclient import RawClient, is_offset
from tests.conftest import require, test_settings
from tests.waiting import eventually, eventually_sync

ROOT = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "service-token-for-tests-0123456789"
JWT_SECRET = "jwt-secret-for-cluster-tests-0123456789-abcdefgh"


def free_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


class RedisServer:
    """A redis-server on a free loopback port that a test may kill and restart."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        #: more redis-server arguments (``--replicaof``)
        self.extra = extra
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait for PING. A first start whose port was
        taken between `free_port` and here (another connection's local port) tries new ports."""
        for _ in range(3):
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--loglevel", "warning", *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.process.poll() is None:
                if self.cli("PING") == "PONG":
                    self._started = True
                    return
                time.sleep(0.02)
            if self.process.poll() is None or self._started:
                break  # running but silent, or a restart: its port is the one clients know
            self.port = free_port()
            self.extra = tuple(str(free_port()) if previous == "--cluster-port" else arg
                               for previous, arg in zip(("", *self.extra), self.extra, strict=False))
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                                timeout=5)
        return result.stdout.strip()

    def lists(self, pattern: str) -> list[tuple[list[bytes], int]]:
        """Each list whose key matches `pattern`: its entries and its time to live (ms)."""
        client = redis.Redis.from_url(self.url)
        try:
            return [(client.lrange(key, 0, -1), client.pttl(key)) for key in client.keys(pattern)]
        finally:
            client.close()


def _running_redis() -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by one test module (tests keep apart by key prefix)."""
    yield from _running_redis()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test (it may be killed)."""
    yield from _running_redis()


SERVICE = "mymaster"


class SentinelSet:
    """A primary, a replica and three redis-sentinel processes (quorum 2) on loopback ports.

    Sentinels mark the primary down after 1 s without an answer, so a killed primary is
    replaced within a few seconds; `watching` tells when the first sentinel announced
    ``+switch-master`` (the failover's end, from which a test measures).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # each in its own directory: a primary and a replica sharing one write and rename the
        # same snapshot file during the full sync
        for name in ("primary", "replica"):
            (workdir / name).mkdir(exist_ok=True)
        # the primary serves its replica at once (diskless sync waits 5 s for more replicas by default)
        self.primary = RedisServer("--dir", str(workdir / "primary"), "--repl-diskless-sync-delay", "0")
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.primary.port),
                                   "--dir", str(workdir / "replica"))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}"

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        # the replica in sync before the sentinels start: a sentinel's first INFO of the primary
        # then lists it, instead of the next one 10 s later
        self._wait(lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"), 20,
                   "the replica never synced with the primary")
        # each sentinel is told its id, the other two and the replica up front: discovered through
        # hello messages (every 2 s) and INFO (every 10 s) instead, a set-up took ~7 s
        ids = {port: secrets.token_hex(20) for port in self.sentinel_ports}
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            others = "".join(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[other]}\n"
                             for other in self.sentinel_ports if other != port)
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\nsentinel myid {ids[port]}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 3000\n"
                            f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}\n{others}")
            log = (self.workdir / f"sentinel-{port}.log").open("ab")
            self.sentinels.append(subprocess.Popen(["redis-sentinel", str(conf)], stdout=log,
                                                   stderr=subprocess.STDOUT))
        self._wait(self._settled, 40, "the sentinels never saw each other and the replica")

    def _wait(self, settled: Callable[[], bool], seconds: float, failure: str) -> None:
        """Poll `settled`; past the deadline, fail with what each process reported."""
        deadline = time.monotonic() + seconds
        while not settled():
            if time.monotonic() > deadline:
                states = [self.sentinel_cli(port, "SENTINEL", "MASTER", SERVICE).replace("\n", " ")
                          for port in self.sentinel_ports[:len(self.sentinels)]]
                replication = self.replica.cli("INFO", "replication").replace("\r\n", " ")
                raise RuntimeError(f"{failure}; replica: {replication}; sentinels: {states}")
            time.sleep(0.1)

    def _settled(self) -> bool:
        """Every sentinel knows the other two and the replica, and the replica is in sync."""
        for port in self.sentinel_ports:
            fields = self.sentinel_cli(port, "SENTINEL", "MASTER", SERVICE).split("\n")
            info = dict(zip(fields[::2], fields[1::2], strict=False))
            if info.get("num-other-sentinels") != "2" or info.get("num-slaves") != "1":
                return False
        return "master_link_status:up" in self.replica.cli("INFO", "replication")

    def sentinel_cli(self, port: int, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5)
        return result.stdout.strip()

    def primary_port(self) -> int:
        return int(self.sentinel_cli(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                     SERVICE).split()[1])

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[asyncio.Future[float]]:
        """A future for the monotonic time a sentinel announces ``+switch-master``."""
        client = redis.asyncio.Redis(port=self.sentinel_ports[0])
        pubsub = client.pubsub()
        await pubsub.subscribe("+switch-master")
        switched: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def listen() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    switched.set_result(time.monotonic())
                    return

        task = asyncio.get_running_loop().create_task(listen())
        try:
            yield switched
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pubsub.aclose()
            await client.aclose()

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.replica.kill()
        self.primary.kill()


class _Startable(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Startable)


def _running(made: _S) -> Iterator[_S]:
    """`made` started for the fixture's scope, stopped after it (also when starting failed half-way)."""
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A Sentinel-managed primary and replica for one test (it may kill the primary)."""
    require(shutil.which("redis-sentinel") is not None, "redis-sentinel")
    yield from _running(SentinelSet(tmp_path))


@pytest.fixture(scope="session")
def shared_sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A Sentinel set-up shared by the whole run (tests keep apart by key prefix; one per
    module cost 7 s of start-up each, six times)."""
    require(shutil.which("redis-sentinel") is not None, "redis-sentinel")
    yield from _running(SentinelSet(tmp_path_factory.mktemp("sentinel")))


class RedisClusterSet:
    """A Redis Cluster of three primaries with one replica each, on loopback ports (Redis >= 7:
    sharded pub/sub).

    Nodes time out after 1 s (``cluster-node-timeout``), so a killed primary's replica takes
    over within a few seconds; ``cluster-require-full-coverage no`` keeps the other shards
    serving meanwhile (what a deployment would want of a chat: most rooms go on).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[RedisServer] = []
        for _ in range(6):
            server = RedisServer("--dir", str(workdir), "--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                                 "--repl-diskless-sync-delay", "0",  # replicas synced at once, not after 5 s
                                 "--cluster-require-full-coverage", "no", "--cluster-replica-validity-factor", "0")
            # the bus port named: its default (port + 10000) is past 65535 for a free port above 55535
            server.extra = (*server.extra, "--cluster-config-file", str(workdir / f"nodes-{server.port}.conf"),
                            "--cluster-port", str(free_port()))
            self.servers.append(server)

    @property
    def url(self) -> str:
        """The seeds: every server, as an operator would list them (any one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        for server in self.servers:
            server.start()
        result = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                                 "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        eventually_sync(self._settled, "the Redis Cluster settled", timeout=20, poll=0.1)

    def _settled(self) -> bool:
        """Every live server says the cluster is ok, knows all servers and three primaries."""
        for server in self.servers:
            if server.process is None:
                continue
            if "cluster_state:ok" not in server.cli("CLUSTER", "INFO"):
                return False
            nodes = [line for line in server.cli("CLUSTER", "NODES").splitlines() if "fail" not in line.split()[2]]
            if len(nodes) != sum(s.process is not None for s in self.servers):
                return False
        return len(self.primaries()) == 3 and all(
            "master_link_status:up" in s.cli("INFO", "replication") for s in self.servers
            if s.process is not None and s not in self.primaries())

    def primaries(self) -> list[RedisServer]:
        """The live servers that are primaries owning slots, as the cluster sees it now."""
        live = next(s for s in self.servers if s.process is not None)
        ports = set()
        for line in live.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                ports.add(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return [s for s in self.servers if s.port in ports and s.process is not None]

    def owner(self, key: str) -> RedisServer:
        """The primary that serves `key`'s slot now."""
        live = next(s for s in self.primaries())
        slot = int(live.cli("CLUSTER", "KEYSLOT", key))
        for entry in live.cli("CLUSTER", "NODES").splitlines():
            fields = entry.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(s for s in self.servers if s.port == port)
        raise LookupError(f"no primary serves the slot of {key!r}")

    def failed_over(self, killed: RedisServer) -> bool:
        """Some replica took `killed`'s slots: three live primaries again, the cluster ok."""
        live = [s for s in self.servers if s.process is not None]
        return len(self.primaries()) == 3 and all("cluster_state:ok" in s.cli("CLUSTER", "INFO") for s in live)

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


def redis_cluster_available() -> None:
    """Skip (or fail under COUP_REQUIRE_ALL) without a redis-server that has sharded pub/sub."""
    require(shutil.which("redis-server") is not None, "redis-server")
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    major = int(version.split("v=", 1)[1].split(".", 1)[0]) if "v=" in version else 0
    require(major >= 7, "redis-server >= 7 (sharded pub/sub)")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    """A Redis Cluster for one test (it may kill a primary)."""
    redis_cluster_available()
    yield from _running(RedisClusterSet(tmp_path))


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """A Redis Cluster shared by every test that does not kill a primary (they keep apart by
    key prefix): started once, as it takes ~6 s (per module it cost 30 of the 44 s the
    ``cluster`` parameter adds to the suite)."""
    redis_cluster_available()
    yield from _running(RedisClusterSet(tmp_path_factory.mktemp("rcluster")))


# ---------------------------------------------------------------------------- in-process nodes


class Node:
    def __init__(self, node: CoupNode, port: int) -> None:
        self.node = node
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


#: recovery log groups of the nodes on the test Redis Cluster: the contract, recovery and emitter
#: suites run with one namespace spread over several slots (one Redis and Sentinel keep 1)
CLUSTER_LOG_GROUPS = 4


def log_groups_for(redis_url: str | None) -> int:
    return CLUSTER_LOG_GROUPS if redis_url is not None and "+cluster://" in redis_url else 1


async def start_node(redis_url: str | None, prefix: str, node_id: str, **settings: Any) -> Node:
    settings.setdefault("recovery_log_groups", log_groups_for(redis_url))
    sock, port = bind_unused_port()
    coup_node = CoupNode(test_settings(redis_url=redis_url, redis_prefix=prefix, node_id=node_id,
                                       service_token=None, **settings))
    cluster_testapp.setup(coup_node)
    await coup_node.start([sock])
    return Node(coup_node, port)


#: the Redis set-ups a `redis_nodes` / `nodes` parameter names, by the module fixture that starts each
REDIS_KINDS = {"redis": "redis_server", "sentinel": "shared_sentinel_set", "cluster": "shared_redis_cluster"}


@pytest_asyncio.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[list[Node]]:
    """Three handles to 'the cluster': one in-memory node three times, or three Redis-linked nodes
    (one redis-server, a Sentinel-managed primary and replica reached through the sentinels, or
    a Redis Cluster of three primaries with a replica each).

    The contract tests run unchanged against all: what holds for one process must hold
    across nodes, whichever way the nodes find their Redis.
    """
    if request.param == "memory":
        single = await start_node(None, "", "solo")
        try:
            yield [single, single, single]
        finally:
            await single.node.stop()
        return
    server = request.getfixturevalue(REDIS_KINDS[request.param])
    async for started in _redis_nodes(server, 3):
        yield started


async def _redis_nodes(server: RedisServer | SentinelSet | RedisClusterSet, count: int) -> AsyncIterator[list[Node]]:
    prefix = "t" + secrets.token_hex(4)
    started = [await start_node(server.url, prefix, f"n{i}") for i in range(count)]
    try:
        await wait_until(lambda: all(len(n.node.cluster.registry.ring.nodes) == count for n in started  # type: ignore[union-attr]
                                     ), what="every node on every ring")
        yield started
    finally:
        for n in started:
            await n.node.stop()


@pytest_asyncio.fixture(params=list(REDIS_KINDS))
async def redis_nodes(request: pytest.FixtureRequest) -> AsyncIterator[list[Node]]:
    """Three in-process nodes linked by the module's redis-server, its Sentinel set-up or its
    Redis Cluster."""
    server = request.getfixturevalue(REDIS_KINDS[request.param])
    async for started in _redis_nodes(server, 3):
        yield started


#: the shared helper under the name cluster tests use
wait_until = eventually
_MARKERS = itertools.count()


async def quiet(node: Node, *watched: Peer | RawClient) -> None:
    """`node` broadcasts a marker to everyone; return once every `watched` peer has it.

    Whatever `node` broadcast before has reached them by then (a node's broadcasts arrive in its
    publish order, and a socket's packets in order), so a test can then assert that something
    did *not* arrive, without sleeping.
    """
    tag = f"marker-{next(_MARKERS)}"
    node.node.sio.of(NAMESPACE).emit("marker", tag)

    def heard(peer: Peer | RawClient) -> bool:
        got = peer.received("marker") if isinstance(peer, RawClient) else peer.events["marker"]
        return tag in got

    for peer in watched:
        await eventually(lambda p=peer: heard(p), f"the marker {tag}")


async def session_stored(node: Node, pid: str) -> None:
    """The dropped session `pid` is stored where a reconnect to any node looks for it."""
    adapter: Any = node.node.sio.of(NAMESPACE).adapter
    cluster = node.node.cluster

    async def stored() -> bool:
        if cluster is None:
            return pid in adapter._store._sessions
        return bool(await cluster.redis.exists(adapter.recovery_log._session_key(pid)))

    await eventually(stored, "the session record is stored")


async def disconnect_handled(node: Node, peer: Peer) -> None:
    """Close `peer` (connected to `node`) and wait until `node` has run its disconnect handler."""
    sid = peer.sio.get_sid(NAMESPACE)
    await peer.close()
    await eventually(lambda: sid in cluster_testapp.DISCONNECTS_HANDLED.get(node.node.sio.node_id, set()),
                     f"{peer.user}'s disconnect handled on its node")


# ---------------------------------------------------------------------------- clients


class Peer:
    """A python-socketio client that records every event it gets (recovery offsets stripped)."""

    def __init__(self, user: str | None = None) -> None:
        self.user = user
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.acks_given: list[Any] = []
        self.answer: Any = "yes"
        self.sio.on("*", self._record, namespace=NAMESPACE)
        self.sio.on("question", self._question, namespace=NAMESPACE)

    async def _record(self, event: str, *args: Any) -> None:
        if args and is_offset(args[-1]):
            args = args[:-1]  # the connection-state-recovery offset
        self.events[event].append(args[0] if len(args) == 1 else list(args))

    async def _question(self, *args: Any) -> Any:
        if self.answer is None:
            await asyncio.sleep(3600)  # never acknowledges
        self.acks_given.append(args[0] if args else None)
        return self.answer

    async def connect(self, url: str, transport: str = "websocket") -> Peer:
        auth = {"user": self.user} if self.user else {}
        await self.sio.connect(url, transports=[transport], auth=auth, wait_timeout=5, namespaces=[NAMESPACE])
        return self

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        return await self.sio.call(event, data, timeout=timeout, namespace=NAMESPACE)

    async def wait_for(self, event: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        await wait_until(lambda: len(self.events[event]) >= count, timeout=timeout,
                         what=f"{count} {event!r} events (got {len(self.events[event])})")
        return self.events[event]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(user: str | None = None) -> Peer:
        peer = Peer(user)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        try:
            await peer.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------- node subprocesses


class NodeProcess:
    """`python -m coup serve` with this worktree on PYTHONPATH, as a real deployment runs it."""

    def __init__(self, redis_url: str, prefix: str, node_id: str, log_dir: Path, **env: str) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{node_id}.log"
        self.env = {
            **os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "COUP_REDIS_PREFIX": prefix,
            "COUP_NODE_ID": node_id, "PORT": str(self.port), "HOST": "127.0.0.1", "COUP_DEMO": "1",
            # the nodes of one cluster share their database and secret, as a deployment does
            "DATABASE_URL": f"sqlite:///{log_dir / 'coup.db'}", "JWT_SECRET": JWT_SECRET,
            "COUP_MESSAGE_RATE": "1000", "COUP_MESSAGE_BURST": "1000",
            "COUP_SERVICE_TOKEN": SERVICE_TOKEN, "COUP_PLUGINS": "tests.cluster.cluster_testapp",
            "COUP_LOG_LEVEL": "INFO",
            # presence transitions at once: these tests count them (the grace has tests of its own)
            "COUP_PRESENCE_GRACE": "0", "COUP_RECOVERY_LOG_GROUPS": str(log_groups_for(redis_url)), **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "coup", "serve"], env=self.env, cwd=str(ROOT),
                                        stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, \
                    f"node {self.node_id} exited: {self.log_path.read_text()[-2000:]}"
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"node {self.node_id} not ready: {self.log_path.read_text()[-2000:]}")

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def api(node: NodeProcess | Node, path: str, token: str | None = SERVICE_TOKEN) -> tuple[int, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}{path}", headers=headers) as response:
        return response.status, await response.json(content_type=None)


class TcpProxy:
    """A loopback TCP proxy to Redis that can make its current connections silently deaf."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[bool]]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        alive = [True]
        self.links.append((writer, up_writer, alive))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if alive[0]:  # a deaf link swallows everything but stays open
                        dst.write(data)
            except (OSError, asyncio.CancelledError):
                pass

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def deafen(self) -> None:
        """Every connection open now stops carrying data, without closing (a half-dead TCP link)."""
        for _, _, alive in self.links:
            alive[0] = False

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for down, up, _ in self.links:
            down.close()
            up.close()


async def say_retrying(peer: Peer, room: str, text: str, within: float = 10.0) -> dict[str, Any]:
    """A chat message through the room's owner, retried as a client does with a retryable
    error: the same idempotency key, after a pause (a node whose link to Redis is coming back,
    or whose room is changing owner, answers UNAVAILABLE at once: retries without a pause all
    landed within milliseconds)."""
    key = secrets.token_hex(8)
    deadline = time.monotonic() + within
    while True:
        reply = await peer.call("say", {"room": room, "text": text, "key": key})
        if "seq" in reply:
            return dict(reply)
        assert reply["error"]["code"] == "UNAVAILABLE", reply
        if time.monotonic() > deadline:
            raise AssertionError(f"no acknowledgement in {within} s: {reply}")
        await asyncio.sleep(0.2)
