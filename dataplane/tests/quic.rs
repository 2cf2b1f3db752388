//! The QUIC ingress over real sockets on loopback: messages, spawns and bulk frames, the pinned
//! node identity, and bad input (garbage datagrams, invalid and oversized frames, bad
//! signatures, streams that never finish, connection floods) dropped with counters while other
//! connections work. Every test runs against every backend (`backends!` at the end).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{NOOP_WAT, get, path, post, spawn_wat, tempdir, wallet};
use ferrobeam::ingress::client::{ClientError, QuicClient, bulk_frame, message_frame};
use ferrobeam::ingress::frame::{self, HEADER_BYTES, Kind, PAYLOAD_BYTES_MAX};
use ferrobeam::ingress::{
    FRAMES_IN_FLIGHT_PER_STREAM_MAX, READ_CHUNK_BYTES_MAX, Reply, STREAM_RECEIVE_WINDOW_BYTES,
    TransportKind, code,
};
use ferrobeam::message::{Address, Id, Message, Wallet, json};
use ferrobeam::node::{Node, NodeConfig, WeakSequencer};
use ferrobeam::schedule::{Assignment, verify_schedule};

/// A node with a QUIC ingress, in this process; stopped on drop.
struct QuicNode {
    http: String,
    quic: SocketAddr,
    address: Address,
    sequencer: WeakSequencer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuicNode {
    fn start(kind: TransportKind, dir: &std::path::Path, idle_timeout_ms: u64) -> Self {
        Self::start_with(NodeConfig {
            quic: Some("127.0.0.1:0".parse().unwrap()),
            transport: kind,
            ingress_cores: 1,
            quic_idle_timeout_ms: idle_timeout_ms,
            ..common::config(dir)
        })
    }

    fn start_with(config: NodeConfig) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let transport = config.transport;
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
                    node.sequencer(),
                );
                ready_tx.send(ready).unwrap();
                node.serve(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let (http, quic, address, sequencer) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node ready");
        Self {
            http: format!("http://{http}"),
            quic,
            address,
            sequencer,
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

fn messages_are_acked_with_their_durable_slot_and_appear_in_the_schedule(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 10_000);
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

fn a_process_spawns_over_quic(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 10_000);
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

fn bulk_frames_are_acknowledged_by_byte_count(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 10_000);
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

fn a_wrong_pinned_address_fails_the_handshake(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 10_000);
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

fn bad_input_is_dropped_with_counters_while_another_connection_keeps_working(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 10_000);
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

fn a_stream_that_never_finishes_is_closed_by_the_idle_timeout(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 500);
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

/// While the sequencer is held no frame is answered: the node reads a stream up to
/// `FRAMES_IN_FLIGHT_PER_STREAM_MAX` frames (plus what its last read chunk held), then stops, so
/// the stream's credit stops growing and the client's writes block once the receive window is
/// full. Released, the acks go out, reading resumes and every frame is answered in order. The
/// frames are ~32 KiB, so the window holds only ~64 of them and the cap is what binds.
fn a_stream_is_not_read_past_frames_in_flight_per_stream_max(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 60_000);
    let alice = wallet(6);
    let process = spawn_wat(&node.http, &alice, NOOP_WAT, &[]);
    let message = |n: usize| {
        let message = Message::new()
            .with("target", process.to_string())
            .with("n", n as i64)
            .with("data", vec![n as u8; 32 * 1024]);
        alice.sign(message, &mut rand::rngs::OsRng)
    };
    let frame_bytes = message_frame(&message(0)).len();
    let window_frames = STREAM_RECEIVE_WINDOW_BYTES as usize / frame_bytes;
    // A read takes up to a chunk before the cap is checked again.
    let chunk_frames = READ_CHUNK_BYTES_MAX.div_ceil(frame_bytes) + 1;
    let total = FRAMES_IN_FLIGHT_PER_STREAM_MAX + window_frames + 32;
    let messages: Vec<Message> = (0..total).map(message).collect();
    let frames: Vec<Vec<u8>> = messages.iter().map(message_frame).collect();
    let read_frames =
        || node.metric("ferrobeam_quic_frames_received_total{kind=\"message\"} ") as usize;
    let read_before = read_frames();
    let rt = runtime();
    let client = rt
        .block_on(QuicClient::connect(node.quic, node.address))
        .unwrap();
    let (mut sender, mut receiver) = rt.block_on(client.open()).unwrap();
    let hold = node.sequencer.hold();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = rt.spawn({
        let written = written.clone();
        async move {
            for frame in frames {
                sender.send(&frame).await.unwrap();
                written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            sender.finish();
        }
    });
    let written_frames = || written.load(std::sync::atomic::Ordering::SeqCst);
    // The node reads up to its cap, and the client fills the window behind it (quinn returns
    // credit in steps of 1/8 of the window, s2n as it is read: half of it is sure to come).
    let filled = || {
        read_frames() - read_before >= FRAMES_IN_FLIGHT_PER_STREAM_MAX
            && written_frames() >= FRAMES_IN_FLIGHT_PER_STREAM_MAX + window_frames / 2
    };
    for _ in 0..600 {
        if filled() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        filled(),
        "read {}, written {}",
        read_frames() - read_before,
        written_frames()
    );
    // Given time, it goes no further: nothing is read past the cap, no credit past the window.
    std::thread::sleep(Duration::from_millis(500));
    let (read, written_held) = (read_frames() - read_before, written_frames());
    assert!(
        read <= FRAMES_IN_FLIGHT_PER_STREAM_MAX + chunk_frames,
        "read {read} frames with none answered"
    );
    // Credit is what the node consumed (the frames read and a chunk's partial frame) plus the
    // window.
    assert!(
        written_held <= read + chunk_frames + window_frames,
        "wrote {written_held} frames, the node read {read}"
    );
    assert!(written_held < total);
    // Acks go out, reading resumes, and every frame is answered in order.
    drop(hold);
    let replies = rt.block_on(async {
        let mut replies = Vec::new();
        while let Some(reply) = receiver.next().await.unwrap() {
            replies.push(reply);
        }
        replies
    });
    rt.block_on(writer).unwrap();
    assert_eq!(replies.len(), total);
    for (reply, message) in replies.iter().zip(&messages) {
        assert_eq!(ack(reply).id, message.id());
    }
    assert_eq!(read_frames() - read_before, total);
    rt.block_on(client.close());
}

/// A UDP socket for quinn that sends but never delivers what arrives, and goes silent on demand:
/// its handshakes never complete, and once silent the node hears nothing more from them.
#[derive(Debug)]
struct MuteSocket {
    inner: std::sync::Arc<dyn quinn::AsyncUdpSocket>,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl quinn::AsyncUdpSocket for MuteSocket {
    fn create_io_poller(self: std::sync::Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        if self.silent.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        _cx: &mut std::task::Context<'_>,
        _bufs: &mut [std::io::IoSliceMut<'_>],
        _meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Pending
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn connections_flood_are_refused_and_counted_while_an_open_connection_keeps_working(
    kind: TransportKind,
) {
    // A small cap keeps the flood cheap; the backends apply `quic-connections-max` exactly as
    // they apply its default, CONNECTIONS_MAX. Half-open handshakes end after the idle timeout.
    let connections_max = 16;
    let dir = tempdir();
    let node = QuicNode::start_with(NodeConfig {
        quic: Some("127.0.0.1:0".parse().unwrap()),
        transport: kind,
        ingress_cores: 1,
        quic_idle_timeout_ms: 3_000,
        quic_connections_max: connections_max,
        ..common::config(&path(&dir))
    });
    let alice = wallet(6);
    let process = spawn_wat(&node.http, &alice, NOOP_WAT, &[]);
    let rt = runtime();
    let flood = connections_max * 3;
    rt.block_on(async {
        // Kept alive well inside the node's short idle timeout.
        let keep_alive = Duration::from_millis(200);
        let good = QuicClient::connect_with(node.quic, node.address, keep_alive)
            .await
            .unwrap();
        ack(
            &exchange(&good, &message_frame(&signed_to(&alice, &process, 0)))
                .await
                .unwrap()[0],
        );

        // `flood` handshakes that never complete, from one endpoint (distinct connection ids).
        use quinn::Runtime as _;
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mute = MuteSocket {
            inner: quinn::TokioRuntime.wrap_udp_socket(socket).unwrap(),
            silent: silent.clone(),
        };
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            std::sync::Arc::new(mute),
            std::sync::Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
            ferrobeam::ingress::tls::client_config(node.address).unwrap(),
        )
        .unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        let attempts: Vec<quinn::Connecting> = (0..flood)
            .map(|_| {
                endpoint
                    .connect(node.quic, ferrobeam::ingress::tls::SERVER_NAME)
                    .unwrap()
            })
            .collect();

        // The node takes `connections_max` (the good connection among them), refuses the rest.
        let refused_max = "ferrobeam_quic_connections_refused_total{reason=\"connections-max\"} ";
        let over = (flood + 1 - connections_max) as f64;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Bounded by the deadline.
        while node.metric(refused_max) < over && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(node.metric(refused_max) >= over, "{kind:?}: flood refused");
        // A new client is refused while every slot is taken...
        let late = QuicClient::connect(node.quic, node.address).await;
        assert!(matches!(late, Err(ClientError::Connect(_))), "{late:?}");
        // ...and the open connection keeps getting acks.
        for n in 1..4 {
            let frames = message_frame(&signed_to(&alice, &process, n));
            ack(&exchange(&good, &frames).await.unwrap()[0]);
        }

        // The flooding peer goes silent: its handshakes time out on the node, are counted, and
        // their slots come back.
        silent.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let fresh = loop {
            match QuicClient::connect(node.quic, node.address).await {
                Ok(client) => break client,
                Err(e) if std::time::Instant::now() > deadline => panic!("{kind:?}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        ack(
            &exchange(&fresh, &message_frame(&signed_to(&alice, &process, 9)))
                .await
                .unwrap()[0],
        );
        ack(
            &exchange(&good, &message_frame(&signed_to(&alice, &process, 10)))
                .await
                .unwrap()[0],
        );
        drop(attempts);
        fresh.close().await;
        good.close().await;
    });
    let handshakes = node.metric("ferrobeam_quic_connections_refused_total{reason=\"handshake\"} ");
    assert!(handshakes >= 1.0, "{kind:?}: timed-out handshakes counted");
    assert_eq!(node.metric("ferrobeam_quic_messages_acked_total "), 6.0);
}

fn jumbo_packets_flow_when_both_ends_allow_them(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start_with(NodeConfig {
        quic: Some("127.0.0.1:0".parse().unwrap()),
        transport: kind,
        ingress_cores: 1,
        quic_max_udp_payload: ferrobeam::ingress::UDP_PAYLOAD_BYTES_MAX,
        ..common::config(&path(&dir))
    });
    let rt = runtime();
    let (reached, path) = rt.block_on(async {
        let client = QuicClient::connect_tuned(
            node.quic,
            node.address,
            ferrobeam::ingress::client::KEEP_ALIVE_DEFAULT,
            ferrobeam::ingress::UDP_PAYLOAD_BYTES_MAX,
        )
        .await
        .unwrap();
        // MTU discovery probes after the handshake, while small exchanges keep the connection
        // busy. An acknowledged probe means the node received it. Bounded.
        let max = ferrobeam::ingress::UDP_PAYLOAD_BYTES_MAX;
        for _ in 0..300 {
            let replies = exchange(&client, &bulk_frame(4096)).await.unwrap();
            assert_eq!(replies, vec![Reply::Bulk(4096)]);
            if client.connection().stats().path.current_mtu == max {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reached = client.connection().stats().path.current_mtu;
        // Bulk data then goes out in full GSO batches of jumbo packets. Each batch must fit one
        // send: an oversized one is refused by the kernel and silently lost, and the losses make
        // quinn judge the path a black hole and fall back to 1200-byte packets.
        let frames: Vec<u8> = (0..16).flat_map(|_| bulk_frame(1024 * 1024)).collect();
        let replies = exchange(&client, &frames).await.unwrap();
        assert_eq!(replies, vec![Reply::Bulk(1024 * 1024); 16]);
        let path = client.connection().stats().path;
        client.close().await;
        (reached, path)
    });
    let max = ferrobeam::ingress::UDP_PAYLOAD_BYTES_MAX;
    assert_eq!(reached, max, "{kind:?}: MTU discovery stopped at {reached}");
    assert_eq!(
        (path.current_mtu, path.black_holes_detected),
        (max, 0),
        "{kind:?}: jumbo packets did not survive bulk data ({path:?})"
    );
}

fn info_reports_the_pinned_cores(kind: TransportKind) {
    let dir = tempdir();
    let node = QuicNode::start(kind, &path(&dir), 10_000);
    let (status, info) = get(&node.http, "/~meta@1.0/info").unwrap();
    assert_eq!(status, 200, "{info}");
    let cores = &info["cores"];
    let list = |key: &str| -> Vec<u64> {
        cores[key]
            .as_array()
            .unwrap_or_else(|| panic!("cores.{key} in {info}"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    assert_eq!(list("ingress").len(), 1, "ingress-cores = 1 in this node");
    assert!(!list("exec").is_empty());
    assert!(cores["sequencer"].as_u64().is_some(), "{info}");
    assert_eq!(
        info["config"]["exec-cores"].as_u64(),
        Some(list("exec").len() as u64)
    );
    // The threads really are pinned where the plan says: read their affinity from /proc.
    let cpus_of = |name: &str| -> Vec<String> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let status = std::fs::read_to_string(task.path().join("status")).unwrap();
                let allowed = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap()
                    .trim()
                    .to_owned();
                found.push(allowed);
            }
        }
        found
    };
    let ingress = cpus_of("ferrobeam-ingre");
    assert!(!ingress.is_empty(), "ingress threads found");
    assert!(
        ingress
            .iter()
            .all(|cpus| *cpus == list("ingress")[0].to_string()),
        "{ingress:?}"
    );
    // Other tests' nodes run in this process too, with the same plan.
    let executor = cpus_of("executor-0");
    assert!(!executor.is_empty());
    assert!(
        executor
            .iter()
            .all(|cpus| *cpus == list("exec")[0].to_string()),
        "{executor:?}"
    );
    let sequencer = cpus_of("ferrobeam-seque");
    let planned = cores["sequencer"].as_u64().unwrap().to_string();
    assert!(!sequencer.is_empty());
    assert!(
        sequencer.iter().all(|cpus| *cpus == planned),
        "{sequencer:?}"
    );
    let http_verify = cpus_of("ferrobeam-http-");
    let planned = cores["http-verify"].as_u64().unwrap();
    assert_eq!(planned, *list("ingress").last().unwrap());
    assert!(!http_verify.is_empty());
    assert!(
        http_verify.iter().all(|cpus| *cpus == planned.to_string()),
        "{http_verify:?}"
    );
}

/// Every test above, in a module per backend (`on_tokio::a_process_spawns_over_quic`, ...).
macro_rules! backends {
    ($($module:ident => $kind:ident),* $(,)?) => {
        const TESTED: &[TransportKind] = &[$(TransportKind::$kind),*];
        $(mod $module {
            use super::TransportKind::$kind as KIND;
            #[test]
            fn messages_are_acked_with_their_durable_slot_and_appear_in_the_schedule() {
                super::messages_are_acked_with_their_durable_slot_and_appear_in_the_schedule(KIND)
            }
            #[test]
            fn a_process_spawns_over_quic() {
                super::a_process_spawns_over_quic(KIND)
            }
            #[test]
            fn bulk_frames_are_acknowledged_by_byte_count() {
                super::bulk_frames_are_acknowledged_by_byte_count(KIND)
            }
            #[test]
            fn a_wrong_pinned_address_fails_the_handshake() {
                super::a_wrong_pinned_address_fails_the_handshake(KIND)
            }
            #[test]
            fn bad_input_is_dropped_with_counters_while_another_connection_keeps_working() {
                super::bad_input_is_dropped_with_counters_while_another_connection_keeps_working(KIND)
            }
            #[test]
            fn a_stream_that_never_finishes_is_closed_by_the_idle_timeout() {
                super::a_stream_that_never_finishes_is_closed_by_the_idle_timeout(KIND)
            }
            #[test]
            fn connections_flood_are_refused_and_counted_while_an_open_connection_keeps_working() {
                super::connections_flood_are_refused_and_counted_while_an_open_connection_keeps_working(KIND)
            }
            #[test]
            fn jumbo_packets_flow_when_both_ends_allow_them() {
                super::jumbo_packets_flow_when_both_ends_allow_them(KIND)
            }
            #[test]
            fn a_stream_is_not_read_past_frames_in_flight_per_stream_max() {
                super::a_stream_is_not_read_past_frames_in_flight_per_stream_max(KIND)
            }
            #[test]
            fn info_reports_the_pinned_cores() {
                super::info_reports_the_pinned_cores(KIND)
            }
        })*
    };
}

// The backends the tests run against: adding one is one line here.
backends!(
    on_uring => Uring,
    on_tokio => Tokio,
    on_s2n => S2n,
);

/// The list above names every backend the build has.
#[test]
fn every_backend_is_tested() {
    assert_eq!(TESTED, TransportKind::ALL);
}
