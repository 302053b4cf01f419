"""Fan-out with permessage-deflate: ours off, ours on, Node socket.io with perMessageDeflate on.

    flock /work/bench.lock .venv/bin/python bench/deflate_fanout.py [--sizes 200,2000] [--reps 2]

The shared harness's generator (../shared/bench/loadgen) does not speak permessage-deflate,
so this file carries its own: the `fixed` scenario of ../shared/bench/loadgen/loadgen.py (1000
clients in 10 rooms of 100, 50 senders, `join-study` then `message` broadcast to the room,
latency from a send time in `content`) on asyncio + uvloop, offering
``permessage-deflate; client_max_window_bits`` as browsers do and inflating every RSV1 frame
with one decompressor per connection (which reads both our per-message streams and Node's
context takeover). Content is chat-like text (words, not a run of one letter), 200 B or 2 KB.

Per server and size, an open-loop ramp of offered message rates (2 s steps, measured over the
last 1.5 s) stops at the first step that delivers < 90 % or has p99 > 1 s. Reported: the best
delivered rate of any step (`max_dps`; `gen_limited` when the generator used > 90 % of its
core there), server CPU µs per delivery and wire bytes per delivery at the first step (a load
everyone keeps up with), p50/p99 there. Server on core 0, generator on core 1 (taskset), servers
stopped by PID. Peers run interleaved, `--reps` times; the table gives medians.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEPS = Path(os.environ.get("BENCH_DEPS", Path.home() / ".cache" / "coup-bench" / "deps"))
HOST = "127.0.0.1"
PATHQ = "/socket.io/?EIO=4&transport=websocket"
OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
CONTENT_MARK = b'"content":"'
WORDS = ("the graph is planar so every face has at least three edges and we can bound the number of "
         "vertices by euler formula remember to bring your notes on dijkstra shortest path relax each "
         "edge once the vertex is settled meeting moved to room four tomorrow at ten thanks see you "
         "there homework chapter three exercise twelve proof by induction on the number of nodes").split()


# ----------------------------------------------------------------------------- the generator

def mask_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = random.getrandbits(32).to_bytes(4, "big")
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + ((int.from_bytes(payload, "big") ^ k).to_bytes(n, "big") if n else b"")


class Stats:
    delivered = 0
    wire = 0
    compressed = 0
    errors = 0
    lat: list[float] = []
    recording = False


ST = Stats()


def now_us() -> int:
    return int(time.perf_counter() * 1e6)


class Client(asyncio.Protocol):
    def __init__(self, args: argparse.Namespace, room: int, ready: asyncio.Future[bool]) -> None:
        self.args, self.room, self.ready = args, room, ready
        self.buf = b""
        self.state = 1  # 1 http, 2 wait EIO open, 3 wait ns connect, 4 ready
        self.transport: asyncio.Transport | None = None
        self.inflater = zlib.decompressobj(-15)
        self.deflate = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if self.args.deflate else ""
        transport.write((f"GET {PATHQ} HTTP/1.1\r\nHost: {HOST}:{self.args.port}\r\nUpgrade: websocket\r\n"  # type: ignore[attr-defined]
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                         f"{offer}\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(mask_frame(1, text.encode()))

    def data_received(self, data: bytes) -> None:
        recv = now_us()
        if ST.recording:
            ST.wire += len(data)
        buf = self.buf + data if self.buf else data
        off, n = 0, len(buf)
        if self.state == 1:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            head = buf[:i].lower()
            self.deflate = b"sec-websocket-extensions: permessage-deflate" in head
            off, self.state = i + 4, 2
        while off + 2 <= n:
            b0, b1 = buf[off], buf[off + 1]
            ln, h = b1 & 0x7F, 2
            if ln == 126:
                if off + 4 > n:
                    break
                ln, h = int.from_bytes(buf[off + 2:off + 4], "big"), 4
            elif ln == 127:
                if off + 10 > n:
                    break
                ln, h = int.from_bytes(buf[off + 2:off + 10], "big"), 10
            if off + h + ln > n:
                break
            ps, pe, op = off + h, off + h + ln, b0 & 0x0F
            if op == 1:
                payload = buf[ps:pe]
                if b0 & 0x40:
                    payload = self.inflater.decompress(payload + TAIL)
                    ST.compressed += 1
                self.on_text(payload, recv)
            elif op == 9:
                assert self.transport is not None
                self.transport.write(mask_frame(10, buf[ps:pe]))
            off = pe
        self.buf = buf[off:] if off < n else b""

    def on_text(self, payload: bytes, recv: int) -> None:
        if payload[:2] == b"42":
            ST.delivered += 1
            if ST.recording:
                i = payload.find(CONTENT_MARK)
                if i >= 0:
                    i += len(CONTENT_MARK)
                    j = payload.find(b" ", i)
                    ST.lat.append((recv - int(payload[i:j])) / 1000.0)
        elif payload == b"2":
            self.send_text("3")
        elif payload[:1] == b"0" and self.state == 2:
            self.state = 3
            self.send_text("40")
        elif payload[:2] == b"40" and self.state == 3:
            self.state = 4
            if not self.ready.done():
                self.ready.set_result(True)


def quantile(values: list[float], p: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else None


def proc_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_ticks() -> int:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in cpu]
    return sum(values) - values[3] - values[4]


def self_ticks() -> int:
    return proc_ticks(os.getpid())


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    pads = []
    for _ in range(1024):  # no whole-message repeats within a 32 KiB window
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < args.size:
            words.append(rng.choice(WORDS))
        pads.append(" ".join(words)[:args.size - 17])
    sem = asyncio.Semaphore(100)
    clients: list[Client] = []

    async def one(i: int) -> None:
        async with sem:
            ready: asyncio.Future[bool] = loop.create_future()
            _, proto = await loop.create_connection(lambda: Client(args, i % args.rooms, ready), HOST, args.port)
            if await asyncio.wait_for(ready, 10):
                clients.append(proto)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.clients))), 40)
    for c in clients:
        c.send_text(f'42["join-study",{{"studyId":{c.room}}}]')
    await asyncio.sleep(0.5)
    by_room: list[list[Client]] = [[] for _ in range(args.rooms)]
    for c in clients:
        by_room[c.room].append(c)
    senders = [by_room[k % args.rooms][k // args.rooms] for k in range(args.senders)]
    room_size = len(clients) / args.rooms
    steps = []
    sent = 0

    def send_one() -> None:
        nonlocal sent
        sender = senders[sent % len(senders)]
        sender.send_text(f'42["message",{{"studyId":{sender.room},"content":"{now_us()} '
                         f'{pads[sent % len(pads)]}"}}]')
        sent += 1

    for rate in args.rates:
        t0 = time.perf_counter()
        base = sent
        window: dict[str, float] = {}
        while (elapsed := time.perf_counter() - t0) < args.step:
            for _ in range(int(rate * elapsed) - (sent - base)):
                send_one()
            if not window and elapsed >= args.step - args.window:
                ST.lat, ST.recording = [], True
                window = {"t": time.perf_counter(), "d": ST.delivered, "w": ST.wire, "s": proc_ticks(args.server_pid),
                          "g": self_ticks(), "b": busy_ticks()}
            await asyncio.sleep(0.002)
        dt = time.perf_counter() - window["t"]
        delivered = ST.delivered - window["d"]
        server = (proc_ticks(args.server_pid) - window["s"]) / 100
        gen = (self_ticks() - window["g"]) / 100
        foreign = (busy_ticks() - window["b"]) / 100 - server - gen
        ST.recording = False
        dps = delivered / dt
        step = {"offered_dps": round(rate * room_size), "dps": round(dps), "server_cpu_pct": round(server / dt * 100),
                "gen_cpu_pct": round(gen / dt * 100), "foreign_cpu_pct": round(foreign / dt * 100),
                "server_us_per_delivery": round(server * 1e6 / delivered, 2) if delivered else None,
                "wire_bytes_per_delivery": round((ST.wire - window["w"]) / delivered) if delivered else None,
                "p50_ms": quantile(ST.lat, 0.5), "p99_ms": quantile(ST.lat, 0.99)}
        steps.append(step)
        if dps < 0.9 * rate * room_size or (step["p99_ms"] or 0) > 1000:
            break
    best = max(steps, key=lambda s: s["dps"])
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    return {"clients": len(clients), "deflate_agreed": sum(c.deflate for c in clients), "size": args.size,
            "max_dps": best["dps"], "gen_limited": best["gen_cpu_pct"] > 90, "first": steps[0], "steps": steps,
            "compressed_frames": ST.compressed}


# ----------------------------------------------------------------------------- the driver

PEERS = {
    "coup-off": ("{py} {here}/server.py --port {port}", {}),
    "coup-deflate": ("{py} {here}/server.py --port {port}",
                     {"COUP_WS_COMPRESSION": "1", "COUP_WS_COMPRESSION_THRESHOLD": "1024"}),
    "node-deflate": ("node {here}/node_socketio_deflate.js", {"THRESHOLD": "1024"}),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def run_one(peer: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    command, env = PEERS[peer]
    port = free_port()
    cmd = command.format(py=sys.executable, here=HERE, port=port)
    server = subprocess.Popen(["setsid", "taskset", "-c", "0", "bash", "-c", f"exec {cmd}"],
                              env={**os.environ, **env, "PORT": str(port), "BENCH_DEPS": str(DEPS)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{peer} did not start") from None
                time.sleep(0.1)
        time.sleep(0.3)
        gen = subprocess.run(
            ["taskset", "-c", "1", sys.executable, __file__, "--gen", "--port", str(port), "--server-pid",
             str(server.pid), "--size", str(size), "--rates", ",".join(map(str, args.rates)),
             *(["--deflate"] if args.offer else [])],
            capture_output=True, text=True, timeout=90)
        if gen.returncode:
            raise RuntimeError(f"{peer}: generator failed: {gen.stderr[-2000:]}")
        return {"peer": peer, **json.loads(gen.stdout.splitlines()[-1])}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gen", action="store_true", help="(internal) run the generator")
    parser.add_argument("--port", type=int)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--sizes", default="200,2000")
    parser.add_argument("--rates", default="200,400,700,1000,1400,2000",
                        help="offered messages/s per step (x100 receivers each)")
    parser.add_argument("--deflate", action="store_true", help="(generator) offer permessage-deflate")
    parser.add_argument("--no-offer", dest="offer", action="store_false", help="clients do not offer deflate")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--step", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=1.5)
    parser.add_argument("--out", default=None, help="append the JSON lines here")
    args = parser.parse_args()
    args.rates = [float(r) for r in str(args.rates).split(",")]
    if args.gen:
        import uvloop
        print(json.dumps(uvloop.run(generate(args)), separators=(",", ":")))
        return
    results: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for size in (int(s) for s in args.sizes.split(",")):
            for peer in args.peers.split(","):
                result = run_one(peer, size, args)
                result["rep"] = rep
                results.append(result)
                print(json.dumps(result, separators=(",", ":")), flush=True)
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(result) + "\n")
    print(f"\n| payload | server | max deliveries/s, median (runs) | server CPU µs/delivery at "
          f"{int(args.rates[0] * 100)}/s (at the best step kept up with) | wire B/delivery | p50 / p99 ms "
          f"(at {int(args.rates[0] * 100)}/s) | deflate agreed |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for peer in args.peers.split(","):
            runs = [r for r in results if r["peer"] == peer and r["size"] == size]

            def med(f: Any, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(f(r) for r in runs)
            flag = " (gen-limited)" if any(r["gen_limited"] for r in runs) else ""
            # server CPU per delivery at the highest step every run of this cell kept up with
            kept = [max((s for s in r["steps"] if s["dps"] >= 0.9 * s["offered_dps"]), key=lambda s: s["dps"],
                        default=r["first"]) for r in runs]
            print(f"| {size} B | {peer} | {med(lambda r: r['max_dps']):,.0f}{flag} "
                  f"({', '.join(format(r['max_dps'], ',') for r in runs)}) | "
                  f"{med(lambda r: r['first']['server_us_per_delivery']):.2f} "
                  f"({statistics.median(k['server_us_per_delivery'] for k in kept):.2f} at "
                  f"{statistics.median(k['dps'] for k in kept):,.0f}/s) | "
                  f"{med(lambda r: r['first']['wire_bytes_per_delivery']):.0f} | "
                  f"{med(lambda r: r['first']['p50_ms']):.1f} / {med(lambda r: r['first']['p99_ms']):.0f} | "
                  f"{runs[0]['deflate_agreed']}/{runs[0]['clients']} |")


if __name__ == "__main__":
    main()
