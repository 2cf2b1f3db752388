//! `dataplane/*`: the QUIC ingress.
//!
//! - `frame-encode/<size>`: framing a wire message (header, copy, padding) into a reused buffer;
//! - `frame-access/<size>`: the node's side: incremental parse into the 16-byte aligned buffer,
//!   then validated `wire::access` of the archive in place (never unchecked);
//! - `quic-bulk/<backend>/<size>`: bulk frames over one loopback connection, one stream, 64
//!   frames in flight, to a real node on each backend (`uring`, `tokio`, `s2n`; the client is
//!   quinn on tokio), timed until every frame is acked;
//! - `ingest/<backend>/messages-1KiB`: signed 1 KiB messages over QUIC to a real node, timed
//!   from the first write to the last durable ack (validation, batch verification, sequencer,
//!   fsync).
//!
//! Client and node share this machine's cores: the QUIC figures are for the pair.

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{KIB, signed_messages};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrobeam::ingress::client::{QuicClient, bulk_frame, message_frame};
use ferrobeam::ingress::frame::{self, Event, FrameReader, Kind};
use ferrobeam::ingress::{Reply, TransportKind, frame::AlignedFrame};
use ferrobeam::message::{Address, Id, Message, wire};
use ferrobeam::node::{Node, NodeConfig, module_message};

/// Frames a benchmark client keeps in flight on its stream.
const WINDOW: usize = 64;
const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "handle") (result i32) i32.const 0))"#;

fn frame_encode_and_access(c: &mut Criterion) {
    let target = common::process_id();
    let mut group = c.benchmark_group("dataplane");
    for (label, size) in [("1KiB", KIB), ("64KiB", 64 * KIB), ("1MiB", 1024 * KIB)] {
        let message = &signed_messages(&target, size, 0, 1)[0];
        let payload = wire::encode(message);
        group.throughput(Throughput::Bytes(payload.len() as u64));
        let mut out = Vec::with_capacity(payload.len() + 64);
        group.bench_function(format!("frame-encode/{label}"), |b| {
            b.iter(|| {
                out.clear();
                frame::encode_into(Kind::Message, black_box(&payload), &mut out);
                black_box(out.len())
            })
        });
        let framed = frame::encode(Kind::Message, &payload);
        let mut reader = FrameReader::node();
        group.bench_function(format!("frame-access/{label}"), |b| {
            b.iter(|| {
                let (_, event) = reader.decode(black_box(&framed)).expect("valid frame");
                let Some(Event::Frame { payload, .. }) = event else {
                    panic!("one whole frame")
                };
                let view = payload.access().expect("valid archive");
                black_box(view.messages.len())
            })
        });
        // The invariant the node relies on: payloads land 16-byte aligned.
        let (_, event) = reader.decode(&framed).expect("valid frame");
        if let Some(Event::Frame { payload, .. }) = event {
            assert!(AlignedFrame::new(payload.bytes()).is_ok());
        }
    }
    group.finish();
}

/// A node with a QUIC ingress on loopback, the bench module stored before it starts.
struct BenchNode {
    quic: SocketAddr,
    address: Address,
    module: Id,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BenchNode {
    fn start(transport: TransportKind) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wasm = wat::parse_str(NOOP_WAT).expect("bench module");
        let module = module_message(&wasm).unsigned_id();
        {
            let store =
                ferrobeam::store::Store::open(&dir.path().join("store")).expect("store opens");
            store.put_module(&module, &wasm).expect("module stored");
        }
        let config = NodeConfig {
            data_dir: dir.path().to_owned(),
            http: "127.0.0.1:0".parse().expect("address"),
            quic: Some("127.0.0.1:0".parse().expect("address")),
            transport,
            exec_cores: 1,
            ingress_cores: 1,
            ..NodeConfig::default()
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let node = Node::start(config).await.expect("node starts");
                let ready = (node.quic_addr().expect("QUIC"), node.address());
                ready_tx.send(ready).expect("bench waits");
                let _ = node
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let (quic, address) = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("node ready");
        Self {
            quic,
            address,
            module,
            _dir: dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `frames` on a new stream with `WINDOW` in flight; returns the time from the first
/// write to the last reply, and checks that every reply is a success.
async fn pipeline(client: &QuicClient, frames: Vec<Arc<Vec<u8>>>) -> Duration {
    let count = frames.len();
    let (mut sender, mut receiver) = client.open().await.expect("stream");
    let credit = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let start = Instant::now();
    let writer = {
        let credit = credit.clone();
        async move {
            for frame in frames {
                credit.acquire().await.expect("open").forget();
                sender.send(&frame).await.expect("write");
            }
            sender.finish();
        }
    };
    let reader = async {
        for _ in 0..count {
            match receiver.next().await.expect("read") {
                Some(Reply::Ack(_) | Reply::Bulk(_)) => credit.add_permits(1),
                other => panic!("unexpected reply {other:?}"),
            }
        }
    };
    tokio::join!(writer, reader);
    start.elapsed()
}

fn quic(c: &mut Criterion) {
    for kind in TransportKind::ALL {
        quic_on(c, *kind);
    }
}

fn quic_on(c: &mut Criterion, kind: TransportKind) {
    let name = kind.name();
    let node = BenchNode::start(kind);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("dataplane");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let client = runtime
        .block_on(QuicClient::connect(node.quic, node.address))
        .expect("connects");
    for (label, size) in [("64KiB", 64 * KIB), ("1MiB", 1024 * KIB)] {
        let frame = Arc::new(bulk_frame(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("quic-bulk/{name}/{label}"), |b| {
            b.iter_custom(|iters| {
                let frames = (0..iters).map(|_| frame.clone()).collect();
                runtime.block_on(pipeline(&client, frames))
            })
        });
    }
    // One process to send to, spawned over QUIC.
    let owner = common::wallet(9);
    let spawn = owner.sign(
        Message::new()
            .with("type", "Process")
            .with("module", node.module.to_string()),
        &mut rand::rngs::OsRng,
    );
    let process = runtime.block_on(async {
        let (mut sender, mut receiver) = client.open().await.expect("stream");
        sender.send(&message_frame(&spawn)).await.expect("write");
        sender.finish();
        match receiver.next().await.expect("read") {
            Some(Reply::Ack(ack)) => ack.process,
            other => panic!("spawn refused: {other:?}"),
        }
    });
    group.throughput(Throughput::Elements(1));
    let mut sent = 0u64;
    group.bench_function(format!("ingest/{name}/messages-1KiB"), |b| {
        b.iter_custom(|iters| {
            // Signed before the clock starts; numbered so every message is new.
            let frames = signed_messages(&process, KIB, sent, iters as usize)
                .iter()
                .map(|m| Arc::new(message_frame(m)))
                .collect();
            sent += iters;
            runtime.block_on(pipeline(&client, frames))
        })
    });
    group.finish();
    runtime.block_on(client.close());
}

criterion_group!(benches, frame_encode_and_access, quic);
criterion_main!(benches);
