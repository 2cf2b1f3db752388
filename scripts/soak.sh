#!/usr/bin/env bash
# Soak (docs/RELIABILITY.md, "Soak"): a release node on loopback under mixed load at 80 % of the
# rate it managed in a short calibration, sampled every 10 s, bounded in time.
#
#   scripts/soak.sh --minutes M [--calibrate-s S] [--load-pct P] [--connections N]
#
# 1. Builds `ferrobeam` and `ferrobeam-soak-load` (release) and starts a node in a temp dir.
# 2. Calibration: S seconds (default 20) of the mix, unpaced: its request rate is the maximum.
# 3. M minutes of the mix paced at P % (default 80) of it: signed posts to no-op, counter and
#    ping processes (ping chains push 32 times), result reads, slot reads, /metrics scrapes, and
#    bad requests that must be refused (benches/src/bin/soak-load.rs).
# 4. Every 10 s: the node's RSS (/proc/PID/status VmRSS), open fds (/proc/PID/fd), push queue
#    depth, messages scheduled, slots computed, store memtable and block cache bytes (from
#    /metrics), the allocator's live heap and resident bytes (also from /metrics: RSS minus
#    the live heap is what the allocator holds) and the load average go to
#    target/soak/soak-<time>.csv.
# Passes (exit 0) when RSS grows less than 10 % after the warm-up (the first 20 % of the run,
# at least 2 minutes when the run is longer than 4: growth = highest RSS after the warm-up over
# the RSS at its end), no valid request failed, every bad request was refused, and the node is
# still up. Prints a summary either way.
# FERROBEAM_SOAK_WRAP="cmd args" starts the node under a wrapper such as a heap profiler
# (FERROBEAM_SOAK_WRAP="heaptrack -o /tmp/soak-heap"); RSS is still sampled from the node itself.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
calibrate_s=20
load_pct=80
connections=32
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --calibrate-s) calibrate_s="$2"; shift 2 ;;
    --load-pct) load_pct="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for n in "$minutes" "$calibrate_s" "$load_pct" "$connections"; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || { echo "soak.sh: arguments are positive integers" >&2; exit 2; }
done

cargo build --release --locked -p ferrobeam --bin ferrobeam -p ferrobeam-benches --bin ferrobeam-soak-load >&2
target_dir="${CARGO_TARGET_DIR:-target}"
node_bin="$target_dir/release/ferrobeam"
load_bin="$target_dir/release/ferrobeam-soak-load"

work=$(mktemp -d)
node_pid=""
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
  fi
  # Let the wrapper finish (a profiler writes its report after the node exits).
  if [ -n "$wrapper_pid" ]; then
    wait "$wrapper_pid" 2>/dev/null || true
    cat "$work/node.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
wrap=()
[ -n "${FERROBEAM_SOAK_WRAP:-}" ] && read -r -a wrap <<<"$FERROBEAM_SOAK_WRAP"
"${wrap[@]}" "$node_bin" node --data "$work/data" --http "127.0.0.1:$port" --attestation none >"$work/node.log" 2>&1 &
node_pid=$!
wrapper_pid=""
if [ ${#wrap[@]} -gt 0 ]; then
  # The wrapper's child is the node: sample and stop the node itself.
  wrapper_pid=$node_pid
  for _ in $(seq 1 100); do
    node_pid=$(pgrep -n -f "^$node_bin node --data $work/data " || true)
    [ -n "$node_pid" ] && break
    sleep 0.1
  done
  [ -n "$node_pid" ] || { cat "$work/node.log" >&2; echo "soak.sh: no node under the wrapper" >&2; exit 1; }
fi
for _ in $(seq 1 300); do
  curl -fsS "$url/~meta@1.0/info" >/dev/null 2>&1 && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; echo "soak.sh: the node did not start" >&2; exit 1; }
  sleep 0.1
done

echo "soak.sh: node pid $node_pid on $url; calibrating for ${calibrate_s} s" >&2
"$load_bin" --node "$url" --duration "$calibrate_s" --rate 0 --connections "$connections" >"$work/calibration.json"
max_rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests_per_s"])' "$work/calibration.json")
rate=$(python3 -c "print(round($max_rate * $load_pct / 100, 1))")
echo "soak.sh: maximum $max_rate requests/s; soaking at $rate requests/s ($load_pct %) for $minutes min" >&2

mkdir -p target/soak
csv="target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).csv"
echo "elapsed_s,rss_kb,fds,push_queue_depth,scheduled,computed,memtables_kb,block_cache_kb,heap_kb,allocator_resident_kb,load1" >"$csv"
sample() {
  local elapsed=$1 rss fds metrics depth scheduled computed memtables cache heap resident
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$node_pid/status")
  fds=$(ls "/proc/$node_pid/fd" | wc -l)
  metrics=$(curl -fsS "$url/metrics")
  depth=$(awk '$1 == "ferrobeam_push_queue_depth" {print $2}' <<<"$metrics")
  scheduled=$(awk '$1 == "ferrobeam_messages_scheduled_total" {print $2}' <<<"$metrics")
  computed=$(awk '$1 == "ferrobeam_slots_computed_total" {print $2}' <<<"$metrics")
  memtables=$(awk '$1 == "ferrobeam_store_write_buffer_bytes" {print int($2 / 1024)}' <<<"$metrics")
  cache=$(awk '$1 == "ferrobeam_store_block_cache_bytes" {print int($2 / 1024)}' <<<"$metrics")
  heap=$(awk '$1 == "ferrobeam_allocator_allocated_bytes" {print int($2 / 1024)}' <<<"$metrics")
  resident=$(awk '$1 == "ferrobeam_allocator_resident_bytes" {print int($2 / 1024)}' <<<"$metrics")
  echo "$elapsed,$rss,$fds,${depth:-0},${scheduled:-0},${computed:-0},${memtables:-0},${cache:-0},${heap:-0},${resident:-0},$(cut -d' ' -f1 /proc/loadavg)" >>"$csv"
}

duration_s=$((minutes * 60))
"$load_bin" --node "$url" --duration "$duration_s" --rate "$rate" --connections "$connections" >"$work/load.json" &
load_pid=$!
started=$(date +%s)
sample 0
# Bounded: the load ends after duration_s; sampling stops with it.
while kill -0 "$load_pid" 2>/dev/null; do
  sleep 10
  kill -0 "$node_pid" 2>/dev/null || break
  sample $(( $(date +%s) - started ))
done
set +e
wait "$load_pid"
load_status=$?
set -e
node_up=1
kill -0 "$node_pid" 2>/dev/null || node_up=0

python3 - "$csv" "$work/calibration.json" "$work/load.json" "$load_status" "$node_up" "$duration_s" <<'EOF'
import csv, json, sys
path, calibration, load, load_status, node_up, duration_s = sys.argv[1:7]
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(path))]
cal = json.load(open(calibration))
try:
    run = json.load(open(load))
