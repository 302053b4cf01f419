"""What one `LOG_PUBLISH` call costs Redis, alone: the recovery log script on a private
redis-server, chat-shaped calls pipelined (issue 12).

    flock /work/bench.lock .venv/bin/python bench/log_script.py                # ~30 s
    flock /work/bench.lock .venv/bin/python bench/log_script.py --rounds 9 --calls 20000

Each call carries what a chat message makes on its room's owner: one broadcast to a room
(an origin socket on two of three, as local room commands have), then the room command's
answer folded into the same call. Two subscribers hear the 500 rooms' channels (`redis-cli
subscribe`, output discarded), so every PUBLISH is delivered as in the cluster. Redis's CPU
comes from ``/proc/PID/schedstat`` (nanoseconds), per call, best and median of the rounds;
next to it, in the same rounds, two floors: an empty script given the same arguments (the
fixed cost of a Lua call) and a script that only publishes (what recovery off would do in a
script). Run it in two trees to compare two versions of the script: this is hot-cache work
with nothing else on the core, so it ranks variants; `bench/cluster.sh` says what they are
worth under load (there the same call costs ~3 times as much).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the package, and the cluster benchmark's helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from cluster_launch import start_redis  # noqa: E402

from coup.cluster.scripts import log_publish  # noqa: E402

ROOMS = 500
#: a chat broadcast's envelope as nodes publish it (header line, then the packet's text)
ENVELOPE = (b'B["n1","n1:1234567",0,"/",["study:17"],[],1]\n2["message",{"id":123,"content":"hello there, how '
            b'are you?","user":{"id":"aBcDeFgHiJkLmNoPqRsT"},"createdAt":"2026-12-04T11:00:00.000000+00:00"}]')
ANSWER = b'{"t":"res","q":"n2:991","d":true}'
EMPTY = "return {}"
PUBLISH_ONLY = """
local i = 1
while i <= #ARGV do
  redis.call('PUBLISH', ARGV[i + 1], 'L ' .. ARGV[i + 3])
  i = i + 4
end
return {}
"""


def _cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _calls(count: int) -> list[list[object]]:
    calls = []
    for i in range(count):
        origin = f"sock{i % 1000:016d}" if i % 3 else ""
        room = f"P:r:/:study:{i % ROOMS}"
        calls.append([1, room, "1" + origin, ENVELOPE, 1, room, "0", ANSWER])
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    children: list[subprocess.Popen[bytes]] = []
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        client = start_redis(children)
        server = children[0]
        port = client.connection_pool.connection_kwargs["port"]
        channels = [f"P:r:/:study:{i}" for i in range(ROOMS)]
        listeners = [subprocess.Popen(["redis-cli", "-p", str(port), "subscribe", *channels],
                                      stdout=subprocess.DEVNULL) for _ in range(2)]
        time.sleep(0.5)
        scripts = {"LOG_PUBLISH": log_publish(120_000, 50_000, 32 << 20, 12_500, 8 << 20, 180_000, 120_000, False),
                   "publish only": PUBLISH_ONLY, "empty script": EMPTY}
        calls = _calls(args.calls)
        figures: dict[str, list[float]] = {name: [] for name in scripts}
        for _ in range(args.rounds):
            for name, text in scripts.items():
                sha = client.script_load(text)
                client.delete("P:rlog:/", "P:rlog:/:m")
                for _warm in range(2):  # the first pass warms the server; the second is counted
                    pipe = client.pipeline(transaction=False)
                    for call in calls:
                        pipe.evalsha(sha, 2, "P:rlog:/", "P:rlog:/:m", *call)
                    before = _cpu_ns(server.pid)
                    pipe.execute()
                    after = _cpu_ns(server.pid)
                figures[name].append((after - before) / len(calls) / 1000)
        print(f"Redis CPU per call, µs ({args.rounds} rounds of {args.calls:,} chat-shaped calls)")
        print(f"{'script':<14} | best | median")
        for name, values in figures.items():
            print(f"{name:<14} | {min(values):4.2f} | {statistics.median(values):4.2f}")
    finally:
        for child in (*listeners, *children):
            child.terminate()
            child.wait()


if __name__ == "__main__":
    main()
