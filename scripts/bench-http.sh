#!/usr/bin/env bash
# End-to-end HTTP benchmark: signed messages scheduled durably, over loopback.
#
# Builds release, starts `ferrobeam node` on a fresh data directory and a free loopback port,
# runs `ferrobeam-http-load` RUNS times at each concurrency level, prints the median messages/s
# and median p99 ack latency per level with the machine it ran on, and stops the node.
#
# Environment (all optional):
#   LEVELS="16 64 256"   concurrency levels          RUNS=5          runs per level
#   MESSAGES=20000       messages per run            SIZE=1024       data bytes per message
#   CLIENT_THREADS=1     load generator threads      RUN_TIMEOUT=120 seconds a run may take
#   PERF=1               also `perf stat` the node over one extra run at the last level
#   CARGO_TARGET_DIR     where the release build goes (default: target)
#
# Loopback only; each run is bounded by RUN_TIMEOUT and the node is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

LEVELS=${LEVELS:-"16 64 256"}
RUNS=${RUNS:-5}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-1024}
CLIENT_THREADS=${CLIENT_THREADS:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
TARGET=${CARGO_TARGET_DIR:-target}

for tool in curl jq timeout; do
  command -v "$tool" >/dev/null || { echo "bench-http.sh: needs $tool" >&2; exit 1; }
done

echo "bench-http.sh: building release" >&2
cargo build --release --locked -p ferrobeam -p ferrobeam-benches --bins >&2

NODE_BIN="$TARGET/release/ferrobeam"
LOAD_BIN="$TARGET/release/ferrobeam-http-load"
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
NODE_PID=""
RESULTS=$(mktemp)

cleanup() {
  if [ -n "$NODE_PID" ]; then
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA" "$RESULTS"
}
trap cleanup EXIT

RUST_LOG=warn "$NODE_BIN" node --data "$DATA" --http "127.0.0.1:$PORT" >&2 &
NODE_PID=$!
for _ in $(seq 1 200); do
  curl -fs "$URL/~meta@1.0/info" >/dev/null 2>&1 && break
  kill -0 "$NODE_PID" 2>/dev/null || { echo "bench-http.sh: node exited" >&2; exit 1; }
  sleep 0.05
done
curl -fs "$URL/~meta@1.0/info" >/dev/null || { echo "bench-http.sh: node did not come up" >&2; exit 1; }

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
echo "data dir: $DATA ($(df -T "$DATA" | awk 'NR==2 {print $2}'))"
echo "load: $MESSAGES messages of $SIZE B data per run, $RUNS runs per level, $CLIENT_THREADS client thread(s)"
echo "node: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

printf '%-12s %14s %14s %12s %8s\n' concurrency "median msg/s" "median p99 ms" "p50 ms" errors
for level in $LEVELS; do
  : >"$RESULTS"
  for _ in $(seq 1 "$RUNS"); do
    timeout "$RUN_TIMEOUT" "$LOAD_BIN" --node "$URL" --messages "$MESSAGES" --size "$SIZE" \
      --concurrency "$level" --threads "$CLIENT_THREADS" --json >>"$RESULTS"
  done
  rate=$(jq -r '.messages_per_s' "$RESULTS" | median)
  p99=$(jq -r '.latency_ms.p99' "$RESULTS" | median)
  p50=$(jq -r '.latency_ms.p50' "$RESULTS" | median)
  errors=$(jq -s 'map(.errors) | add' "$RESULTS")
  printf '%-12s %14.0f %14.2f %12.2f %8s\n' "$level" "$rate" "$p99" "$p50" "$errors"
  echo "  runs msg/s: $(jq -r '.messages_per_s | floor' "$RESULTS" | tr '\n' ' ')" >&2
done

if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  last=${LEVELS##* }
  echo "perf stat of the node during one run at concurrency $last:"
  perf stat -p "$NODE_PID" -e task-clock,context-switches,cpu-migrations,cycles,instructions \
    -- timeout "$RUN_TIMEOUT" "$LOAD_BIN" --node "$URL" --messages "$MESSAGES" --size "$SIZE" \
    --concurrency "$last" --threads "$CLIENT_THREADS" 2>&1
fi
