//! Tests that hit the named limits of docs/RELIABILITY.md ("Limits") that no other test hits:
//! each one goes just past its limit and checks what the node does there (backpressure, or a
//! refusal with its error code or counter), and that it keeps serving.

mod common;

use std::future::Future;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ferrobeam::api::SCHEDULE_PAGE_MAX;
use ferrobeam::api::assets::{AUTH_HEADER, AUTH_HEADER_BYTES_MAX};
use ferrobeam::api::server::HTTP_CONNECTIONS_MAX_LIMIT;
use ferrobeam::assets::{IDENTITY_BYTES_MAX, KIND_BYTES_MAX, UNIT_BYTES_MAX};
use ferrobeam::execute::{
    ERROR_BYTES_MAX, Engine, EngineConfig, GLOBALS_MAX, Instance, Module, OUTBOX_BYTES_MAX,
    RESPONSE_BYTES_MAX, SEND_TAGS_MAX, STDIO_BYTES_MAX, SlotInput, SlotOutcome, TABLE_ELEMENTS_MAX,
};
use ferrobeam::ingress::client::{QuicClient, message_frame};
use ferrobeam::ingress::frame::{
    self, FrameError, FrameReader, HEADER_BYTES, Header, Kind, PAYLOAD_BYTES_MAX, REFUSED_BYTES_MAX,
};
use ferrobeam::ingress::{
    CONNECTIONS_MAX, LARGE_FRAME_BUDGET_BYTES, LargeFrame, Refusal, Reply,
    STREAMS_PER_CONNECTION_MAX,
};
use ferrobeam::message::wire::WIRE_BYTES_MAX;
use ferrobeam::message::{
    Address, COMMITMENTS_MAX, DEPTH_MAX, Id, KEYS_MAX, LIST_ITEMS_MAX, MESSAGE_BYTES_MAX, Message,
    MessageError, RSA_MODULUS_BYTES_MAX, RSA_MODULUS_BYTES_MIN, b64, json, wire,
};
use ferrobeam::node::NodeConfig;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

// ---- messages: every decoder holds the same limits ----

#[test]
fn message_limits_hold_in_the_json_and_wire_decoders() {
    let decode = |value: Json| json::from_slice(value.to_string().as_bytes());
    // Keys: KEYS_MAX fit, one more is refused.
    let keys = |n: usize| Json::Object((0..n).map(|i| (format!("k{i}"), json!(1))).collect());
    assert!(decode(keys(KEYS_MAX)).is_ok());
    assert_eq!(decode(keys(KEYS_MAX + 1)), Err(MessageError::TooManyKeys));
    // List items.
    let list = |n: usize| json!({ "list": vec![1; n] });
    assert!(decode(list(LIST_ITEMS_MAX)).is_ok());
    assert_eq!(
        decode(list(LIST_ITEMS_MAX + 1)),
        Err(MessageError::TooManyItems)
    );
    // Nesting: a message is depth 0, each nested message or list one more.
    let nested = |depth: usize| {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!({ "x": value });
        }
        value
    };
    assert!(decode(nested(DEPTH_MAX)).is_ok());
    assert_eq!(decode(nested(DEPTH_MAX + 1)), Err(MessageError::TooDeep));
    // Commitments: counted before any is parsed.
    let commitment = json!({"scheme": "ed25519", "key": "AA", "signature": "AA"});
    let signed_by = |n: usize| json!({ "a": 1, "commitments": vec![commitment.clone(); n] });
    assert_eq!(
        decode(signed_by(COMMITMENTS_MAX + 1)),
        Err(MessageError::TooManyCommitments)
    );
    // RSA moduli of 2048..=4096 bits only.
    for bytes in [RSA_MODULUS_BYTES_MIN - 1, RSA_MODULUS_BYTES_MAX + 1] {
        let rsa = json!({"scheme": "rsa-pss-sha512", "key": b64(&vec![0x80; bytes]),
                         "signature": b64(&vec![1; bytes])});
        let err = decode(json!({ "a": 1, "commitments": [rsa] })).unwrap_err();
        assert!(
            matches!(err, MessageError::CommitmentInvalid(_)),
            "{bytes}: {err}"
        );
    }
    // Size: the message (canonical encoding) and the wire form each have a cap.
    let big = Message::new().with("data", vec![7u8; MESSAGE_BYTES_MAX]);
    assert_eq!(
        wire::decode(&wire::encode(&big)),
        Err(MessageError::TooLarge)
    );
    assert_eq!(
        json::from_json(&json!({ "data": "x".repeat(MESSAGE_BYTES_MAX) })),
        Err(MessageError::TooLarge)
    );
    assert_eq!(
        wire::decode(&vec![0u8; WIRE_BYTES_MAX + 1]),
        Err(MessageError::TooLarge)
    );
}

