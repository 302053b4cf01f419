"""Long-polling and SockJS clients: the shared harness's scenarios, ours and the peer in one run.

The shared harness (`../shared/bench`) measures WebSocket clients only. This runs its
scenarios (same shapes, same message, same ramp) over the transports the clients behind
restrictive proxies use, each against the Node peer of that protocol, interleaved:

- ``eio``: Engine.IO v4 long-polling (`pollgen.PollingClient`: a GET always waiting, one
  POST at a time), ours (`bench/server.py`) against Node socket.io 4.8 with default
  settings (`../shared/bench/servers/node_socketio.js`, polling-only clients);
- ``xhr_streaming`` and ``xhr``: SockJS (`sockjsgen.SockJSClient`), ours (`/sockjs` of
  `bench/server.py`) against sockjs-node 0.3 (`bench/sockjs_node_peer.js`), both speaking
  our envelope (`{"type":"event",...}`).

Scenarios (the shared README has the reasoning):

- ``fanout``: 1000 clients in 10 rooms of 100, 50 senders; open-loop ramp from 5k
  deliveries/s, 1.5 s steps measured over their last 1.2 s, next step x clamp(90/server
  CPU%, 1.2, 3); a step is saturated when < 90% of offered arrive or p99 > 1 s; then a 2 s
  plateau step at 1.15x the best; max = best delivered rate of any step. Then a drain and
  3 s at one rate for both servers (``--lat-rate``, default half the peer's max of the same
  repetition: the peer runs first), p50/p99 over the last 2.25 s: latency at equal load.
- ``connect``: 10 warm-up clients, then 2000 idle clients with at most 100 handshakes in
  flight; connected = Socket.IO CONNECT answered (``40{"sid"..}``) or our SockJS
  ``connect`` envelope; connects/s, connect p50/p99, server RSS per connection 1.5 s later.
- ``chat``: 1000 clients in 500 rooms of 2, each sends 1 msg/s for 10 s; p50/p99 over the
  last 9 s, server CPU%, lost.

The server runs on core 0 (``taskset``), the generator on core 1 in ``--procs`` processes
(rooms split between them, so a sender and its room's receivers share a process and a
clock; `time.perf_counter` is CLOCK_MONOTONIC, the same in every process). The generator
speaks HTTP through `rawhttp.RawHTTP` (one request per delivery: the client must be cheap).
Generator CPU is printed per step: a max with ``gen%`` near 100 (the generator's one core,
however many processes share it) is a lower bound, flagged ``gen_limited``.

    flock /work/bench.lock .venv/bin/python bench/pollbench.py --transports eio --scenarios fanout
    .venv/bin/python bench/pollbench.py --transports eio,xhr_streaming,xhr --scenarios fanout,chat,connect --repeats 2

sockjs-node: ``npm install --prefix ~/.cache/coup-bench/deps sockjs@0.3.24`` (next to
socket.io, which ``../shared/bench/setup.sh`` installs).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SHARED = Path(os.environ.get("COUP_SHARED_BENCH", ROOT.parent / "shared" / "bench"))
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")
DEPS = Path(os.environ.get("BENCH_DEPS", Path.home() / ".cache" / "coup-bench" / "deps"))
PYTHON = os.environ.get("COUP_BENCH_PYTHON", sys.executable)
#: (name, repository root) of our servers to run; --ours adds others (an A/B of two checkouts)
OURS: list[tuple[str, str]] = [("ours", str(ROOT))]
TICK = os.sysconf("SC_CLK_TCK")
HIST_SCALE = 40.0  # latency histogram buckets: e^(1/40), 2.5% wide
MSG_BYTES = 64
PAD = "x" * (MSG_BYTES - 17)


# ====================================================================== worker (the generator)


class Worker:
    """One generator process: its share of the rooms, every client of them, their senders."""

    def __init__(self, transport: str, port: int) -> None:
        from rawhttp import RawHTTP

        self.transport = transport
        self.http = RawHTTP("127.0.0.1", port)
        self.clients: list[Any] = []
        self.rooms: dict[int, list[Any]] = {}
        self.senders: list[tuple[Any, int]] = []
        self.connected: dict[int, asyncio.Future[None]] = {}
        self.recv_t: list[float] = []
        self.lat: list[float] = []
        self.delivered = 0
        self.sent = 0
        self.rate = 0.0
        self.room_size = 0
        self._rate_t0 = 0.0
        self._rate_sent = 0
        self._rr = 0
        self._ticker: asyncio.Task[None] | None = None
        self._target = -1
        self._reached = asyncio.Event()

    # ---------------------------------------------------------------- wire

    def on_packet(self, client: Any, text: str, now: float) -> None:
        at = text.find('"content":"')
        if at >= 0:
            at += 11
            self.delivered += 1
            if self.delivered == self._target:
                self._reached.set()
            self.recv_t.append(now)
            self.lat.append(now - int(text[at:text.find(" ", at)]) / 1e6)
            return
        if text.startswith("40") or text.startswith('{"type":"connect"'):
            future = self.connected.pop(id(client), None)
            if future is not None and not future.done():
                future.set_result(None)

    def frame(self, event: str, data: str) -> str:
        if self.transport == "eio":
            return f'42["{event}",{data}]'
        return f'{{"type":"event","event":"{event}","args":[{data}]}}'

    async def open_one(self) -> tuple[Any, float]:
        started = time.perf_counter()
        future = asyncio.get_running_loop().create_future()
        client: Any
        if self.transport == "eio":
            from pollgen import PollingClient

            client = PollingClient(self.http, lambda kind, home: "", on_packet=self.on_packet)  # type: ignore[arg-type]
            self.connected[id(client)] = future
            await client.open()
            client.send("40")
        else:
            from sockjsgen import SockJSClient

            client = SockJSClient(self.http, self.transport, on_message=self.on_packet)
            self.connected[id(client)] = future
            await client.open()
            client.send('{"type":"auth","auth":{}}')
        await asyncio.wait_for(future, 20)
        return client, time.perf_counter() - started

    async def connect_many(self, count: int, in_flight: int) -> dict[str, Any]:
        """`count` clients, at most `in_flight` handshakes at once; their connect times."""
        times: list[float] = []
        failed = 0
        queue = iter(range(count))

        async def lane() -> None:
            nonlocal failed
            for _ in queue:
                try:
                    client, took = await self.open_one()
                except (TimeoutError, OSError, RuntimeError):
                    failed += 1
                    continue
                self.clients.append(client)
                times.append(took)

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(min(in_flight, count))))
        return {"ok": len(times), "failed": failed, "seconds": time.perf_counter() - started,
                "times": [round(t * 1000, 3) for t in times]}

    # ---------------------------------------------------------------- commands

    async def setup(self, rooms: list[int], room_size: int, senders_per_room: int, in_flight: int) -> dict[str, Any]:
        self.room_size = room_size
        result = await self.connect_many(len(rooms) * room_size, in_flight)
        for index, client in enumerate(self.clients):
            room = rooms[index % len(rooms)]
            self.rooms.setdefault(room, []).append(client)
            client.send(self.frame("join-study", f'{{"studyId":{room}}}'))
        await asyncio.gather(*(c.flushed() for c in self.clients))
        for room, members in self.rooms.items():
            self.senders.extend((member, room) for member in members[:senders_per_room])
        # senders in room order interleaved, so a rate spreads over the rooms evenly
        self.senders.sort(key=lambda pair: self.rooms[pair[1]].index(pair[0]))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        result.pop("times")
        return result

    def _send(self, client: Any, room: int) -> None:
        client.send(self.frame("message", f'{{"studyId":{room},"content":"{int(time.perf_counter() * 1e6)} {PAD}"}}'))
        self.sent += 1

    async def warmup(self) -> dict[str, Any]:
        expected = self.delivered + sum(len(m) for m in self.rooms.values())
        for room, members in self.rooms.items():
            self._send(members[0], room)
        self._target = expected
        self._reached.clear()
        if self.delivered < expected:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reached.wait(), 10)
        return {"ok": self.delivered == expected, "got": self.delivered, "expected": expected}

    def set_rate(self, per_s: float) -> None:
        self.rate = per_s
        self._rate_t0 = time.perf_counter()
        self._rate_sent = 0

    async def _tick(self) -> None:
        senders = self.senders
        while True:
            await asyncio.sleep(0.002)
            if self.rate <= 0 or not senders:
                continue
            due = int((time.perf_counter() - self._rate_t0) * self.rate) - self._rate_sent
            due = min(due, int(self.rate) + 1)
            for _ in range(due):
                client, room = senders[self._rr % len(senders)]
                self._rr += 1
                self._send(client, room)
            self._rate_sent += max(due, 0)

    def stats(self, t0: float, t1: float) -> dict[str, Any]:
        """Deliveries received in [t0, t1] and a histogram of their latency; forget older ones."""
        lo = bisect.bisect_left(self.recv_t, t0)
        hi = bisect.bisect_right(self.recv_t, t1)
        hist = Counter(int(math.log(max(x * 1e6, 1.0)) * HIST_SCALE) for x in self.lat[lo:hi])
        del self.recv_t[:lo]
        del self.lat[:lo]
        return {"n": hi - lo, "hist": list(hist.items()), "sent": self.sent, "delivered": self.delivered,
                "errors": sum(c.errors for c in self.clients)}

    def counters(self) -> dict[str, Any]:
        return {"sent": self.sent, "delivered": self.delivered, "errors": sum(c.errors for c in self.clients),
                "expected": self.room_size}


async def worker_main(transport: str, port: int) -> None:
    worker = Worker(transport, port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "setup":
            out: Any = await worker.setup(**cmd)
        elif name == "connect":
            out = await worker.connect_many(**cmd)
        elif name == "warmup":
            out = await worker.warmup()
        elif name == "rate":
            worker.set_rate(cmd["per_s"])
            out = {}
        elif name == "stats":
            out = worker.stats(cmd["t0"], cmd["t1"])
        elif name == "counters":
            out = worker.counters()
        elif name == "exit":
            break
        else:
            out = {"error": f"unknown command {name}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


# ====================================================================== orchestrator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def host_busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


class Meter:
    """CPU % of one core over a window: server, generator, everything else on the machine."""

    def __init__(self, server_pid: int, gen_pids: list[int]) -> None:
        self.server_pid, self.gen_pids = server_pid, gen_pids
        self.mark()

    def mark(self) -> None:
        self.t = time.perf_counter()
        self.server = proc_ticks(self.server_pid)
        self.gen = sum(proc_ticks(p) for p in self.gen_pids)
        self.host = host_busy_ticks()

    def read(self) -> dict[str, float]:
        dt = time.perf_counter() - self.t
        server = (proc_ticks(self.server_pid) - self.server) / TICK / dt * 100
        gen = (sum(proc_ticks(p) for p in self.gen_pids) - self.gen) / TICK / dt * 100
        host = (host_busy_ticks() - self.host) / TICK / dt * 100
        return {"server_cpu": round(server, 1), "gen_cpu": round(gen, 1),
                "foreign_cpu": round(max(0.0, host - server - gen), 1)}


def quantiles(hist: Counter[int], qs: tuple[float, ...] = (0.5, 0.99)) -> list[float | None]:
    total = sum(hist.values())
    if not total:
        return [None for _ in qs]
    out: list[float | None] = []
    ordered = sorted(hist.items())
    for q in qs:
        need, seen = q * total, 0
        for bucket, count in ordered:
            seen += count
            if seen >= need:
                out.append(round(math.exp((bucket + 0.5) / HIST_SCALE) / 1000, 2))  # ms
                break
    return out


class Generator:
    """The worker processes, pinned to the generator's core."""

    def __init__(self, procs: int, cpu: str, transport: str, port: int) -> None:
        self.procs, self.cpu, self.transport, self.port = procs, cpu, transport, port
        self.workers: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for _ in range(self.procs):
            self.workers.append(await asyncio.create_subprocess_exec(
                "taskset", "-c", self.cpu, PYTHON, str(HERE / "pollbench.py"), "worker",
                "--transport", self.transport, "--port", str(self.port),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def call(self, cmds: list[dict[str, Any]] | dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        if isinstance(cmds, dict):
            cmds = [cmds] * len(self.workers)
        for worker, cmd in zip(self.workers, cmds, strict=True):
            assert worker.stdin is not None
            worker.stdin.write((json.dumps(cmd) + "\n").encode())

        async def answer(worker: asyncio.subprocess.Process) -> dict[str, Any]:
            assert worker.stdout is not None
            line = await worker.stdout.readline()
            if not line:
                raise RuntimeError("generator worker died")
            return json.loads(line)  # type: ignore[no-any-return]

        return await asyncio.wait_for(asyncio.gather(*(answer(w) for w in self.workers)), timeout)

    async def rate(self, deliveries_per_s: float, room_size: int) -> None:
        await self.call({"cmd": "rate", "per_s": deliveries_per_s / room_size / len(self.workers)})

    async def window(self, t0: float, t1: float) -> dict[str, Any]:
        answers = await self.call({"cmd": "stats", "t0": t0, "t1": t1})
        hist: Counter[int] = Counter()
        for a in answers:
            hist.update({int(k): v for k, v in a["hist"]})
        p50, p99 = quantiles(hist)
        return {"n": sum(a["n"] for a in answers), "p50_ms": p50, "p99_ms": p99,
                "sent": sum(a["sent"] for a in answers), "delivered": sum(a["delivered"] for a in answers),
                "errors": sum(a["errors"] for a in answers)}

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.returncode is None:
                try:
                    assert worker.stdin is not None
                    worker.stdin.write(b'{"cmd": "exit"}\n')
                    await asyncio.wait_for(worker.wait(), 3)
                except (TimeoutError, BrokenPipeError, ConnectionResetError):
                    worker.kill()
                    await worker.wait()


class Server:
    def __init__(self, name: str, argv: list[str], cpu: str, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.cpu, self.env = name, argv, cpu, env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [a.replace("{PORT}", str(self.port)) for a in self.argv]
        self.log = open(f"/tmp/pollbench-{self.name}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(["taskset", "-c", self.cpu, *argv], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PORT": str(self.port), **self.env},
                                     start_new_session=True, cwd=ROOT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log.name}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {self.port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.log.close()


def servers_for(transport: str, cpu: str) -> list[Server]:
    """[peer, ours]: the peer first, so its max sets the equal-load latency rate for ours."""
    ours = [Server(name, [PYTHON, str(Path(root) / "bench" / "server.py"), "--port", "{PORT}"], cpu)
            for name, root in OURS]
    if transport == "eio":
        peer = Server("node-socketio", ["node", str(SHARED / "servers" / "node_socketio.js")], cpu,
                      {"BENCH_DEPS": str(DEPS)})
    else:
        peer = Server("sockjs-node", ["node", str(HERE / "sockjs_node_peer.js")], cpu, {"BENCH_DEPS": str(DEPS)})
    return [peer, *ours]


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


async def run_fanout(gen: Generator, meter: Meter, args: argparse.Namespace, lat_rate: float | None
                     ) -> dict[str, Any]:
    rooms, room_size = args.rooms, args.clients // args.rooms
    share = [list(range(1 + k, rooms + 1, gen.procs)) for k in range(gen.procs)]
    per_room_senders = max(1, args.senders // rooms)
    setup = await gen.call([{"cmd": "setup", "rooms": r, "room_size": room_size, "senders_per_room": per_room_senders,
                             "in_flight": max(1, 100 // gen.procs)} for r in share], timeout=120)
    warm = await gen.call({"cmd": "warmup"})
    warmup_ok = all(w["ok"] for w in warm)
    steps: list[dict[str, Any]] = []
    offered, phase, started, last_good = 5000.0, "ramp", time.perf_counter(), 0.0
    while time.perf_counter() - started < args.ramp_budget:
        length, skip = (2.0, 0.4) if phase == "plateau" else (1.5, 0.3)
        await gen.rate(offered, room_size)
        await asyncio.sleep(skip)
        meter.mark()
        t0 = time.perf_counter()
        await asyncio.sleep(length - skip)
        cpu = meter.read()
        t1 = time.perf_counter()
        w = await gen.window(t0, t1)
        got = w["n"] / (t1 - t0)
        saturated = got < 0.9 * offered or (w["p99_ms"] or 0) > 1000
        step = {"phase": phase, "offered": round(offered), "deliveries_per_s": round(got), **cpu,
                "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "saturated": saturated, "errors": w["errors"]}
        steps.append(step)
        log(f"  {phase:8} offered {offered:9.0f} got {got:9.0f} srv {cpu['server_cpu']:5.1f}% "
            f"gen {cpu['gen_cpu']:5.1f}% foreign {cpu['foreign_cpu']:5.1f}% p99 {w['p99_ms']} ms"
            f"{' SATURATED' if saturated else ''}{' errors ' + str(w['errors']) if w['errors'] else ''}")
        if phase == "plateau" and saturated:
            break
        best = max(s["deliveries_per_s"] for s in steps)
        if saturated:
            phase, offered = "plateau", max(1.15 * best, 1.1 * last_good)
        else:
            last_good = max(last_good, offered)
            phase = "ramp"
            offered *= min(3.0, max(1.2, 90 / cpu["server_cpu"])) if cpu["server_cpu"] > 0 else 3.0
    await gen.rate(0, room_size)
    at_max = max(steps, key=lambda s: s["deliveries_per_s"])
    drained = await drain(gen, args.clients // args.rooms, 6.0)
    rate = lat_rate if lat_rate is not None else 0.5 * at_max["deliveries_per_s"]
    await gen.rate(rate, room_size)
    await asyncio.sleep(0.75)
    meter.mark()
    t0 = time.perf_counter()
    await asyncio.sleep(2.25)
    cpu = meter.read()
    t1 = time.perf_counter()
    await gen.rate(0, room_size)
    w = await gen.window(t0, t1)
    log(f"  latency  offered {rate:9.0f} got {w['n'] / (t1 - t0):9.0f} srv {cpu['server_cpu']:5.1f}% "
        f"gen {cpu['gen_cpu']:5.1f}% p50 {w['p50_ms']} p99 {w['p99_ms']} ms")
    return {"clients": sum(s["ok"] for s in setup), "connect_failed": sum(s["failed"] for s in setup),
            "warmup_ok": warmup_ok, "max_deliveries_per_s": at_max["deliveries_per_s"],
            "server_cpu_at_max": at_max["server_cpu"], "gen_cpu_at_max": at_max["gen_cpu"],
            "foreign_cpu_at_max": at_max["foreign_cpu"], "gen_limited": at_max["gen_cpu"] > 90,
            "plateau_reached": any(s["saturated"] for s in steps),
            "ramp_drained": drained, "lat_offered": round(rate), "lat_deliveries_per_s": round(w["n"] / (t1 - t0)),
            "lat_p50_ms": w["p50_ms"], "lat_p99_ms": w["p99_ms"], "lat_server_cpu": cpu["server_cpu"],
            "lat_gen_cpu": cpu["gen_cpu"], "errors": w["errors"], "steps": steps}


async def drain(gen: Generator, room_size: int, limit: float) -> bool:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        c = await gen.call({"cmd": "counters"})
        if sum(x["delivered"] for x in c) >= sum(x["sent"] * x["expected"] for x in c):
            return True
        await asyncio.sleep(0.1)
    return False


async def run_chat(gen: Generator, meter: Meter, args: argparse.Namespace) -> dict[str, Any]:
    share = [list(range(1 + k, 501, gen.procs)) for k in range(gen.procs)]
    setup = await gen.call([{"cmd": "setup", "rooms": r, "room_size": 2, "senders_per_room": 2,
                             "in_flight": max(1, 100 // gen.procs)} for r in share], timeout=120)
    warm = await gen.call({"cmd": "warmup"})
    await gen.rate(2000, 2)  # 1000 msgs/s: every client 1 msg/s
    await asyncio.sleep(1.0)
    meter.mark()
    t0 = time.perf_counter()
    await asyncio.sleep(args.chat_seconds - 1)
    cpu = meter.read()
    t1 = time.perf_counter()
    await gen.rate(0, 2)
    drained = await drain(gen, 2, 3.0)
    w = await gen.window(t0, t1)
    c = await gen.call({"cmd": "counters"})
    lost = sum(x["sent"] * x["expected"] - x["delivered"] for x in c)
    log(f"  chat     got {w['n'] / (t1 - t0):7.0f}/s srv {cpu['server_cpu']:5.1f}% gen {cpu['gen_cpu']:5.1f}% "
        f"p50 {w['p50_ms']} p99 {w['p99_ms']} ms lost {lost}")
    return {"clients": sum(s["ok"] for s in setup), "warmup_ok": all(x["ok"] for x in warm),
            "deliveries_per_s": round(w["n"] / (t1 - t0)), "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
            "server_cpu": cpu["server_cpu"], "gen_cpu": cpu["gen_cpu"], "foreign_cpu": cpu["foreign_cpu"],
            "lost": lost, "drained": drained, "errors": w["errors"]}


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """A measuring tool beside the run (py-spy, strace, perf), its output to files only."""
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_syscalls(path: str) -> int:
    """The count in a ``perf stat -x,`` file."""
    for line in Path(path).read_text().splitlines():
        if "raw_syscalls" in line and line.split(",")[0].isdigit():
            return int(line.split(",")[0])
    return 0


def append_json(path: str, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


async def run_fixed(gen: Generator, meter: Meter, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """A fixed offered fan-out load (``--lat-rate``) for ``--fixed-seconds``.

    Server CPU per delivery and system calls per delivery (``perf stat``); with ``--profile``
    py-spy on the server, with ``--strace`` an ``strace -c`` summary instead.
    """
    rooms, room_size = args.rooms, args.clients // args.rooms
    share = [list(range(1 + k, rooms + 1, gen.procs)) for k in range(gen.procs)]
    await gen.call([{"cmd": "setup", "rooms": r, "room_size": room_size,
                     "senders_per_room": max(1, args.senders // rooms), "in_flight": max(1, 100 // gen.procs)}
                    for r in share], timeout=120)
    await gen.call({"cmd": "warmup"})
    rate = args.lat_rate or 10000.0
    await gen.rate(rate, room_size)
    await asyncio.sleep(1.0)
    spy = None
    seconds = str(args.fixed_seconds)
    if args.strace:
        spy = spawn(["timeout", "-s", "INT", seconds, "strace", "-c", "-f", "-o", args.strace, "-p", str(server.pid)])
    elif args.profile:
        spy = spawn([str(Path(PYTHON).parent / "py-spy"), "record", "--pid", str(server.pid), "--rate", "250",
                     "--nonblocking", "--duration", str(int(args.fixed_seconds)), "--format", "raw",
                     "-o", args.profile])
    counts = f"/tmp/pollbench-perf-{server.pid}.csv"
    perf = spawn(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-o", counts, "-p", str(server.pid),
                  "--", "sleep", seconds]) if shutil.which("perf") else None
    meter.mark()
    t0 = time.perf_counter()
    await asyncio.sleep(args.fixed_seconds)
    cpu = meter.read()
    t1 = time.perf_counter()
    await gen.rate(0, room_size)
    syscalls = None
    if perf is not None:
        await asyncio.to_thread(perf.wait, 10)
        syscalls = perf_syscalls(counts) / args.fixed_seconds
    if spy is not None:
        await asyncio.to_thread(spy.wait, 30)
    w = await gen.window(t0, t1)
    got = w["n"] / (t1 - t0)
    log(f"  fixed    offered {rate:9.0f} got {got:9.0f} srv {cpu['server_cpu']:5.1f}% gen {cpu['gen_cpu']:5.1f}% "
        f"foreign {cpu['foreign_cpu']:5.1f}% p50 {w['p50_ms']} p99 {w['p99_ms']} ms; "
        f"server CPU µs per delivery {cpu['server_cpu'] * 1e4 / max(got, 1):.1f}, "
        f"syscalls per delivery {(syscalls or 0) / max(got, 1):.2f}")
    return {"offered": round(rate), "deliveries_per_s": round(got), "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
            "server_us_per_delivery": round(cpu["server_cpu"] * 1e4 / max(got, 1), 2),
            "server_syscalls_per_delivery": round(syscalls / max(got, 1), 2) if syscalls is not None else None, **cpu}


async def run_connect(gen: Generator, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    await gen.call({"cmd": "connect", "count": max(1, 10 // gen.procs), "in_flight": 10})
    await asyncio.sleep(0.5)
    base = proc_rss_kb(server.pid)
    each = args.connect_clients // gen.procs
    answers = await gen.call({"cmd": "connect", "count": each, "in_flight": max(1, 100 // gen.procs)}, timeout=120)
    seconds = max(a["seconds"] for a in answers)
    times = sorted(t for a in answers for t in a["times"])
    ok = len(times)
    await asyncio.sleep(1.5)
    rss = proc_rss_kb(server.pid)
    p50 = times[len(times) // 2] if times else None
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else None
    log(f"  connect  {ok} in {seconds:.2f} s = {ok / seconds:6.0f}/s p50 {p50} p99 {p99} ms "
        f"RSS {(rss - base) / max(ok, 1):.1f} KB/conn")
    return {"clients": ok, "failed": sum(a["failed"] for a in answers), "connects_per_s": round(ok / seconds),
            "connect_p50_ms": p50, "connect_p99_ms": p99, "rss_kb_per_conn": round((rss - base) / max(ok, 1), 1),
            "rss_base_mb": round(base / 1024, 1)}


async def wait_for_quiet(limit: float, threshold: float = 40.0) -> float:
    """Until the machine's busy CPU over 1 s is under `threshold` % of a core, at most `limit` s.

    Others share this machine; a run that starts while they are busy measures them too.
    Returns the last busy figure (the run is still made when the machine never got quiet).
    """
    deadline = time.perf_counter() + limit
    while True:
        before, started = host_busy_ticks(), time.perf_counter()
        await asyncio.sleep(1.0)
        busy = (host_busy_ticks() - before) / TICK / (time.perf_counter() - started) * 100
        if busy < threshold or time.perf_counter() >= deadline:
            return round(busy, 1)


async def run_one(server: Server, transport: str, scenario: str, args: argparse.Namespace,
                  lat_rate: float | None) -> dict[str, Any]:
    busy_before = await wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
    server.start()
    gen = Generator(args.procs, args.gen_cpu, transport, server.port)
    try:
        await gen.start()
        meter = Meter(server.pid, gen.pids)
        if scenario == "fanout":
            result = await run_fanout(gen, meter, args, lat_rate)
        elif scenario == "chat":
            result = await run_chat(gen, meter, args)
        elif scenario == "fixed":
            result = await run_fixed(gen, meter, server, args)
        else:
            result = await run_connect(gen, server, args)
    finally:
        await gen.stop()
        server.stop()
    result["busy_before"] = busy_before
    return result


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 1000:
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    if (isinstance(value, float) and value >= 1000) or (isinstance(value, int) and value >= 10000):
        return f"{value / 1000:.1f}k"
    return str(value)


def median(values: list[Any]) -> Any:
    present = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if not present:
        return None
    return present[len(present) // 2] if len(present) % 2 else (present[len(present) // 2 - 1]
                                                                  + present[len(present) // 2]) / 2


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scenario, transport and server: the median of each figure over the repetitions."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["transport"], row["server"]), []).append(row)
    out = []
    for (scenario, transport, server), group in groups.items():
        merged: dict[str, Any] = {"scenario": scenario, "transport": transport, "server": server,
                                  "rep": f"median of {len(group)}"}
        for key in group[0]:
            if key not in merged and key != "steps":
                merged[key] = median([g.get(key) for g in group])
        out.append(merged)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for scenario in ("fanout", "fixed", "connect", "chat"):
        mine = [r for r in rows if r["scenario"] == scenario]
        if not mine:
            continue
        if scenario == "fanout":
            cols = [("max deliv/s", "max_deliveries_per_s"), ("srv CPU% @max", "server_cpu_at_max"),
                    ("gen CPU% @max", "gen_cpu_at_max"), ("foreign% @max", "foreign_cpu_at_max"),
                    ("gen-limited", "gen_limited"), ("lat @ deliv/s", "lat_deliveries_per_s"),
                    ("p50 ms", "lat_p50_ms"), ("p99 ms", "lat_p99_ms"), ("srv CPU% @lat", "lat_server_cpu"),
                    ("errors", "errors")]
        elif scenario == "fixed":
            cols = [("offered deliv/s", "offered"), ("deliv/s", "deliveries_per_s"), ("srv CPU%", "server_cpu"),
                    ("srv µs/delivery", "server_us_per_delivery"),
                    ("srv syscalls/delivery", "server_syscalls_per_delivery"), ("p50 ms", "p50_ms"),
                    ("p99 ms", "p99_ms"), ("gen CPU%", "gen_cpu"), ("foreign%", "foreign_cpu")]
        elif scenario == "connect":
            cols = [("connects/s", "connects_per_s"), ("p50 ms", "connect_p50_ms"), ("p99 ms", "connect_p99_ms"),
                    ("RSS KB/conn", "rss_kb_per_conn"), ("failed", "failed")]
        else:
            cols = [("deliv/s", "deliveries_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
                    ("srv CPU%", "server_cpu"), ("gen CPU%", "gen_cpu"), ("lost", "lost")]
        out.append(f"\n{scenario}\n")
        out.append("| transport | server | rep | " + " | ".join(c for c, _ in cols) + " |")
        out.append("|---|---|---|" + "---|" * len(cols))
        for r in mine:
            out.append(f"| {r['transport']} | {r['server']} | {r['rep']} | "
                       + " | ".join(fmt(r.get(k)) for _, k in cols) + " |")
    return "\n".join(out)


async def orchestrate(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    for scenario in args.scenarios.split(","):
        for transport in args.transports.split(","):
            for rep in range(1, args.repeats + 1):
                lat_rate = args.lat_rate
                for server in servers_for(transport, args.server_cpu):
                    if args.only and server.name not in args.only.split(","):
                        continue
                    log(f"{scenario} {transport} {server.name} rep {rep}")
                    result = await run_one(server, transport, scenario, args, lat_rate)
                    if scenario == "fanout" and lat_rate is None:
                        lat_rate = 0.5 * result["max_deliveries_per_s"]  # the peer's half: ours at the same load
                    row = {"scenario": scenario, "transport": transport, "server": server.name, "rep": rep,
                           "procs": args.procs, **result}
                    rows.append(row)
                    if args.json:
                        append_json(args.json, row)
    print(table(rows))
    if args.repeats > 1:
        print("\nmedians")
        print(table(summary(rows)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("worker")
        parser.add_argument("--transport", required=True)
        parser.add_argument("--port", type=int, required=True)
        wargs = parser.parse_args()
        import uvloop

        random.seed()
        uvloop.run(worker_main(wargs.transport, wargs.port))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", default="eio,xhr_streaming,xhr", help="eio, xhr_streaming, xhr")
    parser.add_argument("--scenarios", default="fanout", help="fanout, connect, chat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--gen-cpu", default="1")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--ramp-budget", type=float, default=11.0)
    parser.add_argument("--lat-rate", type=float,
                        help="deliveries/s of the latency phase (default: half the peer's max); of scenario fixed")
    parser.add_argument("--connect-clients", type=int, default=2000)
    parser.add_argument("--chat-seconds", type=float, default=10.0)
    parser.add_argument("--only", help="only these servers (ours, node-socketio, sockjs-node)")
    parser.add_argument("--fixed-seconds", type=float, default=5.0, help="scenario fixed: how long")
    parser.add_argument("--profile", help="scenario fixed: py-spy raw output file for the server")
    parser.add_argument("--strace", help="scenario fixed: strace -c summary of the server's system calls to this file")
    parser.add_argument("--ours", action="append", metavar="NAME=ROOT",
                        help="also run bench/server.py of another checkout (e.g. main=/work/main), after ours")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each run wait up to this many s for the machine to be idle (0: no wait)")
    parser.add_argument("--json", help="append one JSON line per run to this file")
    args = parser.parse_args()
    for spec in args.ours or []:
        name, _, root = spec.partition("=")
        OURS.append((name, root))
    asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
