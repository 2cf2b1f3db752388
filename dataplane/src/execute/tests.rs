//! Tests through the real engine: the example processes, limits, traps, validation, snapshots,
//! the `.cwasm` cache, determinism and the executor cores.

use std::collections::BTreeMap;

use crossbeam_channel::Receiver;
use sha2::{Digest, Sha256};

use super::process::SNAPSHOT_INTERVAL_DEFAULT;
use super::*;
use crate::message::{Address, Id, Message, Value};

const COUNTER: &str = include_str!("../../../examples/counter.wat");
const TOKEN: &str = include_str!("../../../examples/token.wat");

/// The native ABI imports, for inline test modules.
const IMPORTS: &str = r#"
  (import "ferrobeam" "msg_get" (func $msg_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "env_get" (func $env_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (import "ferrobeam" "send_begin" (func $send_begin (param i32 i32)))
  (import "ferrobeam" "send_tag" (func $send_tag (param i32 i32 i32 i32)))
  (import "ferrobeam" "send_data" (func $send_data (param i32 i32)))
  (import "ferrobeam" "send_end" (func $send_end))
  (import "ferrobeam" "fail" (func $fail (param i32 i32)))
"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT parses")
}

/// A test module: the ABI imports plus `body`.
fn native(body: &str) -> Vec<u8> {
    wasm(&format!("(module {IMPORTS} {body})"))
}

fn engine(dir: &std::path::Path) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.instances_max = 8;
    Engine::new(config).expect("engine")
}

fn load(engine: &Engine, bytes: &[u8]) -> Module {
    let id = Id(Sha256::digest(bytes).into());
    engine.load(id, bytes).expect("module loads")
}

fn address(n: u8) -> Address {
    Address([n; 32])
}

/// One process driven slot by slot through an [`Instance`].
struct Run {
    definition: Message,
    process: Id,
    owner: Address,
    instance: Instance,
}

impl Run {
    fn start(module: &Module, definition: Message) -> Self {
        let process = definition.id();
        let instance = Instance::new(module, process, &definition).expect("instantiates");
        Self {
            definition,
            process,
            owner: address(1),
            instance,
        }
    }

    fn input(&self, slot: u64, message: Message, from: Address) -> SlotInput {
        SlotInput {
            process: self.process,
            slot,
            message_id: message.id(),
            message,
            from,
            owner: self.owner,
            timestamp_ms: 1_700_000_000_000 + slot,
        }
    }

    /// Runs slot 0 (the process message, sent by the owner).
    fn init(&mut self) -> SlotOutcome {
        let input = self.input(0, self.definition.clone(), self.owner);
        self.instance.run(&input).expect("slot 0 runs")
    }

    fn send(&mut self, message: Message, from: Address) -> SlotOutcome {
        let input = self.input(self.instance.next_slot(), message, from);
        self.instance.run(&input).expect("slot runs")
    }
}

fn process_message(module: &Module) -> Message {
    Message::new()
        .with("type", "Process")
        .with("module", module.id().to_string())
}

fn text(outcome: &SlotOutcome) -> &str {
    assert_eq!(outcome.error, None, "slot failed");
    std::str::from_utf8(&outcome.output).expect("UTF-8 output")
}

fn error(outcome: &SlotOutcome) -> &str {
    outcome.error.as_deref().expect("slot failed")
}

#[test]
fn counter_increments_across_slots() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(COUNTER));
    let mut run = Run::start(&module, process_message(&module));
    assert_eq!(text(&run.init()), "1");
    let from = address(2);
    assert_eq!(text(&run.send(Message::new(), from)), "2");
    assert_eq!(
        text(&run.send(Message::new().with("amount", "40"), from)),
        "42"
    );
    assert_eq!(
        text(&run.send(Message::new().with("amount", -50i64), from)),
        "-8"
    );
    let bad = run.send(Message::new().with("amount", "4x"), from);
    assert_eq!(error(&bad), "amount: not a decimal integer");
    assert!(bad.outbox.is_empty());
    let nested = Message::new().with("amount", Message::new().with("a", 1));
    assert_eq!(
        error(&run.send(nested, from)),
        "amount: not a decimal integer"
    );
    let outcome = run.send(Message::new().with("amount", "8"), from);
    assert_eq!(text(&outcome), "0");
    assert!(outcome.fuel_used > 0 && outcome.fuel_used < COMPUTE_LIMIT_DEFAULT);
    assert_eq!(run.instance.next_slot(), 7);
}

fn transfer(to: Address, quantity: &str) -> Message {
    Message::new()
        .with("action", "Transfer")
        .with("recipient", to.to_string())
        .with("quantity", quantity)
}

fn balance_of(account: Option<Address>) -> Message {
    let message = Message::new().with("action", "Balance");
    match account {
        Some(account) => message.with("recipient", account.to_string()),
        None => message,
    }
}

