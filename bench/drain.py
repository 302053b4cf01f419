"""Drain: how fast the clients of a SIGTERM'd node are back, recovered, on another node.

    python bench/drain.py [--clients 1000] [--spread 1.0] [--grace 3.0]
    python bench/drain.py --redis-shards 3 --log-groups 6      # on a Redis Cluster, log groups

Two `coup serve` nodes (A, B) on one redis-server and one SQLite database seeded with
`--clients` users in studies of 20. Every client (a raw WebSocket speaking Engine.IO /
Socket.IO, from ten loopback addresses) connects to A, joins its study, and receives one
message there, so it holds a recovery offset as the stock client does. Then A gets SIGTERM.
Each client, when its connection ends, waits what socket.io-client's default backoff waits
before its first attempt (0.5-1.5 s) and reconnects to B with its pid and offset (a router
with /readyz health checks sends it there: A answers 503 from the SIGTERM on).

Printed: A's drain time (SIGTERM to exit); per client, the time from the SIGTERM to being
connected again, and from its own disconnect to being connected again (p50, p90, max), how
many came back recovered (`pid` kept), how many failed; the target is every client back and
recovered within 5 s of the SIGTERM. Every process is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402

from bench.cluster_common import redis_server  # noqa: E402
from bench.soak import ADDRESSES, Server, seed, wait_ready  # noqa: E402
from tests.adversarial.attacks import sio_socket  # noqa: E402
from tests.wsclient import RawWebSocket, emit_with_ack, socketio_events  # noqa: E402


@dataclass(frozen=True)
class Target:
    host: str
    port: int


class Node(Server):
    """A cluster node (soak's server, with the cluster's environment instead of demo mode)."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, tree: Path = ROOT) -> None:
        super().__init__(workdir, env["JWT_SECRET"])
        self.name = name
        self.tree = tree
        self.env = {**env, "COUP_NODE_ID": name, "PYTHONPATH": str(tree)}
        self.log_path = workdir / f"{name}.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "coup", "serve", "--host", "127.0.0.1",
                                          "--port", str(self.port)], cwd=self.tree, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_ready(self.port, self.log_path)