// ---- configuration: every limit an operator sets is range-checked ----

#[test]
fn configured_limits_are_range_checked() {
    let base = NodeConfig::default();
    assert!(base.check().is_ok());
    let too_many_operators = vec![Address([1; 32]); ferrobeam::node::config::OPERATORS_MAX + 1];
    let refused = [
        NodeConfig {
            body_bytes_max: 0,
            ..base.clone()
        },
        NodeConfig {
            body_bytes_max: WIRE_BYTES_MAX + 1,
            ..base.clone()
        },
        NodeConfig {
            commit_batch_max: 0,
            ..base.clone()
        },
        NodeConfig {
            commit_batch_max: 65_537,
            ..base.clone()
        },
        NodeConfig {
            operators: too_many_operators,
            ..base.clone()
        },
        NodeConfig {
            ingress_cores: ferrobeam::ingress::INGRESS_CORES_MAX + 1,
            ..base.clone()
        },
        NodeConfig {
            quic_idle_timeout_ms: 99,
            ..base.clone()
        },
        NodeConfig {
            quic_connections_max: 0,
            ..base.clone()
        },
        NodeConfig {
            quic_connections_max: CONNECTIONS_MAX + 1,
            ..base.clone()
        },
        NodeConfig {
            http_connections_max: HTTP_CONNECTIONS_MAX_LIMIT + 1,
            ..base.clone()
        },
        NodeConfig {
            http_header_timeout_ms: 3_600_001,
            ..base.clone()
        },
        NodeConfig {
            snapshot_interval: 0,
            ..base.clone()
        },
    ];
    for config in refused {
        assert!(config.check().is_err(), "{config:?}");
    }
}

// ---- HTTP ----

#[test]
fn http_connections_over_the_maximum_wait_for_a_free_one() {
    let dir = tempdir();
    let node = InProcessNode::start(NodeConfig {
        http_connections_max: 2,
        http_header_timeout_ms: 60_000,
        ..config(dir.path())
    });
    let base = node.url();
    // Two idle connections take both permits.
    let first = TcpStream::connect(node.addr).unwrap();
    let mut second = TcpStream::connect(node.addr).unwrap();
    let (answered, answer) = std::sync::mpsc::channel();
    let waiting = {
        let base = base.clone();
        std::thread::spawn(move || {
            let _ = answered.send(get(&base, "/~meta@1.0/info").map(|(status, _)| status));
        })
    };
    // A third waits in the accept backlog (backpressure, not a refusal) ...
    assert!(
        answer.recv_timeout(Duration::from_millis(500)).is_err(),
        "served past http-connections-max"
    );
    // ... and is served as soon as one closes.
    drop(first);
    let status = answer
        .recv_timeout(Duration::from_secs(30))
        .expect("served once a connection closed");
    assert_eq!(status.unwrap(), 200);
    waiting.join().unwrap();
    second
        .write_all(b"GET /~meta@1.0/info/address HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut second, &mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn an_auth_header_over_its_maximum_is_refused_unread() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let read = |header: String| {
        let mut response = agent
            .get(format!("{}/~assets@1.0/list", node.url()))
            .header(AUTH_HEADER, header)
            .call()
            .unwrap();
        let status = response.status().as_u16();
        let body: Json =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        (status, body)
    };
    // At the maximum the header is decoded (and found wanting); one byte more is not even read.
    let (status, at) = read("A".repeat(AUTH_HEADER_BYTES_MAX));
    assert_eq!(
        (status, at["error"].as_str()),
        (400, Some("JsonInvalid")),
        "{at}"
    );
    let (status, over) = read("A".repeat(AUTH_HEADER_BYTES_MAX + 1));
    assert_eq!(
        (status, over["error"].as_str()),
        (401, Some("Unauthenticated")),
        "{over}"
    );
    assert!(
        over["message"].as_str().unwrap().contains("too long"),
        "{over}"
    );
}

