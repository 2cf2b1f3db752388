//! Security checks as tests (docs/RELIABILITY.md, "Security checks as tests"): unsigned or
//! forged messages are never scheduled, the node key file is private, asset changes need an
//! operator's (or the owner's) signature, slow HTTP clients are cut off while others are served,
//! and a WASM process sees only deterministic imports.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use ferrobeam::api::server::{HTTP_HEAD_BYTES_MAX, HTTP_HEADERS_MAX};
use ferrobeam::execute::{Engine, EngineConfig, ExecError, Instance, Module, SlotInput};
use ferrobeam::message::{Address, Id, Message, json, wire};
use ferrobeam::node::{KeyError, Node, StartError};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// `signed` with its `n` changed after signing: the signature no longer covers the message.
fn tampered(signed: &Message) -> Vec<u8> {
    let mut value = json::to_json(signed);
    value["n"] = 99.into();
    value.to_string().into_bytes()
}

/// `signed` with one bit of its signature flipped.
fn flipped_signature(signed: &Message) -> Vec<u8> {
    let mut value = json::to_json(signed);
    let signature = value["commitments"][0]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bytes = ferrobeam::message::unb64(&signature, "signature").unwrap();
    bytes[0] ^= 1;
    value["commitments"][0]["signature"] = ferrobeam::message::b64(&bytes).into();
    value.to_string().into_bytes()
}

/// `signed`'s commitment claimed by another key (the signature is the right one's).
fn other_key(signed: &Message, other: &ferrobeam::message::Wallet) -> Vec<u8> {
    let mut value = json::to_json(signed);
    let claimed = json::to_json(&other.sign(Message::new().with("n", 0), &mut rand::rngs::OsRng));
    value["commitments"][0]["key"] = claimed["commitments"][0]["key"].clone();
    value.to_string().into_bytes()
}

/// The id a JSON body would have if the node accepted it (ids of signed messages are hashes
/// of their signature, so a tampered body keeps its original's id).
fn id_of(body: &[u8]) -> Id {
    let value: Json = serde_json::from_slice(body).unwrap();
    json::from_json(&value).map_or_else(|_| Id(Sha256::digest(body).into()), |message| message.id())
}

#[test]
fn unsigned_and_forged_messages_are_never_scheduled_over_http() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let (alice, mallory) = (wallet(1), wallet(2));
    let process = spawn_wat(&base, &alice, NOOP_WAT, &[]);
    let schedule = format!("/{process}/schedule");
    let message = |n: i64| {
        Message::new()
            .with("target", process.to_string())
            .with("n", n)
    };
    let unsigned = serde_json::to_vec(&json::to_json(&message(1))).unwrap();
    let signed_2 = alice.sign(message(2), &mut rand::rngs::OsRng);
    let signed_3 = alice.sign(message(3), &mut rand::rngs::OsRng);
    let signed_4 = alice.sign(message(4), &mut rand::rngs::OsRng);
    let refusals: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("unsigned", unsigned, 401, "Unsigned"),
        ("tampered", tampered(&signed_2), 401, "SignatureInvalid"),
        (
            "flipped signature",
            flipped_signature(&signed_3),
            401,
            "SignatureInvalid",
        ),
        (
            "another key claims it",
            other_key(&signed_4, &mallory),
            401,
            "SignatureInvalid",
        ),
    ];
    let mut refused_ids = vec![signed_2.id(), signed_3.id(), signed_4.id()];
    for (what, body, status, code) in &refusals {
        let (got, answer) = post(&base, &schedule, "application/json", body);
        assert_eq!(
            (got, answer["error"].as_str()),
            (*status, Some(*code)),
            "{what}: {answer}"
        );
        refused_ids.push(id_of(body));
    }
    // The wire form is held to the same rule: an unsigned rkyv message.
    let (got, answer) = post(
        &base,
        &schedule,
        "application/x-ferrobeam-message",
        &wire::encode(&message(5)),
    );
    assert_eq!(
        (got, answer["error"].as_str()),
        (401, Some("Unsigned")),
        "{answer}"
    );
    refused_ids.push(message(5).id());
    // An unsigned spawn and a forged one create no process.
    let module = {
        let (_, process_message) = get(&base, &format!("/~message@1.0/{process}")).unwrap();
        process_message["module"].as_str().unwrap().to_owned()
    };
    let spawn = Message::new()
        .with("type", "Process")
        .with("module", module.as_str());
    let (got, answer) = post_message(&base, "/~scheduler@1.0/schedule", &spawn);
    assert_eq!(
        (got, answer["error"].as_str()),
        (401, Some("Unsigned")),
        "{answer}"
    );
    let forged_spawn = tampered(&alice.sign(spawn.clone().with("n", 1), &mut rand::rngs::OsRng));
    let (got, answer) = post(
        &base,
        "/~scheduler@1.0/schedule",
        "application/json",
        &forged_spawn,
    );
    assert_eq!(
        (got, answer["error"].as_str()),
        (401, Some("SignatureInvalid")),
        "{answer}"
    );
    let ghosts = [spawn.id(), id_of(&forged_spawn)];

    // The schedule holds the process message alone, and the store none of the refused ones.
    let (status, page) = get(&base, &schedule).unwrap();
    assert_eq!(status, 200, "{page}");
    let assignments = page["assignments"].as_array().expect("assignments");
    assert_eq!(assignments.len(), 1, "{page}");
    for id in refused_ids.iter().chain(&ghosts) {
        let (status, _) = get(&base, &format!("/~message@1.0/{id}")).unwrap();
        assert_eq!(status, 404, "message {id} must not be stored");
    }
    for ghost in ghosts {
        let (status, _) = get(&base, &format!("/{ghost}/slot")).unwrap();
        assert_eq!(status, 404, "no process {ghost}");
    }
    // Signed by its sender, the same content is scheduled at slot 1.
    let ack = send(&base, &alice, &process, &[("n", "6")]);
    assert_eq!(ack["slot"], 1, "{ack}");
}

