;; counter: a native-ABI process (docs/abi.md) that keeps one signed 64-bit counter.
;;
;; Every message, slot 0 (the process message) included, adds its `amount` tag (decimal text or
;; an integer value, may be negative) or 1 when it has none, and outputs the new value as decimal
;; text. A malformed `amount` fails the slot and leaves the counter unchanged.
;;
;; Memory layout:
;;   0..8      the counter (i64)
;;   64..96    `amount` as read by msg_get (32-byte buffer)
;;   128..160  decimal formatting scratch (right-aligned, ends at 160)
;;   1024..    constant strings
(module
  (import "ferrobeam" "msg_get" (func $msg_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (import "ferrobeam" "fail" (func $fail (param i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 1024) "amount")
  (data (i32.const 1040) "amount: not a decimal integer")

  ;; Parses [-]digits (1..=18 digits) at $p..$p+$n. Returns (value, 1) or (0, 0) when malformed.
  ;; $n may be negative (msg_get's "absent"/"not a scalar") or larger than the buffer: both
  ;; are rejected by the length check before any byte is read.
  (func $parse (param $p i32) (param $n i32) (result i64 i32)
    (local $v i64) (local $c i32) (local $end i32) (local $negative i32)
    (if (i32.gt_u (local.get $n) (i32.const 19)) (then (return (i64.const 0) (i32.const 0))))
    (if (i32.eqz (local.get $n)) (then (return (i64.const 0) (i32.const 0))))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 45)) ;; '-'
      (then
        (local.set $negative (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (if (i32.ge_u (local.get $p) (local.get $end))
          (then (return (i64.const 0) (i32.const 0))))))
    (if (i32.gt_u (i32.sub (local.get $end) (local.get $p)) (i32.const 18))
      (then (return (i64.const 0) (i32.const 0))))
    (loop $digit
      (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
      (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i64.const 0) (i32.const 0))))
      (local.set $v
        (i64.add (i64.mul (local.get $v) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $p) (local.get $end))))
    (if (local.get $negative) (then (local.set $v (i64.sub (i64.const 0) (local.get $v)))))
    (local.get $v)
    (i32.const 1))

  ;; Writes $v as decimal text ending at 160; returns the start address.
  (func $format (param $v i64) (result i32)
    (local $p i32) (local $u i64)
    (local.set $p (i32.const 160))
    ;; Work on the magnitude as unsigned, so i64::MIN formats correctly too.
    (local.set $u (local.get $v))
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then (local.set $u (i64.sub (i64.const 0) (local.get $v)))))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.rem_u (local.get $u) (i64.const 10)) (i64.const 48)))
      (local.set $u (i64.div_u (local.get $u) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $u) (i64.const 0))))
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p) (i32.const 45))))
    (local.get $p))

  (func (export "handle") (result i32)
    (local $n i32) (local $amount i64) (local $ok i32) (local $value i64) (local $start i32)
    (local.set $amount (i64.const 1))
    (local.set $n (call $msg_get (i32.const 1024) (i32.const 6) (i32.const 64) (i32.const 32)))
    (if (i32.ne (local.get $n) (i32.const -1))
      (then
        (call $parse (i32.const 64) (local.get $n))
        (local.set $ok)
        (local.set $amount)
        (if (i32.eqz (local.get $ok))
          (then
            (call $fail (i32.const 1040) (i32.const 29))
            (return (i32.const 1))))))
    (local.set $value (i64.add (i64.load (i32.const 0)) (local.get $amount)))
    (i64.store (i32.const 0) (local.get $value))
    (local.set $start (call $format (local.get $value)))
    (call $output (local.get $start) (i32.sub (i32.const 160) (local.get $start)))
    (i32.const 0)))