// ---- QUIC ----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn quic_node(dir: &std::path::Path) -> InProcessNode {
    InProcessNode::start(NodeConfig {
        quic: Some("127.0.0.1:0".parse().unwrap()),
        ingress_cores: 1,
        ..config(dir)
    })
}

/// Sends `frames` on a new stream, finishes it and returns every reply.
async fn exchange(client: &QuicClient, frames: &[u8]) -> Vec<Reply> {
    let (mut sender, mut receiver) = client.open().await.unwrap();
    let writer = async {
        sender.send(frames).await.unwrap();
        sender.finish();
    };
    let reader = async {
        let mut replies = Vec::new();
        while let Some(reply) = receiver.next().await.unwrap() {
            replies.push(reply);
        }
        replies
    };
    tokio::join!(writer, reader).1
}

/// 1001 messages through the real ingest and commit path: ~2 s in a debug build, because the
/// workspace builds the signature crates optimized in the dev profile (unoptimized, their
/// verifications took ~20 s).
#[test]
fn a_schedule_page_holds_at_most_schedule_page_max_assignments() {
    let dir = tempdir();
    let node = quic_node(dir.path());
    let alice = wallet(7);
    let process = spawn_wat(&node.url(), &alice, NOOP_WAT, &[]);
    let total = SCHEDULE_PAGE_MAX as usize + 1;
    let frames: Vec<u8> = (0..total)
        .flat_map(|n| {
            let message = Message::new()
                .with("target", process.to_string())
                .with("n", n as i64);
            message_frame(&alice.sign(message, &mut rand::rngs::OsRng))
        })
        .collect();
    let replies = runtime().block_on(async {
        let client = QuicClient::connect(node.quic.unwrap(), node.address)
            .await
            .unwrap();
        let replies = exchange(&client, &frames).await;
        client.close().await;
        replies
    });
    assert_eq!(replies.len(), total);
    assert!(replies.iter().all(|r| matches!(r, Reply::Ack(_))));
    // Slots 0..=1001 exist; a page from 0 stops at SCHEDULE_PAGE_MAX and names the next.
    let (status, page) = get(&node.url(), &format!("/{process}/schedule?from=0")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        page["assignments"].as_array().unwrap().len(),
        SCHEDULE_PAGE_MAX as usize
    );
    assert_eq!(page["next"], SCHEDULE_PAGE_MAX);
    let (_, rest) = get(
        &node.url(),
        &format!("/{process}/schedule?from={SCHEDULE_PAGE_MAX}"),
    )
    .unwrap();
    assert_eq!(rest["assignments"].as_array().unwrap().len(), 2);
}

