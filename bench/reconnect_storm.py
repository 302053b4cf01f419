"""Reconnect storm: a node with N idle clients dies; they all reconnect to the two others.

    python bench/reconnect_storm.py [--clients 10000] [--rounds 1] [--peers node,ours]

Per peer, in one run, interleaved by round: a throw-away redis-server and three nodes on it
(ours: `bench/cluster_node.py`, the real `CoupNode` with the Redis adapter, each on its own
port; Node: `bench/storm_ref/server.js`, socket.io 4.8 + @socket.io/redis-adapter, default
settings). `--clients` raw Socket.IO clients (`bench/drain.py`'s, from ten loopback
addresses) connect to node 0 and join a study room of 20 (`join-study` with an ack). Then
node 0 gets SIGKILL (a crash or a hard restart: every connection ends at once, the same for
both peers; our SIGTERM would spread the closes over COUP_DRAIN_SPREAD). Each client waits
socket.io-client's first reconnection delay (0.5-1.5 s), reconnects to node 1 or 2 (by its
index: a round-robin router) and joins its room again.

Printed per run: connect time (attempt -> CONNECT reply, what the shared harness's `connect`
scenario measures) p50 / p99 / max, attempt -> joined again p99, kill -> every client connected
and joined, the survivors' peak RSS and CPU (and redis-server's, and this client's), the
survivors' accept-queue peak, the kernel's ListenOverflows / ListenDrops / TCPSynRetrans over
the storm, reconnect attempts; and the kernel's somaxconn / tcp_max_syn_backlog once.
Every process is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench import drain  # noqa: E402
from bench.cluster_common import free_port, redis_server  # noqa: E402
from bench.drain import Client, Target, percentile, redis_pid, tcp_counters  # noqa: E402
from bench.soak import ADDRESSES  # noqa: E402

TOKEN = "bench-service-token-0123456789"  # bench/cluster_node.py's service token
STORM_REF = HERE / "storm_ref"


class StormClient(Client):
    """drain.py's client, timing its reconnect (attempt, connected, joined) to one of several nodes."""

    attempt_at: float | None = None
    connected_at: float | None = None
    joined_at: float | None = None

    async def storm_back(self, targets: list[Target], index: int, deadline: float) -> None:
        await self.gone.wait()
        await self.close()  # the dead connection's socket, before the new one takes an fd
        delay = random.uniform(0.5, 1.5)  # socket.io-client: reconnectionDelay 1000 ms, randomizationFactor 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            self.attempts += 1
            self.attempt_at = time.monotonic()
            self.marks = {"attempt": self.attempt_at}  # for drain.Sampler's timeline
            try:
                await self.connect(targets[(index + self.attempts - 1) % len(targets)])
                self.connected_at = time.monotonic()
                await self.call("join-study", {"studyId": self.study_id})
                self.joined_at = self.back_at = time.monotonic()
                return
            except Exception as exc:  # counted and retried, as the client does
                self.error = f"{type(exc).__name__}: {str(exc)[:80]}"
                await self.close()
                delay = min(delay * 2, 5.0)


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(drain.Sampler):
    """drain.py's sampler (CPU ticks, accept queue, the timeline), with RSS and several ports."""

    def __init__(self, pids: dict[str, int], ports: list[int]) -> None:
        super().__init__(pids, ports[0])
        self.ports = ports
        self.rss: list[tuple[float, dict[str, int]]] = []
        self.busy: list[tuple[float, int]] = []

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            self.samples.append((now, {n: drain._ticks(p) for n, p in self.pids.items()},
                                 max(drain._accept_queue(port) for port in self.ports)))
            self.rss.append((now, {n: rss_kb(p) for n, p in self.pids.items()}))
            self.busy.append((now, machine_busy_ticks()))
            await asyncio.sleep(0.1)

    def cpu(self, name: str, start: float, end: float) -> tuple[float, float]:
        """(CPU seconds, % of a core) of `name` between `start` and `end`."""
        used = self.cpu_seconds(name, start, end)
        return used, 100 * used / (end - start)

    def foreign_pct(self, start: float, end: float) -> float:
        """Busy CPU of the machine minus this run's processes, in % of one core."""
        inside = [b for b in self.busy if start <= b[0] <= end]
        if len(inside) < 2:
            return float("nan")
        busy = (inside[-1][1] - inside[0][1]) / os.sysconf("SC_CLK_TCK")
        ours = sum(self.cpu_seconds(n, start, end) for n in self.pids)
        return 100 * (busy - ours) / (inside[-1][0] - inside[0][0])

    def peak_rss_mb(self, name: str, start: float) -> float:
        return max((s[1][name] for s in self.rss if s[0] >= start), default=0) / 1024

    def peak_queue(self, start: float) -> int:
        return max((s[2] for s in self.samples if s[0] >= start), default=0)


