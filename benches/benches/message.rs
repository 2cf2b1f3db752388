//! `message/*`: the per-message costs of the message model before any signature check.
//!
//! - `canonical-id`: `Message::id` of an unsigned message (canonical encoding + SHA-256).
//! - `wire-access`: `wire::access`, the validated zero-copy view of an rkyv frame.
//! - `wire-decode`: `wire::decode`, validated view plus conversion to an owned `Message`.
//! - `json-parse`: `json::from_slice` of a signed message, as the HTTP API receives it.

mod common;

use std::hint::black_box;

use common::{KIB, data_message, process_id, signed_messages};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrobeam::message::{json, wire};

const SIZES: [(&str, usize); 2] = [("1KiB", KIB), ("64KiB", 64 * KIB)];

fn canonical_id(c: &mut Criterion) {
    let mut group = c.benchmark_group("message/canonical-id");
    for (name, size) in SIZES {
        let message = data_message(&process_id(), size, 1);
        group.throughput(Throughput::Bytes(message.canonical().len() as u64));
        group.bench_function(name, |b| b.iter(|| black_box(&message).id()));
    }
    group.finish();
}

fn wire_access_and_decode(c: &mut Criterion) {
    for (name, size) in SIZES {
        let message = signed_messages(&process_id(), size, 1, 1).remove(0);
        let frame = wire::encode(&message);
        assert_eq!(wire::decode(&frame).expect("own frame decodes"), message);

        let mut group = c.benchmark_group("message/wire-access");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| wire::access(black_box(&frame)).map(|f| f.messages.len()))
        });
        group.finish();

        let mut group = c.benchmark_group("message/wire-decode");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(name, |b| b.iter(|| wire::decode(black_box(&frame))));
        group.finish();
    }
}

fn json_parse(c: &mut Criterion) {
    let message = signed_messages(&process_id(), KIB, 1, 1).remove(0);
    let body = serde_json::to_vec(&json::to_json(&message)).expect("JSON serializes");
    assert_eq!(json::from_slice(&body).expect("own JSON parses"), message);
    let mut group = c.benchmark_group("message/json-parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("1KiB", |b| b.iter(|| json::from_slice(black_box(&body))));
    group.finish();
}

criterion_group!(benches, canonical_id, wire_access_and_decode, json_parse);
criterion_main!(benches);