#[test]
fn the_node_key_file_is_created_0600_and_a_wider_one_is_refused() {
    let dir = tempdir();
    let key = dir.path().join("node-key.json");
    let first = InProcessNode::start(config(dir.path()));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "created private");
    drop(first);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for wider in [0o640, 0o604, 0o644, 0o666] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(wider)).unwrap();
        let refused = runtime.block_on(Node::start(config(dir.path())));
        match refused {
            Err(StartError::Key(KeyError::TooOpen { mode, .. })) => assert_eq!(mode, wider),
            Err(other) => panic!("mode {wider:o}: expected TooOpen, got {other}"),
            Ok(_) => panic!("mode {wider:o}: the node started"),
        }
        // Refused, not repaired and not replaced.
        let after = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(after, wider);
    }
    // Back to 0600 (or stricter) it starts with the same key.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let again = InProcessNode::start(config(dir.path()));
    drop(again);
}

/// The registered assets with their allocations: what an asset change would alter.
fn assets_state(base: &str) -> Json {
    let (status, list) = get(base, "/~assets@1.0/list").unwrap();
    assert_eq!(status, 200, "{list}");
    list["assets"].clone()
}

/// `PUT` or `DELETE` with a JSON message body.
fn change(method: &str, url: String, body: &[u8]) -> (u16, Json) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let request = match method {
        "PUT" => agent.put(url),
        _ => agent.delete(url).force_send_body(),
    };
    let mut response = request
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

