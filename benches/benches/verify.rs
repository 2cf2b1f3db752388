//! `verify/ed25519/*`: checking commitments on ingress, per message.
//!
//! Every case includes what verification really costs on the node: the unsigned id (canonical
//! encoding + SHA-256 of the 1 KiB message), the key checks and the signature check.
//!
//! - `single`: `VerifiedMessage::verify`, what the HTTP handler calls.
//! - `batch-64`: `verify_batch` over 64 messages from four signers (ed25519-zebra coalesces the
//!   terms of a repeated key, so this is the favourable case).
//! - `batch-64-distinct`: 64 messages from 64 signers, no coalescing.
//! - `batch-64-one-forged`: 64 distinct signers, one signature forged: the batch fails and every
//!   signature is then checked alone to find it.
//! - `strict-single` / `strict-64`: the baseline, the rule the node used before ZIP-215 (decode
//!   the key, refuse small order, ed25519-dalek `verify_strict`), one message at a time.
//!
//! Throughput is per message in all.

mod common;

use common::{KIB, data_message, process_id, signed_messages, wallet};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferrobeam::message::{Message, VerifiedMessage, json, signed_payload, verify_batch};

const BATCH: usize = 64;

/// The previous acceptance rule, as `Commitment::verify` had it, over the first commitment.
fn strict(message: &Message) -> bool {
    let payload = signed_payload(&message.unsigned_id());
    let commitment = &message.commitments()[0];
    let key: [u8; 32] = commitment.public_key().try_into().expect("32-byte key");
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(commitment.signature()) else {
        return false;
    };
    !key.is_weak() && key.verify_strict(&payload, &signature).is_ok()
}

fn batch_case(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    messages: &[Message],
    valid: usize,
) {
    c.bench_function(name, |b| {
        b.iter_batched(
            || messages.to_vec(),
            |ms| {
                let verified = verify_batch(ms);
                assert_eq!(verified.iter().filter(|r| r.is_ok()).count(), valid);
                verified
            },
            BatchSize::SmallInput,
        )
    });
}

fn ed25519(c: &mut Criterion) {
    let target = process_id();
    let messages = signed_messages(&target, KIB, 1, BATCH);
    let distinct: Vec<Message> = (0..BATCH as u64)
        .map(|n| wallet(n as u8 + 1).sign(data_message(&target, KIB, n), &mut rand::rngs::OsRng))
        .collect();
    let mut one_forged = distinct.clone();
    // Message 38's content under message 37's signature.
    let mut forged = json::to_json(&distinct[38]);
    forged["commitments"] = json::to_json(&distinct[37])["commitments"].clone();
    one_forged[38] = json::from_json(&forged).expect("a well-formed message");

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
    group.bench_function("strict-single", |b| b.iter(|| assert!(strict(&one))));

    group.throughput(Throughput::Elements(BATCH as u64));
    batch_case(&mut group, "batch-64", &messages, BATCH);
    batch_case(&mut group, "batch-64-distinct", &distinct, BATCH);
    batch_case(&mut group, "batch-64-one-forged", &one_forged, BATCH - 1);
    group.bench_function("strict-64", |b| {
        b.iter(|| assert!(distinct.iter().all(strict)))
    });
    group.finish();
}

criterion_group!(benches, ed25519);
criterion_main!(benches);
