"""What a polling request costs when it lands on the wrong node (served through Redis) vs the right one.

Three CoUp nodes (`bench/cluster_node.py`, uvloop) and one redis-server on this machine;
the load generator is `bench/pollgen.py` in this process. Three measurements, each
direct (every request to the session's node) and mis-routed, side by side:

1. short requests: ``POST 2`` (a client PING) then ``GET`` (answered at once with the PONG),
   sequential; latency of each, and Redis commands per request (INFO commandstats delta,
   minus the cluster's idle background rate measured in the same run);
2. long-poll: a GET held by the server, answered when a room message arrives (sent by
   another client); latency from the send to the answer;
3. fan-out: CLIENTS polling clients in one room, SENDERS clients sending as fast as their
   POSTs complete; deliveries per second with round-robin routing (every request to the
   next node) vs every request on its session's own node.

    python bench/polling_relay.py [--cycles 1500] [--clients 90] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_common import free_port, redis_server
from pollgen import RS, PollingClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = os.environ.get("COUP_BENCH_PYTHON", sys.executable)
TOKEN = "bench-service-token-0123456789"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def start_nodes(redis_url: str, count: int) -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    go = Path(tempfile.mkdtemp(prefix="coup-relay-bench-")) / "go"
    go.touch()
    procs, urls = [], {}
    for i in range(count):
        port = free_port()
        procs.append(subprocess.Popen(
            [PYTHON, str(HERE / "cluster_node.py"), "--port", str(free_port()), "--private-port", str(port),
             "--node-id", f"n{i}", "--redis-url", redis_url, "--go", str(go)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}))
        urls[f"n{i}"] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if all(len(get_json(u + "/api/cluster")["nodes"]) == count for u in urls.values()):
                return procs, urls
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("nodes did not come up")
        time.sleep(0.1)


def redis_commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


async def raw_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling") as response:
        sid = json.loads((await response.text())[1:])["sid"]
    async with http.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}", data=b"40") as response:
        await response.read()
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}") as response:
        await response.read()  # the CONNECT reply
    return sid


async def short_requests(http: aiohttp.ClientSession, urls: dict[str, str], cycles: int,
                         rclient: redis.Redis) -> dict[str, Any]:
    """POST 2 + GET (PONG at once), direct vs through another node; interleaved so noise is shared."""
    sid = await raw_session(http, urls["n0"])
    q = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    lat: dict[str, list[float]] = {"direct post": [], "direct get": [], "relayed post": [], "relayed get": []}
    commands: dict[str, float] = {}
    for mode, url in (("direct", urls["n0"]), ("relayed", urls["n1"])):
        idle_start, idle_t = redis_commands(rclient), time.perf_counter()
        await asyncio.sleep(1.0)
        idle_rate = (redis_commands(rclient) - idle_start) / (time.perf_counter() - idle_t)
        start, t0 = redis_commands(rclient), time.perf_counter()
        for _ in range(cycles):
            a = time.perf_counter()
            async with http.post(url + q, data=b"2") as response:
                await response.read()
            b = time.perf_counter()
            async with http.get(url + q) as response:
                body = await response.text()
            c = time.perf_counter()
            assert body == "3", body
            lat[f"{mode} post"].append(b - a)
            lat[f"{mode} get"].append(c - b)
        elapsed = time.perf_counter() - t0
        commands[mode] = max(0.0, (redis_commands(rclient) - start - idle_rate * elapsed) / (2 * cycles))
    return {"latency": lat, "commands": commands}


async def long_polls(http: aiohttp.ClientSession, urls: dict[str, str], samples: int) -> dict[str, list[float]]:
    """A held GET answered by a room message: send -> answer, direct vs through another node."""
    poller = await raw_session(http, urls["n0"])
    sender = await raw_session(http, urls["n0"])
    pq = f"/socket.io/?EIO=4&transport=polling&sid={poller}"
    sq = f"/socket.io/?EIO=4&transport=polling&sid={sender}"
    async with http.post(urls["n0"] + pq, data=b'42["join-study",{"studyId":1}]') as response:
        await response.read()
    await asyncio.sleep(0.2)
    out: dict[str, list[float]] = {"direct": [], "relayed": []}
    for i in range(samples * 2):
        mode = "direct" if i % 2 == 0 else "relayed"
        url = urls["n0"] if mode == "direct" else urls["n1"]
        received: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def hold(url: str = url, received: asyncio.Future[float] = received) -> None:
            while True:
                async with http.get(url + pq) as response:
                    text = await response.text()
                if any(p.startswith('42["message"') for p in text.split(RS)):
                    received.set_result(time.perf_counter())
                    return
                if "2" in text.split(RS):
                    async with http.post(urls["n0"] + pq, data=b"3") as response:
                        await response.read()

        task = asyncio.create_task(hold())
        await asyncio.sleep(0.01)  # the GET is held by now
        sent = time.perf_counter()
        async with http.post(urls["n0"] + sq, data=f'42["message",{{"studyId":1,"content":{i}}}]'.encode()) as r:
            await r.read()
        out[mode].append(await asyncio.wait_for(received, 5) - sent)
        await task
        # the sender gets the room message too (it is not in the room: nothing to drain)
    return out


async def fanout(urls: dict[str, str], clients: int, senders: int, seconds: float, *, round_robin: bool) -> float:
    nodes = list(urls)
    cycle = itertools.cycle(nodes)

    def route(kind: str, home: str) -> str:
        if round_robin or not home:
            return urls[next(cycle)]
        return urls[home]

    delivered = [0]

    def count(client: PollingClient, packet: str, at: float) -> None:
        if packet.startswith('42["message"'):
            delivered[0] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        receivers = [PollingClient(http, route, on_packet=count) for _ in range(clients)]
        talkers = [PollingClient(http, lambda kind, home: urls[home] if home else urls[next(cycle)])
                   for _ in range(senders)]
        everyone = receivers + talkers
        for client in everyone:
            await client.open()
            client.send("40")
        for client in everyone:
            client.send('42["join-study",{"studyId":1}]')
        await asyncio.gather(*(c.flushed() for c in everyone))
        await asyncio.sleep(1.0)
        stop = time.perf_counter() + seconds
        start_count = delivered[0]
        started = time.perf_counter()

        async def talk(client: PollingClient) -> None:
            """Five messages at a time, the next five once those came back (the server's flood limit holds)."""
            n = 0
            while time.perf_counter() < stop:
                heard = client.received
                for _ in range(5):
                    client.send(f'42["message",{{"studyId":1,"content":{n}}}]')
                    n += 1
                await client.flushed()
                while client.received < heard + 5 and time.perf_counter() < stop + 5:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)

        await asyncio.gather(*(talk(t) for t in talkers))
        rate = (delivered[0] - start_count) / (time.perf_counter() - started)
        errors = sum(c.errors for c in everyone)
        await asyncio.gather(*(c.close() for c in everyone))
        if errors:
            print(f"  ({errors} request errors in the {'round-robin' if round_robin else 'own-node'} run)")
        return rate