class Client:
    def __init__(self, user_id: int, study_id: int, address: str, secret: str) -> None:
        self.user_id = user_id
        self.study_id = study_id
        self.address = address
        self.token = jwt.encode({"sub": str(user_id), "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        self.pid: str | None = None
        self.offset: str | None = None
        self.ws: RawWebSocket | None = None
        self.closed_at: float | None = None
        self.back_at: float | None = None
        self.recovered: bool | None = None
        self.attempts = 0
        #: loop times of the successful reconnect's phases ("attempt", "tcp", "upgraded", "opened")
        self.marks: dict[str, float] = {}
        self.error: str | None = None
        self.got_message = asyncio.Event()
        self.gone = asyncio.Event()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, target: Target, marks: dict[str, float] | None = None) -> bool:
        """Connect (with pid and offset when it has them); True when the session was recovered."""
        auth: dict[str, Any] = {"userId": self.user_id, "token": self.token}
        if self.pid is not None and self.offset is not None:
            auth.update(pid=self.pid, offset=self.offset)
        ws, reply = await sio_socket(target, auth, local_addr=self.address, marks=marks)  # type: ignore[arg-type]
        recovered = self.pid is not None and reply.get("pid") == self.pid
        self.pid = reply.get("pid")
        self.ws = ws
        self.gone = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        return recovered

    async def call(self, event: str, payload: dict[str, Any]) -> Any:
        assert self.ws is not None
        ack_id = len(self._acks) + 1 + random.randrange(1 << 20)
        return await emit_with_ack(self.ws, self._acks, ack_id, event, payload, 30)

    async def _read(self, ws: RawWebSocket) -> None:
        try:
            async for args in socketio_events(ws, self._acks):
                if len(args) > 2 and isinstance(args[-1], str):
                    self.offset = args[-1]
                if args[0] == "message":
                    self.got_message.set()
        except (OSError, asyncio.IncompleteReadError, AssertionError, TimeoutError, UnicodeDecodeError):
            pass
        self.closed_at = time.monotonic()
        self.gone.set()

    async def come_back(self, target: Target, deadline: float) -> None:
        """After the connection ended: socket.io-client's first delay, then reconnect until it works."""
        await self.gone.wait()
        delay = random.uniform(0.5, 1.5)  # reconnectionDelay 1000 ms, randomizationFactor 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            self.attempts += 1
            marks = {"attempt": time.monotonic()}
            try:
                self.recovered = await self.connect(target, marks)
                self.back_at = time.monotonic()
                self.marks = marks
                return
            except Exception as exc:  # counted and retried, as the client does
                self.error = f"{type(exc).__name__}: {str(exc)[:80]}"
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()


PHASES = (("backoff", "closed", "attempt"), ("tcp connect", "attempt", "tcp"), ("ws upgrade", "tcp", "upgraded"),
          ("engine open", "upgraded", "opened"), ("sio connect", "opened", "back"))


def _ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the loopback listener on `port` (rx_queue of LISTEN)."""
    suffix = f":{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and fields[1].endswith(suffix):
                return int(fields[4].split(":")[1], 16)
    return 0


def tcp_counters() -> dict[str, int]:
    """The kernel's TcpExt counters that say a SYN or an accept was dropped (machine-wide)."""
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            return {k: row.get(k, 0) for k in ("ListenOverflows", "ListenDrops", "TCPSynRetrans")}
    return {}


class Sampler:
    """Every 0.1 s: the CPU of each process of the run and B's accept queue, for the timeline."""

    def __init__(self, pids: dict[str, int], port: int) -> None:
        self.pids = pids
        self.port = port
        self.samples: list[tuple[float, dict[str, int], int]] = []

    async def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), {name: _ticks(pid) for name, pid in self.pids.items()},
                                 _accept_queue(self.port)))
            await asyncio.sleep(0.1)

    def cpu_seconds(self, name: str, start: float, end: float) -> float:
        """CPU seconds process `name` used between `start` and `end` (the samples nearest inside)."""
        inside = [s for s in self.samples if start <= s[0] <= end and s[1][name]]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1][1][name] - inside[0][1][name]) / os.sysconf("SC_CLK_TCK")

    def timeline(self, term: float, clients: list[Client], step: float = 0.5) -> None:
        """Per `step` s after the SIGTERM: closes, attempts, connects, CPU % of each process, accept queue."""
        hz = os.sysconf("SC_CLK_TCK")
        names = list(self.pids)
        print("t after SIGTERM | closed | attempts | back | " + " | ".join(f"{n} CPU %" for n in names)
              + " | B accept queue max")
        end = max(c.back_at or term for c in clients) + step
        at = term
        while at < end:
            inside = [s for s in self.samples if at <= s[0] < at + step]
            cpu = []
            for name in names:
                if len(inside) < 2 or inside[-1][1][name] == 0:
                    cpu.append("-")
                else:
                    used = (inside[-1][1][name] - inside[0][1][name]) / hz
                    cpu.append(f"{100 * used / (inside[-1][0] - inside[0][0]):.0f}")

            def count(times: list[float | None], lo: float = at) -> int:
                return sum(1 for t in times if t is not None and lo <= t < lo + step)
            print(f"{at - term:4.1f}-{at - term + step:4.1f} s | {count([c.closed_at for c in clients]):6} | "
                  f"{count([c.marks.get('attempt') for c in clients]):8} | {count([c.back_at for c in clients]):4} | "
                  + " | ".join(f"{v:>{len(n) + 6}}" for v, n in zip(cpu, names, strict=True))
                  + f" | {max((s[2] for s in inside), default=0)}")
            at += step