#[test]
fn streams_past_the_per_connection_maximum_wait_for_credit() {
    let dir = tempdir();
    let node = quic_node(dir.path());
    let alice = wallet(8);
    let process = spawn_wat(&node.url(), &alice, NOOP_WAT, &[]);
    runtime().block_on(async {
        let client = QuicClient::connect(node.quic.unwrap(), node.address)
            .await
            .unwrap();
        let mut open = Vec::new();
        for _ in 0..STREAMS_PER_CONNECTION_MAX {
            open.push(client.open().await.unwrap());
        }
        // One more waits for stream credit (backpressure) ...
        let extra = tokio::time::timeout(Duration::from_millis(500), client.open()).await;
        assert!(extra.is_err(), "opened past STREAMS_PER_CONNECTION_MAX");
        // ... which the node gives back as streams end. quinn announces new credit once more
        // than 1/8 of the window is free (5 of 32 streams), not stream by stream.
        for n in 0..=STREAMS_PER_CONNECTION_MAX / 8 {
            let (mut sender, mut receiver) = open.remove(0);
            let message = alice.sign(
                Message::new()
                    .with("target", process.to_string())
                    .with("n", i64::from(n)),
                &mut rand::rngs::OsRng,
            );
            sender.send(&message_frame(&message)).await.unwrap();
            sender.finish();
            assert!(matches!(
                receiver.next().await.unwrap(),
                Some(Reply::Ack(_))
            ));
            assert!(receiver.next().await.unwrap().is_none());
        }
        let (mut sender, mut receiver) =
            tokio::time::timeout(Duration::from_secs(30), client.open())
                .await
                .expect("credit came back")
                .unwrap();
        sender.finish();
        assert!(receiver.next().await.unwrap().is_none());
        drop(open);
        client.close().await;
    });
}

