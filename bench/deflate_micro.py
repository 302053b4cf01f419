"""What context takeover would cost a broadcast, against our compress-once (in process).

    .venv/bin/python bench/deflate_micro.py [--receivers 100] [--messages 400] [--size 2000]

A room of `--receivers` sockets gets `--messages` chat messages of about `--size` bytes (the
broadcast envelope of bench/server.py around words of chat text, every message different).

- once: `coup.protocol.deflate.compress_message` once per message, the same bytes for everyone
  (server_no_context_takeover, what we do);
- takeover: one zlib compressor per receiver kept across messages (what `ws` does by default
  in Node: each receiver's stream refers back to what that receiver got before), so each message
  is compressed once per receiver.

Reported: CPU µs per delivery, compressed bytes per delivery, and the compressor memory a
receiver holds with takeover (zlib's deflate state for a 32 KiB window at memLevel 8).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coup.protocol.deflate import compress_message

WORDS = ("the graph is planar so every face has at least three edges and we can bound the number of "
         "vertices by euler formula remember to bring your notes on dijkstra shortest path relax each "
         "edge once the vertex is settled meeting moved to room four tomorrow at ten thanks see you "
         "there homework chapter three exercise twelve proof by induction on the number of nodes").split()


def messages(count: int, size: int) -> list[bytes]:
    rng = random.Random(7)
    texts = []
    for _ in range(count):  # every message different (no whole-message repeats a window could find)
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < size:
            words.append(rng.choice(WORDS))
        texts.append(" ".join(words)[:size])
    return [('42["message",' + json.dumps({"id": i, "content": f"{1700000000000 + i} {texts[i]}",
                                           "user": {"id": "Xa8sd7f6Gh2kLmN0pQ1r"},
                                           "createdAt": "2026-12-03T09:00:00.000Z"}) + "]").encode()
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stream = messages(args.messages, args.size)
    deliveries = args.messages * args.receivers
    raw = sum(len(m) for m in stream) / len(stream)
    best_once = best_takeover = float("inf")
    for _ in range(args.rounds):
        t0 = time.process_time()
        once_bytes = 0
        for m in stream:
            once_bytes += len(compress_message(m)) * args.receivers  # the one frame is shared
        best_once = min(best_once, time.process_time() - t0)
        compressors = [zlib.compressobj(6, zlib.DEFLATED, -15) for _ in range(args.receivers)]
        t0 = time.process_time()
        takeover_bytes = 0
        for m in stream:
            for c in compressors:
                takeover_bytes += len(c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)) - 4
        best_takeover = min(best_takeover, time.process_time() - t0)
    print(f"{args.receivers} receivers x {args.messages} messages of {raw:.0f} B (CPU time, best of {args.rounds})")
    print("| | µs CPU per delivery | bytes per delivery | compressor memory per receiver |")
    print("|---|---|---|---|")
    print(f"| uncompressed | 0 | {raw:.0f} | 0 |")
    print(f"| once, no context takeover (ours) | {best_once * 1e6 / deliveries:.2f} | "
          f"{once_bytes / deliveries:.0f} | 0 |")
    print(f"| context takeover, per receiver | {best_takeover * 1e6 / deliveries:.2f} | "
          f"{takeover_bytes / deliveries:.0f} | 256 KiB (zlib: 2^(15+2) + 2^(8+9) bytes) |")


if __name__ == "__main__":
    main()