#[test]
fn token_transfers_fail_on_insufficient_balance_and_notify_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(TOKEN));
    let mut run = Run::start(&module, process_message(&module).with("supply", "1000"));
    let (owner, bob, carol) = (run.owner, address(2), address(3));
    assert_eq!(run.init().error, None);
    assert_eq!(text(&run.send(balance_of(None), owner)), "1000");

    let sent = run.send(transfer(bob, "300"), owner);
    assert_eq!(sent.error, None);
    assert_eq!(sent.output, b"");
    let notice = Message::new()
        .with("target", bob.to_string())
        .with("action", "Credit-Notice")
        .with("sender", owner.to_string())
        .with("quantity", "300");
    assert_eq!(sent.outbox, vec![notice]);

    assert_eq!(text(&run.send(balance_of(None), owner)), "700");
    assert_eq!(text(&run.send(balance_of(Some(bob)), carol)), "300");
    assert_eq!(text(&run.send(balance_of(None), bob)), "300");
    // `target` counts only when it names an account; otherwise the sender's balance.
    let by_target = Message::new()
        .with("action", "Balance")
        .with("target", bob.to_string());
    assert_eq!(text(&run.send(by_target, carol)), "300");
    let unknown_target = Message::new()
        .with("action", "Balance")
        .with("target", "process-id");
    assert_eq!(text(&run.send(unknown_target, owner)), "700");

    let overdraft = run.send(transfer(carol, "301"), bob);
    assert_eq!(error(&overdraft), "insufficient balance");
    assert!(overdraft.outbox.is_empty());
    let stranger = run.send(transfer(bob, "1"), carol);
    assert_eq!(error(&stranger), "insufficient balance");
    assert_eq!(
        error(&run.send(transfer(bob, "0"), owner)),
        "invalid quantity"
    );
    assert_eq!(
        error(&run.send(transfer(bob, "-5"), owner)),
        "invalid quantity"
    );
    let no_recipient = Message::new()
        .with("action", "Transfer")
        .with("quantity", "1");
    assert_eq!(error(&run.send(no_recipient, owner)), "missing recipient");
    assert_eq!(
        error(&run.send(Message::new().with("action", "Mint"), owner)),
        "unknown action"
    );
    assert_eq!(error(&run.send(Message::new(), owner)), "unknown action");

    // Balances unchanged by the failures; the whole balance can move; self-transfer is neutral.
    let all = run.send(transfer(carol, "300"), bob);
    assert_eq!(all.outbox.len(), 1);
    assert_eq!(text(&run.send(balance_of(Some(bob)), owner)), "0");
    assert_eq!(text(&run.send(transfer(owner, "700"), owner)), "");
    assert_eq!(text(&run.send(balance_of(None), owner)), "700");
    assert_eq!(text(&run.send(balance_of(Some(carol)), owner)), "300");

    // The account count lives in an exported mutable global, so snapshots carry it.
    let snapshot = run.instance.snapshot().unwrap();
    assert_eq!(snapshot.globals.get("accounts"), Some(&GlobalValue::I32(3)));
}

#[test]
fn token_without_supply_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(TOKEN));
    let mut run = Run::start(&module, process_message(&module));
    assert_eq!(run.init().error, None);
    assert_eq!(text(&run.send(balance_of(None), run.owner)), "0");
    let mut bad = Run::start(&module, process_message(&module).with("supply", "lots"));
    assert_eq!(error(&bad.init()), "invalid supply");
}

const LOOPER: &str = r#"
  (memory (export "memory") 1)
  (data (i32.const 0) "loop")
  (data (i32.const 16) "ok")
  (func (export "handle") (result i32)
    (if (i32.ne (call $msg_get (i32.const 0) (i32.const 4) (i32.const 32) (i32.const 0))
                (i32.const -1))
      (then (loop $forever (br $forever))))
    (call $output (i32.const 16) (i32.const 2))
    (i32.const 0))
"#;

#[test]
fn exhausted_fuel_fails_the_slot_and_the_next_slot_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &native(LOOPER));
    let definition = process_message(&module).with("compute-limit", "100000");
    let mut run = Run::start(&module, definition);
    assert_eq!(run.instance.limits().fuel_per_slot, 100_000);
    assert_eq!(text(&run.init()), "ok");
    let looped = run.send(Message::new().with("loop", 1), address(2));
    assert_eq!(
        error(&looped),
        "compute-limit exceeded: all 100000 fuel consumed"
    );
    assert_eq!(looped.fuel_used, 100_000);
    let after = run.send(Message::new(), address(2));
    assert_eq!(text(&after), "ok");
    assert!(after.fuel_used < 100);
}

