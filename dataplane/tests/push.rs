//! Push (the crank) over real nodes: an outbox message is scheduled on its target process exactly
//! once, a ping-pong between two processes stops at the push depth limit, and a process on
//! another node is reached through the route table.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferrobeam::message::Id;
use ferrobeam::node::NodeConfig;
use ferrobeam::node::config::Route;
use ferrobeam::push::PUSH_DEPTH_MAX;
use serde_json::Value as Json;

/// Replies to `from-process` when the message was pushed, else sends to `peer` when given;
/// outputs the slot's `from-process` (or "user").
const PING: &str = include_str!("../../tests/wasm/ping.wat");

/// Outputs `from` as the process sees it (env `from`).
const WHO: &str = r#"(module
  (import "ferrobeam" "env_get" (func $env_get (param i32 i32 i32 i32) (result i32)))
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "from")
  (func (export "handle") (result i32)
    (call $output (i32.const 64)
      (call $env_get (i32.const 0) (i32.const 4) (i32.const 64) (i32.const 64)))
    i32.const 0))"#;

fn compute(base: &str, process: &Id, slot: u64) -> Json {
    let (status, body) = get(base, &format!("/{process}/compute?slot={slot}")).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The push record entry `index` of `process`'s `slot` once its target acknowledged it.
fn delivered(base: &str, process: &Id, slot: u64, index: usize) -> Json {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = compute(base, process, slot);
        let entry = &record["pushed"][index];
        if entry["status"] != "queued" {
            return entry.clone();
        }
        assert!(Instant::now() < deadline, "never delivered: {record}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(base: &str, name: &str) -> f64 {
    let (_, text) = get(base, "/metrics").unwrap();
    text.as_str()
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn wait_for_slot(base: &str, process: &Id, slot: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, head) = get(base, &format!("/{process}/slot")).unwrap();
        if head["current"].as_u64().unwrap() >= slot {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot} of {process} never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ping_pong_is_pushed_once_per_message_and_stops_at_the_depth_limit() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let alice = wallet(1);
    let a = spawn_wat(&base, &alice, PING, &[("name", "a")]);
    let b = spawn_wat(&base, &alice, PING, &[("name", "b")]);
    // Slot 0 of each is the spawn itself (no peer, no send).
    send(&base, &alice, &a, &[("peer", &b.to_string())]);
    // a:1 (user) → b:1 → a:2 → ... each push one deeper, until depth PUSH_DEPTH_MAX.
    let pushes = PUSH_DEPTH_MAX as u64;
    let (a_last, b_last) = (1 + pushes / 2, pushes.div_ceil(2));
    wait_for_slot(&base, &a, a_last);
    wait_for_slot(&base, &b, b_last);
    let first = compute(&base, &a, 1);
    assert_eq!(first["output"], "user");
    assert_eq!(first["pushed"][0]["target"], b.to_string());
    assert_eq!(first["pushed"][0]["slot"], 1);
    let reply = compute(&base, &b, 1);
    assert_eq!(reply["output"], a.to_string());
    // The last message of the chain is not pushed any further.
    let last = if pushes.is_multiple_of(2) {
        compute(&base, &a, a_last)
    } else {
        compute(&base, &b, b_last)
    };
    assert_eq!(
        last["pushed"][0]["skipped"], "push depth limit reached",
        "{last}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, head_a) = get(&base, &format!("/{a}/slot")).unwrap();
    let (_, head_b) = get(&base, &format!("/{b}/slot")).unwrap();
    assert_eq!(
        head_a["current"].as_u64(),
        Some(a_last),
        "no pushes past the limit"
    );
    assert_eq!(head_b["current"].as_u64(), Some(b_last));

    // `ferrobeam result` draws the tree of messages slot a:1 resulted in.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .args([
            "result",
            "--json",
            "--node",
            &base,
            "--process",
            &a.to_string(),
            "--slot",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: Json = serde_json::from_slice(&output.stdout).unwrap();
    let mut level = &record["tree"][0];
    for i in 0..pushes {
        let expected = if i % 2 == 0 { b } else { a };
        assert_eq!(level["target"], expected.to_string(), "level {i}: {record}");
        level = &level["tree"][0];
    }
}

#[test]
fn outbox_messages_reach_a_process_on_another_node() {
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let alice = wallet(2);
    let node_b = InProcessNode::start(config(dir_b.path()));
    let b = spawn_wat(&node_b.url(), &alice, PING, &[("name", "b")]);
    let mut config_a = config(dir_a.path());
    config_a.routes = vec![Route {
        process: b,
        node: node_b.url(),
    }];
    let node_a = InProcessNode::start(config_a);
    let a = spawn_wat(&node_a.url(), &alice, PING, &[("name", "a")]);
    send(&node_a.url(), &alice, &a, &[("peer", &b.to_string())]);
    let sent = delivered(&node_a.url(), &a, 1, 0);
    assert_eq!(sent["node"], node_b.url(), "{sent}");
    assert_eq!(sent["slot"], 1, "{sent}");
    let received = compute(&node_b.url(), &b, 1);
    assert_eq!(received["output"], a.to_string());
    // b replies to a, which lives on node A and has no route from B: recorded, not lost silently.
    assert_eq!(
        received["pushed"][0]["skipped"],
        "no process here and no route to it"
    );
}

/// Node B (holding process b) on a fixed port, stopped again at once: a target node that is down.
fn stopped_target(dir: &std::path::Path, alice: &ferrobeam::message::Wallet) -> (NodeConfig, Id) {
    let mut config_b = config(dir);
    config_b.http = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node_b = InProcessNode::start(config_b.clone());
    let b = spawn_wat(&node_b.url(), alice, NOOP_WAT, &[("name", "b")]);
    drop(node_b);
    (config_b, b)
}

/// Node A with a route to b on node B, and process a, which sends to `b` once: a:1 pushes to b.
fn sender(dir: &std::path::Path, config_b: &NodeConfig, b: Id) -> NodeConfig {
    let mut config_a = config(dir);
    config_a.routes = vec![Route {
        process: b,
        node: format!("http://{}", config_b.http),
    }];
    config_a
}

/// b's schedule holds exactly one message after its process message: the push, at slot 1.
fn scheduled_once(base: &str, b: &Id, id: &Json) {
    let (_, head) = get(base, &format!("/{b}/slot")).unwrap();
    assert_eq!(head["current"], 1, "{head}");
    assert_eq!(compute(base, b, 1)["message"], *id);
}

#[test]
fn a_push_waits_in_the_queue_while_its_target_node_is_down() {
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let alice = wallet(5);
    let (config_b, b) = stopped_target(dir_b.path(), &alice);
    let node_a = InProcessNode::start(sender(dir_a.path(), &config_b, b));
    let a = spawn_wat(&node_a.url(), &alice, PING, &[("name", "a")]);
    send(&node_a.url(), &alice, &a, &[("peer", &b.to_string())]);
    let queued = compute(&node_a.url(), &a, 1)["pushed"][0].clone();
    assert_eq!(queued["status"], "queued", "{queued}");
    // Longer than the three attempts (~2 s) after which a push used to be given up.
    std::thread::sleep(Duration::from_secs(3));
    assert!(metric(&node_a.url(), "ferrobeam_push_failures_total") >= 3.0);
    assert_eq!(metric(&node_a.url(), "ferrobeam_push_queue_depth"), 1.0);
    assert_eq!(
        compute(&node_a.url(), &a, 1)["pushed"][0]["status"],
        "queued"
    );
    let node_b = InProcessNode::start(config_b);
    let entry = delivered(&node_a.url(), &a, 1, 0);
    assert_eq!(entry["slot"], 1, "{entry}");
    assert_eq!(entry["id"], queued["id"]);
    assert_eq!(metric(&node_a.url(), "ferrobeam_push_queue_depth"), 0.0);
    scheduled_once(&node_b.url(), &b, &queued["id"]);
}

#[test]
fn queued_pushes_survive_a_restart_of_the_sending_node() {
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let alice = wallet(6);
    let (config_b, b) = stopped_target(dir_b.path(), &alice);
    let config_a = sender(dir_a.path(), &config_b, b);
    let (a, queued) = {
        let node_a = InProcessNode::start(config_a.clone());
        let a = spawn_wat(&node_a.url(), &alice, PING, &[("name", "a")]);
        send(&node_a.url(), &alice, &a, &[("peer", &b.to_string())]);
        let queued = compute(&node_a.url(), &a, 1)["pushed"][0].clone();
        assert_eq!(queued["status"], "queued", "{queued}");
        (a, queued)
    };
    let node_b = InProcessNode::start(config_b);
    let node_a = InProcessNode::start(config_a);
    let entry = delivered(&node_a.url(), &a, 1, 0);
    assert_eq!(entry["slot"], 1, "{entry}");
    assert_eq!(entry["id"], queued["id"]);
    scheduled_once(&node_b.url(), &b, &queued["id"]);
}

#[test]
fn a_push_repeated_after_a_crash_is_scheduled_once() {
    let dir = tempdir();
    let alice = wallet(3);
    let (a, b, head_b) = {
        let node = InProcessNode::start(config(dir.path()));
        let base = node.url();
        let a = spawn_wat(&base, &alice, PING, &[("name", "a")]);
        // b's module answers nothing: a plain no-op, so the chain is one push long.
        let b = spawn_wat(&base, &alice, NOOP_WAT, &[("name", "b")]);
        send(&base, &alice, &a, &[("peer", &b.to_string())]);
        wait_for_slot(&base, &b, 1);
        compute(&base, &a, 1);
        let (_, head_b) = get(&base, &format!("/{b}/slot")).unwrap();
        (a, b, head_b)
    };
    // A crash after the push was scheduled but before a:1's result was stored.
    {
        let store = ferrobeam::store::Store::open(&dir.path().join("store")).unwrap();
        store.delete_result(&a, 1).unwrap();
        store.sync().unwrap();
    }
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let again = compute(&base, &a, 1);
    assert_eq!(again["pushed"][0]["slot"], 1);
    std::thread::sleep(Duration::from_millis(200));
    let (_, head_after) = get(&base, &format!("/{b}/slot")).unwrap();
    assert_eq!(head_after, head_b, "the recomputed push was deduplicated");
}

#[test]
fn a_trusted_peer_carries_the_source_process_as_sender() {
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let alice = wallet(4);
    // Node A's key exists before either node starts, so B can trust it.
    let key_a = wallet(40);
    ferrobeam::node::write_private(&dir_a.path().join("node-key.json"), &key_a).unwrap();
    let mut config_b = config(dir_b.path());
    config_b.peers = vec![key_a.address()];
    let node_b = InProcessNode::start(config_b);
    let who = spawn_wat(&node_b.url(), &alice, WHO, &[("name", "who")]);
    let mut config_a = config(dir_a.path());
    config_a.routes = vec![Route {
        process: who,
        node: node_b.url(),
    }];
    let node_a = InProcessNode::start(config_a);
    let a = spawn_wat(&node_a.url(), &alice, PING, &[("name", "a")]);
    send(&node_a.url(), &alice, &a, &[("peer", &who.to_string())]);
    assert_eq!(delivered(&node_a.url(), &a, 1, 0)["slot"], 1);
    assert_eq!(compute(&node_b.url(), &who, 1)["output"], a.to_string());
    // A direct message from a user is from the user.
    send(&node_b.url(), &alice, &who, &[("i", "2")]);
    assert_eq!(
        compute(&node_b.url(), &who, 2)["output"],
        alice.address().to_string()
    );
}

/// An ao-json module (wasm32) whose every slot spawns a child running `MODULE_ID`.
const SPAWNER: &str = r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 1024) "{\"ok\":true,\"response\":{\"Output\":\"spawned\",\"Spawns\":[{\"Tags\":[{\"name\":\"Module\",\"value\":\"MODULE_ID\"},{\"name\":\"Name\",\"value\":\"child\"}],\"Data\":\"\"}]}}\00")
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "handle") (param i32 i32) (result i32) (i32.const 1024)))"#;

