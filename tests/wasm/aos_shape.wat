;; A hand-written module with the shape of an aos build, for ferrobeam's ao-json tests
;; (dataplane/tests/ao_json.rs): `malloc`/`handle` with NUL-terminated JSON, WASI preview1 and
;; emscripten imports, a private mutable stack pointer, legacy try/catch, an `invoke_*`
;; trampoline with longjmp.
;;
;; It is a template: `{P}` is the pointer type (i64 for memory64, i32 for wasm32), `{MEM}` the
;; memory type prefix (`i64` or nothing), `{W}` the pointer width in bytes, `{EXT}` the
;; instruction that widens a pointer to i64 (nothing on memory64). The test fills them in for both formats.
;;
;; The action is the value of the message's Action tag, found by scanning the message JSON:
;;   Count    counter += 1 (kept in memory), Output = counter
;;   Grow     grows memory by 300 pages, writes counter+1000 into the last 8 bytes, Output = pages
;;   Check    Output = "<pages> <value in the last 8 bytes>"
;;   Time     Output = clock_time_get (ns)
;;   Random   Output = first 8 bytes of random_get, as a number
;;   Print    writes "hello from fd_write" to stdout; Output = bytes written
;;   Throw    throws $err 42 inside a legacy try; the catch answers Error "caught 42"
;;   Trap     moves the stack pointer down by 16, then traps (state left as a trap leaves it)
;;   SP       Output = the stack pointer
;;   Loop     loops forever
;;   Send     Messages = [{Target: "target-process", Tags: [Action: Ping], Data: "hi"}]
;;   Exit     proc_exit(3)
;;   Syscall  Output = __syscall_unlinkat(...) (expects -52, ENOSYS)
;;   Longjmp  invoke_vi(1, 5): table[1] longjmps; Output = the threw flag setThrew left
;;   Env      Output = the env JSON as handle got it
(module
  (type $v_i (func (param i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 {P} {P} {P}) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 {P}) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param {P} {P}) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param {P} {P}) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "env" "__syscall_unlinkat" (func $unlinkat (param i32 {P} i32) (result i32)))
  (import "env" "_emscripten_system" (func $system (param {P}) (result i32)))
  (import "env" "invoke_vi" (func $invoke_vi (param {P} i32)))
  (import "env" "_emscripten_throw_longjmp" (func $throw_longjmp))

  (memory (export "memory") {MEM} 2 2000)
  (table (export "__indirect_function_table") 2 funcref)
  (elem (i32.const 1) $jumper)
  (tag $err (param i32))

  ;; Private mutable globals, as emscripten has them: the loader exports them for snapshots.
  (global $sp (mut {P}) ({P}.const 60000))
  (global $heap (mut {P}) ({P}.const 65536))
  (global $out (mut {P}) ({P}.const 0))
  (global $threw (mut i32) (i32.const 0))

  (data ({P}.const 0) "\"value\":\"Count\"")     ;; 0, 15
  (data ({P}.const 16) "\"value\":\"Grow\"")     ;; 16, 14
  (data ({P}.const 32) "\"value\":\"Check\"")    ;; 32, 15
  (data ({P}.const 48) "\"value\":\"Time\"")     ;; 48, 14
  (data ({P}.const 64) "\"value\":\"Random\"")   ;; 64, 16
  (data ({P}.const 80) "\"value\":\"Print\"")    ;; 80, 15
  (data ({P}.const 96) "\"value\":\"Throw\"")    ;; 96, 15
  (data ({P}.const 112) "\"value\":\"Trap\"")    ;; 112, 14
  (data ({P}.const 128) "\"value\":\"SP\"")      ;; 128, 12
  (data ({P}.const 144) "\"value\":\"Loop\"")    ;; 144, 14
  (data ({P}.const 160) "\"value\":\"Send\"")    ;; 160, 14
  (data ({P}.const 176) "\"value\":\"Exit\"")    ;; 176, 14
  (data ({P}.const 192) "\"value\":\"Syscall\"") ;; 192, 17
  (data ({P}.const 224) "\"value\":\"Longjmp\"") ;; 224, 17
  (data ({P}.const 256) "\"value\":\"Env\"")     ;; 256, 13
  (data ({P}.const 320) "{\"ok\":true,\"response\":{\"Output\":\"")   ;; 320, 33
  (data ({P}.const 360) "\"}}")                                      ;; 360, 3
  (data ({P}.const 368) "{\"ok\":true,\"response\":{\"Output\":\"\",\"Error\":\"caught ") ;; 368, 51
  (data ({P}.const 432) "{\"ok\":true,\"response\":{\"Output\":\"sent\",\"Messages\":[{\"Target\":\"target-process\",\"Tags\":[{\"name\":\"Action\",\"value\":\"Ping\"}],\"Data\":\"hi\"}]}}") ;; 432, 135
  (data ({P}.const 576) "hello from fd_write\n") ;; 576, 20
  (data ({P}.const 600) "rm") ;; 600, 2 (a path for unlinkat)
  ;; 1024: the counter (i64). 2048..2200: WASI scratch (iovec, out values).

  (func $setThrew (export "setThrew") (param i32 i32)
    (global.set $threw (local.get 0)))
  (func (export "emscripten_stack_get_current") (result {P}) (global.get $sp))
  (func (export "_emscripten_stack_restore") (param {P}) (global.set $sp (local.get 0)))

  ;; table[1]: longjmps out through invoke_vi.
  (func $jumper (type $v_i)
    (global.set $sp ({P}.sub (global.get $sp) ({P}.const 32)))
    (call $throw_longjmp))

  (func $malloc (export "malloc") (param $n {P}) (result {P})
    (local $p {P}) (local $end {P})
    (local.set $p (global.get $heap))
    (local.set $end ({P}.and ({P}.add ({P}.add (local.get $p) (local.get $n)) ({P}.const 7)) ({P}.const -8)))
    (if ({P}.gt_u (local.get $end) ({P}.mul (memory.size) ({P}.const 65536)))
      (then
        (if ({P}.lt_s
              (memory.grow ({P}.add ({P}.div_u ({P}.sub (local.get $end) ({P}.mul (memory.size) ({P}.const 65536))) ({P}.const 65536)) ({P}.const 1)))
              ({P}.const 0))
          (then (return ({P}.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  ;; Length of the NUL-terminated string at p.
  (func $strlen (param $p {P}) (result {P})
    (local $n {P})
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u ({P}.add (local.get $p) (local.get $n)))))
        (local.set $n ({P}.add (local.get $n) ({P}.const 1)))
        (br $next)))
    (local.get $n))

  ;; True when the string at s (length n) contains the pattern at p (length m).
  (func $contains (param $s {P}) (param $n {P}) (param $p {P}) (param $m {P}) (result i32)
    (local $i {P}) (local $j {P})
    (if ({P}.lt_u (local.get $n) (local.get $m)) (then (return (i32.const 0))))
    (loop $outer
      (local.set $j ({P}.const 0))
      (block $mismatch
        (loop $inner
          (br_if $mismatch
            (i32.ne (i32.load8_u ({P}.add (local.get $s) ({P}.add (local.get $i) (local.get $j))))
                    (i32.load8_u ({P}.add (local.get $p) (local.get $j)))))
          (local.set $j ({P}.add (local.get $j) ({P}.const 1)))
          (br_if $inner ({P}.lt_u (local.get $j) (local.get $m))))
        (return (i32.const 1)))
      (local.set $i ({P}.add (local.get $i) ({P}.const 1)))
      (br_if $outer ({P}.le_u ({P}.add (local.get $i) (local.get $m)) (local.get $n))))
    (i32.const 0))

  (func $put (param $p {P}) (param $n {P})
    (memory.copy (global.get $out) (local.get $p) (local.get $n))
    (global.set $out ({P}.add (global.get $out) (local.get $n))))

  (func $put_byte (param $b i32)
    (i32.store8 (global.get $out) (local.get $b))
    (global.set $out ({P}.add (global.get $out) ({P}.const 1))))

  ;; Signed decimal.
  (func $put_num (param $v i64)
    (local $digits {P}) (local $i {P})
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then (call $put_byte (i32.const 45)) (local.set $v (i64.sub (i64.const 0) (local.get $v)))))
    ;; digits into scratch at 2200, reversed
    (loop $d
      (i32.store8 ({P}.add ({P}.const 2200) (local.get $digits))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $digits ({P}.add (local.get $digits) ({P}.const 1)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $d (i64.ne (local.get $v) (i64.const 0))))
    (local.set $i (local.get $digits))
    (loop $r
      (local.set $i ({P}.sub (local.get $i) ({P}.const 1)))
      (call $put_byte (i32.load8_u ({P}.add ({P}.const 2200) (local.get $i))))
      (br_if $r ({P}.ne (local.get $i) ({P}.const 0)))))

  ;; A response buffer: {"ok":true,"response":{"Output":"
  (func $begin (result {P})
    (local $r {P})
    (local.set $r (call $malloc ({P}.const 8192)))
    (global.set $out (local.get $r))
    (call $put ({P}.const 320) ({P}.const 33))
    (local.get $r))

  ;; "}} and the NUL.
  (func $finish (param $r {P}) (result {P})
    (call $put ({P}.const 360) ({P}.const 3))
    (call $put_byte (i32.const 0))
    (local.get $r))

  (func $output_num (param $v i64) (result {P})
    (local $r {P})
    (local.set $r (call $begin))
    (call $put_num (local.get $v))
    (call $finish (local.get $r)))

  (func $to64 (param {P}) (result i64)
    (local.get 0) {EXT})

  (func $throws (param $x i32)
    (throw $err (local.get $x)))

  (func $is (param $msg {P}) (param $len {P}) (param $pattern {P}) (param $plen {P}) (result i32)
    (call $contains (local.get $msg) (local.get $len) (local.get $pattern) (local.get $plen)))

  (func $handle (export "handle") (param $msg {P}) (param $env {P}) (result {P})
    (local $len {P}) (local $r {P}) (local $pages {P}) (local $top {P})
    (local.set $len (call $strlen (local.get $msg)))
    ;; Like emscripten: take a stack frame, give it back on the way out.
    (global.set $sp ({P}.sub (global.get $sp) ({P}.const 64)))
    (local.set $r (call $dispatch (local.get $msg) (local.get $len) (local.get $env)))
    (global.set $sp ({P}.add (global.get $sp) ({P}.const 64)))
    (local.get $r))

  (func $dispatch (param $msg {P}) (param $len {P}) (param $env {P}) (result {P})
    (local $r {P}) (local $pages {P}) (local $top {P}) (local $n i32)
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 0) ({P}.const 15))
      (then
        (i64.store ({P}.const 1024) (i64.add (i64.load ({P}.const 1024)) (i64.const 1)))
        (return (call $output_num (i64.load ({P}.const 1024))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 16) ({P}.const 14))
      (then
        (drop (memory.grow ({P}.const 300)))
        (local.set $top ({P}.sub ({P}.mul (memory.size) ({P}.const 65536)) ({P}.const 8)))
        (i64.store (local.get $top) (i64.add (i64.load ({P}.const 1024)) (i64.const 1000)))
        (return (call $output_num (call $to64 (memory.size))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 32) ({P}.const 15))
      (then
        (local.set $r (call $begin))
        (call $put_num (call $to64 (memory.size)))
        (call $put_byte (i32.const 32))
        (call $put_num (i64.load ({P}.sub ({P}.mul (memory.size) ({P}.const 65536)) ({P}.const 8))))
        (return (call $finish (local.get $r)))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 48) ({P}.const 14))
      (then
        (drop (call $clock_time_get (i32.const 0) (i64.const 1000) ({P}.const 2048)))
        (return (call $output_num (i64.load ({P}.const 2048))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 64) ({P}.const 16))
      (then
        (drop (call $random_get ({P}.const 2048) ({P}.const 8)))
        (return (call $output_num (i64.shr_u (i64.load ({P}.const 2048)) (i64.const 1))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 80) ({P}.const 15))
      (then
        ;; one iovec at 2064: {576, 20}; nwritten at 2096
        ({P}.store ({P}.const 2064) ({P}.const 576))
        ({P}.store ({P}.add ({P}.const 2064) ({P}.const {W})) ({P}.const 20))
        (drop (call $fd_write (i32.const 1) ({P}.const 2064) ({P}.const 1) ({P}.const 2096)))
        (return (call $output_num (call $to64 ({P}.load ({P}.const 2096)))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 96) ({P}.const 15))
      (then
        try (result i32)
          (call $throws (i32.const 42))
          (i32.const 0)
        catch $err
        catch_all
          (i32.const -1)
        end
        (local.set $n)
        (local.set $r (call $malloc ({P}.const 256)))
        (global.set $out (local.get $r))
        (call $put ({P}.const 368) ({P}.const 51))
        (call $put_num (i64.extend_i32_s (local.get $n)))
        (return (call $finish (local.get $r)))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 112) ({P}.const 14))
      (then
        (global.set $sp ({P}.sub (global.get $sp) ({P}.const 16)))
        (unreachable)))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 128) ({P}.const 12))
      (then (return (call $output_num (call $to64 (global.get $sp))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 144) ({P}.const 14))
      (then (loop $forever (br $forever))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 160) ({P}.const 14))
      (then
        (local.set $r (call $malloc ({P}.const 256)))
        (global.set $out (local.get $r))
        (call $put ({P}.const 432) ({P}.const 135))
        (call $put_byte (i32.const 0))
        (return (local.get $r))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 176) ({P}.const 14))
      (then (call $proc_exit (i32.const 3))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 192) ({P}.const 17))
      (then
        (return (call $output_num (i64.extend_i32_s
          (call $unlinkat (i32.const -100) ({P}.const 600) (i32.const 0)))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 224) ({P}.const 17))
      (then
        (global.set $threw (i32.const 0))
        (call $invoke_vi ({P}.const 1) (i32.const 5))
        (return (call $output_num (i64.extend_i32_s (global.get $threw))))))
    (if (call $is (local.get $msg) (local.get $len) ({P}.const 256) ({P}.const 13))
      (then
        (local.set $r (call $begin))
        ;; escape the env's quotes crudely: replace " with '
        (local.set $top (call $strlen (local.get $env)))
        (local.set $pages ({P}.const 0))
        (block $done
          (loop $copy
            (br_if $done ({P}.ge_u (local.get $pages) (local.get $top)))
            (local.set $n (i32.load8_u ({P}.add (local.get $env) (local.get $pages))))
            (call $put_byte (select (i32.const 39) (local.get $n) (i32.eq (local.get $n) (i32.const 34))))
            (local.set $pages ({P}.add (local.get $pages) ({P}.const 1)))
            (br $copy)))
        (return (call $finish (local.get $r)))))
    ;; Anything else (the process message itself): Output "ready", with the system() probe.
    (local.set $r (call $begin))
    (call $put_num (i64.extend_i32_s (call $system ({P}.const 0))))
    (call $finish (local.get $r)))
)