def summary(name: str, values: list[float]) -> str:
    return f"{name:<14} p50 {pct(values, 0.5):6.2f} ms  p99 {pct(values, 0.99):6.2f} ms  (n={len(values)})"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--clients", type=int, default=90)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    async with redis_server() as (redis_url, _):
        procs, urls = start_nodes(redis_url, 3)
        rclient = redis.Redis.from_url(redis_url)
        try:
            async with aiohttp.ClientSession() as http:
                short = await short_requests(http, urls, args.cycles, rclient)
                lat = short["latency"]
                print("\n1. short polling requests (POST 2, GET -> 3), sequential")
                for kind in ("post", "get"):
                    direct, relayed = lat[f"direct {kind}"], lat[f"relayed {kind}"]
                    print("  " + summary(f"direct {kind}", direct))
                    print("  " + summary(f"relayed {kind}", relayed))
                    print(f"  {'added':<14} p50 {pct(relayed, .5) - pct(direct, .5):+6.2f} ms  "
                          f"p99 {pct(relayed, .99) - pct(direct, .99):+6.2f} ms")
                print(f"  redis commands per request: direct {short['commands']['direct']:.2f}, "
                      f"relayed {short['commands']['relayed']:.2f}")
                longp = await long_polls(http, urls, args.samples)
                print("\n2. long-poll: room message sent -> held GET answered")
                print("  " + summary("direct", longp["direct"]))
                print("  " + summary("relayed", longp["relayed"]))
                print(f"  {'added':<14} p50 {pct(longp['relayed'], .5) - pct(longp['direct'], .5):+6.2f} ms  "
                      f"p99 {pct(longp['relayed'], .99) - pct(longp['direct'], .99):+6.2f} ms")
            own = await fanout(urls, args.clients, args.senders, args.seconds, round_robin=False)
            rr = await fanout(urls, args.clients, args.senders, args.seconds, round_robin=True)
            print(f"\n3. fan-out, {args.clients} polling clients in one room, {args.senders} senders, "
                  f"{args.seconds:.0f} s each")
            print(f"  own node     {own:9.0f} deliveries/s")
            print(f"  round-robin  {rr:9.0f} deliveries/s   ({rr / own:.2f}x)")
            served = sum(get_json(u + "/api/cluster")["relay"]["served"] for u in urls.values())
            print(f"\nrelayed requests served by the nodes: {served}; "
                  f"load average after: {os.getloadavg()[0]:.2f}; "
                  f"mean latency direct GET {statistics.mean(lat['direct get']) * 1000:.2f} ms")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(5)


if __name__ == "__main__":
    asyncio.run(main())