/// With `quic-connections-max` at 4 (the default is [`CONNECTIONS_MAX`]; 257 handshakes take
/// minutes in a debug build on a loaded machine): the cap is the same code path.
#[test]
fn connections_past_the_maximum_are_refused_and_counted() {
    assert_eq!(NodeConfig::default().quic_connections_max, CONNECTIONS_MAX);
    let connections_max = 4;
    let dir = tempdir();
    let node = InProcessNode::start(NodeConfig {
        quic: Some("127.0.0.1:0".parse().unwrap()),
        ingress_cores: 1,
        quic_connections_max: connections_max,
        ..config(dir.path())
    });
    let (quic, address) = (node.quic.unwrap(), node.address);
    runtime().block_on(async {
        // Concurrent handshakes: `connections_max` of them fit.
        let handshakes: Vec<_> = (0..connections_max)
            .map(|_| tokio::spawn(QuicClient::connect(quic, address)))
            .collect();
        let mut clients = Vec::new();
        for handshake in handshakes {
            clients.push(handshake.await.unwrap().expect("under the maximum"));
        }
        assert_eq!(clients.len(), connections_max);
        let refused = QuicClient::connect(quic, address).await;
        assert!(
            refused.is_err(),
            "connection past quic-connections-max accepted"
        );
        // One closes: a new one gets in.
        clients.pop().unwrap().close().await;
        let mut again = None;
        for _ in 0..50 {
            if let Ok(client) = QuicClient::connect(quic, address).await {
                again = Some(client);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(again.is_some(), "a slot freed by a close is reused");
        for client in clients {
            client.close().await;
        }
    });
    assert!(
        node.metric("ferrobeam_quic_connections_refused_total{reason=\"connections-max\"} ") >= 1.0
    );
}

#[test]
fn a_refusal_longer_than_refused_bytes_max_is_cut_to_fit() {
    let refusal = |message: String| {
        Reply::Refused(Refusal {
            code: "BadRequest".into(),
            message,
        })
    };
    // Encodes a reply and reads it back as a client does.
    let round_trip = |reply: &Reply| {
        let mut out = Vec::new();
        reply.encode_into(&mut out);
        let header = Header::decode(out[..HEADER_BYTES].try_into().unwrap()).unwrap();
        assert_eq!(header.kind, Kind::Refused);
        assert!(header.len <= REFUSED_BYTES_MAX);
        let payload = &out[HEADER_BYTES..HEADER_BYTES + header.len];
        (header.len, Reply::decode(Kind::Refused, payload).unwrap())
    };
    let short = refusal("é".repeat(100));
    assert_eq!(round_trip(&short).1, short);
    // A refusal whose JSON is exactly REFUSED_BYTES_MAX bytes is sent whole, one byte more is cut.
    let overhead = r#"{"error":"BadRequest","message":""}"#.len();
    let whole = refusal("x".repeat(REFUSED_BYTES_MAX - overhead));
    assert_eq!(round_trip(&whole), (REFUSED_BYTES_MAX, whole));
    let (_, cut) = round_trip(&refusal("x".repeat(REFUSED_BYTES_MAX - overhead + 1)));
    assert_eq!(cut, refusal("x".repeat(1024)));
    // 20,000 bytes of text: the code stays, the text is cut, the JSON stays valid.
    let (len, cut) = round_trip(&refusal("é".repeat(10_000)));
    assert!(len < REFUSED_BYTES_MAX, "{len}");
    let Reply::Refused(cut) = cut else {
        panic!("{cut:?}")
    };
    assert_eq!(cut.code, "BadRequest");
    assert_eq!(cut.message, "é".repeat(1024));
    // A peer announcing a longer refusal is refused from the header.
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(&(REFUSED_BYTES_MAX as u32 + 1).to_le_bytes());
    header[4..8].copy_from_slice(&Kind::Refused.code().to_le_bytes());
    let expected = FrameError::TooLarge {
        len: REFUSED_BYTES_MAX as u64 + 1,
        max: REFUSED_BYTES_MAX,
    };
    assert_eq!(Header::decode(&header), Err(expected.clone()));
    assert_eq!(
        frame::FrameReader::client().decode(&header).unwrap_err(),
        expected
    );
}

#[test]
fn large_frames_past_the_budget_wait_for_it() {
    let frame_bytes = frame::pad16(PAYLOAD_BYTES_MAX);
    let fit = LARGE_FRAME_BUDGET_BYTES / frame_bytes;
    // A stream that has read the header of a largest message frame.
    let header_read = || {
        let mut reader = FrameReader::node();
        let header = Header {
            kind: Kind::Message,
            len: PAYLOAD_BYTES_MAX,
        };
        let (used, event) = reader.decode(&header.encode()).unwrap();
        assert!(used == HEADER_BYTES && event.is_none());
        reader
    };
    runtime().block_on(async {
        let budget = LargeFrame::budget();
        let mut streams = Vec::new();
        for _ in 0..fit {
            let reader = header_read();
            let mut held = LargeFrame::default();
            held.reserve(&budget, &reader).await;
            assert_eq!(held.bytes(), frame_bytes);
            streams.push((reader, held));
        }
        let left = budget.available_permits();
        assert_eq!(left, LARGE_FRAME_BUDGET_BYTES - fit * frame_bytes);
        assert!(left < frame_bytes);
        // One more stream waits for budget (it reads nothing meanwhile) ...
        let reader = header_read();
        let mut held = LargeFrame::default();
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let reserve = held.reserve(&budget, &reader);
            tokio::pin!(reserve);
            assert!(reserve.as_mut().poll(&mut context).is_pending());
            assert!(reserve.as_mut().poll(&mut context).is_pending());
            // ... until another stream's frame is done and gives its reservation back.
            streams.pop();
            assert!(reserve.as_mut().poll(&mut context).is_ready());
        }
        assert_eq!(held.bytes(), frame_bytes);
        assert_eq!(budget.available_permits(), left);
        drop(streams);
        drop(held);
        assert_eq!(budget.available_permits(), LARGE_FRAME_BUDGET_BYTES);
    });
}

// ---- assets ----

#[test]
fn asset_names_over_their_maximum_are_refused() {
    let dir = tempdir();
    let operator = wallet(9);
    let node = InProcessNode::start(NodeConfig {
        operators: vec![operator.address()],
        ..config(dir.path())
    });
    let register = |kind: &str, unit: &str, identity: &str| {
        let message = Message::new()
            .with("action", "Register")
            .with("kind", kind)
            .with("unit", unit)
            .with("identity", identity)
            .with("capacity", 1);
        post_message(
            &node.url(),
            "/assets/register",
            &operator.sign(message, &mut rand::rngs::OsRng),
        )
    };
    let (kind, unit, identity) = (
        "k".repeat(KIND_BYTES_MAX),
        "u".repeat(UNIT_BYTES_MAX),
        "i".repeat(IDENTITY_BYTES_MAX),
    );
    for (k, u, i) in [
        (format!("{kind}k"), unit.clone(), identity.clone()),
        (kind.clone(), format!("{unit}u"), identity.clone()),
        (kind.clone(), unit.clone(), format!("{identity}i")),
    ] {
        let (status, answer) = register(&k, &u, &i);
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("BadRequest")),
            "{answer}"
        );
    }
    let (status, answer) = register(&kind, &unit, &identity);
    assert_eq!(status, 201, "at the maximum: {answer}");
}