const GROWER: &str = r#"
  (memory (export "memory") 1 64)
  (data (i32.const 0) "pages")
  (func (export "handle") (result i32)
    (local $n i32) (local $result i32)
    (local.set $n (call $msg_get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))
    (if (i32.eq (local.get $n) (i32.const -1)) (then (return (i32.const 0))))
    ;; one decimal digit, times 16 pages (1 MiB); '9' asks for more than the module maximum
    (local.set $result
      (memory.grow (i32.mul (i32.sub (i32.load8_u (i32.const 16)) (i32.const 48)) (i32.const 16))))
    (i32.store8 (i32.const 32) (i32.add (i32.const 48) (i32.eq (local.get $result) (i32.const -1))))
    (call $output (i32.const 32) (i32.const 1))
    (i32.const 0))
"#;

#[test]
fn memory_growth_past_memory_limit_fails_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &native(GROWER));
    // 3 MiB limit: one page initially, +1 MiB fits, +2 MiB more does not.
    let definition = process_message(&module).with("memory-limit", "3-mb");
    let mut run = Run::start(&module, definition);
    assert_eq!(run.instance.limits().memory_bytes, 3 << 20);
    assert_eq!(run.init().error, None);
    let from = address(2);
    assert_eq!(
        text(&run.send(Message::new().with("pages", "1"), from)),
        "0"
    );
    assert_eq!(run.instance.memory_bytes(), (1 << 20) + (64 << 10));
    let denied = run.send(Message::new().with("pages", "2"), from);
    assert_eq!(
        error(&denied),
        format!(
            "memory-limit exceeded: growing to {} bytes, limit {}",
            (3 << 20) + (64 << 10),
            3 << 20
        )
    );
    assert_eq!(run.instance.memory_bytes(), (1 << 20) + (64 << 10));
    assert_eq!(run.send(Message::new(), from).error, None);

    // Past the module's own maximum (64 pages), memory.grow returns -1 as the spec says.
    let roomy = process_message(&module).with("memory-limit", 64i64 << 20);
    let mut run = Run::start(&module, roomy);
    run.init();
    assert_eq!(
        text(&run.send(Message::new().with("pages", "9"), from)),
        "1"
    );

    // A module whose initial memory exceeds the limit cannot be instantiated.
    let big = load(
        &engine,
        &native(
            r#"(memory (export "memory") 64)
        (func (export "handle") (result i32) (i32.const 0))"#,
        ),
    );
    let tight = process_message(&big).with("memory-limit", 65_536i64);
    assert!(matches!(
        Instance::new(&big, tight.id(), &tight),
        Err(ExecError::Instantiate(_))
    ));
}

const CRASHER: &str = r#"
  (memory (export "memory") 1)
  (data (i32.const 0) "crash")
  (func (export "handle") (result i32)
    ;; count slots at 100, then trap after the write when asked to
    (i32.store (i32.const 100) (i32.add (i32.load (i32.const 100)) (i32.const 1)))
    (if (i32.ne (call $msg_get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 0))
                (i32.const -1))
      (then
        (call $output (i32.const 0) (i32.const 5))
        (call $send_begin (i32.const 0) (i32.const 5))
        (call $send_end)
        unreachable))
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (i32.load (i32.const 100))))
    (call $output (i32.const 200) (i32.const 1))
    (i32.const 0))
"#;

#[test]
fn a_trap_fails_the_slot_and_keeps_earlier_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &native(CRASHER));
    let mut run = Run::start(&module, process_message(&module));
    assert_eq!(text(&run.init()), "1");
    let crashed = run.send(Message::new().with("crash", 1), address(2));
    assert_eq!(
        error(&crashed),
        "wasm trap: wasm `unreachable` instruction executed"
    );
    // Output written before the trap is kept for diagnosis; the outbox is dropped.
    assert_eq!(crashed.output, b"crash");
    assert!(crashed.outbox.is_empty());
    // The increment made before the trap persists: documented, deterministic.
    assert_eq!(text(&run.send(Message::new(), address(2))), "3");
}

