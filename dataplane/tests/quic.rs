//! The QUIC ingress over real sockets on loopback: messages, spawns and bulk frames, the pinned
//! node identity, and bad input (garbage datagrams, invalid and oversized frames, bad
//! signatures, streams that never finish) dropped with counters while other connections work,
//! and the connection limit. Every test runs against each backend (`on_uring::*`, `on_tokio::*`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{NOOP_WAT, get, path, post, spawn_wat, tempdir, wallet};
use ferrobeam::ingress::client::{ClientError, QuicClient, bulk_frame, message_frame};
use ferrobeam::ingress::frame::{self, HEADER_BYTES, Kind, PAYLOAD_BYTES_MAX};
use ferrobeam::ingress::{CONNECTIONS_MAX, Reply, TransportKind, code};
use ferrobeam::message::{Address, Id, Message, Wallet, json};
use ferrobeam::node::{Node, NodeConfig};
use ferrobeam::schedule::{Assignment, verify_schedule};

/// A node with a QUIC ingress, in this process; stopped on drop.
struct QuicNode {
    http: String,
    quic: SocketAddr,
    address: Address,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuicNode {
    fn start(dir: &std::path::Path, idle_timeout_ms: u64, transport: TransportKind) -> Self {
        let config = NodeConfig {
            quic: Some("127.0.0.1:0".parse().unwrap()),
            transport,
            ingress_cores: 1,
            quic_idle_timeout_ms: idle_timeout_ms,
            ..common::config(dir)
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let node = Node::start(config).await.expect("node starts");
                // No silent fallback: each backend's tests run on that backend.
                assert_eq!(node.quic_transport(), Some(transport));
                let ready = (
                    node.local_addr().unwrap(),
                    node.quic_addr().expect("QUIC ingress"),
                    node.address(),
                );
                ready_tx.send(ready).unwrap();
                node.serve(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let (http, quic, address) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node ready");
        Self {
            http: format!("http://{http}"),
            quic,
            address,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let (_, text) = get(&self.http, "/metrics").unwrap();
        let text = text.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for QuicNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn signed_to(wallet: &Wallet, process: &Id, n: usize) -> Message {
    let message = Message::new()
        .with("target", process.to_string())
        .with("n", n as i64)
        .with("data", "hello over quic");
    wallet.sign(message, &mut rand::rngs::OsRng)
}

/// Sends `frames` on a new stream, finishes it, and returns every reply.
async fn exchange(client: &QuicClient, frames: &[u8]) -> Result<Vec<Reply>, ClientError> {
    let (mut sender, mut receiver) = client.open().await?;
    let writer = async {
        sender.send(frames).await?;
        sender.finish();
        Ok::<_, ClientError>(())
    };
    let reader = async {
        let mut replies = Vec::new();
        while let Some(reply) = receiver.next().await? {
            replies.push(reply);
        }
        Ok::<_, ClientError>(replies)
    };
    let (written, read) = tokio::join!(writer, reader);
    let replies = read?;
    written?;
    Ok(replies)
}

fn ack(reply: &Reply) -> &ferrobeam::node::Ack {
    match reply {
        Reply::Ack(ack) => ack,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn refused(reply: &Reply) -> &str {
    match reply {
        Reply::Refused(refusal) => &refusal.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn messages_are_acked_with_their_durable_slot_and_appear_in_the_schedule(transport: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 10_000, transport);
    let alice = wallet(1);
    let process = spawn_wat(&node.http, &alice, NOOP_WAT, &[]);
    let rt = runtime();
    let sent: Vec<Message> = (0..40).map(|n| signed_to(&alice, &process, n)).collect();
    let (first, second) = rt.block_on(async {
        let client = QuicClient::connect(node.quic, node.address).await.unwrap();
        // Two streams at once, each pipelining its frames.
        let frames =
            |messages: &[Message]| -> Vec<u8> { messages.iter().flat_map(message_frame).collect() };
        let (first, second) = (frames(&sent[..25]), frames(&sent[25..]));
        let (a, b) = tokio::join!(exchange(&client, &first), exchange(&client, &second));
        client.close().await;
        (a.unwrap(), b.unwrap())
    });
    assert_eq!(first.len(), 25);
    assert_eq!(second.len(), 15);
    // Replies come in frame order, each naming its message; slots grow within a stream.
    for (replies, messages) in [(&first, &sent[..25]), (&second, &sent[25..])] {
        let mut last = 0;
        for (reply, message) in replies.iter().zip(messages) {
            let ack = ack(reply);
            assert_eq!(ack.id, message.id());
            assert_eq!(ack.process, process);
            assert!(!ack.duplicate);
            assert!(ack.slot > last, "slots in stream order");
            last = ack.slot;
        }
    }
    let mut slots: Vec<u64> = first.iter().chain(&second).map(|r| ack(r).slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, (1..=40).collect::<Vec<_>>());
    // Durable and visible over HTTP, with a valid hash chain.
    let (_, page) = get(&node.http, &format!("/{process}/schedule?from=0")).unwrap();
    let assignments: Vec<Assignment> = page["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| Assignment::from_message(&json::from_json(&a["assignment"]).unwrap()).unwrap())
        .collect();
    assert_eq!(assignments.len(), 41);
    assert_eq!(verify_schedule(&process, &assignments), Ok(()));
    for reply in first.iter().chain(&second) {
        let ack = ack(reply);
        assert_eq!(assignments[ack.slot as usize].message, ack.id);
        assert_eq!(assignments[ack.slot as usize].hashpath, ack.hashpath);
    }
    // The same message again: the original ack, marked duplicate.
    let again = rt.block_on(async {
        let client = QuicClient::connect(node.quic, node.address).await.unwrap();
        exchange(&client, &message_frame(&sent[0])).await.unwrap()
    });
    let original = ack(&first[0]);
    assert!(ack(&again[0]).duplicate);
    assert_eq!(ack(&again[0]).slot, original.slot);
    assert_eq!(node.metric("ferrobeam_quic_messages_acked_total "), 41.0);
}

fn a_process_spawns_over_quic(transport: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 10_000, transport);
    let wasm = wat::parse_str(NOOP_WAT).unwrap();
    let (status, body) = post(&node.http, "/~wasm@1.0/module", "application/wasm", &wasm);
    assert_eq!(status, 201, "{body}");
    let alice = wallet(2);
    let spawn = alice.sign(
        Message::new()
            .with("type", "Process")
            .with("module", body["module"].as_str().unwrap()),
        &mut rand::rngs::OsRng,
    );
    let unknown_module = alice.sign(
        Message::new()
            .with("type", "Process")
            .with("module", Id([9; 32]).to_string()),
        &mut rand::rngs::OsRng,
    );
    let rt = runtime();
    let replies = rt.block_on(async {
        let client = QuicClient::connect(node.quic, node.address).await.unwrap();
        let mut frames = message_frame(&spawn);
        frames.extend(message_frame(&unknown_module));
        exchange(&client, &frames).await.unwrap()
    });
    let ack = ack(&replies[0]);
    assert_eq!(ack.process, spawn.id());
    assert_eq!(ack.id, spawn.id());
    assert_eq!(ack.slot, 0);
    assert_eq!(refused(&replies[1]), "UnknownModule");
    // A message larger than a stream keeps buffered between frames reserves the large-frame
    // budget on its way in, and is acked like any other.
    let big = alice.sign(
        Message::new()
            .with("target", ack.process.to_string())
            .with("data", vec![b'z'; 300 * 1024]),
        &mut rand::rngs::OsRng,
    );
    let replies = rt.block_on(async {
        let client = QuicClient::connect(node.quic, node.address).await.unwrap();
        exchange(&client, &message_frame(&big)).await.unwrap()
    });
    assert_eq!(self::ack(&replies[0]).slot, 1);
    let (status, slot) = get(&node.http, &format!("/{}/slot", ack.process)).unwrap();
    assert_eq!(status, 200, "{slot}");
}

fn bulk_frames_are_acknowledged_by_byte_count(transport: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 10_000, transport);
    let sizes = [0usize, 1, 100_000, 3 * 1024 * 1024];
    let rt = runtime();
    let replies = rt.block_on(async {
        let client = QuicClient::connect(node.quic, node.address).await.unwrap();
        let frames: Vec<u8> = sizes.iter().flat_map(|s| bulk_frame(*s)).collect();
        exchange(&client, &frames).await.unwrap()
    });
    let counted: Vec<Reply> = sizes.iter().map(|s| Reply::Bulk(*s as u64)).collect();
    assert_eq!(replies, counted);
    let total: usize = sizes.iter().sum();
    assert_eq!(
        node.metric("ferrobeam_quic_bulk_bytes_total "),
        total as f64
    );
}

fn a_wrong_pinned_address_fails_the_handshake(transport: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 10_000, transport);
    let rt = runtime();
    rt.block_on(async {
        let impostor = wallet(3).address();
        let refused = QuicClient::connect(node.quic, impostor).await;
        assert!(
            matches!(refused, Err(ClientError::Connect(_))),
            "{refused:?}"
        );
        // The right pin still connects.
        let client = QuicClient::connect(node.quic, node.address).await.unwrap();
        client.close().await;
    });
    assert!(node.metric("ferrobeam_quic_connections_refused_total{reason=\"handshake\"} ") >= 1.0);
}

/// A frame header with arbitrary fields.
fn raw_header(len: u32, kind: u32) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&kind.to_le_bytes());
    header
}

/// `signed` with one byte of its signature flipped (through the JSON form, which does not
/// verify on decode).
fn with_bad_signature(signed: &Message) -> Message {
    let mut value = json::to_json(signed);
    let signature = value["commitments"][0]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bytes = ferrobeam::message::unb64(&signature, "signature").unwrap();
    bytes[0] ^= 1;
    value["commitments"][0]["signature"] = ferrobeam::message::b64(&bytes).into();
    json::from_json(&value).unwrap()
}

fn bad_input_is_dropped_with_counters_while_another_connection_keeps_working(
    transport: TransportKind,
) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 10_000, transport);
    let alice = wallet(4);
    let process = spawn_wat(&node.http, &alice, NOOP_WAT, &[]);
    let rt = runtime();
    let mut refused_ids = Vec::new();
    rt.block_on(async {
        let good = QuicClient::connect(node.quic, node.address).await.unwrap();
        let replies = exchange(&good, &message_frame(&signed_to(&alice, &process, 0)))
            .await
            .unwrap();
        ack(&replies[0]);

        // Garbage datagrams: runts and packets without QUIC's fixed bit.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..50u8 {
            socket.send_to(&[0u8; 5], node.quic).unwrap();
            socket.send_to(&[i & 0x3f; 1200], node.quic).unwrap();
        }

        let bad = QuicClient::connect(node.quic, node.address).await.unwrap();
        // An unknown frame kind: refused, then the stream ends.
        let replies = exchange(&bad, &raw_header(16, 99)).await.unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(refused(&replies[0]), "FrameInvalid");
        // An oversized frame: refused from its header alone.
        let header = raw_header(PAYLOAD_BYTES_MAX as u32 + 16, Kind::Message.code());
        let replies = exchange(&bad, &header).await.unwrap();
        assert_eq!(refused(&replies[0]), "FrameTooLarge");
        // A bad signature, and a payload that is no rkyv message: each refused, and the
        // stream goes on to ack the valid message after them.
        let forged = with_bad_signature(&signed_to(&alice, &process, 1));
        refused_ids.push(forged.id());
        let mut frames = message_frame(&forged);
        frames.extend(frame::encode(Kind::Message, &[0xAB; 64]));
        frames.extend(message_frame(&signed_to(&alice, &process, 2)));
        let replies = exchange(&bad, &frames).await.unwrap();
        assert_eq!(refused(&replies[0]), "SignatureInvalid");
        assert_eq!(refused(&replies[1]), "WireInvalid");
        ack(&replies[2]);
        // An unsigned message.
        let unsigned = Message::new()
            .with("target", process.to_string())
            .with("n", 100);
        refused_ids.push(unsigned.id());
        let replies = exchange(&bad, &message_frame(&unsigned)).await.unwrap();
        assert_eq!(refused(&replies[0]), "Unsigned");
        // A forged message among valid ones still fails alone (batch verification falls back).
        let mut frames = Vec::new();
        for n in 3..10 {
            let message = signed_to(&alice, &process, n);
            let message = if n == 6 {
                let forged = with_bad_signature(&message);
                refused_ids.push(forged.id());
                forged
            } else {
                message
            };
            frames.extend(message_frame(&message));
        }
        let replies = exchange(&bad, &frames).await.unwrap();
        for (i, reply) in replies.iter().enumerate() {
            if i == 3 {
                assert_eq!(refused(reply), "SignatureInvalid");
            } else {
                ack(reply);
            }
        }
        // The first connection was never disturbed.
        let replies = exchange(&good, &message_frame(&signed_to(&alice, &process, 10)))
            .await
            .unwrap();
        ack(&replies[0]);
        good.close().await;
        bad.close().await;
    });
    let counter = |name: &str| node.metric(name);
    assert!(counter("ferrobeam_quic_datagrams_dropped_total{reason=\"runt\"} ") >= 50.0);
    assert!(counter("ferrobeam_quic_datagrams_dropped_total{reason=\"fixed-bit-clear\"} ") >= 50.0);
    assert_eq!(
        counter("ferrobeam_quic_frames_invalid_total{reason=\"unknown-kind\"} "),
        1.0
    );
    assert_eq!(
        counter("ferrobeam_quic_frames_invalid_total{reason=\"too-large\"} "),
        1.0
    );
    assert_eq!(
        counter("ferrobeam_quic_streams_closed_total{reason=\"frame-invalid\"} "),
        2.0
    );
    assert_eq!(
        counter("ferrobeam_quic_messages_refused_total{code=\"SignatureInvalid\"} "),
        2.0
    );
    assert_eq!(
        counter("ferrobeam_quic_messages_refused_total{code=\"WireInvalid\"} "),
        1.0
    );
    assert_eq!(
        counter("ferrobeam_quic_messages_refused_total{code=\"Unsigned\"} "),
        1.0
    );
    assert_eq!(counter("ferrobeam_quic_messages_acked_total "), 9.0);
    // The refused messages are neither scheduled nor stored: the schedule holds the spawn and
    // the 9 acknowledged messages, and no message id of a refused one resolves.
    let (_, page) = get(&node.http, &format!("/{process}/schedule?from=0")).unwrap();
    let scheduled: Vec<Id> = page["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            Assignment::from_message(&json::from_json(&a["assignment"]).unwrap())
                .unwrap()
                .message
        })
        .collect();
    assert_eq!(scheduled.len(), 10);
    assert_eq!(refused_ids.len(), 3);
    for id in &refused_ids {
        assert!(!scheduled.contains(id), "refused message {id} scheduled");
        let (status, _) = get(&node.http, &format!("/~message@1.0/{id}")).unwrap();
        assert_eq!(status, 404, "refused message {id} stored");
    }
}

fn a_stream_that_never_finishes_is_closed_by_the_idle_timeout(transport: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 500, transport);
    let alice = wallet(5);
    let process = spawn_wat(&node.http, &alice, NOOP_WAT, &[]);
    let rt = runtime();
    rt.block_on(async {
        let keep_alive = Duration::from_millis(100);
        let client = QuicClient::connect_with(node.quic, node.address, keep_alive)
            .await
            .unwrap();
        let (mut sender, mut receiver) = client.open().await.unwrap();
        // Half a header, then silence.
        sender
            .send(&raw_header(64, Kind::Message.code())[..8])
            .await
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), receiver.next())
            .await
            .expect("closed before the test's own timeout");
        match closed {
            Err(ClientError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(code, quinn::VarInt::from_u32(code::IDLE_TIMEOUT));
            }
            other => panic!("expected a reset stream, got {other:?}"),
        }
        // The connection itself lives on (the client keeps it alive) and serves new streams.
        let replies = exchange(&client, &message_frame(&signed_to(&alice, &process, 0)))
            .await
            .unwrap();
        ack(&replies[0]);
        client.close().await;
    });
    assert_eq!(
        node.metric("ferrobeam_quic_streams_closed_total{reason=\"idle-timeout\"} "),
        1.0
    );
}