def loadavg() -> str:
    with open("/proc/loadavg") as average:
        return average.read().split()[0]


def machine_busy_ticks() -> int:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


class Cluster:
    """Three nodes of one peer on a redis-server, each on its own port, started and stopped by PID."""

    def __init__(self, peer: str, redis_url: str, workdir: Path, backlog: int | None) -> None:
        self.peer = peer
        self.redis_url = redis_url
        self.workdir = workdir
        self.backlog = backlog
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()  # COUP_BENCH_* pass: bench/cluster_node.py's experiments
               if k.startswith("COUP_BENCH_") or not k.startswith(("COUP_", "REDIS_"))}
        env.update(PYTHONPATH=str(ROOT), REDIS_URL=self.redis_url, PYTHONUNBUFFERED="1")
        if self.backlog is not None:
            env["COUP_LISTEN_BACKLOG"] = str(self.backlog)
        go = self.workdir / f"go-{self.peer}"
        private = [free_port() for _ in self.ports]
        for i, port in enumerate(self.ports):
            if self.peer == "ours":
                command = [sys.executable, str(HERE / "cluster_node.py"), "--port", str(port), "--private-port",
                           str(private[i]), "--node-id", f"n{i}", "--redis-url", self.redis_url, "--go", str(go)]
            else:
                command = ["node", str(STORM_REF / "server.js")]
            with (self.workdir / f"{self.peer}-{i}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(command, env={**env, "PORT": str(port)}, stdout=log,
                                                   stderr=subprocess.STDOUT, process_group=0))
        if self.peer == "ours":  # every node in the cluster view before the public ports open
            wait_for(lambda: all(len(get_json(f"http://127.0.0.1:{p}/api/cluster", TOKEN)["nodes"]) == 3
                                 for p in private), self)
            go.touch()
        wait_for(lambda: all(port_open(p) for p in self.ports), self)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(ready: Any, cluster: Cluster, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in cluster.procs):
            raise RuntimeError(f"{cluster.peer} nodes did not come up; see {cluster.workdir}")
        time.sleep(0.1)


def kernel_limits() -> str:
    values = []
    for path in ("/proc/sys/net/core/somaxconn", "/proc/sys/net/ipv4/tcp_max_syn_backlog"):
        values.append(f"{path.rsplit('/', 1)[1]}={Path(path).read_text().strip()}")
    return ", ".join(values)


@dataclass
class Outcome:
    """One Node client's storm (bench/storm_ref/stormgen.js), in the shape drain.Sampler.timeline reads."""

    closed_at: float | None
    attempt_at: float | None
    connected_at: float | None
    joined_at: float | None
    attempts: int
    error: str | None = None

    @property
    def back_at(self) -> float | None:
        return self.joined_at

    @property
    def marks(self) -> dict[str, float]:
        return {} if self.attempt_at is None else {"attempt": self.attempt_at}