#[test]
fn asset_changes_need_an_operator_or_owner_signature_and_refusals_change_nothing() {
    let dir = tempdir();
    let (operator, alice, mallory) = (wallet(20), wallet(21), wallet(22));
    let config = ferrobeam::node::NodeConfig {
        operators: vec![operator.address()],
        ..config(dir.path())
    };
    let node = InProcessNode::start(config);
    let base = node.url();
    let register = Message::new()
        .with("action", "Register")
        .with("kind", "fpga")
        .with("unit", "boards")
        .with("identity", "fpga-slot-7")
        .with("capacity", 2);
    let before = assets_state(&base);
    let forged_operator =
        tampered(&operator.sign(register.clone().with("n", 1), &mut rand::rngs::OsRng));
    let refusals: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "unsigned",
            serde_json::to_vec(&json::to_json(&register)).unwrap(),
            401,
            "Unsigned",
        ),
        (
            "not an operator",
            serde_json::to_vec(&json::to_json(
                &mallory.sign(register.clone(), &mut rand::rngs::OsRng),
            ))
            .unwrap(),
            403,
            "Forbidden",
        ),
        (
            "an operator's, tampered",
            forged_operator,
            401,
            "SignatureInvalid",
        ),
        (
            "an operator's key, mallory's signature",
            other_key(
                &mallory.sign(register.clone(), &mut rand::rngs::OsRng),
                &operator,
            ),
            401,
            "SignatureInvalid",
        ),
    ];
    for (what, body, status, code) in &refusals {
        let (got, answer) = post(&base, "/assets/register", "application/json", body);
        assert_eq!(
            (got, answer["error"].as_str()),
            (*status, Some(*code)),
            "{what}: {answer}"
        );
        assert_eq!(assets_state(&base), before, "{what} changed the assets");
    }
    let signed = operator.sign(register, &mut rand::rngs::OsRng);
    let (status, registered) = post_message(&base, "/assets/register", &signed);
    assert_eq!(status, 201, "{registered}");
    let asset = registered["asset"]["id"].as_str().unwrap().to_owned();

    // Alice allocates; mallory may not release her allocation, unsigned nobody may.
    let allocation = alice.sign(
        Message::new()
            .with("action", "Allocate")
            .with("asset", asset.as_str())
            .with("amount", 1),
        &mut rand::rngs::OsRng,
    );
    let message_body = |m: &Message| serde_json::to_vec(&json::to_json(m)).unwrap();
    let (status, allocated) = change(
        "PUT",
        format!("{base}/assets/{asset}/allocate"),
        &message_body(&allocation),
    );
    assert_eq!(status, 201, "{allocated}");
    let with_allocation = assets_state(&base);
    let release = Message::new()
        .with("action", "Release")
        .with("allocation", allocation.id().to_string());
    let release_url = format!("{base}/assets/{asset}/release");
    let by_mallory = message_body(&mallory.sign(release.clone(), &mut rand::rngs::OsRng));
    let (status, answer) = change("DELETE", release_url.clone(), &by_mallory);
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("Forbidden")),
        "{answer}"
    );
    let (status, answer) = change("DELETE", release_url.clone(), &message_body(&release));
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("Unsigned")),
        "{answer}"
    );
    assert_eq!(
        assets_state(&base),
        with_allocation,
        "refused releases changed nothing"
    );
    // The operator may release anyone's allocation.
    let by_operator = message_body(&operator.sign(release, &mut rand::rngs::OsRng));
    let (status, released) = change("DELETE", release_url, &by_operator);
    assert_eq!(status, 200, "{released}");
    assert_ne!(assets_state(&base), with_allocation);
}

/// A config whose HTTP header and body timeouts are `ms`.
fn impatient(dir: &std::path::Path, ms: u64) -> ferrobeam::node::NodeConfig {
    ferrobeam::node::NodeConfig {
        http_header_timeout_ms: ms,
        http_body_timeout_ms: ms,
        ..config(dir)
    }
}