#[test]
fn abi_limits_and_misuse_fail_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let cases: [(&str, String); 7] = [
        (
            "(loop $more (call $output (i32.const 0) (i32.const 65536)) (br $more))",
            format!("abi: output exceeds {OUTPUT_BYTES_MAX} bytes"),
        ),
        (
            "(loop $more (call $send_begin (i32.const 0) (i32.const 4)) (call $send_end) (br $more))",
            format!("abi: outbox exceeds {OUTBOX_MESSAGES_MAX} messages"),
        ),
        (
            "(call $output (i32.const 65530) (i32.const 7))",
            "abi: range 65530+7 outside linear memory".into(),
        ),
        (
            "(call $send_begin (i32.const 0) (i32.const 4)) (call $send_tag (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 1)) (call $send_end)",
            "abi: send_tag: invalid key \"Up!x\": keys are 1..=128 bytes of a-z 0-9 - _ . @".into(),
        ),
        (
            "(call $send_begin (i32.const 0) (i32.const 4))",
            "abi: handle returned with an unfinished send".into(),
        ),
        (
            "(call $send_end)",
            "abi: send_end without send_begin".into(),
        ),
        (
            "(call $fail (i32.const 0) (i32.const 4)) (call $fail (i32.const 0) (i32.const 2))",
            "Up!x".into(),
        ),
    ];
    for (code, expected) in cases {
        let module = load(
            &engine,
            &native(&format!(
                r#"(memory (export "memory") 1) (data (i32.const 0) "Up!x")
                (func (export "handle") (result i32) {code} (i32.const 0))"#
            )),
        );
        let mut run = Run::start(&module, process_message(&module));
        let outcome = run.init();
        assert_eq!(outcome.error.as_deref(), Some(expected.as_str()), "{code}");
        assert!(outcome.output.len() <= OUTPUT_BYTES_MAX);
        assert!(outcome.outbox.is_empty());
    }
    let nonzero = load(
        &engine,
        &native(
            r#"(memory (export "memory") 1) (func (export "handle") (result i32) (i32.const 7))"#,
        ),
    );
    assert_eq!(
        Run::start(&nonzero, process_message(&nonzero))
            .init()
            .error
            .as_deref(),
        Some("handle returned 7")
    );
}

const READER: &str = r#"
  (memory (export "memory") 1)
  (data (i32.const 0) "note")
  (data (i32.const 8) "nested")
  (data (i32.const 16) "timestamp")
  (data (i32.const 32) "slot")
  (data (i32.const 40) "clock")
  ;; Outputs: [note length as a byte][first 4 bytes of note] [nested result] [clock result]
  ;;          then the full env timestamp and slot, and one outbox message with data in 2 parts.
  (func (export "handle") (result i32)
    (local $n i32)
    (i32.store8 (i32.const 100)
      (call $msg_get (i32.const 0) (i32.const 4) (i32.const 101) (i32.const 4)))
    (i32.store8 (i32.const 105)
      (i32.add (i32.const 100)
        (call $msg_get (i32.const 8) (i32.const 6) (i32.const 200) (i32.const 0))))
    (i32.store8 (i32.const 106)
      (i32.add (i32.const 100)
        (call $env_get (i32.const 40) (i32.const 5) (i32.const 200) (i32.const 0))))
    (call $output (i32.const 100) (i32.const 7))
    (local.set $n (call $env_get (i32.const 16) (i32.const 9) (i32.const 300) (i32.const 32)))
    (call $output (i32.const 300) (local.get $n))
    (local.set $n (call $env_get (i32.const 32) (i32.const 4) (i32.const 300) (i32.const 32)))
    (call $output (i32.const 300) (local.get $n))
    (call $send_begin (i32.const 0) (i32.const 4))
    (call $send_data (i32.const 0) (i32.const 4))
    (call $send_data (i32.const 8) (i32.const 6))
    (call $send_tag (i32.const 32) (i32.const 4) (i32.const 0) (i32.const 2))
    (call $send_end)
    (i32.const 0))
"#;

#[test]
fn msg_get_and_env_get_report_lengths_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &native(READER));
    let mut run = Run::start(&module, process_message(&module));
    run.init();
    let message = Message::new()
        .with("note", "hello world")
        .with("nested", Message::new().with("a", 1));
    let outcome = run.send(message, address(2));
    let mut expected = vec![11u8];
    expected.extend_from_slice(b"hell");
    expected.push(100u8.wrapping_sub(2)); // nested: -2
    expected.push(100u8.wrapping_sub(1)); // unknown env key: -1
    expected.extend_from_slice(b"1700000000001");
    expected.extend_from_slice(b"1");
    assert_eq!(text(&outcome).as_bytes(), expected.as_slice());
    let sent = Message::new()
        .with("target", "note")
        .with("data", "notenested")
        .with("slot", "no");
    assert_eq!(outcome.outbox, vec![sent]);
}