// ---- execution: the ABI's per-slot limits ----

const NATIVE_IMPORTS: &str = r#"
  (import "ferrobeam" "output" (func $output (param i32 i32)))
  (import "ferrobeam" "send_begin" (func $send_begin (param i32 i32)))
  (import "ferrobeam" "send_tag" (func $send_tag (param i32 i32 i32 i32)))
  (import "ferrobeam" "send_data" (func $send_data (param i32 i32)))
  (import "ferrobeam" "send_end" (func $send_end))
  (import "ferrobeam" "fail" (func $fail (param i32 i32)))
"#;

fn engine(dir: &std::path::Path, instances_max: u32) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.instances_max = instances_max;
    Engine::new(config).expect("engine")
}

fn load(engine: &Engine, wat: &str) -> Module {
    let wasm = wat::parse_str(wat).expect("WAT parses");
    engine
        .load(Id(Sha256::digest(&wasm).into()), &wasm)
        .expect("module loads")
}

fn definition(module: &Module, format: Option<&str>) -> Message {
    let message = Message::new()
        .with("type", "Process")
        .with("module", module.id().to_string());
    match format {
        Some(format) => message.with("module-format", format),
        None => message,
    }
}

/// Instantiates `module` and runs slot 0 (the process message).
fn first_slot(module: &Module, format: Option<&str>) -> SlotOutcome {
    let definition = definition(module, format);
    let process = definition.id();
    let mut instance = Instance::new(module, process, &definition).expect("instantiates");
    let input = SlotInput {
        process,
        slot: 0,
        message_id: process,
        message: definition,
        from: Address([1; 32]),
        owner: Address([1; 32]),
        timestamp_ms: 1_700_000_000_000,
    };
    instance.run(&input).expect("slot runs")
}

fn native(body: &str) -> String {
    format!(
        r#"(module {NATIVE_IMPORTS} (memory (export "memory") 1)
           (data (i32.const 0) "target")
           (func (export "handle") (result i32) (local $i i32) {body} (i32.const 0)))"#
    )
}

