#!/usr/bin/env bash
# Profile our server at a fixed offered load with py-spy, under the shared harness.
#
#   bench/profile.sh [RATE_MSGS_PER_S] [SECONDS] [OUT]
#   SCENARIO=chat bench/profile.sh - 6          # another scenario (its own generator defaults)
#   SCENARIO=connect ARGS="--clients 8000" DELAY=1 bench/profile.sh - 3
#
# Starts ../shared/bench/run.sh (scenario `fixed`: 1000 clients, 10 rooms of 100, 50 senders,
# RATE messages/s, i.e. RATE*100 deliveries/s), attaches `py-spy record` to the server by PID for
# SECONDS once the load is on, and writes collapsed stacks to OUT (default /tmp/coup-profile.txt),
# then prints the top functions by own and by inclusive time (bench/pyspy_top.py).
# Needs py-spy in the shared venv (`/work/main/.venv/bin/pip install py-spy`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="${BENCH:-$HERE/../../../shared/bench}"
[ -d "$BENCH" ] || BENCH=/work/shared/bench
PY="${PY:-/work/main/.venv/bin/python}"
PYSPY="${PYSPY:-$(dirname "$PY")/py-spy}"
RATE="${1:-1200}"; SECS="${2:-5}"; OUT="${3:-/tmp/coup-profile.txt}"
PORT="${PORT:-27115}"; SCENARIO="${SCENARIO:-fixed}"; DELAY="${DELAY:-3}"
if [ "$SCENARIO" = fixed ]; then
  GEN_ARGS=(--rate "$RATE" --duration $((SECS + 4)))
else
  read -r -a GEN_ARGS <<<"${ARGS:-}"
fi
LABEL=ours-profile "$BENCH/run.sh" "$PY $HERE/server.py --port {PORT}" "$PORT" "$SCENARIO" \
  "${GEN_ARGS[@]}" >/tmp/coup-profile-run.json 2>/tmp/coup-profile-gen.log &
RUN=$!
# wait for the server to listen, then for the clients to connect and the load to start
for _ in $(seq 1 100); do
  SPID=$(ss -ltnpH "sport = :$PORT" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
  [ -n "$SPID" ] && break
  sleep 0.1
done
[ -n "${SPID:-}" ] || { echo "server did not start" >&2; wait "$RUN"; exit 1; }
sleep "$DELAY"
"$PYSPY" record --pid "$SPID" --rate 250 --nonblocking --duration "$SECS" --format raw -o "$OUT" >/dev/null 2>&1 || true
wait "$RUN" || true
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ("deliveries_per_s", "offered_deliveries_per_s", "server_cpu_pct", "p50_ms", "p99_ms", "connects_per_s", "foreign_cpu_pct")})' /tmp/coup-profile-run.json
"$PY" "$HERE/pyspy_top.py" "$OUT"
