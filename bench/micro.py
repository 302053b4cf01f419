"""Micro-benchmarks of the hot path, with the real code (no mocks), printing figures.

    /work/main/.venv/bin/python bench/micro.py            # everything (about 40 s)
    /work/main/.venv/bin/python bench/micro.py codec      # only the codec table
    /work/main/.venv/bin/python bench/micro.py fanout polling
    /work/main/.venv/bin/python bench/micro.py message    # one chat message through the core
    MICRO_SIZES=10,100,1000,3000 /work/main/.venv/bin/python bench/micro.py fanout   # other room sizes

Sections:

- ``codec``: packet encode / decode, WebSocket frame parse, polling payload build (µs per op,
  best of several timeit rounds).
- ``fanout``: a real broadcast to a room of N WebSocket sessions (N = 10, 100, 1000) over
  loopback TCP: the server side is this process (uvloop, EngineServer + SocketServer +
  WebSocketTransport, exactly as in production); the client ends are read by a drain
  subprocess on the other core that counts the frames. Reported: CPU µs per receiver of this
  process (user + system, so the write syscalls count), split into "deliver" (the Python
  broadcast loop) and "flush" (one write per socket per loop turn), with one broadcast per loop
  turn (every frame its own write) and with 10 broadcasts per turn (coalesced writes).
  Flat per-receiver cost as N grows is the point.
- ``polling``: the same broadcast to N long-polling sessions with a GET waiting on each:
  µs per receiver, and whether every receiver got the very same payload string (encoded once).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coup.core.options import ServerOptions  # noqa: E402
from coup.core.server import SocketServer  # noqa: E402
from coup.engine.handshake import HandshakeInfo  # noqa: E402
from coup.engine.options import EngineOptions  # noqa: E402
from coup.engine.polling import PollingTransport  # noqa: E402
from coup.engine.server import EngineServer  # noqa: E402
from coup.metrics import Metrics  # noqa: E402
from coup.protocol.socketio import SocketDecoder, SocketPacket, SocketPacketType, encode  # noqa: E402
from coup.protocol.websocket import FrameReader  # noqa: E402
from coup.protocol.wire import Outbound  # noqa: E402

PAYLOAD = {
    "id": 123456,
    "content": "1732761234567890 " + "x" * 47,
    "user": {"id": "Zb3kQm9xT1uV0wYs2aPc"},
    "createdAt": "2026-11-28T02:30:00.123Z",
}
CLIENT_TEXT = '42["message",{"studyId":3,"content":"1732761234567890 ' + "x" * 47 + '"}]'


def _masked(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return header + mask + body


def _best_us(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def bench_codec() -> list[tuple[str, float]]:
    packet = SocketPacket(SocketPacketType.EVENT, "/", ["message", PAYLOAD])
    frame = _masked(CLIENT_TEXT)
    reader = FrameReader(max_message=1_000_000)
    decoder = SocketDecoder()
    loop = asyncio.new_event_loop()
    polling = PollingTransport(loop)
    outs = [Outbound.message(encode(packet)) for _ in range(10)]
    for out in outs:
        out.poll_text()

    def encode_broadcast() -> bytes:
        return Outbound.message(encode(SocketPacket(SocketPacketType.EVENT, "/", ["message", PAYLOAD]))).ws_bytes()

    def encode_poll() -> str:
        return Outbound.message(encode(packet)).poll_text()

    def parse_frame() -> Any:
        return reader.feed(frame)

    def decode_incoming() -> Any:
        (event,) = reader.feed(frame)
        return decoder.feed_text(event.text[1:])  # type: ignore[union-attr]

    def polling_payload() -> str:
        for out in outs:
            polling.send(out)
        coro = polling.poll()
        try:
            coro.send(None)
        except StopIteration as stop:
            return str(stop.value)
        raise RuntimeError("poll did not return at once")

    rows = [
        ("encode EVENT -> WebSocket frame (once per broadcast)", _best_us(encode_broadcast, 20_000)),
        ("encode EVENT -> polling record (once per broadcast)", _best_us(encode_poll, 20_000)),
        ("parse one masked client frame (FrameReader.feed)", _best_us(parse_frame, 50_000)),
        ("frame parse + Socket.IO decode of a client message", _best_us(decode_incoming, 20_000)),
        ("polling payload of 10 queued packets (send x10 + poll)", _best_us(polling_payload, 20_000)),
    ]
    loop.close()
    return rows


# ---------------------------------------------------------------------------- fan-out over TCP

DRAIN = textwrap.dedent(r"""
    import os, selectors, socket, sys, time
    fds = [int(x) for x in sys.argv[1].split(",")]
    marker = sys.argv[2].encode()
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})
    sel = selectors.DefaultSelector()
    bufs = {}
    for fd in fds:
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    sel.register(sys.stdin, selectors.EVENT_READ)
    count = 0
    want = None
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                line = sys.stdin.readline()
                if not line:
                    sys.exit(0)
                want = int(line)
                continue
            s = key.fileobj
            data = s.recv(1 << 20)
            if not data:
                sel.unregister(s)
                continue
            buf = bufs[s] + data
            pos = 0
            n = len(buf)
            while n - pos >= 2:
                ln = buf[pos + 1] & 0x7F
                h = 2
                if ln == 126:
                    if n - pos < 4:
                        break
                    ln = int.from_bytes(buf[pos + 2:pos + 4], "big"); h = 4
                elif ln == 127:
                    if n - pos < 10:
                        break
                    ln = int.from_bytes(buf[pos + 2:pos + 10], "big"); h = 10
                if n - pos < h + ln:
                    break
                if buf.startswith(marker, pos + h):
                    count += 1
                pos += h + ln
            bufs[s] = buf[pos:]
        if want is not None and count >= want:
            sys.stdout.write("ok\n"); sys.stdout.flush()
            want = None
