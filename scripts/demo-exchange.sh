#!/usr/bin/env bash
# The exchange demo (README "Exchange demo"): a token, an asset and an order book, three processes
# that never read each other's state. A seller escrows one asset unit and offers it for 10
# tokens; a buyer escrows 10 tokens and buys at market; the order book settles with two Transfers
# in its outbox, which the node signs and schedules on the asset and token processes (push).
#
#   scripts/demo-exchange.sh [--node URL] [--debug]
#
# Without --node it builds the `ferrobeam` binary if needed (release; --debug for a debug build),
# starts a node on a free loopback port with its data in a temporary directory, and stops it and
# removes that directory at the end. With --node it uses that node (loopback URLs only) and leaves
# it running. FERROBEAM_BIN=path skips the build. Needs jq.
#
# Bounded: after the build, the whole run is limited to DEMO_TIMEOUT_S (120) seconds, and every
# client call to CALL_TIMEOUT_S (40; a result may wait for up to the node's compute-wait-ms).
# Exit 0 when the final balances are the expected ones, 1 when they are not, 2 on errors.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16s/^# \{0,1\}//p' "$0"; }
die() { echo "demo-exchange: $*" >&2; exit 2; }

node_url="" profile="release"
while [ $# -gt 0 ]; do
  case "$1" in
    --node) [ $# -ge 2 ] || die "--node needs a URL"; node_url="${2%/}"; shift 2 ;;
    --node=*) node_url="${1#--node=}"; node_url="${node_url%/}"; shift ;;
    --debug) profile="debug"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
command -v jq >/dev/null 2>&1 || die "needs jq (apt-get install jq)"
if [ -n "$node_url" ]; then
  case "$node_url" in
    http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
    *) die "--node must be a loopback URL (http://127.0.0.1:PORT), not $node_url" ;;
  esac
fi

# --- the binary -----------------------------------------------------------------------------------
bin="${FERROBEAM_BIN:-}"
if [ -z "$bin" ]; then
  if [ "$profile" = release ]; then
    cargo build --release --quiet --bin ferrobeam
  else
    cargo build --quiet --bin ferrobeam
  fi
  bin="${CARGO_TARGET_DIR:-target}/$profile/ferrobeam"
fi
[ -x "$bin" ] || die "no ferrobeam binary at $bin"

demo_timeout_s="${DEMO_TIMEOUT_S:-120}"
call_timeout_s="${CALL_TIMEOUT_S:-40}"
SECONDS=0

# --- a node, and cleaning up what this script started ---------------------------------------------
work="$(mktemp -d -t ferrobeam-exchange.XXXXXX)"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -INT "$node_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

if [ -z "$node_url" ]; then
  RUST_LOG=info "$bin" node --data "$work/node" --http 127.0.0.1:0 >"$work/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 300); do
    # The node logs the address it bound (port 0: the kernel picked it); strip ANSI colours first.
    addr="$(sed 's/\x1b\[[0-9;]*m//g' "$work/node.log" | grep -o 'addr=127\.0\.0\.1:[0-9]*' | head -n1 || true)"
    [ -n "$addr" ] && break
    kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; die "the node exited"; }
    sleep 0.1
  done
  [ -n "${addr:-}" ] || { cat "$work/node.log" >&2; die "the node did not start in 30 s"; }
  node_url="http://${addr#addr=}"
  echo "node: $node_url (data in $work/node, stopped at the end)"
else
  echo "node: $node_url"
fi

# --- client helpers -------------------------------------------------------------------------------
fb() {
  [ "$SECONDS" -lt "$demo_timeout_s" ] || die "over DEMO_TIMEOUT_S=$demo_timeout_s seconds"
  timeout "$call_timeout_s" "$bin" "$@" --node "$node_url" --json
}
# act WALLET PROCESS KEY=VALUE...: sends a message and prints its slot's result record.
act() {
  local who="$1" process="$2" slot
  shift 2
  local tags=()
  for tag in "$@"; do tags+=(--tag "$tag"); done
  slot="$(fb send --wallet "$work/$who.json" --process "$process" "${tags[@]}" | jq -r .slot)"
  fb result --process "$process" --slot "$slot"
}
# check RECORD: fails the demo when the slot failed.
check() {
  local error
  error="$(jq -r '.error // empty' <<<"$1")"
  [ -z "$error" ] || die "slot $(jq -r .slot <<<"$1") of $(jq -r .process <<<"$1") failed: $error"
}
# settle RECORD: waits for every message the slot pushed to be computed on its target; each must
# succeed. Prints nothing.
settle() {
  local target slot
  while read -r target slot; do
    check "$(fb result --process "$target" --slot "$slot")"
  done < <(jq -r '.pushed[]? | select(.slot != null) | "\(.target) \(.slot)"' <<<"$1")
}
# deposit WALLET LEDGER QUANTITY: a Transfer to the order book; prints the order book's result
# for the Credit-Notice the node pushed to it.
deposit() {
  local record slot
  record="$(act "$1" "$2" action=Transfer recipient="$book" quantity="$3")"
  check "$record"
  slot="$(jq -r --arg book "$book" '.pushed[] | select(.target == $book) | .slot' <<<"$record")"
  fb result --process "$book" --slot "$slot"
}
balance() { act buyer "$1" action=Balance recipient="$2" | jq -r .output; }
# expect_error RECORD TEXT: the slot must have failed with TEXT.
expect_error() {
  local error
  error="$(jq -r '.error // empty' <<<"$1")"
  [ "$error" = "$2" ] || die "expected the error \"$2\", got \"$error\""
  echo "   refused: $error"
}

