#!/usr/bin/env bash
# The one test command: installs what the tests need when missing, then runs the format check,
# clippy with warnings denied, and the whole workspace's tests.
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# Debian packages the tests use: clang/lld build C test modules to wasm, swtpm is the real TPM of
# the attestation tests, libtss2-dev/pkg-config build tss-esapi, iperf3 is a bench baseline.
for pkg in clang lld swtpm swtpm-tools libtss2-dev libtss2-tcti-swtpm0 tpm2-tools pkg-config iperf3; do
  have_pkg "$pkg" || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

have cargo-nextest || cargo nextest --version >/dev/null 2>&1 || true

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check

echo "test.sh: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "test.sh: cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --doc --locked 2>&1 | tee "$log"
cargo test --workspace --all-targets --locked 2>&1 | tee -a "$log"
# One closing line over every test binary (cargo prints one `test result:` per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

# Fuzzing: `cargo test` above already replayed every committed fuzz input and ran a seeded
# mutation pass on stable (fuzz-targets/tests/corpus.rs). Then every libFuzzer target runs a few
# seconds from the committed corpus (nightly + cargo-fuzz; a clean build costs about 13
# CPU-minutes, docs/RELIABILITY.md "Fuzzing"). FERROBEAM_FUZZ_BRIEF=0 skips it.
if [ "${FERROBEAM_FUZZ_BRIEF:-1}" = 1 ]; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "test.sh: no nightly toolchain: skipping the libFuzzer runs (the stable corpus replay ran)"
  else
    cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
    echo "test.sh: scripts/fuzz.sh --brief"
    scripts/fuzz.sh --brief
  fi
fi