fn connections_beyond_the_limit_are_refused_and_counted(transport: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(&path(&dir), 10_000, transport);
    let alice = wallet(6);
    let process = spawn_wat(&node.http, &alice, NOOP_WAT, &[]);
    let rt = runtime();
    rt.block_on(async {
        let mut clients = Vec::with_capacity(CONNECTIONS_MAX);
        for _ in 0..CONNECTIONS_MAX {
            clients.push(QuicClient::connect(node.quic, node.address).await.unwrap());
        }
        let refused = QuicClient::connect(node.quic, node.address).await;
        assert!(
            matches!(
                refused,
                Err(ClientError::Connect(_) | ClientError::Connection(_))
            ),
            "connection {} was accepted",
            CONNECTIONS_MAX + 1
        );
        // The connections inside the limit are unaffected.
        let replies = exchange(&clients[0], &message_frame(&signed_to(&alice, &process, 0)))
            .await
            .unwrap();
        ack(&replies[0]);
        // Concurrently: each close waits out its connection's draining period.
        let mut closing = tokio::task::JoinSet::new();
        for client in clients {
            closing.spawn(client.close());
        }
        closing.join_all().await;
    });
    let counter = |name: &str| node.metric(name);
    assert_eq!(
        counter("ferrobeam_quic_connections_refused_total{reason=\"connections-max\"} "),
        1.0
    );
    assert_eq!(
        counter("ferrobeam_quic_connections_accepted_total "),
        CONNECTIONS_MAX as f64
    );
}

