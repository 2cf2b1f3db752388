//! Processes computed end to end over HTTP: results, limits, restart with identical results and
//! hashpaths, and `ferrobeam audit` catching a node whose stored result was altered.

mod common;

use std::process::Command;

use common::*;
use ferrobeam::message::Id;
use serde_json::Value as Json;

const COUNTER: &str = include_str!("../../examples/counter.wat");
const TOKEN: &str = include_str!("../../examples/token.wat");

/// A module that loops forever in `handle` when the message has a `spin` field.
const SPINNER: &str = r#"(module
  (import "ferrobeam" "msg_get" (func $msg_get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "spin")
  (func (export "handle") (result i32)
    (if (i32.ge_s (call $msg_get (i32.const 0) (i32.const 4) (i32.const 16) (i32.const 0)) (i32.const 0))
      (then (loop $forever (br $forever))))
    i32.const 0))"#;

fn compute(base: &str, process: &Id, slot: u64) -> Json {
    let (status, body) = get(base, &format!("/{process}/compute?slot={slot}")).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn counter_and_token_compute_over_http() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let alice = wallet(1);
    let counter = spawn_wat(&base, &alice, COUNTER, &[]);
    send(&base, &alice, &counter, &[("amount", "5")]);
    send(&base, &alice, &counter, &[]);
    assert_eq!(compute(&base, &counter, 2)["output"], "7");
    // HyperBEAM's segment form and `now`.
    let (_, same) = get(&base, &format!("/{counter}/compute&slot=2")).unwrap();
    assert_eq!(same["output"], "7");
    let (_, now) = get(&base, &format!("/{counter}/now")).unwrap();
    assert_eq!(now["slot"], 2);

    let bob = wallet(2);
    let token = spawn_wat(&base, &alice, TOKEN, &[("supply", "1000")]);
    let bob_address = bob.address().to_string();
    send(
        &base,
        &alice,
        &token,
        &[
            ("action", "Transfer"),
            ("recipient", &bob_address),
            ("quantity", "250"),
        ],
    );
    let transfer = compute(&base, &token, 1);
    assert_eq!(transfer["error"], Json::Null, "{transfer}");
    let notice = &transfer["messages"][0];
    assert_eq!(notice["action"], "Credit-Notice");
    assert_eq!(notice["target"], bob_address.as_str());
    assert_eq!(notice["quantity"], "250");
    send(&base, &bob, &token, &[("action", "Balance")]);
    assert_eq!(compute(&base, &token, 2)["output"], "250");
    send(
        &base,
        &bob,
        &token,
        &[
            ("action", "Transfer"),
            ("recipient", &alice.address().to_string()),
            ("quantity", "251"),
        ],
    );
    let refused = compute(&base, &token, 3);
    assert!(refused["error"].as_str().is_some(), "{refused}");
    assert_eq!(refused["messages"], serde_json::json!([]));
}

#[test]
fn a_looping_slot_fails_alone_and_bad_modules_are_refused() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let alice = wallet(3);
    let process = spawn_wat(&base, &alice, SPINNER, &[("compute-limit", "100000")]);
    send(&base, &alice, &process, &[("spin", "1")]);
    send(&base, &alice, &process, &[]);
    let looped = compute(&base, &process, 1);
    assert!(
        looped["error"].as_str().unwrap().contains("compute-limit"),
        "{looped}"
    );
    assert_eq!(compute(&base, &process, 2)["error"], Json::Null);

    // Not wasm, a WASI import, and a module without `handle`: refused, nothing stored.
    for bad in [
        b"not wasm at all".to_vec(),
        wat::parse_str(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1) (func (export "handle") (result i32) i32.const 0))"#).unwrap(),
        wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap(),
    ] {
        let (status, body) = post(&base, "/~wasm@1.0/module", "application/wasm", &bad);
        assert_eq!((status, body["error"].as_str()), (400, Some("ModuleInvalid")), "{body}");
    }
}

