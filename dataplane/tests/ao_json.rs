//! The ao-json ABI with a hand-written module shaped like aos (`tests/wasm/aos_shape.wat`):
//! memory64 and wasm32 builds, the WASI/emscripten imports, legacy try/catch, `invoke_*` with
//! longjmp, snapshots of grown memory, and the compute, memory and wall-clock limits.

use std::time::{Duration, Instant};

use ferrobeam::execute::{
    AO_MEMORY_LIMIT_DEFAULT, Abi, COMPUTE_LIMIT_MAX, Engine, EngineConfig, ExecError, Instance,
    MODULE_FORMAT_WASM64, Module, ModuleSource, ProcessLimits, SlotInput, SlotOutcome, Snapshot,
    WALL_CLOCK_ERROR_PREFIX,
};
use ferrobeam::message::{Address, Id, Message};
use sha2::{Digest, Sha256};

const AOS_SHAPE: &str = include_str!("../../tests/wasm/aos_shape.wat");
const WASM32_FORMAT: &str = "wasm32-unknown-emscripten2";
const TIMESTAMP_MS: u64 = 1_700_000_000_000;

/// The template filled in for memory64 or wasm32.
fn aos_shape(memory64: bool) -> Vec<u8> {
    let (pointer, memory, width, widen) = if memory64 {
        ("i64", "i64", "8", "")
    } else {
        ("i32", "", "4", "i64.extend_i32_u")
    };
    let wat = AOS_SHAPE
        .replace("{P}", pointer)
        .replace("{MEM}", memory)
        .replace("{W}", width)
        .replace("{EXT}", widen);
    wat::parse_str(&wat).expect("aos_shape.wat parses")
}

fn engine(dir: &std::path::Path, slot_wall_ms_max: Option<u64>) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.instances_max = 8;
    if let Some(ms) = slot_wall_ms_max {
        config.slot_wall_ms_max = ms;
    }
    Engine::new(config).expect("engine")
}

fn load(engine: &Engine, wasm: &[u8]) -> Module {
    engine
        .load(Id(Sha256::digest(wasm).into()), wasm)
        .expect("module loads")
}

fn definition(module: &Module, format: Option<&str>, tags: &[(&str, &str)]) -> Message {
    let mut message = Message::new()
        .with("type", "Process")
        .with("module", module.id().to_string());
    if let Some(format) = format {
        message = message.with("module-format", format);
    }
    for (key, value) in tags {
        message = message.with(key, *value);
    }
    message
}

/// One process driven slot by slot.
struct Process {
    instance: Instance,
    definition: Message,
    process: Id,
    slot: u64,
}

impl Process {
    fn spawn(module: &Module, definition: Message) -> Self {
        let process = definition.id();
        let instance = Instance::new(module, process, &definition).expect("instantiates");
        let mut p = Self {
            instance,
            definition: definition.clone(),
            process,
            slot: 0,
        };
        let first = p.run(definition);
        assert_eq!(first.error, None);
        assert_eq!(text(&first), "0", "system(NULL) answers 0");
        p
    }

    fn input(&self, message: Message) -> SlotInput {
        SlotInput {
            process: self.process,
            slot: self.slot,
            message_id: message.id(),
            message,
            from: Address([2; 32]),
            owner: Address([2; 32]),
            timestamp_ms: TIMESTAMP_MS + self.slot,
        }
    }

    fn run(&mut self, message: Message) -> SlotOutcome {
        let input = self.input(message);
        self.slot += 1;
        self.instance.run(&input).expect("slot runs")
    }

    fn act(&mut self, action: &str) -> SlotOutcome {
        self.run(
            Message::new()
                .with("action", action)
                .with("nonce", self.slot as i64),
        )
    }

    fn restored(&mut self, module: &Module) -> Process {
        let snapshot = self.instance.snapshot().expect("snapshot");
        let snapshot = Snapshot::decode(&snapshot.encode()).expect("round trip");
        let instance =
            Instance::restore(module, self.process, &self.definition, &snapshot).expect("restores");
        Process {
            instance,
            definition: self.definition.clone(),
            process: self.process,
            slot: self.slot,
        }
    }
}

fn text(outcome: &SlotOutcome) -> &str {
    std::str::from_utf8(&outcome.output).expect("UTF-8 output")
}

fn error(outcome: &SlotOutcome) -> &str {
    outcome.error.as_deref().unwrap_or("")
}

