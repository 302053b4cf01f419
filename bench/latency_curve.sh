#!/usr/bin/env bash
# Latency and server CPU at the SAME offered fan-out load for Node socket.io and for us.
#
#   bench/latency_curve.sh [RATES]        # RATES in messages/s into rooms of 100, default "300 500 700 900"
#
# The shared harness compares p99 at each peer's own half load (0.5 x its own max), so a faster
# server is measured at a higher load. This runs scenario `fixed` (1000 clients, 10 rooms of 100,
# 50 senders, 6 s) at the same rates for both servers, interleaved, one line per run:
# deliveries/s, server CPU %, p50/p99 ms, foreign CPU % (other processes; > 30 means disturbed).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="${BENCH:-/work/shared/bench}"
PY="${PY:-/work/main/.venv/bin/python}"
RATES="${1:-300 500 700 900}"
OURS="$PY $HERE/server.py --port {PORT}"
printf '%-6s %6s %10s %6s %8s %8s %8s\n' peer msg/s deliv/s cpu% p50ms p99ms foreign%
for rate in $RATES; do
  for peer in node ours; do
    if [ "$peer" = node ]; then cmd="node servers/node_socketio.js"; port=27121; else cmd="$OURS"; port=27125; fi
    LABEL="curve-$peer" "$BENCH/run.sh" "$cmd" "$port" fixed --rate "$rate" --duration 6 2>/dev/null |
      "$PY" -c 'import json, sys
d = json.loads(sys.stdin.read())
def f(key, digits=1):
    return "-" if d.get(key) is None else format(d[key], f".{digits}f")
cols = [f("deliveries_per_s", 0), f("server_cpu_pct"), f("p50_ms", 2), f("p99_ms", 2), f("foreign_cpu_pct")]
print("%-6s %6s %10s %6s %8s %8s %8s" % (sys.argv[1], sys.argv[2], *cols))' "$peer" "$rate"
  done
done