#[test]
fn native_abi_limits_fail_the_slot() {
    let dir = tempdir();
    let engine = engine(dir.path(), 4);
    // SEND_TAGS_MAX distinct tags fit, one more fails: keys "t" + two letters, built at 100.
    let tags = |n: u32| {
        native(&format!(
            r#"(i32.store8 (i32.const 100) (i32.const 116))
            (call $send_begin (i32.const 0) (i32.const 6))
            (loop $tag
              (i32.store8 (i32.const 101) (i32.add (i32.const 97) (i32.div_u (local.get $i) (i32.const 26))))
              (i32.store8 (i32.const 102) (i32.add (i32.const 97) (i32.rem_u (local.get $i) (i32.const 26))))
              (call $send_tag (i32.const 100) (i32.const 3) (i32.const 0) (i32.const 1))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $tag (i32.lt_u (local.get $i) (i32.const {n}))))
            (call $send_end)"#
        ))
    };
    let at = first_slot(&load(&engine, &tags(SEND_TAGS_MAX as u32)), None);
    assert_eq!(at.error, None);
    assert_eq!(at.outbox.len(), 1);
    let over = first_slot(&load(&engine, &tags(SEND_TAGS_MAX as u32 + 1)), None);
    let error = over.error.expect("over SEND_TAGS_MAX fails");
    assert!(
        error.contains(&format!("exceeds {SEND_TAGS_MAX} tags")),
        "{error}"
    );
    assert!(over.outbox.is_empty());

    // OUTBOX_BYTES_MAX: 64 KiB of data at a time.
    let chunks = (OUTBOX_BYTES_MAX / 65_536) as u32 + 1;
    let outbox = native(&format!(
        r#"(call $send_begin (i32.const 0) (i32.const 6))
        (loop $data
          (call $send_data (i32.const 0) (i32.const 65536))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $data (i32.lt_u (local.get $i) (i32.const {chunks}))))
        (call $send_end)"#
    ));
    let over = first_slot(&load(&engine, &outbox), None);
    let error = over.error.expect("over OUTBOX_BYTES_MAX fails");
    assert!(
        error.contains(&format!("outbox exceeds {OUTBOX_BYTES_MAX} bytes")),
        "{error}"
    );

    // ERROR_BYTES_MAX: a longer `fail` text is cut.
    let fail = native(
        "(memory.fill (i32.const 0) (i32.const 120) (i32.const 10000)) (call $fail (i32.const 0) (i32.const 10000))",
    );
    let failed = first_slot(&load(&engine, &fail), None);
    assert_eq!(failed.error, Some("x".repeat(ERROR_BYTES_MAX)));

    // The wasm stack: endless recursion traps the slot instead of the thread.
    let recursion = format!(
        r#"(module {NATIVE_IMPORTS} (memory (export "memory") 1)
           (func $deeper (param i64) (result i64) (call $deeper (i64.add (local.get 0) (i64.const 1))))
           (func (export "handle") (result i32) (drop (call $deeper (i64.const 0))) (i32.const 0)))"#
    );
    let overflow = first_slot(&load(&engine, &recursion), None);
    assert!(overflow.error.is_some(), "stack overflow fails the slot");
}

#[test]
fn engine_limits_refuse_instances() {
    let dir = tempdir();
    // Tables: TABLE_ELEMENTS_MAX elements instantiate, one more does not.
    let engine_4 = engine(dir.path(), 4);
    let table = |n: usize| {
        format!(
            r#"(module (memory (export "memory") 1) (table {n} funcref)
               (func (export "handle") (result i32) (i32.const 0)))"#
        )
    };
    let fits = load(&engine_4, &table(TABLE_ELEMENTS_MAX));
    assert_eq!(first_slot(&fits, None).error, None);
    // Refused when loaded (the pool checks modules against its limits) or instantiated.
    let wasm = wat::parse_str(table(TABLE_ELEMENTS_MAX + 1)).unwrap();
    let refused = match engine_4.load(Id(Sha256::digest(&wasm).into()), &wasm) {
        Err(_) => true,
        Ok(over) => {
            let definition = definition(&over, None);
            Instance::new(&over, definition.id(), &definition).is_err()
        }
    };
    assert!(refused, "a table over TABLE_ELEMENTS_MAX");

    // The instance pool: an engine of 1 instance refuses a second live one.
    let dir = tempdir();
    let engine_1 = engine(dir.path(), 1);
    let module = load(&engine_1, &native(""));
    let definition = definition(&module, None);
    let first = Instance::new(&module, definition.id(), &definition).expect("first");
    assert!(Instance::new(&module, definition.id(), &definition).is_err());
    drop(first);
    Instance::new(&module, definition.id(), &definition).expect("the slot came back");
}

/// A minimal wasm32 ao-json module: `malloc` always answers 1024, `handle` runs `body` and
/// returns what it leaves on the stack.
fn ao_json(pages: u32, extra: &str, body: &str) -> String {
    format!(
        r#"(module {extra} (memory (export "memory") {pages})
           (func (export "malloc") (param i32) (result i32) (i32.const 1024))
           (func (export "handle") (param i32 i32) (result i32) {body}))"#
    )
}