""")


def _start_drain(fds: list[int]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", DRAIN, ",".join(map(str, fds)), '42["bench"'],
                            pass_fds=fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _handshake() -> HandshakeInfo:
    return HandshakeInfo(headers={}, query={"EIO": "4", "transport": "websocket"}, address="127.0.0.1",
                         url="/socket.io/?EIO=4&transport=websocket", secure=False, issued=time.time())


class FanoutRig:
    """N real WebSocket sessions on loopback TCP, joined to one room, read by a drain process."""

    def __init__(self, n: int, metrics: Metrics | None = None) -> None:
        self.n = n
        self.engine = EngineServer(EngineOptions(), metrics=metrics)
        self.sio = SocketServer(self.engine, ServerOptions(recovery=None))
        self.nsp = self.sio.main
        self.client_socks: list[socket.socket] = []
        self.drain: subprocess.Popen[str] | None = None
        self.delivered = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        port = listener.getsockname()[1]
        for _ in range(self.n):
            client = socket.create_connection(("127.0.0.1", port))
            server_side, _ = listener.accept()
            server_side.setblocking(False)
            session, transport = self.engine.open_websocket(_handshake())
            await loop.connect_accepted_socket(lambda t=transport: t, sock=server_side)  # type: ignore[misc]
            session.receive_text("40")
            self.client_socks.append(client)
        listener.close()
        while len(self.nsp.sockets) < self.n:  # noqa: ASYNC110 - the connect tasks have no event to wait on
            await asyncio.sleep(0.01)
        for sock in list(self.nsp.sockets.values()):
            await sock.join("room")
        self.drain = _start_drain([s.fileno() for s in self.client_socks])
        for s in self.client_socks:
            s.close()  # the drain owns them now
        await self.wait_delivered(0)

    async def wait_delivered(self, extra: int) -> None:
        assert self.drain is not None and self.drain.stdin is not None and self.drain.stdout is not None
        self.delivered += extra
        self.drain.stdin.write(f"{self.delivered}\n")
        self.drain.stdin.flush()
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, self.drain.stdout.readline)
        assert line.strip() == "ok", line

    async def measure(self, messages: int, per_turn: int) -> tuple[float, float]:
        """CPU µs per receiver: (deliver part, total) for `messages` broadcasts, `per_turn` per loop turn."""
        room = self.nsp.to("room")
        deliver = 0.0
        start = time.process_time()
        sent = 0
        while sent < messages:
            t0 = time.process_time()
            for _ in range(per_turn):
                room.emit("bench", PAYLOAD)
            deliver += time.process_time() - t0
            sent += per_turn
            await asyncio.sleep(0)  # the coalescer flushes: one write per socket
        total = time.process_time() - start
        await self.wait_delivered(sent * self.n)
        per = 1e6 / (sent * self.n)
        return deliver * per, total * per

    async def close(self) -> None:
        if self.drain is not None:
            assert self.drain.stdin is not None
            self.drain.stdin.close()
            self.drain.wait(5)
        self.engine.close_all()
        await asyncio.sleep(0.05)


async def bench_fanout(sizes: tuple[int, ...] = (10, 100, 1000)) -> list[tuple[int, float, float, float, float]]:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    rows = []
    for n in sizes:
        rig = FanoutRig(n)
        await rig.start()
        try:
            deliveries = 200_000
            await rig.measure(max(20, 20_000 // n), 1)  # warm up
            best: list[tuple[float, float]] = []
            best10: list[tuple[float, float]] = []
            for _ in range(3):
                best.append(await rig.measure(max(20, deliveries // n), 1))
                best10.append(await rig.measure(max(100, deliveries // n), 10))
            d1, t1 = min(best, key=lambda r: r[1])
            d10, t10 = min(best10, key=lambda r: r[1])
            rows.append((n, d1, t1, d10, t10))
        finally:
            await rig.close()
    return rows


# ---------------------------------------------------------------------------- one message through the core

async def bench_message_path(room_size: int = 2, number: int = 20_000, metrics: Metrics | None = None) -> float:
    """µs of Python per incoming chat message: frame in -> handler -> broadcast queued to a room.

    The bench server's own handlers (bench/server.py) on real sessions whose transports are
    not attached to sockets, so the writes (measured in `fanout`) are left out.
    """
    from bench.server import install_chat

    class _Node:  # what install_chat needs of a CoupNode
        def __init__(self, sio: SocketServer) -> None:
            self.sio = sio

    engine = EngineServer(EngineOptions(), metrics=metrics)
    sio = SocketServer(engine, ServerOptions(recovery=None))
    install_chat(_Node(sio))  # type: ignore[arg-type]
    transports = []
    for _ in range(room_size):
        session, transport = engine.open_websocket(_handshake())
        session.receive_text("40")
        transports.append(transport)
    await asyncio.sleep(0.01)
    for t in transports:
        t.data_received(_masked('42["join-study",{"studyId":1}]'))
    await asyncio.sleep(0.01)
    frame = _masked('42["message",{"studyId":1,"content":"1732761234567890 ' + "x" * 47 + '"}]')
    sender = transports[0]
    pendings = [t._pending for t in transports]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(number):
            sender.data_received(frame)
            for p in pendings:
                p.clear()
        best = min(best, time.perf_counter() - t0)
        await asyncio.sleep(0)
    engine.close_all()
    return best / number * 1e6


# ---------------------------------------------------------------------------- polling fan-out

async def bench_polling(sizes: tuple[int, ...] = (10, 100, 1000)) -> list[tuple[int, float, bool]]:
    rows = []
    for n in sizes:
        engine = EngineServer(EngineOptions())
        sio = SocketServer(engine, ServerOptions(recovery=None))
        sessions = [engine.open_polling(_handshake()) for _ in range(n)]
        transports = [s.transport for s in sessions]
        for s, t in zip(sessions, transports, strict=True):
            assert isinstance(t, PollingTransport)
            await t.poll()  # the OPEN packet
            s.receive_text("40")
        while len(sio.main.sockets) < n:  # noqa: ASYNC110 - the connect tasks have no event to wait on
            await asyncio.sleep(0.01)
        for sock in list(sio.main.sockets.values()):
            await sock.join("room")
        for t in transports:
            assert isinstance(t, PollingTransport)
            await t.poll()  # the CONNECT reply
        rounds = max(5, 20_000 // n)
        cpu = 0.0
        same = True
        for _ in range(rounds):
            polls = [asyncio.ensure_future(t.poll()) for t in transports]  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # every GET is waiting
            t0 = time.process_time()
            sio.main.to("room").emit("bench", PAYLOAD)
            bodies = await asyncio.gather(*polls)
            cpu += time.process_time() - t0
            same = same and all(b is bodies[0] for b in bodies)
        rows.append((n, cpu / (rounds * n) * 1e6, same))
        engine.close_all()
    return rows


def main() -> None:
    wanted = set(sys.argv[1:]) or {"codec", "fanout", "polling"}
    print(f"python {sys.version.split()[0]}, uvloop, {os.cpu_count()} cores; payload {len(CLIENT_TEXT)} B")
    if "codec" in wanted:
        print("\n## codec (µs per operation, best of 5)\n")
        print("| operation | µs |\n|---|---|")
        for name, us in bench_codec():
            print(f"| {name} | {us:.2f} |")
    import uvloop

    if "codec" in wanted or "message" in wanted:
        us = uvloop.run(bench_message_path())
        print(f"| one chat message through the core: frame in -> handler -> queued to a room of 2 | {us:.2f} |")
    sizes = tuple(int(n) for n in os.environ.get("MICRO_SIZES", "10,100,1000").split(","))
    if "fanout" in wanted:
        rows = uvloop.run(bench_fanout(sizes))
        print("\n## broadcast to a room of N WebSocket sessions over loopback TCP (CPU µs per receiver)\n")
        print("| N | deliver (Python loop) | total, 1 broadcast per loop turn | "
              "deliver, 10 per turn | total, 10 per turn (coalesced writes) |")
        print("|---|---|---|---|---|")
        for n, d1, t1, d10, t10 in rows:
            print(f"| {n} | {d1:.2f} | {t1:.2f} | {d10:.2f} | {t10:.2f} |")
    if "polling" in wanted:
        prows = uvloop.run(bench_polling(sizes))
        print("\n## broadcast to a room of N long-polling sessions, a GET waiting on each\n")
        print("| N | CPU µs per receiver (deliver + release + payload) | one payload object for all |")
        print("|---|---|---|")
        for n, us, same in prows:
            print(f"| {n} | {us:.2f} | {same} |")


if __name__ == "__main__":
    main()