fn imports_answer_deterministically(memory64: bool, format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), None);
    let module = load(&engine, &aos_shape(memory64));
    assert_eq!(module.abi(), Abi::AoJson { memory64 });
    let mut p = Process::spawn(&module, definition(&module, Some(format), &[]));
    assert_eq!(text(&p.act("Count")), "1");
    assert_eq!(text(&p.act("Count")), "2");
    let slot = p.slot;
    assert_eq!(
        text(&p.act("Time")),
        ((TIMESTAMP_MS + slot) * 1_000_000).to_string(),
        "the clock is the assignment's timestamp"
    );
    let random = text(&p.act("Random")).to_owned();
    assert_ne!(random, "0");
    assert_eq!(
        text(&p.act("Print")),
        "20",
        "fd_write reports the bytes written"
    );
    assert_eq!(text(&p.act("Syscall")), "-52", "file system calls: -ENOSYS");
    assert_eq!(
        text(&p.act("Longjmp")),
        "1",
        "setThrew(1, 0) after a longjmp"
    );
    let env = text(&p.act("Env")).to_owned();
    assert!(env.contains(&format!("'Id':'{}'", p.process)), "{env}");
    assert!(env.contains("'name':'Module-Format'"), "{env}");

    let sent = p.act("Send");
    assert_eq!(sent.error, None);
    assert_eq!(text(&sent), "sent");
    assert_eq!(sent.outbox.len(), 1);
    let message = &sent.outbox[0];
    assert_eq!(message.text("target"), Some("target-process"));
    assert_eq!(message.text("action"), Some("Ping"));
    assert_eq!(message.text("data"), Some("hi"));

    let caught = p.act("Throw");
    assert_eq!(
        error(&caught),
        "caught 42",
        "legacy try/catch got the payload"
    );
    let exit = p.act("Exit");
    assert_eq!(error(&exit), "proc_exit(3)");
    assert_eq!(
        text(&p.act("Count")),
        "3",
        "the process goes on after a failed slot"
    );

    // A second instance given the same slots answers the same, random bytes included.
    let mut q = Process::spawn(&module, p.definition.clone());
    for action in ["Count", "Count", "Time"] {
        q.act(action);
    }
    assert_eq!(q.slot, slot + 1);
    assert_eq!(text(&q.act("Random")), random);
}

#[test]
fn memory64_imports_answer_deterministically() {
    imports_answer_deterministically(true, MODULE_FORMAT_WASM64);
}

#[test]
fn wasm32_imports_answer_deterministically() {
    imports_answer_deterministically(false, WASM32_FORMAT);
}

#[test]
fn module_format_must_match_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), None);
    let wide = load(&engine, &aos_shape(true));
    let narrow = load(&engine, &aos_shape(false));
    let native = load(
        &engine,
        &wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "handle") (result i32) (i32.const 0)))"#,
        )
        .unwrap(),
    );
    let cases = [
        (&wide, None),
        (&wide, Some(WASM32_FORMAT)),
        (&narrow, Some(MODULE_FORMAT_WASM64)),
        (&native, Some(MODULE_FORMAT_WASM64)),
        (&wide, Some("wasm64-unknown-unknown")),
    ];
    for (module, format) in cases {
        let definition = definition(module, format, &[]);
        let err = Instance::new(module, definition.id(), &definition).unwrap_err();
        assert!(
            matches!(err, ExecError::ProcessInvalid(_)),
            "{format:?}: {err}"
        );
    }
}

#[test]
fn translation_and_compilation_are_cached_under_the_original_id() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = aos_shape(true);
    let id = Id(Sha256::digest(&wasm).into());
    {
        let engine = engine(dir.path(), None);
        engine
            .validate(&wasm)
            .expect("validates (after translation)");
        let module = engine.load(id, &wasm).unwrap();
        assert_eq!(module.id(), id, "the process keeps the original bytes' id");
        assert_eq!(module.source(), ModuleSource::Compiled);
        assert_eq!(
            engine.load(id, &wasm).unwrap().source(),
            ModuleSource::Memory
        );
        assert!(engine.cache_path_for(id, module.abi()).exists());
        assert!(
            !engine.cache_path(id).exists(),
            "not in the native engine's file"
        );
    }
    let engine = engine(dir.path(), None);
    assert_eq!(engine.load(id, &wasm).unwrap().source(), ModuleSource::Disk);
}