#[test]
fn restart_recomputes_identical_results_and_hashpaths() {
    let dir = tempdir();
    let alice = wallet(4);
    let mut config = config(dir.path());
    config.snapshot_interval = 3;
    let (process, before) = {
        let node = InProcessNode::start(config.clone());
        let base = node.url();
        let process = spawn_wat(&base, &alice, COUNTER, &[]);
        for i in 0..10 {
            send(&base, &alice, &process, &[("amount", &i.to_string())]);
        }
        let results: Vec<Json> = (0..=10)
            .map(|slot| compute(&base, &process, slot))
            .collect();
        (process, results)
    };
    // Drop every stored result after slot 4: the restarted node restores the snapshot at slot 3
    // and recomputes, and must arrive at byte-identical results.
    {
        let store = ferrobeam::store::Store::open(&dir.path().join("store")).unwrap();
        for slot in 5..=10 {
            store.delete_result(&process, slot).unwrap();
        }
        store.sync().unwrap();
    }
    let node = InProcessNode::start(config);
    let base = node.url();
    let after: Vec<Json> = (0..=10)
        .map(|slot| compute(&base, &process, slot))
        .collect();
    assert_eq!(before, after);
    send(&base, &alice, &process, &[("amount", "100")]);
    assert_eq!(compute(&base, &process, 11)["output"], "146");
    let (_, metrics) = get(&base, "/metrics").unwrap();
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("ferrobeam_replay_mismatches_total 0")
    );
}

#[test]
fn audit_passes_and_catches_an_altered_result() {
    let dir = tempdir();
    let port = free_port();
    let alice = wallet(5);
    let wallet_file = dir.path().join("alice.json");
    ferrobeam::node::write_private(&wallet_file, &alice).unwrap();
    let data = dir.path().join("node");
    let process = {
        let node = ChildNode::start(&data, port);
        let process = spawn_wat(&node.url, &alice, COUNTER, &[]);
        for i in 0..3 {
            // Ed25519 signatures are deterministic: distinct content makes distinct messages.
            send(&node.url, &alice, &process, &[("i", &i.to_string())]);
        }
        compute(&node.url, &process, 3);
        let status = audit(&node.url, &process);
        assert_eq!(status.code(), Some(0));
        process
    };
    {
        let store = ferrobeam::store::Store::open(&data.join("store")).unwrap();
        let mut record: Json =
            serde_json::from_slice(&store.result(&process, 2).unwrap().unwrap()).unwrap();
        record["output"] = "999".into();
        store
            .put_result(&process, 2, &serde_json::to_vec(&record).unwrap())
            .unwrap();
        store.sync().unwrap();
    }
    let node = ChildNode::start(&data, port);
    let status = audit(&node.url, &process);
    assert_eq!(
        status.code(),
        Some(1),
        "audit must reject the altered result"
    );
}

fn audit(url: &str, process: &Id) -> std::process::ExitStatus {
    let output = Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .args([
            "audit",
            "--json",
            "--node",
            url,
            "--process",
            &process.to_string(),
        ])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output.status
}

/// The `ferrobeam` binary allocates with jemalloc and reports its totals, so an operator can tell
/// the live heap from pages the allocator holds (docs/operators.md, "Memory").
#[test]
fn the_binary_reports_its_allocator_in_metrics() {
    let dir = tempdir();
    let node = ChildNode::start(dir.path(), free_port());
    let alice = wallet(6);
    let process = spawn_wat(&node.url, &alice, COUNTER, &[]);
    send(&node.url, &alice, &process, &[("amount", "2")]);
    assert_eq!(compute(&node.url, &process, 1)["output"], "3");
    let (status, metrics) = get(&node.url, "/metrics").unwrap();
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("metrics text");
    let gauge = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    let allocated = gauge("ferrobeam_allocator_allocated_bytes");
    let active = gauge("ferrobeam_allocator_active_bytes");
    let resident = gauge("ferrobeam_allocator_resident_bytes");
    // A node with a store, a compiled module and a live instance holds megabytes of heap.
    assert!(allocated > 1 << 20, "allocated {allocated}");
    assert!(
        allocated <= active && active <= resident,
        "{allocated} {active} {resident}"
    );
    assert!(gauge("ferrobeam_allocator_metadata_bytes") > 0);
    assert!(text.ends_with("# EOF\n"));
}