#[test]
fn validation_rejects_what_the_native_abi_forbids() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let handle = r#"(func (export "handle") (result i32) (i32.const 0))"#;
    let memory = r#"(memory (export "memory") 1)"#;
    let cases = [
        (
            format!(
                r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) {memory} {handle})"#
            ),
            "import wasi_snapshot_preview1::fd_write is not allowed",
        ),
        (
            format!(
                r#"(module (import "ferrobeam" "clock" (func (result i64))) {memory} {handle})"#
            ),
            "import ferrobeam::clock is not a native ABI function",
        ),
        (
            format!(
                r#"(module (import "ferrobeam" "output" (func (param i32))) {memory} {handle})"#
            ),
            "import ferrobeam::output has the wrong signature",
        ),
        (
            format!(r#"(module (import "ferrobeam" "memory" (memory 1)) {handle})"#),
            "import ferrobeam::memory is not a native ABI function",
        ),
        (format!("(module {memory})"), "missing export: handle"),
        (
            format!("(module (memory 1) {handle})"),
            "missing export: memory",
        ),
        (
            format!(
                r#"(module {memory} (func (export "handle") (param i32) (result i32) (i32.const 0)))"#
            ),
            "export handle must have type () -> i32",
        ),
        (
            format!("(module {memory} (global $g (mut i32) (i32.const 0)) {handle})"),
            "mutable global 0 is not exported",
        ),
        (
            format!("(module {memory} (func $s) (start $s) {handle})"),
            "a start function is not allowed",
        ),
        (
            format!(
                r#"(module {memory} (table 1 funcref) (func (export "handle") (result i32)
                   (table.set (i32.const 0) (ref.null func)) (i32.const 0)))"#
            ),
            "instruction table.set is not allowed",
        ),
        (
            format!(
                r#"(module {memory} (data $d "x") (func (export "handle") (result i32)
                   (data.drop $d) (i32.const 0)))"#
            ),
            "instruction data.drop is not allowed",
        ),
        (
            format!(r#"(module (memory (export "memory") i64 1) {handle})"#),
            "memory must be 32-bit",
        ),
        (
            "(module (func $broken (result i32)))".to_owned(),
            "invalid module",
        ),
    ];
    for (wat, expected) in cases {
        let bytes = wasm(&wat);
        let err = engine.validate(&bytes).expect_err(&wat);
        assert!(matches!(err, ExecError::ModuleInvalid(_)), "{err}");
        assert!(err.to_string().contains(expected), "{wat}: {err}");
        // load refuses it too, and caches nothing.
        let id = Id(Sha256::digest(&bytes).into());
        assert!(engine.load(id, &bytes).is_err());
        assert!(!engine.cache_path(id).exists());
    }
    // The examples and an exported mutable global of each kind pass.
    engine.validate(&wasm(COUNTER)).unwrap();
    engine.validate(&wasm(TOKEN)).unwrap();
    engine
        .validate(&wasm(&format!(
            r#"(module {memory} (global (export "f") (mut f64) (f64.const 0))
                (global (export "v") (mut v128) (v128.const i64x2 0 0)) {handle})"#
        )))
        .unwrap();
}

/// Grows memory by `pages` (a decimal tag), writes a slot-dependent pattern across the whole
/// memory's page heads, bumps two exported mutable globals, and outputs a digest of all of it.
const SPREADER: &str = r#"
  (memory (export "memory") 1)
  (global $total (export "total") (mut i64) (i64.const 0))
  (global $mix (export "mix") (mut f64) (f64.const 0.5))
  (data (i32.const 0) "pages")
  (func $pages (result i32)
    (local $n i32)
    (local.set $n (call $msg_get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 1)))
    (if (result i32) (i32.eq (local.get $n) (i32.const 1))
      (then (i32.sub (i32.load8_u (i32.const 16)) (i32.const 48)))
      (else (i32.const 0))))
  (func (export "handle") (result i32)
    (local $p i32) (local $end i32) (local $sum i64)
    (drop (memory.grow (call $pages)))
    (global.set $total (i64.add (global.get $total) (i64.extend_i32_u (memory.size))))
    (global.set $mix (f64.add (f64.mul (global.get $mix) (f64.const 1.5)) (f64.const 0.25)))
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (local.set $p (i32.const 1024))
    (loop $page
      (i32.store (local.get $p)
        (i32.add (i32.mul (i32.load (local.get $p)) (i32.const 31))
                 (i32.add (local.get $p) (i32.wrap_i64 (global.get $total)))))
      (local.set $sum (i64.add (local.get $sum) (i64.extend_i32_u (i32.load (local.get $p)))))
      (local.set $p (i32.add (local.get $p) (i32.const 4093)))
      (br_if $page (i32.lt_u (i32.add (local.get $p) (i32.const 4)) (local.get $end))))
    (i64.store (i32.const 64) (local.get $sum))
    (f64.store (i32.const 72) (global.get $mix))
    (call $output (i32.const 64) (i32.const 16))
    (i32.const 0))
"#;

fn spreader_schedule() -> Vec<Message> {
    (0..12)
        .map(|i| {
            let pages = [3, 0, 9, 1, 0, 7, 2, 0, 9, 0, 5, 0][i];
            Message::new()
                .with("pages", pages.to_string())
                .with("i", i as i64)
        })
        .collect()
}