/// Reads until the node closes the connection (or 10 s pass: the test's own guard, far above
/// the node's timeouts); returns what was read and whether the connection ended.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn slow_http_clients_are_cut_off_while_others_are_served() {
    let dir = tempdir();
    let node = InProcessNode::start(impatient(dir.path(), 300));
    let base = node.url();
    let alice = wallet(3);
    let process = spawn_wat(&base, &alice, NOOP_WAT, &[]);

    // 1. Headers a byte at a time, forever: cut off at the header timeout.
    let addr = node.addr;
    let trickler = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = b"GET /~meta@1.0/info HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')).take(2000) {
            // The node closes the connection: writes start failing.
            if stream.write_all(&[*byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    // 2. Half a request head, then silence; 3. a connection that never sends a byte.
    let mut stalled_head = TcpStream::connect(addr).unwrap();
    stalled_head
        .write_all(b"POST /x/schedule HTTP/1.1\r\nHost: x\r\nContent-")
        .unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    // 4. A whole head announcing 1000 body bytes, then 10 of them and silence.
    let mut stalled_body = TcpStream::connect(addr).unwrap();
    stalled_body
        .write_all(
            format!(
                "POST /{process}/schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"target\":"
            )
            .as_bytes(),
        )
        .unwrap();

    // Meanwhile everyone else is served.
    for n in 0..5 {
        let ack = send(&base, &alice, &process, &[("n", &n.to_string())]);
        assert_eq!(ack["slot"], n + 1, "{ack}");
    }

    let (read, closed) = read_until_closed(&mut stalled_head);
    assert!(
        closed && read.is_empty(),
        "stalled head: closed without an answer"
    );
    let (read, closed) = read_until_closed(&mut silent);
    assert!(closed && read.is_empty(), "silent connection: closed");
    let (read, closed) = read_until_closed(&mut stalled_body);
    let text = String::from_utf8_lossy(&read);
    assert!(closed, "stalled body: closed after the answer");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"RequestTimeout\""), "{text}");
    assert!(trickler.join().unwrap(), "the trickling client was cut off");

    assert!(node.metric("ferrobeam_http_header_timeouts_total ") >= 3.0);
    assert_eq!(
        node.metric("ferrobeam_requests_rejected_total{code=\"RequestTimeout\"} "),
        1.0
    );
    // Nothing half-sent was scheduled.
    let (_, slot) = get(&base, &format!("/{process}/slot")).unwrap();
    assert_eq!(slot["current"], 5, "{slot}");
}

#[test]
fn oversized_http_request_heads_are_refused_with_431() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let ask = |head: String| {
        let mut stream = TcpStream::connect(node.addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let (read, closed) = read_until_closed(&mut stream);
        assert!(closed, "the connection is closed");
        String::from_utf8_lossy(&read).into_owned()
    };
    let request = |headers: &str| {
        format!(
            "GET /~meta@1.0/info/address HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
        )
    };
    let lines = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();
    // Host and Connection count too: HTTP_HEADERS_MAX lines in all pass, one more does not.
    assert!(ask(request(&lines(HTTP_HEADERS_MAX - 2))).starts_with("HTTP/1.1 200"));
    assert!(ask(request(&lines(HTTP_HEADERS_MAX - 1))).starts_with("HTTP/1.1 431"));
    let long = |bytes: usize| format!("x-long: {}\r\n", "a".repeat(bytes));
    assert!(ask(request(&long(HTTP_HEAD_BYTES_MAX / 2))).starts_with("HTTP/1.1 200"));
    // The node answers 431 and closes while the rest of the head is unread, so the kernel may
    // reset the connection before the client reads the answer: 431 or nothing, never served.
    let answer = ask(request(&long(HTTP_HEAD_BYTES_MAX)));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert!(
        ask(request("")).starts_with("HTTP/1.1 200"),
        "still serving"
    );
}

#[test]
fn http_timeouts_are_configuration_checked_at_start() {
    let dir = tempdir();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for config in [
        impatient(dir.path(), 0),
        ferrobeam::node::NodeConfig {
            http_body_timeout_ms: 4_000_000,
            ..config(dir.path())
        },
        ferrobeam::node::NodeConfig {
            http_connections_max: 0,
            ..config(dir.path())
        },
    ] {
        let started = runtime.block_on(Node::start(config));
        assert!(
            matches!(started, Err(StartError::Config(_))),
            "{:?}",
            started.err()
        );
    }
}

// ---- WASM: only deterministic imports ----

const TIMESTAMP_MS: u64 = 1_700_000_000_123;

fn engine(dir: &std::path::Path) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.instances_max = 4;
    Engine::new(config).expect("engine")
}

fn load(engine: &Engine, wat: &str) -> Result<Module, ExecError> {
    let wasm = wat::parse_str(wat).expect("WAT parses");
    engine.load(Id(Sha256::digest(&wasm).into()), &wasm)
}

