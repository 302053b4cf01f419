"""Our server under the shared benchmark harness (`../shared/bench`), with the peers' behaviour.

- ``join-study {studyId}`` joins room ``study:<id>``;
- ``message {studyId, content}`` broadcasts ``message {id, content, user: {id: sid}, createdAt}``
  to that room, sender included.

It runs the real node (`coup.app.CoupNode`: Tornado HTTP, Engine.IO, Socket.IO core, memory
adapter) on uvloop, with no authentication and no persistence, so the figures are the core's.
Connection state recovery is OFF, as in the Node peer (socket.io's default is off; with it on,
every event would carry an offset argument and be kept for replay).

    EXTRA_PEERS='ours|sio|27105|/work/main/.venv/bin/python /work/wt/perf/bench/server.py --port {PORT}' ./peers.sh

The coup package is found from this file's location (the repository root goes first on
``sys.path``), so no ``pip install`` is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coup.app import CoupNode  # noqa: E402
from coup.config import Settings  # noqa: E402
from coup.core.socket import Socket  # noqa: E402
from coup.heap import freeze_startup_heap  # noqa: E402


class IsoClock:
    """``new Date().toISOString()`` (millisecond precision, ``Z``), formatting the date once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def install_chat(node: CoupNode) -> None:
    """The benchmark's chat behaviour on the main namespace."""
    nsp = node.sio.main
    iso_now = IsoClock()
    seq = 0

    async def join_study(socket: Socket, args: list[Any]) -> None:
        data = args[0] if args else None
        if isinstance(data, dict) and data.get("studyId") is not None:
            await socket.join(f"study:{data['studyId']}")

    def message(socket: Socket, args: list[Any]) -> None:
        nonlocal seq
        data = args[0] if args else None
        if not isinstance(data, dict) or data.get("studyId") is None:
            return
        seq += 1
        nsp.to(f"study:{data['studyId']}").emit("message", {
            "id": seq,
            "content": data.get("content"),
            "user": {"id": socket.id},
            "createdAt": iso_now(),
        })

    nsp.on("join-study", join_study)
    nsp.on("message", message)


async def serve(host: str, port: int, metrics_port: int | None = None) -> None:
    # permessage-deflate as a deployment sets it (COUP_WS_COMPRESSION, COUP_WS_COMPRESSION_THRESHOLD)
    env = Settings.from_env({"COUP_DEMO": "1", **{k: v for k, v in os.environ.items()
                                                  if k.startswith("COUP_WS_COMPRESSION")}})
    settings = Settings(demo=True, host=host, port=port, recovery_window=0.0, metrics_port=metrics_port,
                        ws_compression=env.ws_compression,
                        ws_compression_threshold=env.ws_compression_threshold,
                        # every benchmark client comes from 127.0.0.1, standing for many addresses
                        # (the peers have no such cap): the per-address cap would refuse client 1001
                        max_connections_per_address=1_000_000).validated()
    node = CoupNode(settings)
    install_chat(node)
    await node.start()
    delay_ms = float(os.environ.get("COUP_BENCH_FLUSH_DELAY_MS", "0"))
    if delay_ms > 0:
        delay_flushes(node, delay_ms / 1000)
    if os.environ.get("COUP_BENCH_NO_FREEZE") != "1":
        freeze_startup_heap()
    print(f"coup bench server (pid {os.getpid()}) listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    print(f"exit: {process_stats()}", flush=True)


class _LaterLoop:
    """The loop as the write coalescer sees it, with `call_soon` turned into `call_later(delay)`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay

    def call_soon(self, callback: Any) -> asyncio.TimerHandle:
        return self._loop.call_later(self._delay, callback)


def delay_flushes(node: CoupNode, delay: float) -> None:
    """COUP_BENCH_FLUSH_DELAY_MS (an experiment, issue 18.4): hold each turn's writes `delay` s, so
    that at a light load several broadcasts share one write per receiver, as they do at saturation."""
    coalescer = node.engine.coalescer
    coalescer._loop = _LaterLoop(coalescer._loop, delay)  # type: ignore[assignment]


class CollectorPauses:
    """How long the cyclic garbage collector stopped the loop, per generation (a p99 suspect)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        pause = time.perf_counter() - self._started
        self.count[generation] += 1
        self.total[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def __str__(self) -> str:
        return " ".join(f"gen{g} {self.count[g]}x total {self.total[g] * 1000:.1f} ms longest "
                        f"{self.longest[g] * 1000:.2f} ms" for g in range(3))


PAUSES = CollectorPauses()


class FlushSizes:
    """With COUP_BENCH_FLUSH_STATS=1: sockets written and time taken per `WriteCoalescer.flush`.

    The flush writes every socket a loop turn dirtied; how big and long it gets is where the
    fan-out tail at moderate load comes from (bench/README.md).
    """

    def __init__(self) -> None:
        from coup.engine import websocket

        self.sizes: list[int] = []
        self.seconds: list[float] = []
        flush = websocket.WriteCoalescer.flush

        def timed(coalescer: websocket.WriteCoalescer) -> None:
            size = len(coalescer._dirty)
            started = time.perf_counter()
            flush(coalescer)
            if size:
                self.sizes.append(size)
                self.seconds.append(time.perf_counter() - started)

        websocket.WriteCoalescer.flush = timed  # type: ignore[method-assign]

    def __str__(self) -> str:
        if not self.sizes:
            return "no flushes"
        sizes, ms = sorted(self.sizes), sorted(s * 1000 for s in self.seconds)

        def at(values: list[Any], q: float) -> Any:
            return values[min(len(values) - 1, int(q * len(values)))]

        return (f"{len(sizes)} flushes; sockets per flush p50 {at(sizes, .5)} p90 {at(sizes, .9)} "
                f"p99 {at(sizes, .99)} max {sizes[-1]}; ms per flush p50 {at(ms, .5):.2f} p90 {at(ms, .9):.2f} "
                f"p99 {at(ms, .99):.2f} max {ms[-1]:.2f}")


FLUSHES = FlushSizes() if os.environ.get("COUP_BENCH_FLUSH_STATS") == "1" else None


def process_stats() -> str:
    """CPU split and collector activity, printed at exit (the harness keeps the server's log)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (f"user {usage.ru_utime:.2f}s sys {usage.ru_stime:.2f}s maxrss {usage.ru_maxrss} KB "
            f"gc pauses: {PAUSES}" + (f"; flushes: {FLUSHES}" if FLUSHES is not None else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--asyncio", action="store_true", help="plain asyncio loop instead of uvloop")
    parser.add_argument("--metrics-port", type=int, help="count metrics and serve /metrics on this port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.asyncio:
        asyncio.run(serve(args.host, args.port, args.metrics_port))
    else:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.metrics_port))


if __name__ == "__main__":
    main()