def phases(clients: list[Client], term: float) -> None:
    """Where each client's time went, p50 / p95 / max per phase, and the same for the slowest 5 %."""
    back = [c for c in clients if c.back_at is not None and c.closed_at is not None]
    for c in back:
        c.marks.update(closed=c.closed_at or 0.0, back=c.back_at or 0.0)
    tail = sorted(back, key=lambda c: c.marks["back"])[-max(1, len(back) // 20):]
    print("phase | p50 | p95 | max | mean in the slowest 5 %")
    for name, start, end in (("SIGTERM -> closed", "", "closed"), *PHASES):
        values = [c.marks[end] - (c.marks[start] if start else term) for c in back]
        slow = [c.marks[end] - (c.marks[start] if start else term) for c in tail]
        print(f"{name} | {percentile(values, 0.5):.3f} | {percentile(values, 0.95):.3f} | {max(values):.3f} | "
              f"{sum(slow) / len(slow):.3f}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="coup-drain-"))
    secret = secrets.token_urlsafe(48)
    url = f"sqlite:///{workdir / 'coup.db'}"
    users = seed(url, args.clients)
    clients = [Client(uid, sid, ADDRESSES[i % len(ADDRESSES)], secret) for i, (uid, sid) in enumerate(users.items())]
    async with redis_for(args) as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COUP_", "REDIS_", "DATABASE_", "JWT_"))}
        env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "DATABASE_URL": url, "REDIS_URL": redis_url,
                    "JWT_SECRET": secret, "COUP_LOG_LEVEL": "INFO", "COUP_DRAIN_SPREAD": str(args.spread),
                    "COUP_PRESENCE_GRACE": str(args.grace), "COUP_REDIS_PREFIX": "drain" + secrets.token_hex(3),
                    "COUP_RECOVERY_LOG_GROUPS": str(args.log_groups)})
        log = RecoveryLogs(redis_url, env["COUP_REDIS_PREFIX"], args.log_groups)
        nodes = [Node("A", env, workdir, args.server_tree), Node("B", env, workdir, args.server_tree)]
        try:
            for node in nodes:
                node.start()
            a, b = (Target("127.0.0.1", n.port) for n in nodes)
            started = time.monotonic()
            for start in range(0, len(clients), 100):
                batch = clients[start:start + 100]
                await asyncio.gather(*(c.connect(a) for c in batch))
                await asyncio.gather(*(c.call("join-study", {"studyId": c.study_id}) for c in batch))
            print(f"{len(clients)} clients connected to A and joined in {time.monotonic() - started:.1f} s",
                  flush=True)
            first_of_study = {c.study_id: c for c in reversed(clients)}
            await asyncio.gather(*(c.call("message", {"studyId": c.study_id, "content": "hello"})
                                   for c in first_of_study.values()))
            await asyncio.wait_for(asyncio.gather(*(c.got_message.wait() for c in clients)), 60)
            assert all(c.offset is not None for c in clients), "a client holds no recovery offset"
            deadline = time.monotonic() + 60
            back = [asyncio.get_running_loop().create_task(c.come_back(b, deadline)) for c in clients]
            assert nodes[0].proc is not None and nodes[1].proc is not None
            pids = {"A": nodes[0].proc.pid, "B": nodes[1].proc.pid, **log.redis_pids(), "bench": os.getpid()}
            sampler = Sampler(pids, b.port)
            sampling = asyncio.get_running_loop().create_task(sampler.run())
            counters = tcp_counters()
            logged = log.lengths()
            profiler = None
            if args.profile:  # B's stacks from the SIGTERM on, for bench/pyspy_top.py
                profiler = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(nodes[1].proc.pid), "-r", "200",
                    "-d", "6", "--format", "raw", "-o", args.profile, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
            term = time.monotonic()
            assert nodes[0].proc is not None
            nodes[0].proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(nodes[0].proc.wait, 40)
            drain = time.monotonic() - term
            await asyncio.gather(*back)
            await asyncio.sleep(0.2)
            sampling.cancel()
            dropped_syn = {k: v - counters[k] for k, v in tcp_counters().items()}
            if profiler is not None:
                await asyncio.wait_for(profiler.wait(), 30)
            from_term = [c.back_at - term for c in clients if c.back_at is not None]
            from_drop = [c.back_at - c.closed_at for c in clients if c.back_at is not None and c.closed_at]
            dropped = [c.closed_at - term for c in clients if c.closed_at is not None]
            recovered = sum(1 for c in clients if c.recovered)
            failed = [c for c in clients if c.back_at is None]
            print(f"A drained and exited (code {code}) in {drain:.2f} s "
                  f"(COUP_DRAIN_SPREAD={args.spread}, COUP_PRESENCE_GRACE={args.grace})")
            print(f"connections closed by A: {len(dropped)}, from {min(dropped):.2f} to {max(dropped):.2f} s "
                  f"after the SIGTERM")
            print(f"back on B: {len(from_term)} of {len(clients)}, recovered {recovered}, failed {len(failed)}"
                  + (f" (e.g. {failed[0].error})" if failed else ""))
            print(f"SIGTERM -> connected again: p50 {percentile(from_term, 0.5):.2f} s, "
                  f"p90 {percentile(from_term, 0.9):.2f} s, max {max(from_term):.2f} s")
            print(f"own disconnect -> connected again: p50 {percentile(from_drop, 0.5):.2f} s, "
                  f"max {max(from_drop):.2f} s (includes the client's own 0.5-1.5 s first delay)")
            print(f"SIGTERM -> connected again, p50 / p95 / max: {percentile(from_term, 0.5):.2f} / "
                  f"{percentile(from_term, 0.95):.2f} / {max(from_term):.2f} s")
            print(f"reconnect attempts: {sum(c.attempts for c in clients)}; "
                  f"all back and recovered within 5 s: {recovered == len(clients) and max(from_term) <= 5.0}")
            print(f"kernel TCP counters during the drain (machine-wide): {dropped_syn}")
            print(f"recovery log entries: {sum(logged.values())} at the SIGTERM, {sum(log.lengths().values())} "
                  "when all were back "
                  f"({args.log_groups} log group(s)), appended meanwhile: {log.events_since(logged)}")
            first_try = min(c.marks["attempt"] for c in clients if "attempt" in c.marks)
            last_back = max(c.back_at for c in clients if c.back_at is not None)
            print("CPU per client back, from the first attempt to the last one back: " + ", ".join(
                f"{name} {sampler.cpu_seconds(name, first_try - 0.1, last_back + 0.1) * 1000 / len(from_term):.2f} ms"
                for name in pids))
            phases(clients, term)
            sampler.timeline(term, clients)
        finally:
            for client in clients:
                await client.close()
            for node in nodes:
                node.stop()
    return 0


@contextlib.asynccontextmanager
async def redis_for(args: argparse.Namespace) -> AsyncIterator[str]:
    """One redis-server, or (``--redis-shards S``) a Redis Cluster of S primaries: its URL."""
    if not args.redis_shards:
        async with redis_server() as (url, _):
            yield url
        return
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))  # cluster_launch imports its neighbours by name
    from cluster_launch import start_redis_cluster

    children: list[subprocess.Popen[bytes]] = []
    try:
        url, _clients = await asyncio.to_thread(start_redis_cluster, children, args.redis_shards)
        yield url
    finally:
        for child in children:
            child.kill()
            child.wait()


