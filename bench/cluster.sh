#!/usr/bin/env bash
# Cluster benchmark: 1 node vs 3 nodes on fan-out, and Redis traffic per delivered message,
# ours against python-socketio's AsyncRedisManager with the same clients (the shared harness,
# /work/shared/bench/run.sh, Node load generator). Prints a table; JSON lines are kept in
# $BENCH_STATE/results/cluster-<time>.jsonl.
#
#   bench/cluster.sh                       # fanout: coup-1 coup-3 pysio-1 pysio-3; chat: coup-3 pysio-3
#   CONFIGS="coup-3 pysio-3" SCENARIOS=chat bench/cluster.sh
#   SHARED_BENCH=/path/to/shared/bench bench/cluster.sh
#   LOADGEN_ARGS="--duration 30" SCENARIOS=chat bench/cluster.sh   # extra load generator arguments
#   CLUSTER_OUT=file.jsonl bench/cluster.sh  # JSON lines there (two runs at once: see bench/recovery_rounds.py --together)
#
# Every server process (Redis and all nodes) runs on the harness's server core (SERVER_CPU,
# default 0), the generator on the other: 3 nodes cannot use more CPU than 1 here, so the
# 1-vs-3 comparison shows what clustering costs per delivery; on a bigger machine give
# SERVER_CPU a core list. Configs: coup-0 (no Redis), coup-N, pysio-N, coupshard-N (N nodes on a
# Redis Cluster of 3 primaries, issue 17: CONFIGS="coup-3 coupshard-3" CHAT_CONFIGS="coup-3 coupshard-3").
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED_BENCH="${SHARED_BENCH:-/work/shared/bench}"
BENCH_STATE="${BENCH_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/coup-bench}"
PY="${COUP_BENCH_PYTHON:-/work/main/.venv/bin/python}"
CONFIGS="${CONFIGS:-coup-1 coup-3 pysio-1 pysio-3}"
SCENARIOS="${SCENARIOS:-fanout chat}"
CHAT_CONFIGS="${CHAT_CONFIGS:-coup-3 pysio-3}"
PORT="${PORT_BASE:-27140}"
mkdir -p "$BENCH_STATE/results/logs"
OUT="${CLUSTER_OUT:-$BENCH_STATE/results/cluster-$(date +%Y%m%d-%H%M%S).jsonl}"
STATS="$(mktemp)"

for scen in $SCENARIOS; do
  configs="$CONFIGS"; [ "$scen" = chat ] && configs="$CHAT_CONFIGS"
  for cfg in $configs; do
    impl="${cfg%-*}"; n="${cfg#*-}"; extra=""
    [ "$n" = 0 ] && { n=1; extra="--no-redis"; }
    [ "$impl" = coupshard ] && { impl=coup; extra="--redis-shards ${REDIS_SHARDS:-3}"; }
    rm -f "$STATS"
    echo "== $cfg $scen" >&2
    LINE=$(LABEL="$cfg" SERVER_LOG="$BENCH_STATE/results/logs/$cfg-$scen-$PORT.log" \
      "$SHARED_BENCH/run.sh" "$PY $HERE/cluster_launch.py --impl $impl --nodes $n $extra --stats $STATS" \
      "$PORT" "$scen" ${LOADGEN_ARGS:-} | tail -n 1)
    PORT=$((PORT + 1))
    printf '%s\n' "$LINE" | "$PY" -c '
import json, sys, pathlib
line = json.loads(sys.stdin.readline())
stats = pathlib.Path(sys.argv[1])
line["cluster"] = json.loads(stats.read_text()) if stats.exists() else {"error": "no stats"}
print(json.dumps(line, separators=(",", ":")))' "$STATS" >> "$OUT"
  done
done
rm -f "$STATS"
"$PY" "$HERE/cluster_report.py" "$OUT"
echo "results: $OUT" >&2