const WASM32: Option<&str> = Some("wasm32-unknown-emscripten2");

#[test]
fn ao_json_limits_fail_the_load_or_the_slot() {
    let dir = tempdir();
    let engine = engine(dir.path(), 4);
    // GLOBALS_MAX mutable globals are saved in snapshots; more refuse the module.
    let globals = |n: usize| {
        (0..n)
            .map(|i| format!("(global $g{i} (mut i32) (i32.const 0))"))
            .collect::<String>()
    };
    let ok = r#"(data (i32.const 0) "{\"ok\":true}\00")"#;
    load(
        &engine,
        &ao_json(
            1,
            &format!("{ok} {}", globals(GLOBALS_MAX)),
            "(i32.const 0)",
        ),
    );
    let wasm = wat::parse_str(ao_json(1, &globals(GLOBALS_MAX + 1), "(i32.const 0)")).unwrap();
    let err = engine
        .load(Id(Sha256::digest(&wasm).into()), &wasm)
        .expect_err("too many mutable globals");
    assert!(
        err.to_string()
            .contains(&format!("more than {GLOBALS_MAX} mutable globals")),
        "{err}"
    );

    // RESPONSE_BYTES_MAX: a response with no NUL within it fails the slot.
    let pages = (RESPONSE_BYTES_MAX / 65_536) as u32 + 2;
    let unterminated = ao_json(
        pages,
        "",
        &format!(
            "(memory.fill (i32.const 0) (i32.const 97) (i32.const {})) (i32.const 0)",
            pages * 65_536
        ),
    );
    let outcome = first_slot(&load(&engine, &unterminated), WASM32);
    let error = outcome.error.expect("an unterminated response fails");
    assert!(
        error.contains(&format!(
            "not NUL-terminated within {RESPONSE_BYTES_MAX} bytes"
        )),
        "{error}"
    );

    // fd_write takes at most 1024 iovecs (POSIX IOV_MAX): more is EINVAL (28), not a host loop.
    let iovecs = ao_json(
        1,
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
           (data (i32.const 30000) "{\"ok\":true,\"response\":{\"Output\":\"capped\"}}\00")
           (data (i32.const 30100) "{\"ok\":true,\"response\":{\"Output\":\"not capped\"}}\00")"#,
        r#"(select (i32.const 30000) (i32.const 30100)
             (i32.and
               (i32.eqz (call $fd_write (i32.const 1) (i32.const 20000) (i32.const 1024) (i32.const 16)))
               (i32.eq (call $fd_write (i32.const 1) (i32.const 20000) (i32.const 1025) (i32.const 16)) (i32.const 28))))"#,
    );
    let outcome = first_slot(&load(&engine, &iovecs), WASM32);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output, b"capped");
}

#[test]
fn stdio_past_stdio_bytes_max_is_dropped() {
    let dir = tempdir();
    let engine = engine(dir.path(), 4);
    // Two iovecs: STDIO_BYTES_MAX bytes of "a" (kept), then 1 KiB of "b" (dropped). The slot then
    // traps, and its error ends with the tail of what was kept.
    let writer = ao_json(
        3,
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(memory.fill (i32.const 65536) (i32.const 97) (i32.const {STDIO_BYTES_MAX}))
            (memory.fill (i32.const 131072) (i32.const 98) (i32.const 1024))
            (i32.store (i32.const 0) (i32.const 65536)) (i32.store (i32.const 4) (i32.const {STDIO_BYTES_MAX}))
            (i32.store (i32.const 8) (i32.const 131072)) (i32.store (i32.const 12) (i32.const 1024))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 16)))
            unreachable"#
        ),
    );
    let outcome = first_slot(&load(&engine, &writer), WASM32);
    let error = outcome.error.expect("the slot traps");
    assert!(
        error.ends_with(&format!("stdout/stderr: {}", "a".repeat(1024))),
        "{}",
        &error[error.len().saturating_sub(200)..]
    );
}