# --- wallets and processes ------------------------------------------------------------------------
for who in operator seller buyer; do
  "$bin" keygen --out "$work/$who.json" --json >"$work/$who.address.json"
done
seller="$(jq -r .address "$work/seller.address.json")"
buyer="$(jq -r .address "$work/buyer.address.json")"
echo "seller: $seller"
echo "buyer:  $buyer"

# A process id exists only once it is spawned: the token and the asset first, then the order book
# with their ids as its `token` and `asset` tags.
spawn() { fb spawn --wallet "$work/$1.json" --module "$2" "${@:3}" | jq -r .process; }
token="$(spawn buyer examples/token.wat --tag supply=100 --tag name=token)"
asset="$(spawn seller examples/token.wat --tag supply=5 --tag name=asset)"
book="$(spawn operator examples/orderbook.wat --tag token="$token" --tag asset="$asset")"
check "$(fb result --process "$book" --slot 0)"
echo "token:      $token (the buyer holds 100)"
echo "asset:      $asset (the seller holds 5 units)"
echo "order book: $book"

# --- the scenario ---------------------------------------------------------------------------------
echo
echo "1. the seller escrows 1 asset unit: Transfer to the order book, whose Credit-Notice is pushed"
notice="$(deposit seller "$asset" 1)"
check "$notice"
echo "   order book credits the seller's asset escrow: $(jq -r .output <<<"$notice")"

echo "2. the seller places a limit order: sell 1 unit at 10 tokens"
sell="$(act seller "$book" action=Sell quantity=1 price=10)"
check "$sell"
echo "   order id: $(jq -r .output <<<"$sell")"

echo "3. the buyer escrows 10 tokens"
notice="$(deposit buyer "$token" 10)"
check "$notice"
echo "   order book credits the buyer's token escrow: $(jq -r .output <<<"$notice")"

echo "4. the buyer places a market order: buy 1 unit"
buy="$(act buyer "$book" action=Buy quantity=1)"
check "$buy"
echo "   $(jq -r .output <<<"$buy"); settlement, pushed from the order book's outbox:"
jq -r '.pushed[] | "     → \(.target) slot \(.slot)"' <<<"$buy"
settle "$buy"
"$bin" result --node "$node_url" --process "$book" --slot "$(jq -r .slot <<<"$buy")" | sed 's/^/   /'

echo "5. what an exchange must refuse (each changes nothing):"
expect_error "$(act buyer "$book" action=Credit-Notice sender="$buyer" quantity=1000)" \
  "credit-notice not from the token or asset process"
expect_error "$(act buyer "$book" action=Buy quantity=1)" "no matching sell order"
expect_error "$(act seller "$book" action=Sell quantity=1 price=10)" "insufficient asset escrow"

echo "6. anyone can recompute the three processes from their schedules (pushes included):"
for named in "token $token" "asset $asset" "order book $book"; do
  process="${named##* }"
  fb audit --process "$process" | jq -r --arg name "${named% *}" \
    '"   \($name): \(.slots) slots recomputed, results and hashpaths match"' \
    || die "audit of ${named% *} failed"
done

# --- final balances -------------------------------------------------------------------------------
echo
printf '%-12s %8s %8s\n' "" token asset
status=0
line() {
  local t a
  t="$(balance "$token" "$2")"
  a="$(balance "$asset" "$2")"
  printf '%-12s %8s %8s\n' "$1" "$t" "$a"
  [ "$t $a" = "$3" ] || status=1
}
line seller "$seller" "10 4"
line buyer "$buyer" "90 1"
line "order book" "$book" "0 0"
if [ "$status" -ne 0 ]; then
  echo "demo-exchange: unexpected balances (expected seller 10/4, buyer 90/1, order book 0/0)" >&2
else
  echo "settled in ${SECONDS}s: the seller got 10 tokens, the buyer 1 unit, the order book holds nothing"
fi
exit "$status"
