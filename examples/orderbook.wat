;; orderbook: a native-ABI process (docs/abi.md) that exchanges units of an asset for tokens.
;;
;; The asset and the token are two other processes running `examples/token.wat`. The order book
;; never reads their state: it learns of deposits from the Credit-Notices they push to it, and it
;; settles only through outbox messages (`action: Transfer`) that the node signs and schedules on
;; them. Every account here is an *escrow*: what the order book holds, in its own token and asset
;; balances, on behalf of that account.
;;
;; Slot 0 (the process message): the tags `token` and `asset` name the two processes (their ids).
;; Fails with "missing token or asset tag" without them (or "token and asset are the same
;; process"); every later message then fails with "order book not initialized".
;;
;; `action: Credit-Notice`, `sender`, `quantity`: only from the token or asset process (env `from`,
;; which for a message the node pushed is the process whose outbox held it). Adds `quantity` to
;; `sender`'s token or asset escrow; outputs the new escrow. From anyone else — a user forging the
;; notice, or another token — it fails with "credit-notice not from the token or asset process"
;; and credits nothing.
;; `action: Sell`, `quantity`, `price`: a limit order selling `quantity` asset units at `price`
;; tokens each (both 1..=10^9), locked from the sender's asset escrow ("insufficient asset escrow"
;; otherwise). Outputs the order id: the slot of the Sell message.
;; `action: Buy`, `quantity`: a market order, fill or kill. Takes sell orders lowest price first,
;; oldest first among equal prices, until `quantity` units are covered, paying from the sender's
;; token escrow. Fails with "no matching sell order" (empty book), "not enough sell orders to
;; fill", "insufficient token escrow", or "market order needs more than 32 fills" (the outbox holds
;; at most 64 messages). On success the outbox gets a Transfer of `quantity` asset units to the
;; buyer, then one Transfer of tokens to the seller of each order filled, and the output is
;; `{"filled":<units>,"cost":<tokens>}`.
;; `action: Cancel`, `order`: the seller takes an order's unfilled units back into asset escrow
;; ("no such order", "not your order"). Outputs the units returned.
;; `action: Withdraw`, `escrow` (`token` or `asset`), `quantity`: sends that much of the sender's
;; escrow back to the sender with a Transfer. Outputs the escrow left.
;; `action: Escrow`: outputs `{"token":<n>,"asset":<n>}`, the escrow of `account` if given, else of
;; the sender.
;; Anything else fails with "unknown action".
;;
;; Every handler checks everything first and writes state last, so a failed slot changes nothing
;; (docs/abi.md: nothing is rolled back) and its outbox is dropped by the node.
;;
;; Invariant: an account's token (asset) escrow plus what its open orders hold never exceeds what
;; the token (asset) process credited to the order book for it, so the order book's Transfers
;; never fail for want of balance.
;;
;; Memory:
;;   64..128   the sender (`from`)           128..192  `sender` / `account`
;;   192..256  number text being parsed      256..320  `action`
;;   320..340  decimal formatting scratch    384..448  `slot`      448..512  `escrow`
;;   1024..    constant strings
;;   2032      token id length (i32)         2036      asset id length (i32)
;;   2048..2112 the token id                 2112..2176 the asset id
;;   2304..2816 the fills of a Buy being planned: 32 x 16 bytes (order address i32, units i64 at +8)
;;   65536..   accounts: 1024 x 128 bytes    +0 key length (i32), +4 key (1..=48 bytes),
;;                                           +56 token escrow (i64), +64 asset escrow (i64)
;;   196608..  sell orders: 1024 x 32 bytes  +0 units left (i64, 0 = free entry), +8 price (i64),
;;                                           +16 the seller's account address (i32), +24 id (i64)
;; The exported mutable globals `accounts` and `orders` count used account and order entries (part
;; of the snapshot state). A filled or cancelled order's entry is reused by the next Sell.
(module
  (import "ferrobeam" "msg_get" (func $msg_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "env_get" (func $env_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (import "ferrobeam" "send_begin" (func $send_begin (param i32 i32)))
  (import "ferrobeam" "send_tag" (func $send_tag (param i32 i32 i32 i32)))
  (import "ferrobeam" "send_end" (func $send_end))
  (import "ferrobeam" "fail" (func $fail (param i32 i32)))

  (memory (export "memory") 4)
  (global $accounts (export "accounts") (mut i32) (i32.const 0))
  (global $orders (export "orders") (mut i32) (i32.const 0))

  (data (i32.const 1024) "action")
  (data (i32.const 1032) "Credit-Notice")
  (data (i32.const 1048) "Sell")
  (data (i32.const 1056) "Buy")
  (data (i32.const 1060) "Cancel")
  (data (i32.const 1068) "Withdraw")
  (data (i32.const 1080) "Escrow")
  (data (i32.const 1088) "token")
  (data (i32.const 1096) "asset")
  (data (i32.const 1104) "from")
  (data (i32.const 1108) "slot")
  (data (i32.const 1112) "sender")
  (data (i32.const 1120) "quantity")
  (data (i32.const 1128) "price")
  (data (i32.const 1136) "order")
  (data (i32.const 1144) "escrow")
  (data (i32.const 1152) "account")
  (data (i32.const 1160) "Transfer")
  (data (i32.const 1168) "recipient")
  (data (i32.const 1200) "missing token or asset tag")
  (data (i32.const 1232) "order book not initialized")
  (data (i32.const 1264) "unknown action")
  (data (i32.const 1280) "credit-notice not from the token or asset process")
  (data (i32.const 1336) "invalid sender")
  (data (i32.const 1352) "invalid quantity")
  (data (i32.const 1368) "invalid price")
  (data (i32.const 1384) "account longer than 48 bytes")
  (data (i32.const 1416) "escrow table full")
  (data (i32.const 1440) "escrow overflow")
  (data (i32.const 1456) "insufficient asset escrow")
  (data (i32.const 1488) "insufficient token escrow")
  (data (i32.const 1520) "order book full")
  (data (i32.const 1536) "no matching sell order")
  (data (i32.const 1560) "not enough sell orders to fill")
  (data (i32.const 1592) "market order needs more than 32 fills")
  (data (i32.const 1632) "no such order")
  (data (i32.const 1648) "not your order")
  (data (i32.const 1664) "escrow must be token or asset")
  (data (i32.const 1696) "{\"token\":")
  (data (i32.const 1706) ",\"asset\":")
  (data (i32.const 1716) "}")
  (data (i32.const 1720) "{\"filled\":")
  (data (i32.const 1732) ",\"cost\":")
  (data (i32.const 1744) "invalid order")
  (data (i32.const 1760) "token and asset are the same process")

  ;; Byte strings equal? Lengths may be negative (msg_get's "absent"): never equal to a real one.
  (func $eq (param $a i32) (param $an i32) (param $b i32) (param $bn i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $an) (local.get $bn)) (then (return (i32.const 0))))
    (block $done
      (loop $byte
        (br_if $done (i32.ge_u (local.get $i) (local.get $an)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $byte)))
    (i32.const 1))

  ;; The account entry for $k..$k+$n, or 0.
  (func $find (param $k i32) (param $n i32) (result i32)
    (local $i i32) (local $e i32)
    (block $done
      (loop $entry
        (br_if $done (i32.ge_u (local.get $i) (global.get $accounts)))
        (local.set $e (i32.add (i32.const 65536) (i32.shl (local.get $i) (i32.const 7))))
        (if (call $eq (i32.add (local.get $e) (i32.const 4)) (i32.load (local.get $e))
                      (local.get $k) (local.get $n))
          (then (return (local.get $e))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $entry)))
    (i32.const 0))

  ;; The account entry for $k..$k+$n (1..=48 bytes), created empty if new; 0 when the table is full.
  (func $entry (param $k i32) (param $n i32) (result i32)
    (local $e i32)
    (local.set $e (call $find (local.get $k) (local.get $n)))
    (if (local.get $e) (then (return (local.get $e))))
    (if (i32.ge_u (global.get $accounts) (i32.const 1024)) (then (return (i32.const 0))))
    (local.set $e (i32.add (i32.const 65536) (i32.shl (global.get $accounts) (i32.const 7))))
    (i32.store (local.get $e) (local.get $n))
    (memory.copy (i32.add (local.get $e) (i32.const 4)) (local.get $k) (local.get $n))
    (i64.store offset=56 (local.get $e) (i64.const 0))
    (i64.store offset=64 (local.get $e) (i64.const 0))
    (global.set $accounts (i32.add (global.get $accounts) (i32.const 1)))
    (local.get $e))

  ;; Parses 1..=18 decimal digits; -1 when malformed (negative $n included).
  (func $parse (param $p i32) (param $n i32) (result i64)
    (local $v i64) (local $c i32) (local $end i32)
    (if (i32.or (i32.eqz (local.get $n)) (i32.gt_u (local.get $n) (i32.const 18)))
      (then (return (i64.const -1))))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (loop $digit
      (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
      (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i64.const -1))))
      (local.set $v
        (i64.add (i64.mul (local.get $v) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $p) (local.get $end))))
    (local.get $v))

  ;; The message's tag $k as a number in 1..=$max, or -1.
  (func $amount (param $k i32) (param $kn i32) (param $max i64) (result i64)
    (local $v i64)
    (local.set $v (call $parse (i32.const 192)
      (call $msg_get (local.get $k) (local.get $kn) (i32.const 192) (i32.const 64))))
    (if (i32.or (i64.le_s (local.get $v) (i64.const 0)) (i64.gt_s (local.get $v) (local.get $max)))
      (then (return (i64.const -1))))
    (local.get $v))

  ;; Writes non-negative $v as decimal ending at 340; returns the start address.
  (func $format (param $v i64) (result i32)
    (local $p i32)
    (local.set $p (i32.const 340))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.rem_u (local.get $v) (i64.const 10)) (i64.const 48)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.get $p))

  ;; Outputs non-negative $v as decimal.
  (func $output_number (param $v i64)
    (local $p i32)
    (local.set $p (call $format (local.get $v)))
    (call $output (local.get $p) (i32.sub (i32.const 340) (local.get $p))))

  ;; fail with a constant string; returns 1 for handle to return.
  (func $error (param $p i32) (param $n i32) (result i32)
    (call $fail (local.get $p) (local.get $n))
    (i32.const 1))

  ;; The sender (env `from`) copied to 64; its length, or 0 when it is not 1..=48 bytes.
  (func $from (result i32)
    (local $n i32)
    (local.set $n (call $env_get (i32.const 1104) (i32.const 4) (i32.const 64) (i32.const 64)))
    (if (i32.gt_u (i32.sub (local.get $n) (i32.const 1)) (i32.const 47))
      (then (return (i32.const 0))))
    (local.get $n))

  ;; Puts in the outbox: to process $t, `action: Transfer`, `recipient` $r, `quantity` $q.
  (func $transfer (param $t i32) (param $tn i32) (param $r i32) (param $rn i32) (param $q i64)
    (local $p i32)
    (call $send_begin (local.get $t) (local.get $tn))
    (call $send_tag (i32.const 1024) (i32.const 6) (i32.const 1160) (i32.const 8))
    (call $send_tag (i32.const 1168) (i32.const 9) (local.get $r) (local.get $rn))
    (local.set $p (call $format (local.get $q)))
    (call $send_tag (i32.const 1120) (i32.const 8) (local.get $p) (i32.sub (i32.const 340) (local.get $p)))
    (call $send_end))

  ;; (price $a, id $ai) comes after (price $b, id $bi) in price-time priority?
  (func $after (param $a i64) (param $ai i64) (param $b i64) (param $bi i64) (result i32)
    (if (i64.ne (local.get $a) (local.get $b))
      (then (return (i64.gt_s (local.get $a) (local.get $b)))))
    (i64.gt_s (local.get $ai) (local.get $bi)))

  ;; The open sell order that comes next after (price $pp, id $pid): the lowest (price, id)
  ;; above it; 0 when none. Order ids are slots, so no two orders share a key.
  (func $next (param $pp i64) (param $pid i64) (result i32)
    (local $i i32) (local $o i32) (local $best i32)
    (block $done
      (loop $order
        (br_if $done (i32.ge_u (local.get $i) (global.get $orders)))
        (local.set $o (i32.add (i32.const 196608) (i32.shl (local.get $i) (i32.const 5))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.and
              (i64.ne (i64.load (local.get $o)) (i64.const 0))
              (call $after (i64.load offset=8 (local.get $o)) (i64.load offset=24 (local.get $o))
                           (local.get $pp) (local.get $pid)))
          (then
            (if (i32.eqz (local.get $best)) (then (local.set $best (local.get $o))))
            (if (call $after (i64.load offset=8 (local.get $best)) (i64.load offset=24 (local.get $best))
                             (i64.load offset=8 (local.get $o)) (i64.load offset=24 (local.get $o)))
              (then (local.set $best (local.get $o))))))
        (br $order)))
    (local.get $best))

  ;; The open order with id $id, or 0.
  (func $order (param $id i64) (result i32)
    (local $i i32) (local $o i32)
    (block $done
      (loop $order
        (br_if $done (i32.ge_u (local.get $i) (global.get $orders)))
        (local.set $o (i32.add (i32.const 196608) (i32.shl (local.get $i) (i32.const 5))))
        (if (i32.and (i64.ne (i64.load (local.get $o)) (i64.const 0))
                     (i64.eq (i64.load offset=24 (local.get $o)) (local.get $id)))
          (then (return (local.get $o))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $order)))
    (i32.const 0))

  ;; A free order entry (one filled or cancelled, else a new one); 0 when the book is full.
  (func $free_order (result i32)
    (local $i i32) (local $o i32)
    (block $done
      (loop $order
        (br_if $done (i32.ge_u (local.get $i) (global.get $orders)))
        (local.set $o (i32.add (i32.const 196608) (i32.shl (local.get $i) (i32.const 5))))
        (if (i64.eqz (i64.load (local.get $o))) (then (return (local.get $o))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $order)))
    (if (i32.ge_u (global.get $orders) (i32.const 1024)) (then (return (i32.const 0))))
    (local.set $o (i32.add (i32.const 196608) (i32.shl (global.get $orders) (i32.const 5))))
    (global.set $orders (i32.add (global.get $orders) (i32.const 1)))
    (local.get $o))

  (func $init (result i32)
    (local $t i32) (local $a i32)
    (local.set $t (call $msg_get (i32.const 1088) (i32.const 5) (i32.const 2048) (i32.const 64)))
    (local.set $a (call $msg_get (i32.const 1096) (i32.const 5) (i32.const 2112) (i32.const 64)))
    (if (i32.or (i32.gt_u (i32.sub (local.get $t) (i32.const 1)) (i32.const 47))
                (i32.gt_u (i32.sub (local.get $a) (i32.const 1)) (i32.const 47)))
      (then (return (call $error (i32.const 1200) (i32.const 26)))))
    (if (call $eq (i32.const 2048) (local.get $t) (i32.const 2112) (local.get $a))
      (then (return (call $error (i32.const 1760) (i32.const 36)))))
    (i32.store (i32.const 2032) (local.get $t))
    (i32.store (i32.const 2036) (local.get $a))
    (i32.const 0))

  (func $credit_notice (result i32)
    (local $n i32) (local $field i32) (local $q i64) (local $e i32) (local $v i64)
    (local.set $n (call $from))
    ;; Which escrow: the token's (+56) or the asset's (+64); a user can never be `from` a process.
    (if (call $eq (i32.const 64) (local.get $n) (i32.const 2048) (i32.load (i32.const 2032)))
      (then (local.set $field (i32.const 56))))
    (if (call $eq (i32.const 64) (local.get $n) (i32.const 2112) (i32.load (i32.const 2036)))
      (then (local.set $field (i32.const 64))))
    (if (i32.eqz (local.get $field))
      (then (return (call $error (i32.const 1280) (i32.const 49)))))
    (local.set $n (call $msg_get (i32.const 1112) (i32.const 6) (i32.const 128) (i32.const 64)))
    (if (i32.gt_u (i32.sub (local.get $n) (i32.const 1)) (i32.const 47))
      (then (return (call $error (i32.const 1336) (i32.const 14)))))
    (local.set $q (call $amount (i32.const 1120) (i32.const 8) (i64.const 999999999999999999)))
    (if (i64.lt_s (local.get $q) (i64.const 0))
      (then (return (call $error (i32.const 1352) (i32.const 16)))))
    (local.set $e (call $entry (i32.const 128) (local.get $n)))
    (if (i32.eqz (local.get $e))
      (then (return (call $error (i32.const 1416) (i32.const 17)))))
    (local.set $v (i64.add (i64.load (i32.add (local.get $e) (local.get $field))) (local.get $q)))
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then (return (call $error (i32.const 1440) (i32.const 15)))))
    (i64.store (i32.add (local.get $e) (local.get $field)) (local.get $v))
    (call $output_number (local.get $v))
    (i32.const 0))

  (func $sell (result i32)
    (local $n i32) (local $q i64) (local $p i64) (local $e i32) (local $o i32) (local $id i64)
    (local.set $n (call $from))
    (if (i32.eqz (local.get $n))
      (then (return (call $error (i32.const 1384) (i32.const 28)))))
    (local.set $q (call $amount (i32.const 1120) (i32.const 8) (i64.const 1000000000)))
    (if (i64.lt_s (local.get $q) (i64.const 0))
      (then (return (call $error (i32.const 1352) (i32.const 16)))))
    (local.set $p (call $amount (i32.const 1128) (i32.const 5) (i64.const 1000000000)))
    (if (i64.lt_s (local.get $p) (i64.const 0))
      (then (return (call $error (i32.const 1368) (i32.const 13)))))
    (local.set $e (call $find (i32.const 64) (local.get $n)))
    (if (i32.eqz (local.get $e))
      (then (return (call $error (i32.const 1456) (i32.const 25)))))
    (if (i64.lt_s (i64.load offset=64 (local.get $e)) (local.get $q))
      (then (return (call $error (i32.const 1456) (i32.const 25)))))
    (local.set $o (call $free_order))
    (if (i32.eqz (local.get $o))
      (then (return (call $error (i32.const 1520) (i32.const 15)))))
    (local.set $id (call $parse (i32.const 384)
      (call $env_get (i32.const 1108) (i32.const 4) (i32.const 384) (i32.const 64))))
    (i64.store offset=64 (local.get $e) (i64.sub (i64.load offset=64 (local.get $e)) (local.get $q)))
    (i64.store (local.get $o) (local.get $q))
    (i64.store offset=8 (local.get $o) (local.get $p))
    (i32.store offset=16 (local.get $o) (local.get $e))
    (i64.store offset=24 (local.get $o) (local.get $id))
    (call $output_number (local.get $id))
    (i32.const 0))

  ;; Plans a market order for $want units paid from $escrow tokens into the fills table at 2304,
  ;; writing nothing else. Returns the number of fills (0: the book is empty) and leaves the
  ;; units it could not cover at 2296 (i64) and the cost at 2288 (i64); or -1 after `fail`.
  (func $plan (param $want i64) (param $escrow i64) (result i32)
    (local $left i64) (local $cost i64) (local $pay i64) (local $take i64)
    (local $o i32) (local $f i32) (local $fills i32) (local $pp i64) (local $pid i64)
    (local.set $left (local.get $want))
    (local.set $pp (i64.const -1))
    (local.set $pid (i64.const -1))
    (block $planned
      (loop $fill
        (br_if $planned (i64.eqz (local.get $left)))
        (local.set $o (call $next (local.get $pp) (local.get $pid)))
        (br_if $planned (i32.eqz (local.get $o)))
        (if (i32.ge_u (local.get $fills) (i32.const 32))
          (then (drop (call $error (i32.const 1592) (i32.const 37))) (return (i32.const -1))))
        (local.set $take (i64.load (local.get $o)))
        (if (i64.lt_u (local.get $left) (local.get $take)) (then (local.set $take (local.get $left))))
        ;; Both factors are at most 10^9, and $cost <= $escrow: nothing overflows.
        (local.set $pay (i64.mul (local.get $take) (i64.load offset=8 (local.get $o))))
        (if (i64.gt_s (local.get $pay) (i64.sub (local.get $escrow) (local.get $cost)))
          (then (drop (call $error (i32.const 1488) (i32.const 25))) (return (i32.const -1))))
        (local.set $cost (i64.add (local.get $cost) (local.get $pay)))
        (local.set $left (i64.sub (local.get $left) (local.get $take)))
        (local.set $f (i32.add (i32.const 2304) (i32.shl (local.get $fills) (i32.const 4))))
        (i32.store (local.get $f) (local.get $o))
        (i64.store offset=8 (local.get $f) (local.get $take))
        (local.set $fills (i32.add (local.get $fills) (i32.const 1)))
        (local.set $pp (i64.load offset=8 (local.get $o)))
        (local.set $pid (i64.load offset=24 (local.get $o)))
        (br $fill)))
    (i64.store (i32.const 2296) (local.get $left))
    (i64.store (i32.const 2288) (local.get $cost))
    (local.get $fills))

  (func $buy (result i32)
    (local $n i32) (local $want i64) (local $escrow i64) (local $cost i64) (local $e i32)
    (local $fills i32) (local $f i32) (local $end i32) (local $o i32) (local $take i64)
    (local $seller i32)
    (local.set $n (call $from))
    (if (i32.eqz (local.get $n))
      (then (return (call $error (i32.const 1384) (i32.const 28)))))
    (local.set $want (call $amount (i32.const 1120) (i32.const 8) (i64.const 1000000000)))
    (if (i64.lt_s (local.get $want) (i64.const 0))
      (then (return (call $error (i32.const 1352) (i32.const 16)))))
    (local.set $e (call $find (i32.const 64) (local.get $n)))
    (if (local.get $e) (then (local.set $escrow (i64.load offset=56 (local.get $e)))))
    (local.set $fills (call $plan (local.get $want) (local.get $escrow)))
    (if (i32.lt_s (local.get $fills) (i32.const 0)) (then (return (i32.const 1))))
    (if (i32.eqz (local.get $fills))
      (then (return (call $error (i32.const 1536) (i32.const 22)))))
    (if (i64.ne (i64.load (i32.const 2296)) (i64.const 0))
      (then (return (call $error (i32.const 1560) (i32.const 30)))))
    ;; Settle. Every fill cost at least one token, so the buyer's account $e exists.
    (local.set $cost (i64.load (i32.const 2288)))
    (i64.store offset=56 (local.get $e) (i64.sub (local.get $escrow) (local.get $cost)))
    (call $transfer (i32.const 2112) (i32.load (i32.const 2036)) (i32.const 64) (local.get $n)
                    (local.get $want))
    (local.set $f (i32.const 2304))
    (local.set $end (i32.add (i32.const 2304) (i32.shl (local.get $fills) (i32.const 4))))
    (loop $fill
      (local.set $o (i32.load (local.get $f)))
      (local.set $take (i64.load offset=8 (local.get $f)))
      (local.set $seller (i32.load offset=16 (local.get $o)))
      (i64.store (local.get $o) (i64.sub (i64.load (local.get $o)) (local.get $take)))
      (call $transfer (i32.const 2048) (i32.load (i32.const 2032))
                      (i32.add (local.get $seller) (i32.const 4)) (i32.load (local.get $seller))
                      (i64.mul (local.get $take) (i64.load offset=8 (local.get $o))))
      (local.set $f (i32.add (local.get $f) (i32.const 16)))
      (br_if $fill (i32.lt_u (local.get $f) (local.get $end))))
    (call $output (i32.const 1720) (i32.const 10))
    (call $output_number (local.get $want))
    (call $output (i32.const 1732) (i32.const 8))
    (call $output_number (local.get $cost))
    (call $output (i32.const 1716) (i32.const 1))
    (i32.const 0))

  (func $cancel (result i32)
    (local $n i32) (local $id i64) (local $o i32) (local $seller i32) (local $q i64)
    (local.set $n (call $from))
    (if (i32.eqz (local.get $n))
      (then (return (call $error (i32.const 1384) (i32.const 28)))))
    (local.set $id (call $parse (i32.const 192)
      (call $msg_get (i32.const 1136) (i32.const 5) (i32.const 192) (i32.const 64))))
    (if (i64.lt_s (local.get $id) (i64.const 0))
      (then (return (call $error (i32.const 1744) (i32.const 13)))))
    (local.set $o (call $order (local.get $id)))
    (if (i32.eqz (local.get $o))
      (then (return (call $error (i32.const 1632) (i32.const 13)))))
    (local.set $seller (i32.load offset=16 (local.get $o)))
    (if (i32.eqz (call $eq (i32.add (local.get $seller) (i32.const 4)) (i32.load (local.get $seller))
                           (i32.const 64) (local.get $n)))
      (then (return (call $error (i32.const 1648) (i32.const 14)))))
    (local.set $q (i64.load (local.get $o)))
    (i64.store offset=64 (local.get $seller)
      (i64.add (i64.load offset=64 (local.get $seller)) (local.get $q)))
    (i64.store (local.get $o) (i64.const 0))
    (call $output_number (local.get $q))
    (i32.const 0))

  (func $withdraw (result i32)
    (local $n i32) (local $k i32) (local $field i32) (local $t i32) (local $tn i32)
    (local $q i64) (local $e i32) (local $v i64)
    (local.set $n (call $from))
    (if (i32.eqz (local.get $n))
      (then (return (call $error (i32.const 1384) (i32.const 28)))))
    (local.set $k (call $msg_get (i32.const 1144) (i32.const 6) (i32.const 448) (i32.const 64)))
    (if (call $eq (i32.const 448) (local.get $k) (i32.const 1088) (i32.const 5))
      (then
        (local.set $field (i32.const 56))
        (local.set $t (i32.const 2048))
        (local.set $tn (i32.load (i32.const 2032)))))
    (if (call $eq (i32.const 448) (local.get $k) (i32.const 1096) (i32.const 5))
      (then
        (local.set $field (i32.const 64))
        (local.set $t (i32.const 2112))
        (local.set $tn (i32.load (i32.const 2036)))))
    (if (i32.eqz (local.get $field))
      (then (return (call $error (i32.const 1664) (i32.const 29)))))
    (local.set $q (call $amount (i32.const 1120) (i32.const 8) (i64.const 999999999999999999)))
    (if (i64.lt_s (local.get $q) (i64.const 0))
      (then (return (call $error (i32.const 1352) (i32.const 16)))))
    (local.set $e (call $find (i32.const 64) (local.get $n)))
    (if (local.get $e)
      (then (local.set $v (i64.load (i32.add (local.get $e) (local.get $field))))))
    (if (i64.lt_s (local.get $v) (local.get $q))
      (then
        (if (i32.eq (local.get $field) (i32.const 56))
          (then (return (call $error (i32.const 1488) (i32.const 25)))))
        (return (call $error (i32.const 1456) (i32.const 25)))))
    (local.set $v (i64.sub (local.get $v) (local.get $q)))
    (i64.store (i32.add (local.get $e) (local.get $field)) (local.get $v))
    (call $transfer (local.get $t) (local.get $tn) (i32.const 64) (local.get $n) (local.get $q))
    (call $output_number (local.get $v))
    (i32.const 0))

  (func $escrow (result i32)
    (local $n i32) (local $e i32) (local $token i64) (local $asset i64)
    (local.set $n (call $msg_get (i32.const 1152) (i32.const 7) (i32.const 128) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 1))
      (then
        (local.set $n (call $env_get (i32.const 1104) (i32.const 4) (i32.const 128) (i32.const 64)))))
    (if (i32.gt_u (i32.sub (local.get $n) (i32.const 1)) (i32.const 47))
      (then (return (call $error (i32.const 1384) (i32.const 28)))))
    (local.set $e (call $find (i32.const 128) (local.get $n)))
    (if (local.get $e)
      (then
        (local.set $token (i64.load offset=56 (local.get $e)))
        (local.set $asset (i64.load offset=64 (local.get $e)))))
    (call $output (i32.const 1696) (i32.const 9))
    (call $output_number (local.get $token))
    (call $output (i32.const 1706) (i32.const 9))
    (call $output_number (local.get $asset))
    (call $output (i32.const 1716) (i32.const 1))
    (i32.const 0))

  (func (export "handle") (result i32)
    (local $n i32)
    ;; Slot 0 is the process message: learn the token and asset processes.
    (local.set $n (call $env_get (i32.const 1108) (i32.const 4) (i32.const 384) (i32.const 64)))
    (if (i32.and (i32.eq (local.get $n) (i32.const 1))
                 (i32.eq (i32.load8_u (i32.const 384)) (i32.const 48)))
      (then (return (call $init))))
    (if (i32.eqz (i32.load (i32.const 2032)))
      (then (return (call $error (i32.const 1232) (i32.const 26)))))
    (local.set $n (call $msg_get (i32.const 1024) (i32.const 6) (i32.const 256) (i32.const 64)))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1032) (i32.const 13))
      (then (return (call $credit_notice))))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1048) (i32.const 4))
      (then (return (call $sell))))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1056) (i32.const 3))
      (then (return (call $buy))))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1060) (i32.const 6))
      (then (return (call $cancel))))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1068) (i32.const 8))
      (then (return (call $withdraw))))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1080) (i32.const 6))
      (then (return (call $escrow))))
    (call $error (i32.const 1264) (i32.const 14))))
