;; Legacy exception handling (try/catch/catch_all/rethrow/delegate), hand-written for ferrobeam's
;; translator tests (dataplane/src/execute/legacy_eh.rs). Each export's expected result under the
;; legacy semantics is in the comment above it; the test runs the translated module in wasmtime.
;; Flat syntax: the wat crate reads legacy `try` only in that form (no folded `(do ...)`).
(module
  (tag $e0)
  (tag $e1 (param i32))
  (tag $e2 (param i32 i64))

  (func $throw-if (param i32) (result i32)
    (if (local.get 0) (then (throw $e0)))
    (i32.const 0))

  ;; x + 1 (the payload reaches the handler)
  (func (export "catch-value") (param i32) (result i32)
    try (result i32)
      (throw $e1 (local.get 0))
    catch $e1
      (i32.add (i32.const 1))
    end)

  ;; 7 (a two-value payload)
  (func (export "catch-multi") (result i64)
    (local $b i64)
    try (result i64)
      (throw $e2 (i32.const 3) (i64.const 4))
    catch $e2
      local.set $b
      i64.extend_i32_u
      local.get $b
      i64.add
    end)

  ;; br_table through the added blocks: x=0: 10 (exits the try), x=1: 20, else 30
  (func (export "br-table") (param i32) (result i32)
    block $a
      block $b
        try
          (br_table 0 1 2 (local.get 0))
        catch_all
        end
        (return (i32.const 10))
      end
      (return (i32.const 20))
    end
    (i32.const 30))

  ;; x=0: 0; x=1: 1 ($e0); x=2: 22 ($e1, payload 20 + 2); x=3: 3 (catch_all)
  (func (export "clauses-throw") (param i32) (result i32)
    try (result i32)
      (if (i32.eq (local.get 0) (i32.const 1)) (then (throw $e0)))
      (if (i32.eq (local.get 0) (i32.const 2)) (then (throw $e1 (i32.const 20))))
      (if (i32.eq (local.get 0) (i32.const 3)) (then (throw $e2 (i32.const 1) (i64.const 1))))
      (i32.const 0)
    catch $e0
      (i32.const 1)
    catch $e1
      (i32.add (i32.const 2))
    catch_all
      (i32.const 3)
    end)

  ;; 42: an inner try that does not match lets the outer one catch
  (func (export "nested-miss") (result i32)
    try (result i32)
      try (result i32)
        (throw $e1 (i32.const 40))
      catch $e0
        (i32.const -1)
      end
    catch $e1
      (i32.add (i32.const 2))
    end)

  ;; 105: rethrow 1 from a nested handler rethrows the outer handler's exception ($e1 5)
  (func (export "rethrow-depth") (result i32)
    try (result i32)
      try (result i32)
        (throw $e1 (i32.const 5))
      catch $e1
        drop
        try (result i32)
          (throw $e0)
        catch $e0
          rethrow 1 ;; label 0: this try, label 1: the $e1 handler
        end
      end
    catch $e0
      (i32.const -1)
    catch $e1
      (i32.add (i32.const 100))
    end)

  ;; 7: rethrow 0 rethrows $e0, which the outer catch_all takes
  (func (export "rethrow-zero") (result i32)
    try (result i32)
      try (result i32)
        (throw $e1 (i32.const 5))
      catch $e1
        drop
        try (result i32)
          (throw $e0)
        catch_all
          rethrow 0
        end
      end
    catch $e1
      drop
      (i32.const -1)
    catch_all
      (i32.const 7)
    end)

  ;; 9: rethrow from a block inside a catch_all (the depth counts the block)
  (func (export "rethrow-in-block") (result i32)
    try (result i32)
      try
        (throw $e1 (i32.const 9))
      catch_all
        block
          rethrow 1
        end
      end
      (i32.const 0)
    catch $e1
    end)

  ;; 3: br out of a try body; 4: br out of a handler
  (func (export "branch-out") (param i32) (result i32)
    block $b (result i32)
      try
        (br_if $b (i32.const 3) (i32.eqz (local.get 0)))
        (throw $e0)
      catch $e0
        (br $b (i32.const 4))
      end
      (i32.const 5)
    end)

  ;; 2 when x != 0, else 1 (legacy spec test delegate-throw)
  (func (export "delegate-throw") (param i32) (result i32)
    try $t (result i32)
      try (result i32)
        (drop (call $throw-if (local.get 0)))
        (i32.const 1)
      delegate $t
    catch $e0
      (i32.const 2)
    end)

  ;; 3: the delegate skips the middle try's handler (delegate-skip)
  (func (export "delegate-skip") (result i32)
    try $t (result i32)
      try (result i32)
        try (result i32)
          (throw $e0)
          (i32.const 1)
        delegate $t
      catch $e0
        (i32.const 2)
      end
    catch $e0
      (i32.const 3)
    end)

  ;; 1: delegate to a block rethrows after it, where the outer try catches (delegate-to-block)
  (func (export "delegate-to-block") (result i32)
    try (result i32)
      block
        try
          (throw $e0)
        delegate 0
      end
      (i32.const 0)
    catch_all
      (i32.const 1)
    end)

  ;; 1: delegate to a try in its handler goes past that try's handlers (delegate-to-catch)
  (func (export "delegate-to-catch") (result i32)
    try (result i32)
      try
        (throw $e0)
      catch $e0
        try
          rethrow 1
        delegate 0
      end
      (i32.const 0)
    catch_all
      (i32.const 1)
    end)

  ;; 11: delegate to a loop inside a try, the payload carried to the handler
  (func (export "delegate-to-loop") (result i32)
    try (result i32)
      loop $l
        try
          (throw $e1 (i32.const 10))
        delegate $l
      end
      (i32.const 0)
    catch $e1
      (i32.add (i32.const 1))
    end)

  ;; 6 when x != 0, else 51: delegate to an `if` arm
  (func (export "delegate-to-if") (param i32) (result i32)
    try (result i32)
      local.get 0
      if
        try
          (throw $e1 (i32.const 5))
        delegate 0
      else
        try
          (throw $e1 (i32.const 50))
        delegate 0
      end
      (i32.const 0)
    catch $e1
      (i32.add (i32.const 1))
    end)

  ;; 8: a chain: the inner try delegates to a try ... delegate, which delegates to the outer try
  (func (export "delegate-chain") (result i32)
    try $outer (result i32)
      try $mid (result i32)
        try (result i32)
          try (result i32)
            (throw $e1 (i32.const 7))
          delegate $mid
        catch $e1
          drop
          (i32.const -1)
        end
      delegate $outer
    catch $e1
      (i32.add (i32.const 1))
    end)

  ;; throws $e0 to the caller (delegate-to-caller-trivial)
  (func (export "delegate-to-caller") (result i32)
    try
      (throw $e0)
    delegate 0
    (i32.const 0))

  ;; throws $e0 to the caller past a catch_all (delegate-to-caller-skipping)
  (func (export "delegate-to-caller-skipping") (result i32)
    try
      try
        (throw $e0)
      delegate 1
    catch_all
    end
    (i32.const 0))

  ;; 12: a try with a block parameter (7 in, 5 thrown, 5 + 7 out of the handler)
  (func (export "try-param") (result i32)
    (i32.const 7)
    try (param i32) (result i32)
      (throw $e1 (i32.add (i32.const -2)))
    catch $e1
      (i32.add (i32.const 7))
    end)

  ;; 4: a try without handlers is a block
  (func (export "try-plain") (result i32)
    try (result i32)
      (i32.const 4)
    end)

  ;; 13: an exception from a callee, caught after the callee's frames are gone
  (func (export "from-callee") (result i32)
    try (result i32)
      (call $throw-if (i32.const 1))
    catch $e0
      (i32.const 13)
    end)

  ;; escapes to the caller: no handler matches
  (func (export "uncaught") (result i32)
    try (result i32)
      (throw $e1 (i32.const 1))
    catch $e0
      (i32.const 0)
    end)
)