/// One `#[test]` per scenario and backend.
macro_rules! per_transport {
    ($($module:ident => $kind:expr),*) => {
        $(
        mod $module {
            use super::TransportKind;

            #[test]
            fn messages_are_acked_with_their_durable_slot_and_appear_in_the_schedule() {
                super::messages_are_acked_with_their_durable_slot_and_appear_in_the_schedule($kind);
            }

            #[test]
            fn a_process_spawns_over_quic() {
                super::a_process_spawns_over_quic($kind);
            }

            #[test]
            fn bulk_frames_are_acknowledged_by_byte_count() {
                super::bulk_frames_are_acknowledged_by_byte_count($kind);
            }

            #[test]
            fn a_wrong_pinned_address_fails_the_handshake() {
                super::a_wrong_pinned_address_fails_the_handshake($kind);
            }

            #[test]
            fn bad_input_is_dropped_with_counters_while_another_connection_keeps_working() {
                super::bad_input_is_dropped_with_counters_while_another_connection_keeps_working($kind);
            }

            #[test]
            fn connections_beyond_the_limit_are_refused_and_counted() {
                super::connections_beyond_the_limit_are_refused_and_counted($kind);
            }

            #[test]
            fn a_stream_that_never_finishes_is_closed_by_the_idle_timeout() {
                super::a_stream_that_never_finishes_is_closed_by_the_idle_timeout($kind);
            }
        }
        )*
    };
}

per_transport!(on_uring => TransportKind::Uring, on_tokio => TransportKind::Tokio);
