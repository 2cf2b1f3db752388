#!/usr/bin/env bash
# Crash campaign on the real binary (docs/RELIABILITY.md): N trials of a `ferrobeam node` under
# HTTP load, SIGKILLed at a random moment, restarted and checked (acknowledged messages at their
# slots, chain, hashpaths, `ferrobeam audit`). Prints per-trial lines and the summary:
# acknowledged messages lost, hashpath mismatches, recovery time p50/p99. Release build.
#
#   scripts/crash.sh --trials N [--seed S] [--trials-per-dir K]
set -euo pipefail
cd "$(dirname "$0")/.."
trials=20
per_dir=10
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) trials="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --trials-per-dir) per_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "crash.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$trials" =~ ^[0-9]+$ && "$per_dir" =~ ^[0-9]+$ ]] || { echo "crash.sh: --trials and --trials-per-dir take integers" >&2; exit 2; }
export FERROBEAM_CRASH_TRIALS="$trials" FERROBEAM_CRASH_TRIALS_PER_DIR="$per_dir"
[ -n "$seed" ] && export FERROBEAM_CRASH_SEED="$seed"
cargo test --release -p ferrobeam --test crash_campaign -- --ignored --nocapture 2>&1 \
  | grep -vE '^(running|test |$)|Compiling|Finished|Running'
exit "${PIPESTATUS[0]}"