def redis_pid(url: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).info("server")["process_id"])


class RecoveryLogs:
    """The main namespace's recovery logs: one per origin on one Redis (`coup.cluster.origin_log`),
    one per log group on a Redis Cluster."""

    def __init__(self, url: str, prefix: str, groups: int) -> None:
        from coup.cluster.options import ClusterOptions
        from coup.redis_clients import sync_client

        options = ClusterOptions(prefix=prefix, log_groups=groups).for_url(url)
        self.cluster = options.sharded
        self.keys = [options.nsp_key("rlog", "/", group=g) for g in range(options.groups)]
        self.origin_lists = None if self.cluster else options.nsp_key("rlog", "/", "o", "*")
        self.client: Any = sync_client(url)

    def _keys(self) -> list[str]:
        if self.origin_lists is None:
            return self.keys
        return sorted(key.decode() for key in self.client.keys(self.origin_lists))

    def redis_pids(self) -> dict[str, int]:
        """Each redis-server's pid, by name (``redis``; on a cluster ``redis0``, ``redis1``, ...)."""
        if not self.cluster:
            return {"redis": int(self.client.info("server")["process_id"])}
        servers = self.client.info("server", target_nodes=self.client.get_primaries())
        return {f"redis{i}": int(info["process_id"]) for i, info in enumerate(servers.values())}

    def lengths(self) -> dict[str, int]:
        """Entries in each log: what a restore reads past its offset (in the groups of its rooms)."""
        return {key: int(self.client.llen(key)) for key in self._keys()}

    def events_since(self, start: dict[str, int]) -> dict[str, int]:
        """How many entries of each event name the logs hold past `start` (an index per log; a
        log not in it is read whole)."""
        import json

        names: dict[str, int] = {}
        for key in self._keys():
            for entry in self.client.lrange(key, start.get(key, 0), -1):
                text = entry.split(b"\n", 1)[1].decode()
                name = str(json.loads(text[text.index("["):])[0])
                names[name] = names.get(name, 0) + 1
        return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--redis-shards", type=int, default=0, help="a Redis Cluster of this many primaries")
    parser.add_argument("--log-groups", type=int, default=1, help="COUP_RECOVERY_LOG_GROUPS (with --redis-shards)")
    parser.add_argument("--server-tree", metavar="DIR", help="run the nodes from this checkout (an A/B against "
                        "another commit: `git archive COMMIT | tar -x -C DIR`), this bench's clients either way")
    parser.add_argument("--profile", metavar="PATH", help="py-spy B for 6 s from the SIGTERM (raw stacks to PATH)")
    args = parser.parse_args()
    args.server_tree = Path(args.server_tree).resolve() if args.server_tree else ROOT
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
