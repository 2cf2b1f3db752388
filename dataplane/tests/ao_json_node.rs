//! An ao-json process through the whole node: module upload, spawn with `module-format`,
//! schedule, compute, results over HTTP. The compute driver needs no change: the module's shape
//! picks the engine and the process's `module-format` must agree.

mod common;

use common::*;
use ferrobeam::execute::MODULE_FORMAT_WASM64;
use ferrobeam::message::Id;
use serde_json::Value as Json;

const AOS_SHAPE: &str = include_str!("../../tests/wasm/aos_shape.wat");

fn compute(base: &str, process: &Id, slot: u64) -> Json {
    let (status, body) = get(base, &format!("/{process}/compute?slot={slot}")).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn an_ao_json_process_computes_over_http() {
    let wat = AOS_SHAPE
        .replace("{P}", "i64")
        .replace("{MEM}", "i64")
        .replace("{W}", "8")
        .replace("{EXT}", "");
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let alice = wallet(1);
    let process = spawn_wat(
        &base,
        &alice,
        &wat,
        &[("module-format", MODULE_FORMAT_WASM64)],
    );
    for (nonce, action) in ["Count", "Count", "Send", "Throw"].iter().enumerate() {
        let nonce = nonce.to_string();
        send(
            &base,
            &alice,
            &process,
            &[("action", action), ("nonce", &nonce)],
        );
    }
    assert_eq!(compute(&base, &process, 0)["output"], "0");
    assert_eq!(compute(&base, &process, 2)["output"], "2");
    let sent = compute(&base, &process, 3);
    assert_eq!(sent["messages"][0]["target"], "target-process", "{sent}");
    assert_eq!(sent["messages"][0]["action"], "Ping", "{sent}");
    assert_eq!(compute(&base, &process, 4)["error"], "caught 42");
}
