//! `schedule/*`: the sequencer's real per-batch path, as `SequencerThread::admit` +
//! `process_batch` (dataplane/src/node/mod.rs) run it for 64 verified messages:
//!
//! 1. `Store::locate` (is the message already scheduled? a miss here),
//! 2. `Scheduler::assign` (slot, hash chain, hashpath),
//! 3. `Wallet::sign_batch` of the batch's `Assignment::to_message()`s with the node's Ed25519
//!    key (one signature over their Merkle root, an `ed25519-batch` commitment on each),
//! 4. one `Store::commit` of the 64 `Scheduled` entries (wire-encodes message + assignment,
//!    fjall batch, fsync).
//!
//! `durable-append/batch-64` times all four; the `step/*` cases time each step alone so the
//! share of each in a message's cost can be read off. Throughput is per message.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{KIB, process_id, signed_messages};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrobeam::message::{Id, Message, VerifiedMessage, Wallet, verify_batch};
use ferrobeam::schedule::{Assignment, Scheduler};
use ferrobeam::store::{Scheduled, Store};

const BATCH: usize = 64;
/// A fixed clock: the scheduler is sans-IO and takes `now` as input.
const NOW_MS: u64 = 1_750_000_000_000;

/// A store and scheduler with one spawned process, as the node has after `POST .../schedule` of
/// a process message.
struct Sequencer {
    _dir: tempfile::TempDir,
    store: Store,
    scheduler: Scheduler,
    node_key: Wallet,
    process: Id,
    sent: u64,
}

impl Sequencer {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("store opens");
        let mut scheduler = Scheduler::new();
        let process = process_id();
        let node_key = common::wallet(0xAA);
        let assignment = scheduler.spawn(process, NOW_MS).expect("fresh process");
        let spawn = Scheduled {
            signed: node_key.sign(assignment.to_message(), &mut rand::rngs::OsRng),
            assignment,
            message: Message::new().with("type", "Process"),
        };
        store.commit(&[spawn]).expect("spawn commits");
        Self {
            _dir: dir,
            store,
            scheduler,
            node_key,
            process,
            sent: 0,
        }
    }

    /// The next `count` messages, signed and verified: what reaches the sequencer's queue.
    fn incoming(&mut self, count: usize) -> Vec<VerifiedMessage> {
        let messages = signed_messages(&self.process, KIB, self.sent, count);
        self.sent += count as u64;
        verify_batch(messages)
            .into_iter()
            .map(|v| v.expect("own signatures verify"))
            .collect()
    }

    /// Steps 1–3 for one batch.
    fn admit(&mut self, messages: Vec<VerifiedMessage>) -> Vec<Scheduled> {
        let assignments: Vec<Assignment> = messages
            .iter()
            .map(|message| {
                let id = message.id();
                assert!(self.store.locate(&id).expect("index lookup").is_none());
                self.scheduler
                    .assign(&self.process, id, NOW_MS)
                    .expect("process exists")
            })
            .collect();
        let unsigned = assignments.iter().map(Assignment::to_message).collect();
        let signed = self.node_key.sign_batch(unsigned, &mut rand::rngs::OsRng);
        assignments
            .into_iter()
            .zip(signed)
            .zip(messages)
            .map(|((assignment, signed), message)| Scheduled {
                assignment,
                signed,
                message: message.into_message(),
            })
            .collect()
    }
}

fn durable_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("schedule/durable-append");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut sequencer = Sequencer::new();
    group.bench_function("batch-64", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                // Signing the incoming messages is the senders' work: outside the clock.
                let incoming = sequencer.incoming(BATCH);
                let start = std::time::Instant::now();
                let batch = sequencer.admit(incoming);
                sequencer.store.commit(&batch).expect("group commit");
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn steps(c: &mut Criterion) {
    let mut sequencer = Sequencer::new();
    let mut group = c.benchmark_group("schedule/step");
    group.throughput(Throughput::Elements(1));

    let missing = Id([0x55; 32]);
    group.bench_function("locate-miss", |b| {
        b.iter(|| sequencer.store.locate(black_box(&missing)))
    });

    let process = sequencer.process;
    group.bench_function("assign", |b| {
        let mut scheduler = Scheduler::new();
        scheduler.spawn(process, NOW_MS).expect("fresh process");
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&n.to_be_bytes());
            scheduler.assign(&process, Id(id), NOW_MS)
        })
    });

    let mut scheduler = Scheduler::new();
    scheduler.spawn(process, NOW_MS).expect("fresh process");
    let assignment = scheduler
        .assign(&process, Id([1; 32]), NOW_MS)
        .expect("process exists");
    let node_key = sequencer.node_key.clone();
    group.bench_function("sign-assignment", |b| {
        b.iter(|| node_key.sign(black_box(&assignment).to_message(), &mut rand::rngs::OsRng))
    });
    // What the sequencer does instead: one signature for the batch, per message here.
    let assignments: Vec<Assignment> = (0..BATCH as u8)
        .map(|n| {
            scheduler
                .assign(&process, Id([n.wrapping_add(2); 32]), NOW_MS)
                .expect("process exists")
        })
        .collect();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("sign-assignments/batch-64", |b| {
        b.iter(|| {
            let unsigned = black_box(&assignments)
                .iter()
                .map(Assignment::to_message)
                .collect();
            node_key.sign_batch(unsigned, &mut rand::rngs::OsRng)
        })
    });
    group.throughput(Throughput::Elements(1));

    // The wire encoding Store::commit does twice per message (the message and its assignment).
    let incoming = sequencer.incoming(1);
    let scheduled = sequencer.admit(incoming).remove(0);
    group.bench_function("wire-encode-1KiB", |b| {
        b.iter(|| ferrobeam::message::wire::encode(black_box(&scheduled.message)))
    });
    // Settings apply to the cases registered after them: the fsync-bound case gets few samples.
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("commit-64", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let incoming = sequencer.incoming(BATCH);
                let batch = sequencer.admit(incoming);
                let start = std::time::Instant::now();
                sequencer.store.commit(&batch).expect("group commit");
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, durable_append, steps);
criterion_main!(benches);
