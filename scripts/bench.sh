#!/usr/bin/env bash
# End-to-end QUIC data-plane benchmark with its baselines, in one invocation, on loopback.
#
# Matrix: backends × {bulk, messages} × {1452 B, jumbo 8952 B packets} × {1, 4 connections},
# RUNS runs each (median reported). Baselines, same packet sizes, same machine, same invocation:
# iperf3 TCP, raw UDP with GSO+GRO (ferrobeam-udp-gso), `openssl speed -evp aes-128-gcm` at
# 16 KiB and 1350 B.
#
# The runs are made in RUNS rounds: each round runs every cell once, then every baseline once,
# so slow drift of the machine (other tenants, writeback, thermal) falls on every backend and
# baseline alike instead of on whichever ran first. Each round starts a fresh `ferrobeam node`
# (empty store) per backend and packet size, loaded by `ferrobeam bench` (quinn client, same
# packet bound as the node). After the build the script syncs and waits SETTLE seconds.
#
# Writes target/bench/bench-<time>.json (every run and every baseline), target/bench/bench.svg
# (chart) and prints a Markdown summary for docs/BENCHMARKS.md: medians, Gbit/s per busy core
# (client + node CPU from /proc) and the ratios the data-plane targets ask for.
#
# Usage: scripts/bench.sh [--quick] [--backends uring,tokio,s2n] [--runs N] [--duration S]
#   --quick      1 run of 2 s per cell, 20k messages (a smoke run; not for figures)
#   --backends   comma list; backends this build lacks (the node refuses them) are skipped
#   --runs       runs per cell (default 5)      --duration  seconds per run (default 10)
# Environment: CARGO_TARGET_DIR (default target), RUN_TIMEOUT (default 120 s per command),
# SETTLE (default 15 s: the build's writeback finishes before the first run).
# Measure on an idle machine: other load halves every figure.
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS="$*"
BACKENDS="uring,tokio,s2n"
RUNS=5
DURATION=10
MESSAGES=100000
SIZES="1452 8952"
CONNECTIONS="1 4"
MODES="bulk messages"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) RUNS=1; DURATION=2; MESSAGES=20000 ;;
    --backends) BACKENDS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$RUNS" in ''|*[!0-9]*|0) echo "bench.sh: --runs must be a positive integer" >&2; exit 2 ;; esac
python3 -c "import sys; d=float(sys.argv[1]); sys.exit(0 if 0 < d <= 600 else 1)" "$DURATION" \
  || { echo "bench.sh: --duration must be in (0, 600] seconds" >&2; exit 2; }
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
TARGET=${CARGO_TARGET_DIR:-target}
OUT_DIR=target/bench
mkdir -p "$OUT_DIR"

for tool in curl jq timeout python3 iperf3 openssl; do
  command -v "$tool" >/dev/null || { echo "bench.sh: needs $tool (scripts/test.sh installs iperf3)" >&2; exit 1; }
done

echo "bench.sh: building release" >&2
cargo build --release --locked -p ferrobeam -p ferrobeam-benches \
  --bin ferrobeam --bin ferrobeam-udp-gso >&2
NODE_BIN="$TARGET/release/ferrobeam"
UDP_BIN="$TARGET/release/ferrobeam-udp-gso"
sync
sleep "${SETTLE:-15}"

WORK=$(mktemp -d)
RUNS_FILE="$WORK/runs.jsonl"
: >"$RUNS_FILE"
NODE_PID=""
IPERF_PID=""
cleanup() {
  for pid in $NODE_PID $IPERF_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"
}

# Starts a node on fresh ports; sets NODE_PID, HTTP, QUIC, ADDRESS. Fails when the node refuses
# the backend (not built) or does not come up.
start_node() {
  local backend=$1 payload=$2 data="$WORK/node-$1-$2"
  local http_port quic_port
  http_port=$(free_port SOCK_STREAM)
  quic_port=$(free_port SOCK_DGRAM)
  HTTP="http://127.0.0.1:$http_port"
  QUIC="127.0.0.1:$quic_port"
  RUST_LOG=warn "$NODE_BIN" node --data "$data" --http "127.0.0.1:$http_port" --quic "$QUIC" \
    --transport "$backend" --quic-max-udp-payload "$payload" --attestation none \
    >"$WORK/node.log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 1 200); do
    curl -fs "$HTTP/~meta@1.0/info/address" >/dev/null 2>&1 && break
    kill -0 "$NODE_PID" 2>/dev/null || { NODE_PID=""; return 1; }
    sleep 0.05
  done
  ADDRESS=$(curl -fs "$HTTP/~meta@1.0/info/address" | tr -d '"') || return 1
}