#[test]
fn native_modules_importing_anything_but_the_abi_are_refused_at_load() {
    let dir = tempdir();
    let engine = engine(dir.path());
    let body =
        r#"(memory (export "memory") 1) (func (export "handle") (result i32) (i32.const 0))"#;
    let imports = [
        r#"(import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))"#,
        r#"(import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))"#,
        r#"(import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))"#,
        r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
        r#"(import "env" "getenv" (func (param i32) (result i32)))"#,
        r#"(import "ferrobeam" "now" (func (result i64)))"#,
        r#"(import "ferrobeam" "table" (table 1 funcref))"#,
    ];
    for import in imports {
        let err = load(&engine, &format!("(module {import} {body})")).expect_err(import);
        let text = err.to_string();
        assert!(
            matches!(err, ExecError::ModuleInvalid(_)),
            "{import}: {text}"
        );
        assert!(text.contains("import "), "names the import: {text}");
    }
}

/// A wasm32 ao-json module that calls the WASI/emscripten shims and answers their results as
/// comma-separated 16-digit hex numbers. Extra imports go in `{IMPORTS}`.
const SHIMS: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $res (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "env" "emscripten_get_now" (func $now (result f64)))
  {IMPORTS}
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 65536))
  (global $out (mut i32) (i32.const 0))
  (data (i32.const 0) "{\"ok\":true,\"response\":{\"Output\":\"")
  (data (i32.const 40) "\"}}\00")
  (data (i32.const 48) "/etc/passwd")
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func $hex (param $v i64)
    (local $i i32) (local $nibble i32)
    (loop $digit
      (local.set $nibble (i32.wrap_i64 (i64.and
        (i64.shr_u (local.get $v) (i64.extend_i32_u (i32.sub (i32.const 60) (i32.mul (local.get $i) (i32.const 4)))))
        (i64.const 15))))
      (i32.store8 (global.get $out)
        (i32.add (local.get $nibble) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $nibble) (i32.const 10)))))
      (global.set $out (i32.add (global.get $out) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $i) (i32.const 16))))
    (i32.store8 (global.get $out) (i32.const 44))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))
  (func (export "handle") (param $msg i32) (param $env i32) (result i32)
    (memory.copy (i32.const 1024) (i32.const 0) (i32.const 33))
    (global.set $out (i32.const 1057))
    ;; realtime and monotonic clocks, the clock's resolution
    (call $hex (i64.extend_i32_u (call $clock (i32.const 0) (i64.const 1) (i32.const 200))))
    (call $hex (i64.load (i32.const 200)))
    (call $hex (i64.extend_i32_u (call $clock (i32.const 1) (i64.const 1) (i32.const 200))))
    (call $hex (i64.load (i32.const 200)))
    (call $hex (i64.extend_i32_u (call $res (i32.const 0) (i32.const 208))))
    (call $hex (i64.load (i32.const 208)))
    ;; 8 random bytes
    (call $hex (i64.extend_i32_u (call $random (i32.const 216) (i32.const 8))))
    (call $hex (i64.load (i32.const 216)))
    ;; environment and arguments: empty (the sizes' memory is set to 1s first)
    (i64.store (i32.const 224) (i64.const 0x0101010101010101))
    (call $hex (i64.extend_i32_u (call $environ (i32.const 224) (i32.const 228))))
    (call $hex (i64.load (i32.const 224)))
    (i64.store (i32.const 224) (i64.const 0x0101010101010101))
    (call $hex (i64.extend_i32_u (call $args (i32.const 224) (i32.const 228))))
    (call $hex (i64.load (i32.const 224)))
    ;; opening a file: ENOSYS
    (call $hex (i64.extend_i32_u (call $path_open (i32.const 3) (i32.const 0) (i32.const 48) (i32.const 11)
      (i32.const 0) (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 232))))
    ;; writing to a descriptor that is not stdout/stderr: EBADF; reading stdin: end of file
    (i32.store (i32.const 240) (i32.const 48))
    (i32.store (i32.const 244) (i32.const 11))
    (call $hex (i64.extend_i32_u (call $fd_write (i32.const 3) (i32.const 240) (i32.const 1) (i32.const 248))))
    (i32.store (i32.const 248) (i32.const 77))
    (call $hex (i64.extend_i32_u (call $fd_read (i32.const 0) (i32.const 240) (i32.const 1) (i32.const 248))))
    (call $hex (i64.extend_i32_u (i32.load (i32.const 248))))
    ;; emscripten's clock, in ms
    (call $hex (i64.trunc_f64_u (call $now)))
    ;; drop the last comma, close the JSON
    (global.set $out (i32.sub (global.get $out) (i32.const 1)))
    (memory.copy (global.get $out) (i32.const 40) (i32.const 4))
    (i32.const 1024))
)"#;