except Exception as e:
    run = None
duration_s = int(duration_s)
# Warm-up: the first 20 % of the run, at least 2 minutes when the run is longer than 4.
warmup_s = max(duration_s * 0.2, 120 if duration_s > 240 else 0)
warm = [r for r in rows if r["elapsed_s"] <= warmup_s]
after = [r for r in rows if r["elapsed_s"] > warmup_s]
base = warm[-1]["rss_kb"] if warm else rows[0]["rss_kb"]
peak = max((r["rss_kb"] for r in after), default=base)
growth = (peak - base) / base * 100 if base else 0.0
fds = [int(r["fds"]) for r in rows]
depth = [int(r["push_queue_depth"]) for r in rows]
load1 = [r["load1"] for r in rows]
ok = True
print(f"soak: samples {len(rows)} every 10 s in {path}")
print(f"soak: calibration {cal['requests_per_s']:.0f} requests/s (valid failed {cal['valid_failed']}, bad not refused {cal['bad_not_refused']})")
if run is None:
    print("soak: FAIL the load tool produced no report"); ok = False
else:
    print(f"soak: load {run['requests']} requests in {run['duration_s']:.0f} s = {run['requests_per_s']:.0f}/s (target {run['rate_target']}); ok {run['ok']}")
    print(f"soak: post latency p50 {run['post_latency_ms']['p50']:.1f} ms, p99 {run['post_latency_ms']['p99']:.1f} ms, max {run['post_latency_ms']['max']:.1f} ms")
    print(f"soak: valid requests failed {run['valid_failed']}, bad requests not refused {run['bad_not_refused']} {run['failed']}")
    for example in run["failure_examples"]:
        print(f"soak:   {example}")
    if run["valid_failed"] or run["bad_not_refused"]:
        ok = False
print(f"soak: RSS warm-up end ({warmup_s:.0f} s) {base/1024:.1f} MiB, highest after {peak/1024:.1f} MiB: growth {growth:+.1f} % (limit 10 %)")
print(f"soak: open fds min {min(fds)} max {max(fds)}; push queue depth max {max(depth)}; scheduled {int(rows[-1]['scheduled'])}, computed {int(rows[-1]['computed'])} at the end; load average {min(load1):.1f}..{max(load1):.1f}")
mem = [r["memtables_kb"] for r in rows]
cache = [r["block_cache_kb"] for r in rows]
print(f"soak: store memtables max {max(mem)/1024:.1f} MiB, block cache max {max(cache)/1024:.1f} MiB")
heap_base = warm[-1]["heap_kb"] if warm else rows[0]["heap_kb"]
heap_peak = max((r["heap_kb"] for r in after), default=heap_base)
if heap_base:
    print(f"soak: live heap (allocator) warm-up end {heap_base/1024:.1f} MiB, highest after {heap_peak/1024:.1f} MiB")
if growth >= 10:
    ok = False
if load_status != "0":
    print(f"soak: FAIL the load tool exited {load_status}"); ok = False
if node_up != "1":
    print("soak: FAIL the node exited during the soak"); ok = False
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
EOF
