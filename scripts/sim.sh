#!/usr/bin/env bash
# Long deterministic-simulation campaigns (docs/RELIABILITY.md): runs seeds S..S+N of the
# simulator (dataplane/tests/sim) in a release build and prints the seeds run, the faults
# injected, the work done and every failing seed with its replay command.
#
#   scripts/sim.sh --seeds N [--start S]
#
# Replay one seed (debug build, full output): FERROBEAM_SEED=N cargo test -p ferrobeam --test sim
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=1000
start=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --start) start="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "sim.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$seeds" =~ ^[0-9]+$ && "$start" =~ ^[0-9]+$ ]] || { echo "sim.sh: --seeds and --start take integers" >&2; exit 2; }
echo "sim.sh: seeds $start..$((start + seeds)) (release build)"
started=$(date +%s)
set +e
FERROBEAM_SIM_SEEDS="$seeds" FERROBEAM_SIM_START="$start" \
  cargo test --release -p ferrobeam --test sim -- campaign --ignored --nocapture --test-threads 1 2>&1 \
  | grep -E '^FAIL|seeds: |^work:|^faults:|^failures:|^  (options|faults|replay):'
status=${PIPESTATUS[0]}
set -e
echo "sim.sh: $(( $(date +%s) - started )) s wall clock, exit $status"
exit "$status"
