//! A real aos process through the whole node (opt-in): set `FERROBEAM_AOS_WASM` to
//! `aos-2-pure-xs.wasm` (HyperBEAM's `test/` ships it; never commit it), or
//! `FERROBEAM_AOS_WASM_DIR` to its directory. Without either, the test says it was skipped.
//!
//! Checks: Eval over HTTP, state surviving a node restart (SIGKILL), `ferrobeam audit`, and the
//! whole-node Eval rate (printed: schedule → compute → result, many Evals in flight).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use ferrobeam::message::{Id, Message};
use serde_json::Value as Json;

fn aos_wasm() -> Option<Vec<u8>> {
    let path = match (
        std::env::var_os("FERROBEAM_AOS_WASM"),
        std::env::var_os("FERROBEAM_AOS_WASM_DIR"),
    ) {
        (Some(file), _) => PathBuf::from(file),
        (None, Some(dir)) => PathBuf::from(dir).join("aos-2-pure-xs.wasm"),
        (None, None) => {
            eprintln!("skipped: set FERROBEAM_AOS_WASM (aos-2-pure-xs.wasm) to run this test");
            return None;
        }
    };
    std::fs::read(&path)
        .map_err(|e| eprintln!("skipped: cannot read {}: {e}", path.display()))
        .ok()
}

/// The `data` of an aos Output (the result's output is the Output's JSON text).
fn eval_data(record: &Json) -> Json {
    let text = record["output"].as_str().unwrap_or_default();
    serde_json::from_str::<Json>(text).unwrap_or(Json::Null)["data"].clone()
}

fn eval(base: &str, wallet: &ferrobeam::message::Wallet, process: &Id, code: &str, n: u64) -> Json {
    let ack = send(
        base,
        wallet,
        process,
        &[("action", "Eval"), ("data", code), ("n", &n.to_string())],
    );
    let slot = ack["slot"].as_u64().unwrap();
    let (status, record) = get(base, &format!("/{process}/compute?slot={slot}")).unwrap();
    assert_eq!(status, 200, "{record}");
    record
}

#[test]
fn aos_evals_survive_restart_and_audit() {
    let Some(wasm) = aos_wasm() else { return };
    let dir = tempdir();
    let port = free_port();
    let alice = wallet(9);
    let data = dir.path().join("node");
    let process = {
        let node = ChildNode::start(&data, port);
        let (status, uploaded) = post(&node.url, "/~wasm@1.0/module", "application/wasm", &wasm);
        assert_eq!(status, 201, "{uploaded}");
        let spawn = alice.sign(
            Message::new()
                .with("type", "Process")
                .with("module", uploaded["module"].as_str().unwrap())
                .with("module-format", ferrobeam::execute::MODULE_FORMAT_WASM64),
            &mut rand::rngs::OsRng,
        );
        let (status, ack) = post_message(&node.url, "/~scheduler@1.0/schedule", &spawn);
        assert_eq!(status, 201, "{ack}");
        let process: Id = ack["process"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            eval_data(&eval(&node.url, &alice, &process, "return 1+1", 1)),
            "2"
        );
        assert_eq!(
            eval_data(&eval(&node.url, &alice, &process, "x = 41; return x", 2)),
            "41"
        );
        node.kill9();
        process
    };
    let node = ChildNode::start(&data, port);
    let after = eval(&node.url, &alice, &process, "return x + 1", 3);
    assert_eq!(eval_data(&after), "42", "state survives a restart: {after}");

    // Whole-node rate: Evals in flight from 4 senders, until the last one is computed.
    let count = 200u64;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (url, alice) = (node.url.clone(), &alice);
            scope.spawn(move || {
                for i in 0..count / 4 {
                    send(
                        &url,
                        alice,
                        &process,
                        &[
                            ("action", "Eval"),
                            ("data", "return 1"),
                            ("n", &format!("{t}-{i}")),
                        ],
                    );
                }
            });
        }
    });
    let (_, head) = get(&node.url, &format!("/{process}/slot")).unwrap();
    let last = head["current"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, _) = get(&node.url, &format!("/{process}/compute?slot={last}")).unwrap();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot {last} not computed in time"
        );
    }
    let elapsed = start.elapsed();
    eprintln!(
        "aos whole node: {count} Evals scheduled and computed in {elapsed:?} = {:.0} Evals/s",
        count as f64 / elapsed.as_secs_f64()
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .args([
            "audit",
            "--json",
            "--node",
            &node.url,
            "--process",
            &process.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "audit: {} {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