#[test]
fn restore_from_a_snapshot_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &native(SPREADER));
    let definition = process_message(&module);
    let schedule = spreader_schedule();

    let mut straight = Run::start(&module, definition.clone());
    let expected: Vec<SlotOutcome> = schedule
        .iter()
        .map(|m| straight.send(m.clone(), address(2)))
        .collect();
    assert!(expected.iter().all(|o| o.error.is_none()));
    let final_state = straight.instance.snapshot().unwrap();
    assert_eq!(
        final_state.memory.len(),
        37 * 65536,
        "grew well past 1 page"
    );

    let mut first = Run::start(&module, definition.clone());
    for m in &schedule[..6] {
        first.send(m.clone(), address(2));
    }
    let snapshot = first.instance.snapshot().unwrap();
    assert_eq!(snapshot.slot, 5);
    assert!(snapshot.memory.len() > 64 * 1024 * 10);
    let bytes = snapshot.encode();
    let decoded = Snapshot::decode(&bytes).unwrap();
    assert_eq!(decoded, snapshot);

    let process = definition.id();
    let mut second = Run {
        instance: Instance::restore(&module, process, &definition, &decoded).unwrap(),
        ..Run::start(&module, definition.clone())
    };
    assert_eq!(second.instance.next_slot(), 6);
    assert_eq!(second.instance.memory_bytes(), snapshot.memory.len());
    for (m, want) in schedule[6..].iter().zip(&expected[6..]) {
        assert_eq!(&second.send(m.clone(), address(2)), want);
    }
    assert_eq!(second.instance.snapshot().unwrap(), final_state);

    // A snapshot that does not fit is refused.
    let mut wrong = decoded.clone();
    wrong.globals.insert("other".into(), GlobalValue::I32(1));
    assert!(matches!(
        Instance::restore(&module, process, &definition, &wrong),
        Err(ExecError::SnapshotInvalid(_))
    ));
    let tight = definition.clone().with("memory-limit", 65_536i64);
    assert!(matches!(
        Instance::restore(&module, process, &tight, &decoded),
        Err(ExecError::SnapshotInvalid(_))
    ));
    let mut fresh = Instance::new(&module, process, &definition).unwrap();
    assert_eq!(fresh.snapshot(), Err(ExecError::NoSlotApplied));
}

#[test]
fn independent_instances_give_identical_results() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let outcomes = |dir: &std::path::Path| {
        let engine = engine(dir);
        let token = load(&engine, &wasm(TOKEN));
        let spreader = load(&engine, &native(SPREADER));
        let mut run = Run::start(&token, process_message(&token).with("supply", "500"));
        let mut all = vec![run.init()];
        for (i, to) in [2u8, 3, 2, 4].into_iter().enumerate() {
            all.push(run.send(transfer(address(to), &(i * 70 + 1).to_string()), address(1)));
            all.push(run.send(balance_of(None), address(to)));
        }
        let mut run = Run::start(&spreader, process_message(&spreader));
        all.extend(
            spreader_schedule()
                .into_iter()
                .map(|m| run.send(m, address(9))),
        );
        (all, run.instance.snapshot().unwrap())
    };
    let (a, a_state) = outcomes(dir_a.path());
    let (b, b_state) = outcomes(dir_b.path());
    assert_eq!(a, b);
    assert_eq!(a_state, b_state);
}

#[test]
fn compiled_modules_are_cached_on_disk_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(COUNTER);
    let id = Id(Sha256::digest(&bytes).into());
    let first = engine(dir.path());
    let module = first.load(id, &bytes).unwrap();
    assert_eq!(module.source(), ModuleSource::Compiled);
    let path = first.cache_path(id);
    assert!(path.exists());
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with(&id.to_string()) && name.ends_with(".cwasm"),
        "{name}"
    );
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert_eq!(
        first.load(id, &bytes).unwrap().source(),
        ModuleSource::Memory
    );

    // A new engine (as after a restart) maps the file instead of compiling.
    let second = engine(dir.path());
    assert_eq!(second.cache_path(id), path);
    let reused = second.load(id, &bytes).unwrap();
    assert_eq!(reused.source(), ModuleSource::Disk);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        written
    );
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 1, "no temp files left behind");
    let mut run = Run::start(&reused, process_message(&reused));
    assert_eq!(text(&run.init()), "1");

    // A damaged file is replaced by a fresh compilation. (Damage it as a new inode: the
    // engines above still map the old one, which must never change under them.)
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not a cwasm").unwrap();
    let third = engine(dir.path());
    assert_eq!(
        third.load(id, &bytes).unwrap().source(),
        ModuleSource::Compiled
    );
    assert_eq!(
        fourth_load_source(dir.path(), id, &bytes),
        ModuleSource::Disk
    );
}

