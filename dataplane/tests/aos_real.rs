//! Real aos modules (opt-in): set `FERROBEAM_AOS_WASM_DIR` to a directory holding
//! `aos-2-pure-xs.wasm` (HyperBEAM's `test/` directory ships it; never commit it), or
//! `FERROBEAM_AOS_WASM` to the file itself. Without either, every test here prints that it was
//! skipped and passes. The Eval test prints per-Eval latency (run with `--release` for figures).

use std::path::PathBuf;
use std::time::Instant;

use ferrobeam::execute::{
    Abi, Engine, EngineConfig, Instance, MODULE_FORMAT_WASM64, Module, SlotInput, SlotOutcome,
    Snapshot,
};
use ferrobeam::message::{Address, Id, Message};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

const AOS: &str = "aos-2-pure-xs.wasm";

fn aos_module(name: &str) -> Option<Vec<u8>> {
    let path = match (
        std::env::var_os("FERROBEAM_AOS_WASM"),
        std::env::var_os("FERROBEAM_AOS_WASM_DIR"),
    ) {
        (Some(file), _) => PathBuf::from(file),
        (None, Some(dir)) => PathBuf::from(dir).join(name),
        (None, None) => {
            eprintln!(
                "skipped: neither FERROBEAM_AOS_WASM_DIR (a directory with {name}) nor FERROBEAM_AOS_WASM is set"
            );
            return None;
        }
    };
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!("skipped: cannot read {}: {e}", path.display());
            None
        }
    }
}

struct Aos {
    instance: Instance,
    module: Module,
    definition: Message,
    process: Id,
    owner: Address,
    slot: u64,
}

impl Aos {
    fn spawn(engine: &Engine, wasm: &[u8]) -> (Self, SlotOutcome) {
        let module_id = Id(Sha256::digest(wasm).into());
        let module = engine.load(module_id, wasm).expect("aos loads");
        assert_eq!(module.abi(), Abi::AoJson { memory64: true });
        let definition = Message::new()
            .with("type", "Process")
            .with("module", module_id.to_string())
            .with("module-format", MODULE_FORMAT_WASM64)
            .with("data-protocol", "ao")
            .with("variant", "ao.TN.1");
        let process = definition.id();
        let instance = Instance::new(&module, process, &definition).expect("instantiates");
        let mut aos = Self {
            instance,
            module,
            definition: definition.clone(),
            process,
            owner: Address([7; 32]),
            slot: 0,
        };
        let first = aos.run(definition);
        (aos, first)
    }

    fn run(&mut self, message: Message) -> SlotOutcome {
        let input = SlotInput {
            process: self.process,
            slot: self.slot,
            message_id: message.id(),
            message,
            from: self.owner,
            owner: self.owner,
            timestamp_ms: 1_700_000_000_000 + self.slot,
        };
        self.slot += 1;
        self.instance.run(&input).expect("slot runs")
    }

    fn eval(&mut self, code: &str) -> SlotOutcome {
        self.run(Message::new().with("action", "Eval").with("data", code))
    }
}

/// A fresh engine (small pool) over a temporary cache directory.
fn engine(dir: &std::path::Path) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.instances_max = 4;
    Engine::new(config).unwrap()
}

fn output_data(outcome: &SlotOutcome) -> Json {
    let output: Json = serde_json::from_slice(&outcome.output).unwrap_or(Json::Null);
    output["data"].clone()
}

#[test]
fn aos_eval_returns_two() {
    let Some(wasm) = aos_module(AOS) else { return };
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let started = Instant::now();
    let (mut aos, first) = Aos::spawn(&engine, &wasm);
    eprintln!("load + compile + slot 0: {:?}", started.elapsed());
    assert_eq!(
        first.error,
        None,
        "{}",
        String::from_utf8_lossy(&first.output)
    );
    let outcome = aos.eval("return 1+1");
    assert_eq!(
        outcome.error,
        None,
        "{}",
        String::from_utf8_lossy(&outcome.output)
    );
    assert_eq!(
        output_data(&outcome),
        Json::from("2"),
        "{}",
        String::from_utf8_lossy(&outcome.output)
    );
    // Per-Eval latency, median of many.
    let mut times = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let outcome = aos.eval(&format!("return {i}+1"));
        times.push(t.elapsed());
        assert_eq!(output_data(&outcome), Json::from((i + 1).to_string()));
    }
    times.sort();
    eprintln!(
        "aos Eval latency: p50 {:?}, p90 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
}

#[test]
fn aos_send_error_and_restore() {
    let Some(wasm) = aos_module(AOS) else { return };
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let (mut aos, first) = Aos::spawn(&engine, &wasm);
    assert_eq!(first.error, None);

    let target = Id([9; 32]).to_string();
    let sent = aos.eval(&format!(
        "Send({{Target = '{target}', Action = 'Ping', Data = 'hello'}}); return 'ok'"
    ));
    assert_eq!(
        sent.error,
        None,
        "{}",
        String::from_utf8_lossy(&sent.output)
    );
    let ping = sent
        .outbox
        .iter()
        .find(|m| m.text("target") == Some(target.as_str()))
        .expect("an outbox message to the target");
    assert_eq!(ping.text("action"), Some("Ping"));
    assert_eq!(ping.text("data"), Some("hello"));

    let failed = aos.eval("error('boom')");
    let error = failed.error.clone().unwrap_or_default();
    assert!(
        error.contains("boom"),
        "error: {error:?}, output {}",
        String::from_utf8_lossy(&failed.output)
    );
    assert!(failed.outbox.is_empty());

    // State lives in linear memory: it survives a snapshot and restore into a fresh instance.
    let set = aos.eval("Counter = 41; return Counter");
    assert_eq!(output_data(&set), Json::from("41"));
    let snapshot = Snapshot::decode(&aos.instance.snapshot().unwrap().encode()).unwrap();
    let instance = Instance::restore(&aos.module, aos.process, &aos.definition, &snapshot).unwrap();
    let mut restored = Aos {
        instance,
        module: aos.module.clone(),
        definition: aos.definition.clone(),
        process: aos.process,
        owner: aos.owner,
        slot: aos.slot,
    };
    let live = aos.eval("Counter = Counter + 1; return Counter");
    let again = restored.eval("Counter = Counter + 1; return Counter");
    assert_eq!(output_data(&live), Json::from("42"));
    assert_eq!(live, again, "the restored process answers as the live one");
}
