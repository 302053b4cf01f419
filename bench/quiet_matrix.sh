#!/usr/bin/env bash
# The peers.sh matrix on a shared, busy machine: every (peer, scenario) run starts only when the
# machine has been quiet for a few seconds, and a run whose foreign CPU exceeded 30% of a core is
# repeated, until each cell has REPEATS clean runs or BUDGET seconds have passed. All JSON lines
# go to one file, summarised by the harness's summarize.py (which keeps clean runs only).
#
#   bench/quiet_matrix.sh                       # REPEATS=3, all peers + ours, all scenarios
#   REPEATS=1 PEERS="node-socketio ours" SCENARIOS=chat bench/quiet_matrix.sh
#
# Environment: REPEATS (3), PEERS, SCENARIOS ("fanout connect chat"), BUDGET (2400 s),
# QUIET (busy % of all cores counted as quiet, 8), OUT (jsonl path), BENCH (../shared/bench).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="${BENCH:-/work/shared/bench}"
PY="${PY:-/work/main/.venv/bin/python}"
REPEATS="${REPEATS:-3}"; BUDGET="${BUDGET:-2400}"; QUIET="${QUIET:-8}"
PEERS="${PEERS:-node-socketio py-sio-tornado py-sio-aiohttp tornado-raw ours}"
SCENARIOS="${SCENARIOS:-fanout connect chat}"
OUT="${OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/coup-bench/results/quiet-$(date +%Y%m%d-%H%M%S).jsonl}"
EXTRA="ours|sio|27105|$PY $HERE/server.py --port {PORT}"
t0=$SECONDS

busy_pct() {  # busy share of all cores over 3 s, from /proc/stat
  local a b c d e f g h t1 i1 t2 i2
  read -r _ a b c d e f g h _ </proc/stat; t1=$((a + b + c + d + e + f + g + h)); i1=$((d + e))
  sleep 3
  read -r _ a b c d e f g h _ </proc/stat; t2=$((a + b + c + d + e + f + g + h)); i2=$((d + e))
  echo $((100 * ((t2 - t1) - (i2 - i1)) / (t2 - t1)))
}
clean_runs() {  # clean runs of peer $1 in scenario $2 so far
  [ -f "$OUT" ] || { echo 0; return; }
  "$PY" - "$OUT" "$1" "$2" <<'EOF'
import json, sys
n = 0
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("label") != sys.argv[2] or r.get("scenario") != sys.argv[3] or r.get("error"):
        continue
    f = [r.get(k) for k in ("foreign_cpu_pct", "foreign_cpu_pct_at_max", "lat_foreign_cpu_pct") if r.get(k) is not None]
    if not f or max(f) <= 30:
        n += 1
print(n)
EOF
}

echo "quiet_matrix: REPEATS=$REPEATS PEERS='$PEERS' SCENARIOS='$SCENARIOS' -> $OUT" >&2
progress=1
while [ $progress -eq 1 ] && [ $((SECONDS - t0)) -lt "$BUDGET" ]; do
  progress=0
  for scen in $SCENARIOS; do
    for peer in $PEERS; do
      [ $((SECONDS - t0)) -lt "$BUDGET" ] || break 2
      [ "$(clean_runs "$peer" "$scen")" -lt "$REPEATS" ] || continue
      progress=1
      until [ "$(busy_pct)" -lt "$QUIET" ]; do
        [ $((SECONDS - t0)) -lt "$BUDGET" ] || break 3
      done
      ts=$SECONDS
      ONLY="$peer" SCENARIOS="$scen" REPEATS=1 OUT="$OUT" EXTRA_PEERS="$EXTRA" "$BENCH/peers.sh" >/dev/null 2>&1
      echo "  $scen $peer: $((SECONDS - ts))s, clean so far $(clean_runs "$peer" "$scen")" >&2
    done
  done
done
echo "quiet_matrix: $((SECONDS - t0))s" >&2
"$PY" "$BENCH/summarize.py" "$OUT" --elapsed $((SECONDS - t0))