#[test]
fn past_modules_loaded_max_the_table_is_emptied_and_modules_map_again() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        EngineConfig::new(dir.path()).modules_loaded_max,
        MODULES_LOADED_MAX
    );
    let mut config = EngineConfig::new(dir.path());
    config.instances_max = 2;
    config.modules_loaded_max = 2;
    let engine = Engine::new(config).unwrap();
    let modules: Vec<(Id, Vec<u8>)> = (0..3)
        .map(|n| {
            let bytes = native(&format!(
                r#"(memory (export "memory") 1) (func (export "handle") (result i32) (i32.const {n}))"#
            ));
            (Id(Sha256::digest(&bytes).into()), bytes)
        })
        .collect();
    let source = |n: usize| {
        let (id, bytes) = &modules[n];
        engine.load(*id, bytes).unwrap().source()
    };
    assert_eq!(source(0), ModuleSource::Compiled);
    assert_eq!(source(1), ModuleSource::Compiled);
    // Two fit: both are served from memory.
    assert_eq!(source(0), ModuleSource::Memory);
    assert_eq!(source(1), ModuleSource::Memory);
    // A third finds the table full and empties it; the others map again from their .cwasm.
    assert_eq!(source(2), ModuleSource::Compiled);
    assert_eq!(source(2), ModuleSource::Memory);
    assert_eq!(source(0), ModuleSource::Disk);
    assert_eq!(source(0), ModuleSource::Memory);
}

fn fourth_load_source(dir: &std::path::Path, id: Id, bytes: &[u8]) -> ModuleSource {
    engine(dir).load(id, bytes).unwrap().source()
}

#[test]
fn process_limits_parse_and_bound() {
    let base = Message::new().with("type", "Process");
    let limits = ProcessLimits::of(&base).unwrap();
    assert_eq!(limits.fuel_per_slot, COMPUTE_LIMIT_DEFAULT);
    assert_eq!(limits.memory_bytes, MEMORY_LIMIT_DEFAULT);
    let set = |k: &str, v: Value| ProcessLimits::of(&base.clone().with(k, v));
    assert_eq!(
        set("compute-limit", Value::Int(5)).unwrap().fuel_per_slot,
        5
    );
    assert_eq!(
        set("compute-limit", " 77 ".into()).unwrap().fuel_per_slot,
        77
    );
    assert_eq!(
        set("memory-limit", "1-gb".into()).unwrap().memory_bytes,
        1 << 30
    );
    assert_eq!(
        set("memory-limit", "512-KB".into()).unwrap().memory_bytes,
        512 << 10
    );
    assert_eq!(
        set("memory-limit", "4096".into()).unwrap().memory_bytes,
        4096
    );
    for (key, value) in [
        ("compute-limit", Value::Int(0)),
        ("compute-limit", Value::Int(-1)),
        ("compute-limit", "1-gb".into()),
        ("memory-limit", "5-gb".into()),
        ("memory-limit", "x-mb".into()),
        ("memory-limit", "1-tb".into()),
        ("memory-limit", Value::List(vec![])),
    ] {
        assert!(
            matches!(set(key, value.clone()), Err(ExecError::ProcessInvalid(_))),
            "{key} {value:?}"
        );
    }
}

fn counter_job(
    module: &Module,
    definition: &Message,
    slot: u64,
    snapshot: Option<Snapshot>,
    reply: &crossbeam_channel::Sender<JobDone>,
) -> Job {
    let message = if slot == 0 {
        definition.clone()
    } else {
        Message::new().with("amount", slot as i64)
    };
    Job {
        definition: definition.clone(),
        module: module.clone(),
        snapshot,
        input: SlotInput {
            process: definition.id(),
            slot,
            message_id: message.id(),
            message,
            from: address(2),
            owner: address(1),
            timestamp_ms: slot,
        },
        reply: reply.clone(),
    }
}

fn output(done: &JobDone) -> String {
    let outcome = done.outcome.as_ref().expect("slot ran");
    String::from_utf8(outcome.output.clone()).unwrap()
}

#[test]
fn executors_run_processes_in_order_and_snapshot_every_k() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(COUNTER));
    let mut config = ExecutorsConfig::new(2);
    config.snapshot_interval = 4;
    let executors = Executors::start(&engine, config).unwrap();
    assert_eq!(executors.cores(), 2);
    let (reply, results): (_, Receiver<JobDone>) = crossbeam_channel::unbounded();
    let definitions: Vec<Message> = (0..3)
        .map(|i| process_message(&module).with("n", i as i64))
        .collect();
    for slot in 0..10 {
        for definition in &definitions {
            executors
                .submit(counter_job(&module, definition, slot, None, &reply))
                .unwrap();
        }
    }
    let mut by_process: BTreeMap<Id, Vec<JobDone>> = BTreeMap::new();
    for _ in 0..30 {
        let done = results.recv().unwrap();
        by_process.entry(done.process).or_default().push(done);
    }
    let mut total = 1u64;
    let expected: Vec<String> = (0..10u64)
        .map(|slot| {
            total += if slot == 0 { 0 } else { slot };
            total.to_string()
        })
        .collect();
    for (_, done) in by_process {
        // One process's slots come back in order from its one core.
        let slots: Vec<u64> = done.iter().map(|d| d.slot).collect();
        assert_eq!(slots, (0..10).collect::<Vec<_>>());
        let outputs: Vec<String> = done.iter().map(output).collect();
        assert_eq!(outputs, expected);
        let snapshots: Vec<u64> = done
            .iter()
            .filter_map(|d| d.snapshot.as_ref().map(|s| s.slot))
            .collect();
        assert_eq!(snapshots, [0, 4, 8]);
    }
    // A gap without a snapshot is refused; with one, the process resumes from it.
    let definition = &definitions[0];
    executors
        .submit(counter_job(&module, definition, 20, None, &reply))
        .unwrap();
    let refused = results.recv().unwrap();
    assert_eq!(
        refused.outcome,
        Err(ExecError::SlotOutOfOrder {
            process: definition.id(),
            expected: Some(10),
            got: 20
        })
    );
    executors.shutdown();
}