class PythonClients:
    """`--client python`: drain.py's clients in this process (~0.9 ms of CPU per reconnect: the bottleneck)."""

    def __init__(self, count: int) -> None:
        secret = secrets.token_urlsafe(48)
        self.clients = [StormClient(i + 1, i // 20 + 1, ADDRESSES[i % len(ADDRESSES)], secret) for i in range(count)]
        self.back: list[asyncio.Task[None]] = []

    async def connect(self, ports: list[int], in_flight: int, timeout: float) -> None:
        first = Target("127.0.0.1", ports[0])
        for start in range(0, len(self.clients), in_flight):
            batch = self.clients[start:start + in_flight]
            await asyncio.gather(*(c.connect(first) for c in batch))
            await asyncio.gather(*(c.call("join-study", {"studyId": c.study_id}) for c in batch))
        survivors = [Target("127.0.0.1", p) for p in ports[1:]]
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        self.back = [loop.create_task(c.storm_back(survivors, i, deadline)) for i, c in enumerate(self.clients)]

    async def outcomes(self) -> list[Any]:
        await asyncio.gather(*self.back)
        return self.clients

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


class NodeClients:
    """`--client node`: bench/storm_ref/stormgen.js, one Node process (0.25-0.4 ms of CPU per reconnect here)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.proc: asyncio.subprocess.Process | None = None

    async def connect(self, ports: list[int], in_flight: int, timeout: float) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(STORM_REF / "stormgen.js"), "--first", str(ports[0]), "--survivors",
            ",".join(map(str, ports[1:])), "--clients", str(self.count), "--in-flight", str(in_flight),
            "--timeout", str(timeout), stdout=subprocess.PIPE, limit=2**26)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"stormgen.js: {line[:200]!r}")

    async def outcomes(self) -> list[Any]:
        assert self.proc is not None and self.proc.stdout is not None
        rows = json.loads(await self.proc.stdout.readline())
        return [Outcome(*row[:4], attempts=row[4], error=None if row[3] else "not back") for row in rows]

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def storm(peer: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load = loadavg()
    async with redis_server() as (redis_url, _):
        name, _, backlog = peer.partition(":")  # ours:4096 - this run's COUP_LISTEN_BACKLOG
        cluster = Cluster(name, redis_url, workdir, int(backlog) if backlog else args.backlog)
        generator = NodeClients(args.clients) if args.client == "node" else PythonClients(args.clients)
        try:
            await asyncio.to_thread(cluster.start)
            started = time.monotonic()
            await generator.connect(cluster.ports, args.in_flight, args.timeout)
            setup = time.monotonic() - started
            pids = {"node1": cluster.procs[1].pid, "node2": cluster.procs[2].pid, "redis": redis_pid(redis_url),
                    "client": generator.proc.pid if isinstance(generator, NodeClients) and generator.proc
                    else os.getpid()}
            sampler = Sampler(pids, cluster.ports[1:])
            sampling = asyncio.get_running_loop().create_task(sampler.run())
            await asyncio.sleep(0.3)
            rss_before = {n: rss_kb(p) / 1024 for n, p in pids.items()}
            counters = tcp_counters()
            profiler = None
            if args.profile and cluster.peer == "ours":  # survivor 1's stacks from the kill on, for bench/pyspy_top.py
                profiler = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pids["node1"]), "-r", "200",
                    "-d", "8", "--format", "raw", "-o", args.profile, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
            killed = time.monotonic()
            cluster.procs[0].kill()
            clients = await generator.outcomes()
            await asyncio.sleep(0.2)
            sampling.cancel()
            dropped = {k: v - counters[k] for k, v in tcp_counters().items()}
            if profiler is not None:
                await asyncio.wait_for(profiler.wait(), 30)
            if args.timeline:
                sampler.timeline(killed, clients, args.timeline)
        finally:
            await generator.close()
            cluster.stop()
    ok = [c for c in clients if c.joined_at is not None]
    connect = [1000 * (c.connected_at - c.attempt_at) for c in ok if c.connected_at and c.attempt_at]
    joined = [1000 * (c.joined_at - c.attempt_at) for c in ok if c.joined_at and c.attempt_at]
    first_attempt = min((c.attempt_at for c in clients if c.attempt_at), default=killed)
    last = max((c.joined_at for c in ok if c.joined_at), default=killed)
    failed = [c for c in clients if c.joined_at is None]
    return {
        "peer": peer, "client": args.client, "clients": len(clients), "setup_s": setup, "back": len(ok),
        "failed": len(failed), "error": failed[0].error if failed else None,
        "attempts": sum(c.attempts for c in clients),
        "connect_p50_ms": percentile(connect, 0.5), "connect_p99_ms": percentile(connect, 0.99),
        "connect_max_ms": max(connect, default=float("nan")), "joined_p99_ms": percentile(joined, 0.99),
        "kill_to_all_joined_s": last - killed, "first_attempt_to_all_joined_s": last - first_attempt,
        "cpu": {n: sampler.cpu(n, first_attempt - 0.05, last + 0.05) for n in pids},
        "foreign_cpu_pct": sampler.foreign_pct(first_attempt - 0.05, last + 0.05),
        "rss_before_mb": rss_before, "peak_rss_mb": {n: sampler.peak_rss_mb(n, killed) for n in pids},
        "accept_queue_peak": sampler.peak_queue(killed), "kernel": dropped, "load": load,
    }


def report(r: dict[str, Any]) -> None:
    cpu = ", ".join(f"{n} {s:.2f} s ({pct:.0f} %)" for n, (s, pct) in r["cpu"].items())
    rss = ", ".join(f"{n} {r['rss_before_mb'][n]:.0f} -> {r['peak_rss_mb'][n]:.0f}" for n in r["cpu"])
    print(f"--- {r['peer']}: {r['clients']} {r['client']} clients on node 0 (connected and joined in "
          f"{r['setup_s']:.1f} s), node 0 SIGKILLed, load {r['load']}")
    print(f"  back and joined: {r['back']}, failed {r['failed']}" + (f" (e.g. {r['error']})" if r["error"] else "")
          + f", reconnect attempts {r['attempts']}")
    print(f"  connect (attempt -> CONNECT reply) p50 / p99 / max: {r['connect_p50_ms']:.0f} / "
          f"{r['connect_p99_ms']:.0f} / {r['connect_max_ms']:.0f} ms; "
          f"attempt -> joined p99 {r['joined_p99_ms']:.0f} ms")
    print(f"  kill -> all connected and joined {r['kill_to_all_joined_s']:.2f} s "
          f"(first attempt -> all joined {r['first_attempt_to_all_joined_s']:.2f} s)")
    print(f"  CPU from the first attempt to the last join: {cpu}; other processes {r['foreign_cpu_pct']:.0f} %")
    print(f"  RSS MB before -> peak during the storm: {rss}")
    print(f"  survivors' accept queue peak {r['accept_queue_peak']}; kernel over the storm: {r['kernel']}")


async def main_async(args: argparse.Namespace) -> int:
    print(f"kernel: {kernel_limits()}; listen backlog ours {args.backlog or 'default (COUP_LISTEN_BACKLOG)'}, "
          f"Node's http.Server 511 (both capped by somaxconn)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="coup-storm-"))
    results = []
    for round_ in range(args.rounds):
        for peer in args.peers:
            result = await storm(peer, args, workdir)
            result["round"] = round_ + 1
            report(result)
            results.append(result)
            if args.json:
                with Path(args.json).open("a") as out:  # noqa: ASYNC230 - one line between runs
                    out.write(json.dumps(result) + "\n")
    print("peer | round | load | connect p50 / p99 / max ms | joined p99 ms | kill -> all joined s | "
          "survivors CPU s | survivors peak RSS MB | accept queue peak | ListenOverflows")
    for r in results:
        print(f"{r['peer']} | {r['round']} | {r['load']} | {r['connect_p50_ms']:.0f} / {r['connect_p99_ms']:.0f} / "
              f"{r['connect_max_ms']:.0f} | {r['joined_p99_ms']:.0f} | {r['kill_to_all_joined_s']:.2f} | "
              f"{r['cpu']['node1'][0] + r['cpu']['node2'][0]:.2f} | "
              f"{r['peak_rss_mb']['node1']:.0f} + {r['peak_rss_mb']['node2']:.0f} | {r['accept_queue_peak']} | "
              f"{r['kernel'].get('ListenOverflows')}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--peers", type=lambda s: s.split(","), default=["node", "ours"],
                        help="node, ours, or ours:BACKLOG (COUP_LISTEN_BACKLOG for that run: an A/B in one run)")
    parser.add_argument("--in-flight", type=int, default=200, help="handshakes in flight while connecting to node 0")
    parser.add_argument("--backlog", type=int, help="COUP_LISTEN_BACKLOG for our nodes (default: the setting's)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds a client keeps trying")
    parser.add_argument("--timeline", type=float, default=0, metavar="STEP",
                        help="print drain.py's timeline per STEP s after the kill (attempts, joined, CPU %%)")
    parser.add_argument("--client", choices=["node", "python"], default="node",
                        help="the clients: bench/storm_ref/stormgen.js (default), or drain.py's in this process")
    parser.add_argument("--profile", metavar="PATH", help="py-spy our survivor 1 for 8 s from the kill (raw stacks)")
    parser.add_argument("--json", metavar="PATH", help="append one JSON line per run")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                        help="run the clients on uvloop (cheaper per connect)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the nodes inherit it too
    if args.clients + 1000 > hard:  # a client closes its dead socket before it opens the next one
        sys.exit(f"--clients {args.clients} needs more than {args.clients + 1000} fds; ulimit -Hn is {hard}")
    if args.uvloop:
        import uvloop

        return uvloop.run(main_async(args))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
