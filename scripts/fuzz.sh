#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (nightly, libFuzzer): builds fuzz/ and runs its targets one after
# another, one libFuzzer process at a time, then prints one line per target (executions, wall
# time, exec/s, corpus size, coverage). The target bodies live in fuzz-targets/.
#
#   scripts/fuzz.sh --brief                  every target ~5 s from a copy of the committed corpus
#   scripts/fuzz.sh --runs N [--target T]    a campaign: N executions per target
#   scripts/fuzz.sh --seconds S [--target T] a campaign bounded in time
#   (--runs N --seconds S: whichever comes first; --target may be repeated)
#
# Campaigns grow a corpus under $FUZZ_TARGET_DIR/corpus/<target> (seeded from fuzz/corpus and
# fuzz/regressions, kept between runs); --brief works in a temporary copy. A crashing input is
# written to fuzz/artifacts/<target>/ and the script exits 1 after the other targets ran.
# Build: `cargo +nightly fuzz build -O -a -s none`: release with debug assertions and overflow
# checks, and no sanitizer (the code under test is safe Rust, so ASan finds nothing a panic does
# not, and costs build time and speed). Needs `cargo install cargo-fuzz --locked`.
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

mode=brief
runs=0
seconds=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --brief) mode=brief; shift ;;
    --runs) mode=campaign; runs="$2"; shift 2 ;;
    --seconds) mode=campaign; seconds="$2"; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//' | sort)
fi

FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fuzz}"
echo "fuzz.sh: cargo +nightly fuzz build -O -a -s none (target dir $FUZZ_TARGET_DIR)"
cargo +nightly fuzz build -O -a -s none --fuzz-dir fuzz --target-dir "$FUZZ_TARGET_DIR"
bin_dir="$FUZZ_TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
summary=()
for target in "${targets[@]}"; do
  [ -x "$bin_dir/$target" ] || { echo "fuzz.sh: no target $target" >&2; exit 2; }
  if [ "$mode" = brief ]; then
    corpus="$scratch/$target"
  else
    corpus="$FUZZ_TARGET_DIR/corpus/$target"
  fi
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  cp -n fuzz/corpus/"$target"/* "$corpus"/ 2>/dev/null || true
  [ -d "fuzz/regressions/$target" ] && cp -n fuzz/regressions/"$target"/* "$corpus"/ 2>/dev/null || true
  limit=()
  [ "$mode" = brief ] && limit+=(-max_total_time=5)
  [ "$runs" -gt 0 ] && limit+=(-runs="$runs")
  [ "$seconds" -gt 0 ] && limit+=(-max_total_time="$seconds")
  log="$scratch/$target.log"
  echo "fuzz.sh: $target ${limit[*]}"
  start=$(date +%s.%N)
  status=0
  # One in-process fuzzer (what -jobs=1 amounts to, without its fork and its fuzz-0.log in cwd).
  "$bin_dir/$target" "${limit[@]}" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" "$corpus" >"$log" 2>&1 || status=$?
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  # The last status line carries the coverage (cov: edges, ft: features) and the corpus.
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  rate=$(awk -v n="${execs:-0}" -v s="$wall" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
  line=$(printf '%-18s execs %10s  wall %7.1f s  exec/s %7s  cov %5s  ft %6s  corpus %s' \
    "$target" "${execs:-?}" "$wall" "$rate" "${cov:-?}" "${ft:-?}" "${corp:-?}")
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    line="$line  FAILED (exit $status)"
    grep -E 'panicked|ERROR|Test unit written' "$log" | head -5 || true
  fi
  summary+=("$line")
  echo "$line"
done

echo "fuzz.sh: summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
