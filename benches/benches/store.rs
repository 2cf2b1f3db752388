//! `store/*`: the comparison that chose fjall for the store (docs/BENCHMARKS.md), kept
//! reproducible. Both engines get the same workload: random 32-byte keys (like message ids) and
//! 1 KiB values, on the same disk (a temporary directory under `$TMPDIR`, ext4 here: fsync is
//! real).
//!
//! - `append/<engine>-batch-64`: 64 inserts made durable by one fsync: redb 4 one write
//!   transaction + `commit` (default durability: `Immediate`); fjall 3 one `db.batch()` +
//!   `commit` + `persist(PersistMode::SyncAll)`, exactly what `Store::commit` does.
//! - `append/<engine>-single`: one insert per fsynced commit (no group commit).
//! - `lookup/<engine>`: point lookups of present keys in a store of `PREFILL` entries; redb reads
//!   through one read transaction held across lookups, fjall straight from the keyspace.
//!
//! Throughput is in entries, so criterion prints entries per second.

mod common;

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use common::{KIB, text_data};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use redb::{ReadableDatabase as _, TableDefinition};

/// Entries per group commit in the `batch-64` cases.
const BATCH: usize = 64;
/// Entries in the store before lookups start: 10 MiB of values, several memtables' worth.
const PREFILL: usize = 10_000;

const REDB_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");

type Entry = ([u8; 32], Vec<u8>);

fn entries(count: usize) -> Vec<Entry> {
    (0..count)
        .map(|i| (rand::random::<[u8; 32]>(), text_data(KIB, i as u64)))
        .collect()
}

struct Fjall {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).open().expect("fjall opens");
        let keyspace = db
            .keyspace("messages", fjall::KeyspaceCreateOptions::default)
            .expect("fjall keyspace");
        Self { db, keyspace }
    }

    fn append(&self, batch: &[Entry]) {
        let mut writes = self.db.batch();
        for (key, value) in batch {
            writes.insert(&self.keyspace, key.as_slice(), value.as_slice());
        }
        writes.commit().expect("fjall batch commit");
        self.db
            .persist(fjall::PersistMode::SyncAll)
            .expect("fjall fsync");
    }

    fn value_len(&self, key: &[u8]) -> usize {
        self.keyspace
            .get(key)
            .expect("fjall get")
            .map_or(0, |v| v.len())
    }
}

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("messages.redb")).expect("redb opens");
        Self { db }
    }

    fn append(&self, batch: &[Entry]) {
        let transaction = self.db.begin_write().expect("redb write transaction");
        {
            let mut table = transaction.open_table(REDB_TABLE).expect("redb table");
            for (key, value) in batch {
                table
                    .insert(key.as_slice(), value.as_slice())
                    .expect("redb insert");
            }
        }
        transaction.commit().expect("redb commit (fsync)");
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/append");
    // Each sample is dominated by fsyncs (~ms): few samples keep the suite at a few minutes.
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let pool = &entries(BATCH);
    let fresh = |n: usize| {
        // New keys for every commit (values reused: their content is not what is measured).
        move || {
            pool[..n]
                .iter()
                .map(|(_, value)| (rand::random::<[u8; 32]>(), value.clone()))
                .collect::<Vec<Entry>>()
        }
    };

    let dir = tempfile::tempdir().expect("temporary directory");
    let fjall = Fjall::open(dir.path());
    let redb = Redb::open(dir.path());
    for (n, name) in [(BATCH, "batch-64"), (1, "single")] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("fjall-{name}"), |b| {
            b.iter_batched(
                fresh(n),
                |batch| fjall.append(&batch),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("redb-{name}"), |b| {
            b.iter_batched(fresh(n), |batch| redb.append(&batch), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let present = entries(PREFILL);
    let dir = tempfile::tempdir().expect("temporary directory");
    let fjall = Fjall::open(dir.path());
    let redb = Redb::open(dir.path());
    for chunk in present.chunks(1000) {
        fjall.append(chunk);
        redb.append(chunk);
    }
    let mut group = c.benchmark_group("store/lookup");
    group.throughput(Throughput::Elements(1));

    let mut next = present.iter().cycle();
    group.bench_function("fjall", |b| {
        b.iter(|| {
            let (key, _) = next.next().expect("cycle never ends");
            fjall.value_len(black_box(key))
        })
    });

    let read = redb.db.begin_read().expect("redb read transaction");
    let table = read.open_table(REDB_TABLE).expect("redb table");
    let mut next = present.iter().cycle();
    group.bench_function("redb", |b| {
        b.iter(|| {
            let (key, _) = next.next().expect("cycle never ends");
            let value = table.get(black_box(key.as_slice())).expect("redb get");
            value.map_or(0, |v| v.value().len())
        })
    });
    group.finish();
}

criterion_group!(benches, append, lookup);
criterion_main!(benches);
