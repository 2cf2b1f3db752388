//! `verify/ed25519/*`: checking commitments on ingress, per message.
//!
//! Both cases include what verification really costs on the node: the unsigned id (canonical
//! encoding + SHA-256 of the 1 KiB message), the key decompression and the signature check.
//! `single` is `VerifiedMessage::verify`, what the HTTP handler calls today; `batch-64` is
//! `verify_batch` over 64 messages from four signers (strict, one by one: ed25519-dalek's batch
//! equation is not `verify_strict`-equivalent, see `message::verify_batch`). Throughput is per
//! message in both.

mod common;

use common::{KIB, process_id, signed_messages};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferrobeam::message::{VerifiedMessage, verify_batch};

const BATCH: usize = 64;

fn ed25519(c: &mut Criterion) {
    let messages = signed_messages(&process_id(), KIB, 1, BATCH);
    let mut group = c.benchmark_group("verify/ed25519");

    group.throughput(Throughput::Elements(1));
    let one = messages[0].clone();
    group.bench_function("single", |b| {
        // The clone is setup, outside the timing: verify consumes the message.
        b.iter_batched(
            || one.clone(),
            |m| VerifiedMessage::verify(m).expect("valid signature"),
            BatchSize::SmallInput,
        )
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch-64", |b| {
        b.iter_batched(
            || messages.clone(),
            |ms| {
                let verified = verify_batch(ms);
                assert!(verified.iter().all(Result::is_ok));
                verified
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, ed25519);
criterion_main!(benches);