#[test]
fn spawns_create_processes_owned_by_their_parent_exactly_once() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let alice = wallet(5);
    // The child module: reports its owner.
    let owner_wat = WHO.replace("\"from\"", "\"owner\"").replace(
        "(i32.const 4) (i32.const 64)",
        "(i32.const 5) (i32.const 64)",
    );
    let child_wasm = wat::parse_str(&owner_wat).unwrap();
    let (status, uploaded) = post(&base, "/~wasm@1.0/module", "application/wasm", &child_wasm);
    assert_eq!(status, 201, "{uploaded}");
    let child_module = uploaded["module"].as_str().unwrap();
    let parent = spawn_wat(
        &base,
        &alice,
        &SPAWNER.replace("MODULE_ID", child_module),
        &[("module-format", "wasm32-unknown-emscripten")],
    );
    let spawned = compute(&base, &parent, 0);
    assert_eq!(spawned["output"], "spawned", "{spawned}");
    let entry = &spawned["pushed"][0];
    assert_eq!(entry["spawn"], 0, "{spawned}");
    let child: Id = entry["process"].as_str().unwrap().parse().unwrap();
    let (_, definition) = get(&base, &format!("/{child}/process")).unwrap();
    assert_eq!(definition["type"], "Process");
    assert_eq!(definition["module"], child_module);
    assert_eq!(definition["from-process"], parent.to_string());
    // The child is owned by its parent process, not by the node that signed its message.
    assert_eq!(compute(&base, &child, 0)["output"], parent.to_string());
    // Restart and recompute the parent's slot 0: the spawn is the same message, not a new child.
    drop(node);
    {
        let store = ferrobeam::store::Store::open(&dir.path().join("store")).unwrap();
        store.delete_result(&parent, 0).unwrap();
        store.sync().unwrap();
    }
    let node = InProcessNode::start(config(dir.path()));
    let again = compute(&node.url(), &parent, 0);
    assert_eq!(again["pushed"][0]["process"], child.to_string());
    let (_, info) = get(&node.url(), "/~meta@1.0/info").unwrap();
    assert_eq!(info["processes"], 2, "{info}");
}
