"""What a broadcast costs the SockJS bridge per receiver: the Socket.IO -> envelope translation.

    /work/main/.venv/bin/python bench/sockjs_translate.py

A broadcast hands the same `Outbound` to every member of a room; `BridgeContext.frame`
translates it once and answers the other receivers from its one-entry cache. This prints
µs for one translation, for a cache hit, and for a 1000-member room with and without the
cache (best of several timeit rounds, real code, a typical chat message).
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coup.engine.server import EngineServer  # noqa: E402
from coup.protocol.socketio import SocketPacket, SocketPacketType, encode  # noqa: E402
from coup.protocol.wire import Outbound  # noqa: E402
from coup.transports.sockjs.bridge import BridgeContext  # noqa: E402

PAYLOAD = {"id": 123456, "content": "1732761234567890 " + "x" * 47, "user": {"id": 7, "name": "민지"},
           "createdAt": "2026-11-28T02:30:00.123Z"}
ROOM = 1000


def best_us(stmt: object, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    out = Outbound.message(encode(SocketPacket(SocketPacketType.EVENT, "/", ["message", PAYLOAD, "42"])))
    context = BridgeContext(EngineServer(), 1_000_000)

    def fresh() -> None:
        context.last_out = None
        context.frame(out)

    translate = best_us(fresh, 20_000)
    context.frame(out)
    hit = best_us(lambda: context.frame(out), 200_000)
    print(f"one translation (decode + envelope + JSON twice): {translate:6.2f} µs")
    print(f"cache hit (same Outbound, next receiver):          {hit:6.3f} µs")
    print(f"room of {ROOM}: cached {translate + (ROOM - 1) * hit:8.1f} µs, "
          f"per receiver without cache {ROOM * translate:8.1f} µs")


if __name__ == "__main__":
    main()
