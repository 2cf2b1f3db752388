;; The ping-pong process of dataplane/tests/push.rs and the simulation (dataplane/tests/sim):
;; replies to `from-process` when the message was pushed, else sends to `peer` when given, and
;; outputs the slot's `from-process` (or "user"). One user message with a `peer` makes a chain
;; of pushes that the push depth limit stops.
(module
  (import "ferrobeam" "msg_get" (func $msg_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (import "ferrobeam" "send_begin" (func $send_begin (param i32 i32)))
  (import "ferrobeam" "send_data" (func $send_data (param i32 i32)))
  (import "ferrobeam" "send_end" (func $send_end))
  (memory (export "memory") 1)
  (data (i32.const 0) "from-process")
  (data (i32.const 16) "peer")
  (data (i32.const 24) "user")
  (data (i32.const 32) "ping")
  (func (export "handle") (result i32)
    (local $n i32)
    (local.set $n (call $msg_get (i32.const 0) (i32.const 12) (i32.const 256) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then
        (call $output (i32.const 24) (i32.const 4))
        (local.set $n (call $msg_get (i32.const 16) (i32.const 4) (i32.const 256) (i32.const 64))))
      (else (call $output (i32.const 256) (local.get $n))))
    (if (i32.gt_s (local.get $n) (i32.const 0))
      (then
        (call $send_begin (i32.const 256) (local.get $n))
        (call $send_data (i32.const 32) (i32.const 4))
        (call $send_end)))
    i32.const 0))
