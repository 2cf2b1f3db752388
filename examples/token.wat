;; token: a native-ABI process (docs/abi.md) keeping a token ledger.
;;
;; Slot 0 (the process message): the owner (env `owner`) is credited the `supply` tag (decimal,
;; 0 when absent).
;; `action: Transfer`, `recipient`, `quantity`: moves `quantity` (a positive decimal) from the
;; sender (env `from`) to `recipient`. Fails with "insufficient balance" when the sender has
;; less. On success the outbox gets a message to the recipient with tags
;; `action: Credit-Notice`, `sender`, `quantity`.
;; `action: Balance`: outputs, as decimal text, the balance of `recipient` if given, else of
;; `target` if that account exists (incoming messages may carry `target` = this process, as in
;; AO's token blueprint), else of the sender.
;; Anything else fails with "unknown action".
;;
;; Accounts are byte strings of 1..=48 bytes (base64url addresses are 43). The ledger is a fixed
;; table of 1024 entries of 64 bytes at address 4096, searched linearly:
;;   entry+0   key length (i32)
;;   entry+4   key bytes (up to 48)
;;   entry+56  balance (i64)
;; The exported mutable global `accounts` counts used entries (part of the snapshot state).
;;
;; Other memory:
;;   64..128   the sender (`from`)          128..192  the recipient / balance account
;;   192..256  `quantity` / `supply` text   256..320  `action`
;;   320..340  decimal formatting scratch   384..448  `slot`
;;   1024..    constant strings
(module
  (import "ferrobeam" "msg_get" (func $msg_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "env_get" (func $env_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (import "ferrobeam" "send_begin" (func $send_begin (param i32 i32)))
  (import "ferrobeam" "send_tag" (func $send_tag (param i32 i32 i32 i32)))
  (import "ferrobeam" "send_end" (func $send_end))
  (import "ferrobeam" "fail" (func $fail (param i32 i32)))

  (memory (export "memory") 2)
  (global $accounts (export "accounts") (mut i32) (i32.const 0))

  (data (i32.const 1024) "supply")
  (data (i32.const 1032) "action")
  (data (i32.const 1040) "Transfer")
  (data (i32.const 1048) "Balance")
  (data (i32.const 1056) "recipient")
  (data (i32.const 1068) "quantity")
  (data (i32.const 1076) "target")
  (data (i32.const 1084) "from")
  (data (i32.const 1088) "owner")
  (data (i32.const 1094) "slot")
  (data (i32.const 1100) "Credit-Notice")
  (data (i32.const 1114) "sender")
  (data (i32.const 1120) "insufficient balance")
  (data (i32.const 1144) "unknown action")
  (data (i32.const 1160) "missing recipient")
  (data (i32.const 1180) "invalid quantity")
  (data (i32.const 1200) "ledger full")
  (data (i32.const 1212) "invalid supply")
  (data (i32.const 1228) "account longer than 48 bytes")

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

  ;; The entry for account $k..$k+$n, or 0.
  (func $find (param $k i32) (param $n i32) (result i32)
    (local $i i32) (local $e i32)
    (block $done
      (loop $entry
        (br_if $done (i32.ge_u (local.get $i) (global.get $accounts)))
        (local.set $e (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 6))))
        (if (call $eq (i32.add (local.get $e) (i32.const 4)) (i32.load (local.get $e))
                      (local.get $k) (local.get $n))
          (then (return (local.get $e))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $entry)))
    (i32.const 0))

  ;; The entry for account $k..$k+$n (1..=48 bytes), created with balance 0 if new; 0 when full.
  (func $entry (param $k i32) (param $n i32) (result i32)
    (local $e i32)
    (local.set $e (call $find (local.get $k) (local.get $n)))
    (if (local.get $e) (then (return (local.get $e))))
    (if (i32.ge_u (global.get $accounts) (i32.const 1024)) (then (return (i32.const 0))))
    (local.set $e (i32.add (i32.const 4096) (i32.shl (global.get $accounts) (i32.const 6))))
    (i32.store (local.get $e) (local.get $n))
    (memory.copy (i32.add (local.get $e) (i32.const 4)) (local.get $k) (local.get $n))
    (i64.store offset=56 (local.get $e) (i64.const 0))
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

  ;; fail with a constant string; returns 1 for handle to return.
  (func $error (param $p i32) (param $n i32) (result i32)
    (call $fail (local.get $p) (local.get $n))
    (i32.const 1))

  (func $init (result i32)
    (local $n i32) (local $supply i64) (local $owner i32) (local $e i32)
    (local.set $n (call $msg_get (i32.const 1024) (i32.const 6) (i32.const 192) (i32.const 64)))
    (if (i32.eq (local.get $n) (i32.const -1)) (then (return (i32.const 0))))
    (local.set $supply (call $parse (i32.const 192) (local.get $n)))
    (if (i64.lt_s (local.get $supply) (i64.const 0))
      (then (return (call $error (i32.const 1212) (i32.const 14)))))
    (local.set $owner (call $env_get (i32.const 1088) (i32.const 5) (i32.const 64) (i32.const 64)))
    (if (i32.gt_u (i32.sub (local.get $owner) (i32.const 1)) (i32.const 47))
      (then (return (call $error (i32.const 1228) (i32.const 28)))))
    (local.set $e (call $entry (i32.const 64) (local.get $owner)))
    (i64.store offset=56 (local.get $e) (local.get $supply))
    (i32.const 0))

  (func $transfer (result i32)
    (local $from i32) (local $to i32) (local $qn i32) (local $q i64) (local $fe i32) (local $te i32)
    (local.set $from (call $env_get (i32.const 1084) (i32.const 4) (i32.const 64) (i32.const 64)))
    (local.set $to (call $msg_get (i32.const 1056) (i32.const 9) (i32.const 128) (i32.const 64)))
    (if (i32.lt_s (local.get $to) (i32.const 1))
      (then (return (call $error (i32.const 1160) (i32.const 17)))))
    ;; 1..=48 bytes each: (n - 1) as unsigned <= 47.
    (if (i32.or (i32.gt_u (i32.sub (local.get $to) (i32.const 1)) (i32.const 47))
                (i32.gt_u (i32.sub (local.get $from) (i32.const 1)) (i32.const 47)))
      (then (return (call $error (i32.const 1228) (i32.const 28)))))
    (local.set $qn (call $msg_get (i32.const 1068) (i32.const 8) (i32.const 192) (i32.const 64)))
    (local.set $q (call $parse (i32.const 192) (local.get $qn)))
    (if (i64.le_s (local.get $q) (i64.const 0))
      (then (return (call $error (i32.const 1180) (i32.const 16)))))
    (local.set $fe (call $find (i32.const 64) (local.get $from)))
    (if (i32.eqz (local.get $fe))
      (then (return (call $error (i32.const 1120) (i32.const 20)))))
    (if (i64.lt_s (i64.load offset=56 (local.get $fe)) (local.get $q))
      (then (return (call $error (i32.const 1120) (i32.const 20)))))
    (local.set $te (call $entry (i32.const 128) (local.get $to)))
    (if (i32.eqz (local.get $te))
      (then (return (call $error (i32.const 1200) (i32.const 11)))))
    ;; Debit then credit: a transfer to oneself leaves the balance as it was.
    (i64.store offset=56 (local.get $fe)
      (i64.sub (i64.load offset=56 (local.get $fe)) (local.get $q)))
    (i64.store offset=56 (local.get $te)
      (i64.add (i64.load offset=56 (local.get $te)) (local.get $q)))
    (call $send_begin (i32.const 128) (local.get $to))
    (call $send_tag (i32.const 1032) (i32.const 6) (i32.const 1100) (i32.const 13))
    (call $send_tag (i32.const 1114) (i32.const 6) (i32.const 64) (local.get $from))
    (call $send_tag (i32.const 1068) (i32.const 8) (i32.const 192) (local.get $qn))
    (call $send_end)
    (i32.const 0))

  (func $balance (result i32)
    (local $n i32) (local $e i32) (local $amount i64) (local $start i32)
    (local.set $n (call $msg_get (i32.const 1056) (i32.const 9) (i32.const 128) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 1))
      (then
        (local.set $n (call $msg_get (i32.const 1076) (i32.const 6) (i32.const 128) (i32.const 64)))
        (if (i32.eqz (call $find (i32.const 128) (local.get $n)))
          (then
            (local.set $n
              (call $env_get (i32.const 1084) (i32.const 4) (i32.const 128) (i32.const 64)))))))
    (if (i32.gt_u (i32.sub (local.get $n) (i32.const 1)) (i32.const 47))
      (then (return (call $error (i32.const 1228) (i32.const 28)))))
    (local.set $e (call $find (i32.const 128) (local.get $n)))
    (if (local.get $e) (then (local.set $amount (i64.load offset=56 (local.get $e)))))
    (local.set $start (call $format (local.get $amount)))
    (call $output (local.get $start) (i32.sub (i32.const 340) (local.get $start)))
    (i32.const 0))

  (func (export "handle") (result i32)
    (local $n i32)
    ;; Slot 0 is the process message: initialize.
    (local.set $n (call $env_get (i32.const 1094) (i32.const 4) (i32.const 384) (i32.const 64)))
    (if (i32.and (i32.eq (local.get $n) (i32.const 1))
                 (i32.eq (i32.load8_u (i32.const 384)) (i32.const 48)))
      (then (return (call $init))))
    (local.set $n (call $msg_get (i32.const 1032) (i32.const 6) (i32.const 256) (i32.const 64)))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1040) (i32.const 8))
      (then (return (call $transfer))))
    (if (call $eq (i32.const 256) (local.get $n) (i32.const 1048) (i32.const 7))
      (then (return (call $balance))))
    (call $error (i32.const 1144) (i32.const 14))))