#[test]
fn a_full_executor_queue_blocks_submit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(COUNTER));
    let mut config = ExecutorsConfig::new(1);
    config.queue_max = usize::MAX; // clamped to EXECUTOR_QUEUE_MAX
    let executors = Executors::start(&engine, config).unwrap();
    // Nobody takes a reply until the queue is full: the core sits on its first job's reply.
    let (reply, results) = crossbeam_channel::bounded(0);
    let definition = process_message(&module);
    let jobs = EXECUTOR_QUEUE_MAX as u64 + 2;
    std::thread::scope(|scope| {
        let submitter = scope.spawn(|| {
            for slot in 0..jobs {
                executors
                    .submit(counter_job(&module, &definition, slot, None, &reply))
                    .unwrap();
            }
        });
        // One job at the core, EXECUTOR_QUEUE_MAX queued, the last submit waits.
        let mut spins = 0;
        while executors.queued(0) < EXECUTOR_QUEUE_MAX && !submitter.is_finished() {
            spins += 1;
            assert!(spins < 100_000, "the queue never filled");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(executors.queued(0), EXECUTOR_QUEUE_MAX);
        assert!(
            !submitter.is_finished(),
            "submitted past EXECUTOR_QUEUE_MAX"
        );
        // Taking replies frees the queue: every job runs, in order.
        for slot in 0..jobs {
            let done: JobDone = results.recv().unwrap();
            assert_eq!(done.slot, slot);
            assert!(done.outcome.is_ok());
        }
        submitter.join().unwrap();
    });
    assert_eq!(executors.queued(0), 0);
    executors.shutdown();
}

#[test]
fn evicted_processes_resume_from_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(COUNTER));
    let mut config = ExecutorsConfig::new(1);
    config.snapshot_interval = 2;
    config.live_max = Some(1);
    let executors = Executors::start(&engine, config).unwrap();
    let (reply, results) = crossbeam_channel::unbounded();
    let (a, b) = (
        process_message(&module).with("n", 1),
        process_message(&module).with("n", 2),
    );
    let run = |definition: &Message, slot: u64, snapshot: Option<Snapshot>| {
        executors
            .submit(counter_job(&module, definition, slot, snapshot, &reply))
            .unwrap();
        results.recv().unwrap()
    };
    assert_eq!(output(&run(&a, 0, None)), "1");
    assert_eq!(output(&run(&a, 1, None)), "2");
    let a_snapshot = run(&a, 2, None).snapshot.expect("due after slot 2");
    // b takes the only live place; a is evicted.
    assert_eq!(output(&run(&b, 0, None)), "1");
    let evicted = run(&a, 3, None);
    assert!(matches!(
        evicted.outcome,
        Err(ExecError::SlotOutOfOrder {
            expected: None,
            got: 3,
            ..
        })
    ));
    let resumed = run(&a, 3, Some(a_snapshot));
    assert_eq!(output(&resumed), "7");
    assert_eq!(output(&run(&a, 4, None)), "11");
    assert_eq!(SNAPSHOT_INTERVAL_DEFAULT, 64);
    executors.shutdown();
}

#[test]
fn the_example_in_docs_abi_md_runs() {
    let doc = include_str!("../../../docs/abi.md");
    let start = doc.find("```wat\n").expect("a wat example") + "```wat\n".len();
    let example = &doc[start..start + doc[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let module = load(&engine, &wasm(example));
    let mut run = Run::start(&module, process_message(&module));
    assert_eq!(text(&run.init()), "");
    let echoed = run.send(Message::new().with("name", "ferrobeam"), address(2));
    assert_eq!(text(&echoed), "ferrobeam");
}

#[test]
fn the_default_pool_can_be_reserved() {
    // ENGINE_INSTANCES_MAX slots of 4 GiB + guard: address space only, nothing resident.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::new(dir.path())).expect("full-size pool");
    assert_eq!(engine.instances_max(), ENGINE_INSTANCES_MAX);
    let module = load(&engine, &wasm(COUNTER));
    let mut run = Run::start(&module, process_message(&module));
    assert_eq!(text(&run.init()), "1");
}
