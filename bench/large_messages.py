"""Echo of single large WebSocket messages (issue 18.5): ours against Tornado's and websockets' own.

    flock /work/bench.lock .venv/bin/python bench/large_messages.py                 # 1, 4, 16 MiB, 5 rounds
    flock /work/bench.lock .venv/bin/python bench/large_messages.py --before /work/main   # + main's echo (A/B)
    flock /work/bench.lock .venv/bin/python bench/large_messages.py --small /work/main --rounds 9   # small frames A/B
    flock /work/bench.lock .venv/bin/python bench/large_messages.py --autobahn /work/autobahn/venv/bin/wstest \
        --before /work/main --rounds 3                  # Autobahn's 9.1/9.2 durations for the same servers
    .venv/bin/python bench/large_messages.py --sizes 1,16 --rounds 3 --kinds text,utf8,binary

Three echo servers, each in its own process on a free loopback port, all started in the same run:

- ``ours``: `tests/conformance/autobahn_echo.py`, the endpoint Autobahn|Testsuite runs against
  (docs/autobahn.md): our `WebSocketTransport` + `FrameReader` on uvloop, with the limits of that
  run (16 MiB + 1 KiB per message, 100,000 fragments, permessage-deflate accepted if offered; this
  client offers none, as Autobahn's 9.1/9.2 cases do not);
- ``tornado``: a bare `tornado.websocket.WebSocketHandler` whose `on_message` writes the message back;
- ``websockets``: a `websockets.asyncio.server` handler that sends back what it receives.

The peers run on the same event loop as ours (uvloop; ``--peer-loop asyncio`` for their default).
One client (this process, blocking sockets, one connection per server) sends a message in one
masked frame, as Autobahn 9.1 (text) and 9.2 (binary) do, and times until the whole echo frame
is read. The frames are built before timing, so the client's cost is the same for every server.
Rounds interleave the servers (order rotated each round) and every size and kind; the figure is
the median round trip, with the server's CPU time (user + system from /proc) for that message.
Kinds: ``text`` (ASCII, like Autobahn's payloads), ``utf8`` (text of 2- and 3-byte characters),
``binary``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conformance.run_autobahn import MAX_FRAGMENTS, MAX_PAYLOAD, free_port, wait_listening  # noqa: E402
from tests.wsclient import client_frame  # noqa: E402

MiB = 1024 * 1024
PEERS = ("ours", "tornado", "websockets")
KINDS = ("text", "utf8", "binary")


# ---------------------------------------------------------------------------- the peers' echo servers

def _serve_tornado(port: int) -> None:
    from tornado.web import Application
    from tornado.websocket import WebSocketHandler

    class Echo(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.write_message(message, binary=isinstance(message, bytes))

    async def main() -> None:
        Application([(r"/.*", Echo)], websocket_max_message_size=MAX_PAYLOAD).listen(port, "127.0.0.1")
        await asyncio.Event().wait()

    _run(main())


def _serve_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", port, max_size=MAX_PAYLOAD, compression=None):
            await asyncio.Event().wait()

    _run(main())


def _run(main: object) -> None:
    if os.environ.get("LARGE_PEER_LOOP", "uvloop") == "uvloop":
        import uvloop
        uvloop.run(main)  # type: ignore[arg-type]
    else:
        asyncio.run(main)  # type: ignore[arg-type]


def start(peer: str, port: int, peer_loop: str, before: Path | None) -> subprocess.Popen[bytes]:
    if peer in ("ours", "before"):
        root = ROOT if peer == "ours" else before
        assert root is not None
        command = [sys.executable, str(root / "tests/conformance/autobahn_echo.py"), "--port", str(port),
                   "--max-payload", str(MAX_PAYLOAD), "--max-fragments", str(MAX_FRAGMENTS), "--compression",
                   "--threshold", "0"]
    else:
        command = [sys.executable, __file__, "--serve", peer, "--port", str(port)]
    env = dict(os.environ, LARGE_PEER_LOOP=peer_loop)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- the client

def payload(kind: str, size: int) -> bytes:
    if kind == "utf8":  # "é€" is 5 bytes; pad with ASCII to the exact size
        unit = "é€ab".encode()
        return (unit * (size // len(unit)) + b"x" * (size % len(unit)))[:size]
    unit = b"BAsd7&jh23" if kind == "text" else bytes(range(256))
    return (unit * (size // len(unit) + 1))[:size]


class Client:
    """A blocking WebSocket client connection that reads whole echo frames into one buffer."""

    def __init__(self, port: int, biggest: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode("latin-1"))
        self.extra = head[head.index(b"\r\n\r\n") + 4:]
        self.buffer = bytearray(biggest + 16)
        self.view = memoryview(self.buffer)

    def _read_into(self, start: int, end: int) -> None:
        view = self.view
        got = start
        if self.extra:
            take = min(len(self.extra), end - start)
            view[got:got + take] = self.extra[:take]
            self.extra = self.extra[take:]
            got += take
        while got < end:
            n = self.sock.recv_into(view[got:end])
            if not n:
                raise ConnectionError("closed by the server")
            got += n

    def echo(self, frame: bytes) -> tuple[int, int, memoryview]:
        """Send `frame`, read the echo frame; (opcode, payload length, payload)."""
        self.sock.sendall(frame)
        self._read_into(0, 2)
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        header = 2
        if length == 126:
            self._read_into(2, 4)
            length, header = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            self._read_into(2, 10)
            length, header = int.from_bytes(self.buffer[2:10], "big"), 10
        self._read_into(header, header + length)
        return opcode, length, self.view[header:header + length]

    def close(self) -> None:
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of the server's main thread (all three serve on one thread), in ns resolution:
    /proc/PID/stat counts in 10 ms ticks, too coarse for one message."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


# ---------------------------------------------------------------------------- Autobahn's own timings

def autobahn_timings(wstest: str, ports: dict[str, int], rounds: int) -> None:
    """Autobahn|Testsuite's cases 9.1 (text) and 9.2 (binary), one message each of 64 KiB-16 MiB, against every server,
    one wstest run per server per round (order rotated); the median of each case's duration (ms,
    as Autobahn reports it: its Python 2 client's own time included)."""
    import json
    import tempfile

    durations: dict[tuple[str, str], list[int]] = defaultdict(list)
    peers = list(ports)
    with tempfile.TemporaryDirectory(prefix="large-autobahn-") as out:
        for r in range(rounds):
            for peer in peers[r % len(peers):] + peers[:r % len(peers)]:
                spec = {"outdir": f"{out}/reports", "servers": [{"agent": peer, "url": f"ws://127.0.0.1:{ports[peer]}/"}],
                        "cases": ["9.1.*", "9.2.*"], "exclude-cases": [], "exclude-agent-cases": {}}
                Path(out, "spec.json").write_text(json.dumps(spec))
                subprocess.run([wstest, "-m", "fuzzingclient", "-s", "spec.json"], cwd=out, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                index = json.loads(Path(out, "reports", "index.json").read_text())[peer]
                for case, result in index.items():
                    if result["behavior"] != "OK":
                        raise AssertionError(f"{peer}: Autobahn case {case} {result['behavior']}")
                    durations[peer, case].append(result["duration"])
    cases = sorted({case for _, case in durations}, key=lambda c: [int(p) for p in c.split(".")])
    others = [p for p in peers if p != "ours"]
    print(f"Autobahn 9.1 (text) / 9.2 (binary) case durations, ms, median of {rounds} rounds")
    print("| case | MiB | " + " | ".join(peers) + " | " + " | ".join(f"ours/{p}" for p in others) + " |")
    print("|---" * (2 + len(peers) + len(others)) + "|")
    for case in cases:
        med = {p: statistics.median(durations[p, case]) for p in peers}
        size = (0.0625, 0.25, 1, 4, 8, 16)[int(case.split(".")[2]) - 1]  # 9.x.1-9.x.6, in MiB
        ratios = [f"{med['ours'] / max(med[p], 1):.2f}" for p in others] if "ours" in peers else []
        print(f"| {case} | {size:g} | " + " | ".join(f"{med[p]:g}" for p in peers) + " | " + " | ".join(ratios) + " |")


# ---------------------------------------------------------------------------- small frames, A/B in process

def small_frames_ab(before: Path, rounds: int) -> None:
    """What the large-message changes cost a chat-sized frame: `FrameReader.feed` of this checkout
    and of `before` (its coup/protocol/websocket.py loaded beside ours) alternating in one process,
    best of `rounds` timeit runs each, with the pure-Python XOR and with the C one."""
    import importlib.util
    import timeit

    from coup.protocol import websocket as after_module
    from coup.transports.websocket import native_unmask

    spec = importlib.util.spec_from_file_location("before_websocket", before / "coup/protocol/websocket.py")
    assert spec is not None and spec.loader is not None
    before_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = before_module  # dataclasses look their module up there
    spec.loader.exec_module(before_module)
    text = b'42["message",{"studyId":3,"content":"1732761234567890 ' + b"x" * 47 + b'"}]'
    chat = client_frame(1, text)
    cases = {
        "one chat text frame (90 B)": chat,
        "10 chat frames in one read": chat * 10,
        "binary frame of 1 KiB": client_frame(2, bytes(range(256)) * 4),
        "binary frame of 8 KiB": client_frame(2, bytes(range(256)) * 32),
        "text in 3 fragments (90 B)": client_frame(1, text[:30], fin=False) + client_frame(0, text[30:60], fin=False)
        + client_frame(0, text[60:]),
    }
    readers = {
        "before": lambda: before_module.FrameReader(max_message=1_000_000),
        "after, Python XOR": lambda: after_module.FrameReader(max_message=1_000_000),
        "after, C XOR": lambda: after_module.FrameReader(max_message=1_000_000, unmask=native_unmask()),
    }
    print(f"FrameReader.feed, µs per call, best of {rounds} (before = {before})")
    print("| input | " + " | ".join(readers) + " |")
    print("|---" * (1 + len(readers)) + "|")
    for name, data in cases.items():
        best = {label: float("inf") for label in readers}
        for _ in range(rounds):  # alternate, so a busy moment hits every reader alike
            for label, make in readers.items():
                calls = timeit.timeit(functools.partial(make().feed, data), number=20_000)
                best[label] = min(best[label], calls / 20_000 * 1e6)
        print(f"| {name} | " + " | ".join(f"{best[label]:.2f}" for label in readers) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=PEERS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1,4,16", help="MiB, comma-separated (fractions allowed)")
    parser.add_argument("--kinds", default="text,binary", help=f"comma-separated, of {','.join(KINDS)}")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peer-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT", help="also run the echo of another checkout "
                        "(e.g. /work/main) as peer `before`: an A/B of our code in the same run")
    parser.add_argument("--small", type=Path, metavar="CHECKOUT", help="instead of the echo: A/B of "
                        "FrameReader.feed on chat-sized frames against CHECKOUT's reader, in process")
    parser.add_argument("--autobahn", metavar="WSTEST", help="instead of this client: Autobahn|Testsuite's "
                        "9.1/9.2 against every server (docs/autobahn.md installs wstest)")
    parser.add_argument("--profile", metavar="FILE", help="py-spy (next to this Python) records ours during the "
                        "rounds, collapsed stacks to FILE (summarise with bench/pyspy_top.py)")
    args = parser.parse_args()
    if args.serve == "tornado":
        _serve_tornado(args.port)
        return 0
    if args.serve == "websockets":
        _serve_websockets(args.port)
        return 0
    if args.small:
        small_frames_ab(args.small, args.rounds)
        return 0

    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    peers = args.peers.split(",") + (["before"] if args.before else [])
    frames = {(k, s): (payload(k, s), client_frame(2 if k == "binary" else 1, payload(k, s)))
              for k in kinds for s in sizes}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    clients: dict[str, Client] = {}
    rtt: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    cpu: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    try:
        for peer in peers:
            ports[peer] = port = free_port()
            procs[peer] = start(peer, port, args.peer_loop, args.before)
            wait_listening(port, time.monotonic() + 20)
        if args.autobahn:
            autobahn_timings(args.autobahn, ports, args.rounds)
            return 0
        for peer in peers:
            clients[peer] = Client(ports[peer], max(sizes))
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                    str(procs["ours"].pid), "--format", "raw", "--rate", "1000", "--native",
                                    "-o", args.profile], stdout=subprocess.DEVNULL)
            procs["py-spy"] = spy
            time.sleep(1)
        for peer in peers:  # warm up, and check each server echoes every kind exactly
            for (kind, size), (data, frame) in frames.items():
                opcode, length, echoed = clients[peer].echo(frame)
                if opcode != (2 if kind == "binary" else 1) or echoed != data:
                    raise AssertionError(f"{peer}: wrong echo of {kind} {size}")
        for r in range(args.rounds):
            order = peers[r % len(peers):] + peers[:r % len(peers)]
            for (kind, size), (_, frame) in frames.items():
                for peer in order:
                    pid = procs[peer].pid
                    before = cpu_seconds(pid)
                    started = time.perf_counter()
                    _, length, _ = clients[peer].echo(frame)
                    rtt[peer, size, kind].append(time.perf_counter() - started)
                    cpu[peer, size, kind].append(cpu_seconds(pid) - before)
                    assert length == size
    finally:
        for client in clients.values():
            client.close()
        for proc in procs.values():
            proc.send_signal(signal.SIGINT if proc is procs.get("py-spy") else signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    print(f"echo of one message in one frame, median of {args.rounds} rounds (ms; server CPU ms in "
          f"parentheses; peers on {args.peer_loop}); ours/peer = round-trip ratio")
    others = [p for p in peers if p != "ours"]
    print("| kind | MiB | " + " | ".join(peers) + " | " + " | ".join(f"ours/{p}" for p in others) + " |")
    print("|---" * (2 + len(peers) + len(others)) + "|")
    for kind in kinds:
        for size in sizes:
            med = {p: statistics.median(rtt[p, size, kind]) * 1e3 for p in peers}
            cells = [f"{med[p]:.1f} ({statistics.median(cpu[p, size, kind]) * 1e3:.1f})" for p in peers]
            ratios = [f"{med['ours'] / med[p]:.2f}" for p in others] if "ours" in peers else []
            print(f"| {kind} | {size / MiB:g} | " + " | ".join(cells + ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
