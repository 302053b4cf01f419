#!/usr/bin/env bash
# Latency and server CPU at the SAME offered fan-out load for Node socket.io and for us: the curve
# deliveries/s -> p99 up to Node's maximum, plus small-room chat, in one run (issue 18.4).
#
#   bench/latency_curve.sh [RATES]   # RATES in messages/s into rooms of 100; default: measure Node's
#                                    # fan-out max first, then 20 40 60 80 100 % of it
#
# The shared harness compares p99 at each peer's own half load (0.5 x its own max), so a faster
# server is measured at a higher load. This runs scenario `fixed` (1000 clients, 10 rooms of 100,
# 50 senders, 8 s) at the same rates for both servers, interleaved, one line per run, then the
# harness's `chat` scenario (500 rooms of 2, 1 msg/s per client) for both. Columns: deliveries/s,
# server CPU %, CPU µs per delivery, p50/p99 ms, foreign CPU % (other processes; > 30 means
# disturbed) and, from `perf stat` on the server over 3 s of the load (SYSCALLS=0 skips it):
# event-loop turns per second (epoll_wait calls), deliveries per turn, write syscalls per delivery
# (write + writev), all syscalls per delivery, wakeups of another task the server's writes cause
# per delivery (sched_waking in the server's context: the generator asleep in epoll), and the
# server's own context switches per second (it slept between turns). Those say why a light load
# costs more CPU per delivery: see bench/README.md "Same offered load for Node and us".
#
# Env: BENCH (the shared harness, /work/shared/bench), PY (python with coup's deps), OURS_ENV
# (extra environment for our server), PEERS ("node ours"; add `oursB` for ours with OURS_B_ENV, e.g.
# "COUP_BENCH_FLUSH_DELAY_MS=1": bench/server.py holds each turn's writes 1 ms),
# SYSCALLS (1), CHAT (1), DURATION (8). Run under `flock /work/bench.lock` on a shared machine.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="${BENCH:-/work/shared/bench}"
PY="${PY:-/work/main/.venv/bin/python}"
PEERS="${PEERS:-node ours}"
SYSCALLS="${SYSCALLS:-1}"
CHAT="${CHAT:-1}"
DURATION="${DURATION:-8}"
OURS="env ${OURS_ENV:-} $PY $HERE/server.py --port {PORT}"
TMP="$(mktemp -d /tmp/latency-curve.XXXXXX)"
EVENTS="raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_read,sched:sched_waking,context-switches"

OURS_B="env ${OURS_B_ENV:-} $PY $HERE/server.py --port {PORT}"
command_of() { # peer -> "command|port"; peer `oursB` is ours with OURS_B_ENV (an A/B in one run)
  case "$1" in
    node) echo "node servers/node_socketio.js|27121" ;;
    oursB) echo "$OURS_B|27126" ;;
    *) echo "$OURS|27125" ;;
  esac
}

# perf stat on the process listening on $1, from $2 s after its port opened, for 3 s, into $3
count_syscalls() {
  local port="$1" delay="$2" out="$3" pid="" i
  for i in $(seq 1 200); do
    pid="$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
    [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || return 0
  sleep "$delay"
  perf stat -x, -e "$EVENTS" -p "$pid" -- sleep 3 2>"$out" >/dev/null || true
}

# one harness run of $1 (peer) with scenario args; prints the generator's JSON line
run() {
  local peer="$1"; shift
  local spec cmd port
  spec="$(command_of "$peer")"; cmd="${spec%|*}"; port="${spec#*|}"
  if [ "$SYSCALLS" = 1 ] && [ "$1" = fixed ]; then
    count_syscalls "$port" 3.5 "$TMP/perf-$peer" &
  else
    rm -f "$TMP/perf-$peer"
  fi
  LABEL="curve-$peer" "$BENCH/run.sh" "$cmd" "$port" "$@" 2>/dev/null
  wait
}

row() { # peer, msg/s, JSON on stdin -> one table row
  "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
peer, rate, perf = sys.argv[1], sys.argv[2], sys.argv[3]
def f(v, digits=1):
    return "-" if v is None else format(v, f".{digits}f")
deliv, cpu = d.get("deliveries_per_s"), d.get("server_cpu_pct")
us = cpu * 1e4 / deliv if deliv and cpu is not None else None
counts = {}
try:
    for line in open(perf):
        parts = line.strip().split(",")
        if len(parts) > 2 and parts[0].isdigit():
            counts[parts[2].split(":")[-1]] = int(parts[0])  # sys_enter_write, sched_waking, context-switches
except OSError:
    pass
turns = writes = calls = per_turn = wakes = switches = None
if counts and deliv:
    window = 3 * deliv  # deliveries in the 3 s counted (the load is open-loop at the fixed rate)
    turns = (counts.get("sys_enter_epoll_wait", 0) + counts.get("sys_enter_epoll_pwait", 0)) / 3
    writes = (counts.get("sys_enter_write", 0) + counts.get("sys_enter_writev", 0)) / window
    calls = counts.get("sys_enter", 0) / window
    per_turn = deliv / turns if turns else None
    wakes = counts.get("sched_waking", 0) / window
    switches = counts.get("context-switches", 0) / 3
cols = [f(deliv, 0), f(cpu), f(us, 2), f(d.get("p50_ms"), 2), f(d.get("p99_ms"), 2), f(d.get("foreign_cpu_pct")),
        f(turns, 0), f(per_turn, 1), f(writes, 3), f(calls, 3), f(wakes, 3), f(switches, 0)]
print("%-6s %6s %9s %6s %7s %8s %8s %8s %8s %9s %8s %8s %8s %6s" % (peer, rate, *cols))
' "$1" "$2" "$TMP/perf-$1"
}

if [ $# -ge 1 ]; then
  RATES="$1"
else
  max="$(run node fanout | "$PY" -c 'import json, sys; print(json.loads(sys.stdin.read()).get("max_deliveries_per_s") or 0)')"
  echo "Node socket.io fan-out max: $max deliveries/s (load $(cut -d' ' -f1 /proc/loadavg))"
  RATES="$("$PY" -c 'import sys; m = float(sys.argv[1]); print(" ".join(str(round(m * p / 10000)) for p in (20, 40, 60, 80, 100)))' "$max")"
fi
echo "rates (msg/s into rooms of 100): $RATES; kernel: somaxconn $(cat /proc/sys/net/core/somaxconn)"
printf '%-6s %6s %9s %6s %7s %8s %8s %8s %8s %9s %8s %8s %8s %6s\n' peer msg/s deliv/s cpu% us/deliv p50ms p99ms \
  foreign% turns/s deliv/turn writes/d sysc/d wakes/d cs/s
for rate in $RATES; do
  for peer in $PEERS; do
    run "$peer" fixed --rate "$rate" --duration "$DURATION" | row "$peer" "$rate"
  done
done
if [ "$CHAT" = 1 ]; then
  echo "small-room chat (1000 clients in 500 rooms of 2, 1 msg/s each), load $(cut -d' ' -f1 /proc/loadavg)"
  printf '%-6s %8s %8s %8s %8s %8s\n' peer p50ms p99ms cpu% deliv/s foreign%
  for peer in $PEERS; do
    run "$peer" chat | "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
f = lambda k, n=2: "-" if d.get(k) is None else format(d[k], f".{n}f")
print("%-6s %8s %8s %8s %8s %8s" % (sys.argv[1], f("p50_ms"), f("p99_ms"), f("server_cpu_pct", 1),
                                    f("deliveries_per_s", 0), f("foreign_cpu_pct", 1)))' "$peer"
  done
fi
rm -rf "$TMP"
