#!/usr/bin/env bash
# CPU profile of the 3 nodes of the cluster chat scenario by Python function (perf + Python 3.12's
# perf trampolines), one run; bench/perf_frames.py reads it and compares two runs.
#
#   bench/perf_nodes.sh OUT.txt                          # recovery on (the default)
#   COUP_BENCH_RECOVERY_WINDOW=0 bench/perf_nodes.sh off.txt
#   python bench/perf_frames.py off.txt on.txt
#
# Needs perf (Debian: linux-perf) and a Python >= 3.12 virtualenv with the package installed:
#   ~/.pyenv/versions/3.12.1/bin/python -m venv /work/venv312 && /work/venv312/bin/pip install -e '.[test]'
# PY312 names that venv's python (default /work/venv312/bin/python). The nodes are recorded for
# RECORD_FOR seconds (default 12) from AFTER seconds (default 14: connected, chatting) after they start.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: bench/perf_nodes.sh OUT.txt}"
PY312="${PY312:-/work/venv312/bin/python}"
RECORD_FOR="${RECORD_FOR:-12}"; AFTER="${AFTER:-14}"
DATA="$(mktemp --suffix .perf.data)"; LOG="$(mktemp)"
trap 'rm -f "$DATA" "$LOG"' EXIT
PYTHONPERFSUPPORT=1 SCENARIOS=chat CHAT_CONFIGS=coup-3 LOADGEN_ARGS="${LOADGEN_ARGS:---duration 30}" \
  COUP_BENCH_PYTHON="$PY312" bash "$HERE/cluster.sh" >"$LOG" 2>&1 &
RUN=$!
pids=""
for _ in $(seq 1 120); do
  pids="$(pgrep -f cluster_node.py | paste -sd, || true)"
  [ "$(tr ',' '\n' <<<"$pids" | grep -c .)" -ge 3 ] && break
  sleep 0.5
done
[ -n "$pids" ] || { echo "no node started; log: $(cat "$LOG")" >&2; exit 1; }
sleep "$AFTER"
perf record -F 799 --call-graph dwarf,16384 -p "$pids" -o "$DATA" -- sleep "$RECORD_FOR" >/dev/null 2>&1
wait "$RUN"
perf script -i "$DATA" >"$OUT" 2>/dev/null
grep "results:" "$LOG" || true
"$PY312" "$HERE/perf_frames.py" "$OUT" 25