/// The regression test for snapshots of grown memory: a process that grew from 2 to 902 pages,
/// with a stack pointer a trap left moved, restores exactly.
#[test]
fn snapshots_of_grown_memory_restore_exactly() {
    for (memory64, format) in [(true, MODULE_FORMAT_WASM64), (false, WASM32_FORMAT)] {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path(), None);
        let module = load(&engine, &aos_shape(memory64));
        let mut live = Process::spawn(&module, definition(&module, Some(format), &[]));
        live.act("Count");
        for grown in [302, 602, 902] {
            assert_eq!(text(&live.act("Grow")), grown.to_string());
        }
        assert!(live.instance.memory_bytes() >= 900 * 65536);
        let trapped = live.act("Trap");
        assert!(
            error(&trapped).contains("unreachable"),
            "{}",
            error(&trapped)
        );
        let sp = text(&live.act("SP")).to_owned();
        assert_eq!(
            sp,
            (60_000 - 64 - 16 - 64).to_string(),
            "the trap left the stack pointer moved"
        );

        let mut restored = live.restored(&module);
        assert_eq!(
            restored.instance.memory_bytes(),
            live.instance.memory_bytes()
        );
        for action in ["Check", "SP", "Count", "Grow", "Check", "Random"] {
            let a = live.act(action);
            let b = restored.act(action);
            assert_eq!(a, b, "{action} after restore ({format})");
        }
        assert_eq!(
            live.instance.snapshot().unwrap(),
            restored.instance.snapshot().unwrap()
        );
    }
}

#[test]
fn a_message_that_loops_forever_fails_on_fuel_and_the_process_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), None);
    let module = load(&engine, &aos_shape(true));
    let tags = [("compute-limit", "5000000")];
    let mut p = Process::spawn(
        &module,
        definition(&module, Some(MODULE_FORMAT_WASM64), &tags),
    );
    let looped = p.act("Loop");
    assert!(
        error(&looped).starts_with("compute-limit exceeded"),
        "{}",
        error(&looped)
    );
    assert_eq!(looped.fuel_used, 5_000_000);
    assert_eq!(text(&p.act("Count")), "1");
}

#[test]
fn memory_limit_caps_growth() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), None);
    let module = load(&engine, &aos_shape(true));
    let tags = [("memory-limit", "4-mb")];
    let mut p = Process::spawn(
        &module,
        definition(&module, Some(MODULE_FORMAT_WASM64), &tags),
    );
    let grown = p.act("Grow");
    assert!(
        error(&grown).starts_with("memory-limit exceeded"),
        "{}",
        error(&grown)
    );
    assert_eq!(text(&p.act("Count")), "1");
}

#[test]
fn the_wall_clock_deadline_ends_a_slot_and_the_core_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), Some(200));
    let module = load(&engine, &aos_shape(true));
    // No compute-limit: AO's default, clamped to COMPUTE_LIMIT_MAX, far more than 200 ms.
    let mut p = Process::spawn(
        &module,
        definition(&module, Some(MODULE_FORMAT_WASM64), &[]),
    );
    let started = Instant::now();
    let looped = p.act("Loop");
    assert!(
        error(&looped).starts_with(WALL_CLOCK_ERROR_PREFIX),
        "{}",
        error(&looped)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(text(&p.act("Count")), "1");
}

#[test]
fn ao_limits_default_and_clamp() {
    let ao = Abi::AoJson { memory64: true };
    let limits = ProcessLimits::for_abi(&Message::new(), ao).unwrap();
    assert_eq!(limits.memory_bytes, AO_MEMORY_LIMIT_DEFAULT);
    assert_eq!(limits.fuel_per_slot, COMPUTE_LIMIT_MAX);
    let big = Message::new()
        .with("memory-limit", "16-gb")
        .with("compute-limit", "9000000000000");
    let limits = ProcessLimits::for_abi(&big, ao).unwrap();
    assert_eq!(limits.memory_bytes, 4 << 30);
    assert_eq!(limits.fuel_per_slot, COMPUTE_LIMIT_MAX);
    assert!(ProcessLimits::for_abi(&Message::new().with("memory-limit", "0"), ao).is_err());
    // The native ABI keeps its own rules.
    assert!(ProcessLimits::for_abi(&big, Abi::Native).is_err());
}
