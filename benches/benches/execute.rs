//! `execute/handle/<module>`: one native-ABI `handle` call on a live instance (the counter and the
//! token ledger of `examples/`), including fuel setup and the outcome's assembly.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrobeam::execute::{Engine, EngineConfig, Instance, SlotInput};
use ferrobeam::message::{Message, Wallet};

fn instance(engine: &Engine, wat: &str, definition: &Message) -> Instance {
    let wasm = wat::parse_str(wat).expect("example parses");
    let module_id = ferrobeam::node::module_message(&wasm).unsigned_id();
    let module = engine.load(module_id, &wasm).expect("example loads");
    Instance::new(&module, definition.id(), definition).expect("instantiates")
}

fn bench_handle(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = Engine::new(EngineConfig::new(cache.path())).expect("engine");
    let owner = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
    let mut group = c.benchmark_group("execute/handle");
    group.throughput(Throughput::Elements(1));
    for (name, wat, message) in [
        (
            "counter",
            include_str!("../../examples/counter.wat"),
            Message::new().with("amount", "3"),
        ),
        (
            "token-balance",
            include_str!("../../examples/token.wat"),
            Message::new().with("action", "Balance"),
        ),
    ] {
        let definition = owner.sign(
            Message::new()
                .with("type", "Process")
                .with("module", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .with("supply", "1000"),
            &mut rand::rngs::OsRng,
        );
        let mut live = instance(&engine, wat, &definition);
        let mut slot = 0u64;
        let mut input = SlotInput {
            process: definition.id(),
            slot: 0,
            message: message.clone(),
            message_id: message.id(),
            from: owner.address(),
            owner: owner.address(),
            timestamp_ms: 1,
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                input.slot = slot;
                slot += 1;
                live.run(&input).expect("slot runs")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handle);
criterion_main!(benches);
