"""Print the cluster benchmark's tables from its JSON lines (bench/cluster.sh writes them).

Redis traffic is counted per message a client sent (which the server delivers to every
member of the room) and per delivered message (divided by the room size):
PUBLISH commands, all Redis commands, and pub/sub messages Redis pushed to nodes.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def num(value: Any, digits: int = 1) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if abs(value) >= 10000:
        return f"{value / 1000:.1f}k"
    return f"{value:.{digits}f}"


def redis_per_message(line: dict[str, Any]) -> tuple[str, str, str, str]:
    c = line.get("cluster", {})
    messages = c.get("messages") or 0
    if not messages or not c.get("redis"):
        return "-", "-", "-", "-"
    room = line.get("room_size") or 1
    return (num(c["redis_publish"] / messages, 2), num(c["redis_deliveries"] / messages, 2),
            num(c["redis_commands"] / messages, 2), num(c["redis_deliveries"] / messages / room, 3))


def main(paths: list[str]) -> None:
    lines = [json.loads(raw) for path in paths for raw in open(path) if raw.strip()]
    fanout = [r for r in lines if r.get("scenario") == "fanout"]
    chat = [r for r in lines if r.get("scenario") == "chat"]
    if fanout:
        print("Fan-out (1000 clients, 10 rooms of 100, 50 senders); all server processes on one core")
        print(f"{'config':8} {'max deliv/s':>11} {'ok deliv/s':>10} {'srv CPU%':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'foreign%':>8} | {'PUB/msg':>7} {'Redis→node/msg':>14} {'cmds/msg':>8} {'Redis→node/deliv':>16}")
        for r in fanout:
            pub, deliv, cmds, per_delivery = redis_per_message(r)
            foreign = max((v for v in (r.get("foreign_cpu_pct_at_max"), r.get("lat_foreign_cpu_pct"))
                           if isinstance(v, (int, float))), default=None)
            print(f"{r.get('label', '?'):8} {num(r.get('max_deliveries_per_s')):>11} "
                  f"{num(r.get('max_ok_deliveries_per_s')):>10} {num(r.get('server_cpu_pct_at_max')):>8} "
                  f"{num(r.get('lat_p50_ms'), 2):>7} {num(r.get('lat_p99_ms'), 2):>7} {num(foreign):>8} | "
                  f"{pub:>7} {deliv:>14} {cmds:>8} {per_delivery:>16}"
                  + ("" if r.get("lat_valid", True) else "  (latency invalid: drain did not finish)")
                  + (f"  ERROR {r['error'][:80]}" if r.get("error") else ""))
    if chat:
        print()
        print("Small-room chat (1000 clients, 500 rooms of 2, 1000 msg/s)")
        print(f"{'config':8} {'deliv/s':>8} {'lost':>5} {'srv CPU%':>8} {'p50 ms':>7} {'p99 ms':>7} {'foreign%':>8} | "
              f"{'PUB/msg':>7} {'Redis→node/msg':>14} {'cmds/msg':>8} {'Redis→node/deliv':>16}")
        for r in chat:
            pub, deliv, cmds, per_delivery = redis_per_message(r)
            print(f"{r.get('label', '?'):8} {num(r.get('deliveries_per_s')):>8} {num(r.get('lost'), 0):>5} "
                  f"{num(r.get('server_cpu_pct')):>8} {num(r.get('p50_ms'), 2):>7} {num(r.get('p99_ms'), 2):>7} "
                  f"{num(r.get('foreign_cpu_pct')):>8} | {pub:>7} {deliv:>14} {cmds:>8} {per_delivery:>16}"
                  + (f"  ERROR {r['error'][:80]}" if r.get("error") else ""))
    connect = [r for r in lines if r.get("scenario") == "connect"]
    if connect:
        print()
        print("Connect (2000 idle clients; in a cluster each socket's own room is a Redis subscription)")
        print(f"{'config':8} {'connects/s':>10} {'p99 ms':>7} {'RSS KB/conn':>11} {'foreign%':>8}")
        for r in connect:
            print(f"{r.get('label', '?'):8} {num(r.get('connects_per_s')):>10} {num(r.get('connect_p99_ms')):>7} "
                  f"{num(r.get('rss_kb_per_conn')):>11} {num(r.get('foreign_cpu_pct')):>8}"
                  + (f"  ERROR {r['error'][:80]}" if r.get("error") else ""))
    cpu = [r for r in lines if r.get("cluster", {}).get("redis_cpu_us") and r["cluster"].get("messages")]
    if cpu:
        print()
        print("Redis CPU per message a client sent (µs, user + system), in total and per server (cluster: primaries)")
        for r in cpu:
            spent = r["cluster"]["redis_cpu_us"]
            messages = r["cluster"]["messages"]
            print(f"  {r.get('label')} {r.get('scenario')}: {sum(spent) / messages:.1f} µs/msg; per server "
                  + " / ".join(f"{s / messages:.1f}" for s in spent))
    procs = [r for r in lines if r.get("cluster", {}).get("nodes_proc") and r["cluster"].get("messages")]
    if procs:
        print()
        print("Nodes per message a client sent (summed over the nodes, /proc, from the load's start to its end): "
              "CPU µs, read / write syscalls, voluntary / involuntary context switches")
        for r in procs:
            p, messages = r["cluster"]["nodes_proc"], r["cluster"]["messages"]
            print(f"  {r.get('label')} {r.get('scenario')}: {p['cpu_us'] / messages:.1f} µs/msg; syscalls r "
                  f"{p['syscr'] / messages:.2f} w {p['syscw'] / messages:.2f}; ctxsw {p['vcsw'] / messages:.2f} / "
                  f"{p['ivcsw'] / messages:.2f}")
    usec = [r for r in lines if r.get("cluster", {}).get("redis_command_usec") and r["cluster"].get("messages")]
    if usec:
        print()
        print("Redis commands per message a client sent: calls, µs (a script's µs include its inner calls)")
        for r in usec:
            messages = r["cluster"]["messages"]
            print(f"  {r.get('label')} {r.get('scenario')}: " + ", ".join(
                f"{name} {calls / messages:.2f} / {spent / messages:.1f}"
                for name, (calls, spent) in sorted(r["cluster"]["redis_command_usec"].items(),
                                                   key=lambda kv: -kv[1][1])))
    calls = [(r.get("label"), r.get("scenario"), r["cluster"].get("room_calls")) for r in lines
             if r.get("cluster", {}).get("room_calls")]
    if calls:
        print()
        print("room commands (coup): where they ran — local: the receiving node owned the room; remote: routed "
              "to the owner")
        for label, scenario, counts in calls:
            print(f"  {label} {scenario}: {counts}")


if __name__ == "__main__":
    main(sys.argv[1:])