fn shims(extra_imports: &str) -> String {
    SHIMS.replace("{IMPORTS}", extra_imports)
}

/// Runs one slot of a fresh instance of `module` and parses its hex answers.
fn shim_values(module: &Module, slot: u64, nonce: &str) -> Vec<u64> {
    let definition = Message::new()
        .with("type", "Process")
        .with("module", module.id().to_string())
        .with("module-format", "wasm32-unknown-emscripten2");
    let process = definition.id();
    let mut instance = Instance::new(module, process, &definition).expect("instantiates");
    let mut last = None;
    for s in 0..=slot {
        let message = if s == 0 {
            definition.clone()
        } else {
            Message::new().with("nonce", nonce)
        };
        let input = SlotInput {
            process,
            slot: s,
            message_id: message.id(),
            message,
            from: Address([2; 32]),
            owner: Address([2; 32]),
            timestamp_ms: TIMESTAMP_MS + s,
        };
        last = Some(instance.run(&input).expect("slot runs"));
    }
    let outcome = last.unwrap();
    assert_eq!(outcome.error, None);
    std::str::from_utf8(&outcome.output)
        .unwrap()
        .split(',')
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .collect()
}

#[test]
fn ao_json_modules_see_only_deterministic_shims() {
    let dir = tempdir();
    let engine = engine(dir.path());
    let module = load(&engine, &shims("")).expect("the shims module loads");
    let values = shim_values(&module, 1, "a");
    let timestamp_ns = (TIMESTAMP_MS + 1) * 1_000_000;
    let (errno_ok, errno_badf, errno_nosys) = (0, 8, 52);
    let random = values[7];
    let expected = [
        errno_ok,
        timestamp_ns, // realtime = the assignment's timestamp
        errno_ok,
        timestamp_ns, // monotonic too: no host clock
        errno_ok,
        1_000_000, // 1 ms resolution
        errno_ok,
        random,
        errno_ok,
        0, // no environment variables, zero bytes
        errno_ok,
        0,           // no arguments
        errno_nosys, // no file system
        errno_badf,  // fd 3 is no descriptor
        errno_ok,
        0, // stdin is empty
        TIMESTAMP_MS + 1,
    ];
    assert_eq!(values, expected);
    // The random stream is a function of (process, slot, message): the same slot replays the
    // same bytes, another slot or message gets others.
    assert_eq!(shim_values(&module, 1, "a")[7], random);
    assert_ne!(shim_values(&module, 2, "a")[7], random);
    assert_ne!(shim_values(&module, 1, "b")[7], random);
}

#[test]
fn ao_json_modules_importing_anything_else_are_refused_at_load() {
    let dir = tempdir();
    let engine = engine(dir.path());
    let refused = [
        (
            r#"(import "env" "getenv" (func (param i32) (result i32)))"#,
            "import env::getenv is not provided by the ao-json ABI",
        ),
        (
            r#"(import "env" "emscripten_get_now_res" (func (result f64)))"#,
            "import env::emscripten_get_now_res is not provided",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "sock_shutdown" (func (param i32 i32)))"#,
            "import wasi_snapshot_preview1::sock_shutdown is not provided",
        ),
        (
            r#"(import "host" "fetch" (func (param i32 i32) (result i32)))"#,
            "import host::fetch is not provided",
        ),
        (
            r#"(import "env" "clock" (global i64))"#,
            "import env::clock: the ao-json ABI provides only functions",
        ),
    ];
    for (import, expected) in refused {
        let err = load(&engine, &shims(import)).expect_err(import);
        assert!(
            matches!(err, ExecError::ModuleInvalid(_)),
            "{import}: {err}"
        );
        assert!(err.to_string().contains(expected), "{import}: {err}");
    }
}