stop_node() {
  [ -n "$NODE_PID" ] || return 0
  kill "$NODE_PID" 2>/dev/null || true
  wait "$NODE_PID" 2>/dev/null || true
  NODE_PID=""
}

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MACHINE="$(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "bench.sh: $MACHINE; $RUNS run(s) × ${DURATION}s per cell" >&2

# The matrix and the baselines, round by round.
AVAILABLE=""
SKIPPED=""
for run in $(seq 1 "$RUNS"); do
  for backend in ${BACKENDS//,/ }; do
    case " $SKIPPED " in *" $backend "*) continue ;; esac
    for payload in $SIZES; do
      if ! start_node "$backend" "$payload"; then
        echo "bench.sh: backend $backend is not available in this build; skipped" >&2
        sed -n '1,3p' "$WORK/node.log" >&2
        SKIPPED="$SKIPPED $backend"
        continue 2
      fi
      case " $AVAILABLE " in *" $backend "*) ;; *) AVAILABLE="$AVAILABLE $backend" ;; esac
      for mode in $MODES; do
        for conns in $CONNECTIONS; do
          echo "bench.sh: round $run/$RUNS: $backend ${payload}B $mode ${conns}conn" >&2
          if out=$(timeout "$RUN_TIMEOUT" "$NODE_BIN" bench --node "quic://$QUIC" --http "$HTTP" \
            --address "$ADDRESS" --node-pid "$NODE_PID" --mode "$mode" --connections "$conns" \
            --duration "$DURATION" --messages "$MESSAGES" --max-udp-payload "$payload" --json \
            2>"$WORK/bench.err"); then
            echo "$out" | jq -c --arg b "$backend" --argjson p "$payload" --argjson r "$run" \
              '. + {kind: "quic", backend: $b, payload: $p, run: $r}' >>"$RUNS_FILE"
          else
            echo "bench.sh: run failed: $(tail -2 "$WORK/bench.err")" >&2
            jq -nc --arg b "$backend" --argjson p "$payload" --arg m "$mode" --argjson c "$conns" \
              '{kind: "quic", backend: $b, payload: $p, mode: $m, connections: $c, failed: true}' >>"$RUNS_FILE"
          fi
        done
      done
      stop_node
      # Every round starts from an empty store (and the disk stays small).
      rm -rf "$WORK/node-$backend-$payload"
    done
  done

  echo "bench.sh: round $run/$RUNS: iperf3 TCP" >&2
  port=$(free_port SOCK_STREAM)
  iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  IPERF_PID=$!
  sleep 0.3
  timeout "$RUN_TIMEOUT" iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J >"$WORK/iperf.json" || true
  wait "$IPERF_PID" 2>/dev/null || true
  IPERF_PID=""
  jq -c --argjson r "$run" '{kind: "iperf3-tcp", run: $r,
      gbps: (.end.sum_received.bits_per_second / 1e9),
      "busy-cores": ((.end.cpu_utilization_percent.host_total + .end.cpu_utilization_percent.remote_total) / 100)}' \
    "$WORK/iperf.json" >>"$RUNS_FILE" || echo "bench.sh: iperf3 gave no result" >&2
  for payload in $SIZES; do
    echo "bench.sh: round $run/$RUNS: raw UDP GSO+GRO ${payload}B" >&2
    timeout "$RUN_TIMEOUT" "$UDP_BIN" --size "$payload" --duration "$DURATION" \
      | jq -c --argjson r "$run" '. + {kind: "udp-gso", payload: .size, run: $r}' >>"$RUNS_FILE" \
      || echo "bench.sh: udp-gso failed" >&2
  done
done
for bytes in 16384 1350; do
  echo "bench.sh: openssl speed aes-128-gcm ${bytes}B" >&2
  # The last line is "AES-128-GCM <1000s of bytes per second>k" for the one block size asked.
  rate=$(openssl speed -evp aes-128-gcm -bytes "$bytes" -seconds 2 2>/dev/null | tail -1 | awk '{print $NF}' | tr -d k)
  jq -nc --argjson b "$bytes" --arg r "$rate" \
    '{kind: "openssl-aes-128-gcm", bytes: $b, "bytes-per-second": (($r | tonumber) * 1000)}' >>"$RUNS_FILE" \
    || echo "bench.sh: openssl speed gave no result" >&2
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JSON="$OUT_DIR/bench-$STAMP.json"
python3 scripts/bench-report.py --runs-file "$RUNS_FILE" --json "$JSON" --svg "$OUT_DIR/bench.svg" \
  --machine "$MACHINE" --commit "$COMMIT" --backends "${AVAILABLE# }" \
  --command "scripts/bench.sh${ARGS:+ $ARGS}"
echo "bench.sh: wrote $JSON and $OUT_DIR/bench.svg" >&2
