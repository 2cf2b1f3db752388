//! The durable store: an embedded fjall (LSM, write-ahead journal) database holding messages,
//! module bytes, signed assignments, results and snapshots.
//!
//! Durability contract: [`Store::commit`] returns only after the journal is fsynced
//! (`PersistMode::SyncAll`), so an acknowledgement given after it survives `kill -9` and power
//! loss. Many senders' messages share one commit (group commit, driven by `crate::node`).
//! Results and snapshots are recomputable from the schedule, so they are written without a sync
//! of their own; the next commit makes them durable too.
//!
//! fjall was chosen over redb by measurement (docs/BENCHMARKS.md: 5× faster group-commit appends,
//! equal point lookups).

mod assets;

use std::path::Path;
use std::sync::Arc;

use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::message::{Id, Message, MessageError, wire};
use crate::schedule::{Assignment, ProcessHead, ScheduleError};

/// Why a store operation failed. Every variant is an operating error of this node (disk, or
/// corrupted data), never the sender's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage engine failed (I/O, journal, corruption it detected).
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    /// A stored record does not decode: the store is corrupted or was written by another version.
    #[error("corrupted record in {keyspace}: {reason}")]
    Corrupted {
        /// Which keyspace.
        keyspace: &'static str,
        /// What failed.
        reason: String,
    },
}

impl From<MessageError> for StoreError {
    fn from(e: MessageError) -> Self {
        StoreError::Corrupted {
            keyspace: "messages",
            reason: e.to_string(),
        }
    }
}

impl From<ScheduleError> for StoreError {
    fn from(e: ScheduleError) -> Self {
        StoreError::Corrupted {
            keyspace: "assignments",
            reason: e.to_string(),
        }
    }
}

/// One scheduled message, ready for a group commit.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// What the scheduler decided.
    pub assignment: Assignment,
    /// The assignment message signed by the node key.
    pub signed: Message,
    /// The scheduled message (already verified).
    pub message: Message,
}

/// An outbox message waiting for its target to acknowledge it (`push-queue` keyspace, keyed by a
/// sequence number in queue order).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedPush {
    /// The process whose outbox held it.
    pub process: Id,
    /// That process's slot.
    pub slot: u64,
    /// Its index in the slot's outbox (and in the slot's push record).
    pub index: u32,
    /// The target process.
    pub target: Id,
    /// The peer node's URL, or None for this node's own sequencer.
    pub node: Option<String>,
    /// The message, signed by the node.
    pub message: Message,
}

/// Longest peer URL a queued push records (routes are operator configuration).
pub const PUSH_NODE_URL_BYTES_MAX: usize = 2_048;

impl QueuedPush {
    fn encode(&self) -> Vec<u8> {
        let node = self.node.as_deref().unwrap_or("").as_bytes();
        assert!(
            node.len() <= PUSH_NODE_URL_BYTES_MAX,
            "route URLs are checked"
        );
        let message = wire::encode(&self.message);
        let mut out = Vec::with_capacity(78 + node.len() + message.len());
        out.extend_from_slice(self.process.as_bytes());
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(&(node.len() as u16).to_be_bytes());
        out.extend_from_slice(node);
        out.extend_from_slice(message.as_slice());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupted = |reason: &str| StoreError::Corrupted {
            keyspace: "push-queue",
            reason: reason.to_owned(),
        };
        let id = |at: usize| -> Result<Id, StoreError> {
            let raw: [u8; 32] = bytes
                .get(at..at + 32)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupted("short entry"))?;
            Ok(Id(raw))
        };
        let int = |at: usize, n: usize| -> Result<u64, StoreError> {
            let raw = bytes
                .get(at..at + n)
                .ok_or_else(|| corrupted("short entry"))?;
            Ok(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        };
        let node_len = int(76, 2)? as usize;
        let node = bytes
            .get(78..78 + node_len)
            .ok_or_else(|| corrupted("short node URL"))?;
        let node = std::str::from_utf8(node).map_err(|_| corrupted("node URL is not UTF-8"))?;
        Ok(Self {
            process: id(0)?,
            slot: int(32, 8)?,
            index: int(40, 4)? as u32,
            target: id(44)?,
            node: (!node.is_empty()).then(|| node.to_owned()),
            message: wire::decode(&bytes[78 + node_len..])?,
        })
    }
}

// The store's memory settings. Everything fjall keeps in memory is bounded by one of these, so
// the node's memory has a stated ceiling (docs/operators.md, "Memory").

/// fjall's block cache (data, and index/filter blocks that are not pinned), shared by all
/// keyspaces. The duplicate lookup every post makes and result reads fill it; it never grows
/// past this.
pub const BLOCK_CACHE_BYTES: u64 = 32 << 20;
/// Largest memtable of one keyspace before it is sealed and flushed to a table file (fjall's
/// default is 64 MiB). Memtables hold every recent write in memory, so this bounds the store's
/// write memory: at most `KEYSPACES` × this in active memtables, plus sealed ones while they
/// flush. The soak (docs/RELIABILITY.md) chose it: with 64 MiB the node's RSS climbed for minutes,
/// and with 16 MiB the six keyspaces written under load held 20–68 MiB between them (heap
/// profile: memtables were most of the heap) and slow ones such as `index` (~150 KB/s at ~1,300
/// posts/s) first filled after ~2 minutes, so the allocator's high-water mark kept rising after
/// the warm-up. At 4 MiB every keyspace cycles within seconds to a minute. Applies to keyspaces
/// created with it (the setting is stored with each keyspace).
pub const MEMTABLE_BYTES_MAX: u64 = 4 << 20;
/// Journal bytes on disk before fjall flushes the memtables that hold the oldest journal file:
/// it bounds the unflushed writes of all keyspaces together (and recovery time), whatever the
/// per-keyspace bound. fjall's minimum is 64 MiB, in journal files of ~64 MB.
pub const JOURNAL_BYTES_MAX: u64 = 512 << 20;
/// Size of the table files compaction writes (fjall's leveled default is 64 MiB). A compaction
/// holds on the order of one output table in memory until that table is finished: the index
/// entry of each block it writes keeps the block's last key, and a key read from an input table
/// shares that input block's buffer. A heap profile of the soak (docs/RELIABILITY.md, "Soak")
/// found compactions holding 23–52 MiB at 64 MiB, and their brief peaks were the RSS spikes.
/// At 8 MiB that is bounded near 8 MiB per compaction; level 1 then holds 32 MiB (4 tables),
/// each deeper level 10× more. Applies to keyspaces created with it, as the memtable bound.
pub const TABLE_TARGET_BYTES: u64 = 8 << 20;
/// Most table files the store keeps open (fjall's cache of file descriptors; its default is 900).
/// The store has about one table per `TABLE_TARGET_BYTES` of data, so a large store reaches
/// it; beyond it the least recently read table is closed and reopened when next read. 384 plus
/// `http-connections-max` (512 by default) plus the journals, sockets and wasm files stays under
/// the common soft `RLIMIT_NOFILE` of 1024.
pub const STORE_FILES_MAX: usize = 384;
/// LSM levels whose index blocks stay pinned in memory (the rest go through the block cache).
/// A pinned block grows with its level's data; levels 0 and 1 are bounded by compaction (a few
/// tables of at most 64 MiB).
pub const INDEX_PINNED_LEVELS: usize = 2;
/// LSM levels whose filter (Bloom) blocks stay pinned in memory.
pub const FILTER_PINNED_LEVELS: usize = 1;
/// Keyspaces of the store.
const KEYSPACES: u64 = 9;
// The active memtables together stay a small part of a node's memory.
const _: () = assert!(KEYSPACES * MEMTABLE_BYTES_MAX <= 64 << 20);
const _: () = assert!(JOURNAL_BYTES_MAX >= 64 << 20);

/// Pinning of the first `levels` levels, none below.
fn pinned(levels: usize) -> PinningPolicy {
    let mut policy = vec![true; levels];
    policy.push(false);
    PinningPolicy::new(policy)
}

/// What the store holds in memory now, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreMemory {
    /// Active and sealed memtables of all keyspaces.
    pub write_buffer: u64,
    /// Blocks in the block cache (at most [`BLOCK_CACHE_BYTES`]).
    pub block_cache: u64,
}

/// The node's durable state.
pub struct Store {
    db: Database,
    messages: Keyspace,
    modules: Keyspace,
    assignments: Keyspace,
    index: Keyspace,
    results: Keyspace,
    pushes: Keyspace,
    push_queue: Keyspace,
    snapshots: Keyspace,
    assets: Keyspace,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// `process ‖ slot` (big-endian, so slots sort numerically within a process).
fn slot_key(process: &Id, slot: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(process.as_bytes());
    key[32..].copy_from_slice(&slot.to_be_bytes());
    key
}

fn split_slot_key(key: &[u8]) -> Option<(Id, u64)> {
    let process: [u8; 32] = key.get(..32)?.try_into().ok()?;
    let slot: [u8; 8] = key.get(32..40)?.try_into().ok()?;
    Some((Id(process), u64::from_be_bytes(slot)))
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering the journal after a crash.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_files_max(dir, STORE_FILES_MAX)
    }

    /// [`Store::open`] keeping at most `files_max` table files open (at least 10).
    fn open_with_files_max(dir: &Path, files_max: usize) -> Result<Self, StoreError> {
        let db = Database::builder(dir)
            .max_cached_files(Some(files_max))
            .cache_size(BLOCK_CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .open()?;
        let open = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES_MAX)
                    .compaction_strategy(Arc::new(
                        fjall::compaction::Leveled::default()
                            .with_table_target_size(TABLE_TARGET_BYTES),
                    ))
                    .index_block_pinning_policy(pinned(INDEX_PINNED_LEVELS))
                    .filter_block_pinning_policy(pinned(FILTER_PINNED_LEVELS))
            })
        };
        Ok(Self {
            messages: open("messages")?,
            modules: open("modules")?,
            assignments: open("assignments")?,
            index: open("index")?,
            results: open("results")?,
            pushes: open("pushes")?,
            push_queue: open("push-queue")?,
            snapshots: open("snapshots")?,
            assets: open("assets")?,
            db,
        })
    }

    /// What the store holds in memory now (memtables and block cache).
    pub fn memory(&self) -> StoreMemory {
        StoreMemory {
            write_buffer: self.db.write_buffer_size(),
            block_cache: self.db.cache_size(),
        }
    }

    /// Stores module bytes under their id, durably.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn put_module(&self, id: &Id, wasm: &[u8]) -> Result<(), StoreError> {
        self.modules.insert(id.as_bytes(), wasm)?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// The bytes of module `id`.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn module(&self, id: &Id) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.modules.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// The message `id`, if it was ever scheduled here.
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn message(&self, id: &Id) -> Result<Option<Message>, StoreError> {
        match self.messages.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(wire::decode(&bytes)?)),
        }
    }

    /// Where message `id` was scheduled: `(process, slot)`.
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn locate(&self, id: &Id) -> Result<Option<(Id, u64)>, StoreError> {
        match self.index.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => split_slot_key(&bytes)
                .map(Some)
                .ok_or(StoreError::Corrupted {
                    keyspace: "index",
                    reason: "short entry".into(),
                }),
        }
    }

    /// Appends scheduled messages and their signed assignments in one batch and fsyncs: when
    /// this returns `Ok`, every one of them survives a crash.
    ///
    /// # Errors
    /// [`StoreError::Engine`]; then nothing may be acknowledged.
    pub fn commit(&self, batch: &[Scheduled]) -> Result<(), StoreError> {
        let mut writes = self.db.batch();
        for s in batch {
            let a = &s.assignment;
            let key = slot_key(&a.process, a.slot);
            writes.insert(
                &self.messages,
                a.message.as_bytes(),
                wire::encode(&s.message).as_slice(),
            );
            writes.insert(&self.assignments, key, wire::encode(&s.signed).as_slice());
            writes.insert(&self.index, a.message.as_bytes(), key);
        }
        writes.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// The signed assignment of `process` at `slot`.
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn assignment(&self, process: &Id, slot: u64) -> Result<Option<Message>, StoreError> {
        match self.assignments.get(slot_key(process, slot))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(wire::decode(&bytes)?)),
        }
    }

    /// Signed assignments of `process` for slots `from..=to`, at most `limit` of them.
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn assignments(
        &self,
        process: &Id,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let range = slot_key(process, from)..=slot_key(process, to);
        let mut out = Vec::new();
        for item in self.assignments.range(range).take(limit) {
            let (_, bytes) = item.into_inner()?;
            out.push(wire::decode(&bytes)?);
        }
        Ok(out)
    }

    /// Every process with its head (from its last durable assignment), for restart.
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn heads(&self) -> Result<Vec<(Id, ProcessHead)>, StoreError> {
        let mut heads = Vec::new();
        // Walk processes by jumping from one process's last slot to the next process's first.
        let mut cursor = [0u8; 32];
        loop {
            let Some(first) = self.assignments.range(cursor.to_vec()..).next() else {
                break;
            };
            let key = first.key()?;
            let (process, _) = split_slot_key(&key).ok_or(StoreError::Corrupted {
                keyspace: "assignments",
                reason: "short key".into(),
            })?;
            let last = self
                .assignments
                .prefix(process.as_bytes())
                .next_back()
                .ok_or(StoreError::Corrupted {
                    keyspace: "assignments",
                    reason: "process vanished during scan".into(),
                })?;
            let (_, bytes) = last.into_inner()?;
            let assignment = Assignment::from_message(&wire::decode(&bytes)?)?;
            heads.push((process, ProcessHead::after(&assignment)));
            match increment(process.0) {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(heads)
    }

    /// Stores a slot's result record (JSON). Not synced by itself: results are recomputable.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn put_result(&self, process: &Id, slot: u64, record: &[u8]) -> Result<(), StoreError> {
        self.results.insert(slot_key(process, slot), record)?;
        Ok(())
    }

    /// Stores what computing a slot produced, in one atomic batch: its result record, its push
    /// record (when the outbox was not empty) and the pushes still to be made (`queued`, by
    /// sequence number). Not synced by itself, like results: a crash loses all of it or none,
    /// and a lost result is recomputed and its pushes planned again (same ids, deduplicated).
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn put_computed(
        &self,
        process: &Id,
        slot: u64,
        result: &[u8],
        pushes: Option<&[u8]>,
        queued: &[(u64, QueuedPush)],
    ) -> Result<(), StoreError> {
        let key = slot_key(process, slot);
        let mut writes = self.db.batch();
        for (seq, push) in queued {
            writes.insert(&self.push_queue, seq.to_be_bytes(), push.encode());
        }
        if let Some(record) = pushes {
            writes.insert(&self.pushes, key, record);
        }
        writes.insert(&self.results, key, result);
        writes.commit()?;
        Ok(())
    }

    /// Every queued push, in queue order (for the pusher at start).
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn queued_pushes(&self) -> Result<Vec<(u64, QueuedPush)>, StoreError> {
        let mut out = Vec::new();
        for item in self.push_queue.iter() {
            let (key, bytes) = item.into_inner()?;
            let seq: [u8; 8] = key[..].try_into().map_err(|_| StoreError::Corrupted {
                keyspace: "push-queue",
                reason: "key is not a sequence number".into(),
            })?;
            out.push((u64::from_be_bytes(seq), QueuedPush::decode(&bytes)?));
        }
        Ok(out)
    }

    /// The queued push `seq`, if it is still queued.
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`].
    pub fn queued_push(&self, seq: u64) -> Result<Option<QueuedPush>, StoreError> {
        match self.push_queue.get(seq.to_be_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(QueuedPush::decode(&bytes)?)),
        }
    }

    /// The sequence number after the last queued push (0 when none is queued).
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn push_seq_next(&self) -> Result<u64, StoreError> {
        match self.push_queue.iter().next_back() {
            None => Ok(0),
            Some(item) => {
                let key = item.key()?;
                let seq: [u8; 8] = key[..].try_into().map_err(|_| StoreError::Corrupted {
                    keyspace: "push-queue",
                    reason: "key is not a sequence number".into(),
                })?;
                Ok(u64::from_be_bytes(seq) + 1)
            }
        }
    }

    /// Removes queued push `seq` (its target acknowledged or refused it) and stores the updated
    /// push record of its slot, in one batch. Not synced: if a crash brings the entry back, it is
    /// sent again and the target answers with the original acknowledgement.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn finish_push(
        &self,
        seq: u64,
        process: &Id,
        slot: u64,
        record: &[u8],
    ) -> Result<(), StoreError> {
        let mut writes = self.db.batch();
        writes.remove(&self.push_queue, seq.to_be_bytes());
        writes.insert(&self.pushes, slot_key(process, slot), record);
        writes.commit()?;
        Ok(())
    }

    /// The push record of `process` at `slot`.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn pushes(&self, process: &Id, slot: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .pushes
            .get(slot_key(process, slot))?
            .map(|v| v.to_vec()))
    }

    /// Removes a stored result (it is recomputed on demand: results are derived data).
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn delete_result(&self, process: &Id, slot: u64) -> Result<(), StoreError> {
        self.results.remove(slot_key(process, slot))?;
        Ok(())
    }

    /// The result record of `process` at `slot`.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn result(&self, process: &Id, slot: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .results
            .get(slot_key(process, slot))?
            .map(|v| v.to_vec()))
    }

    /// The highest slot of `process` with a stored result.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn last_result_slot(&self, process: &Id) -> Result<Option<u64>, StoreError> {
        match self.results.prefix(process.as_bytes()).next_back() {
            None => Ok(None),
            Some(item) => Ok(split_slot_key(&item.key()?).map(|(_, slot)| slot)),
        }
    }

    /// Stores a snapshot of `process` taken after `slot`, and drops older ones.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn put_snapshot(&self, process: &Id, slot: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.snapshots.insert(slot_key(process, slot), bytes)?;
        let older = slot_key(process, 0)..slot_key(process, slot);
        let stale: Vec<_> = self
            .snapshots
            .range(older)
            .map(|item| item.key())
            .collect::<Result<_, _>>()?;
        for key in stale {
            self.snapshots.remove(key)?;
        }
        Ok(())
    }

    /// The newest snapshot of `process` taken at or before `slot`: `(slot, bytes)`.
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn snapshot_at_or_before(
        &self,
        process: &Id,
        slot: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let range = slot_key(process, 0)..=slot_key(process, slot);
        match self.snapshots.range(range).next_back() {
            None => Ok(None),
            Some(item) => {
                let (key, bytes) = item.into_inner()?;
                let (_, at) = split_slot_key(&key).ok_or(StoreError::Corrupted {
                    keyspace: "snapshots",
                    reason: "short key".into(),
                })?;
                Ok(Some((at, bytes.to_vec())))
            }
        }
    }

    /// Makes every write so far durable (results and snapshots included).
    ///
    /// # Errors
    /// [`StoreError::Engine`].
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}

/// The next 32-byte key after every key prefixed by `id`, or `None` past the last.
fn increment(mut id: [u8; 32]) -> Option<[u8; 32]> {
    for byte in id.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Scheduler;
    use rand::SeedableRng as _;

    fn scheduled(s: &mut Scheduler, process: Id, n: i64) -> Scheduled {
        let message = Message::new()
            .with("n", n)
            .with("p", i64::from(process.0[0]));
        let assignment = if n == 0 {
            s.spawn(process, 1).unwrap()
        } else {
            s.assign(&process, message.id(), 1).unwrap()
        };
        Scheduled {
            signed: assignment.to_message(),
            assignment,
            message,
        }
    }

    #[test]
    fn commit_survives_reopen_and_heads_recover() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Scheduler::new();
        let (p1, p2) = (Id([1; 32]), Id([0xff; 32]));
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch: Vec<_> = (0..5).map(|n| scheduled(&mut s, p1, n)).collect();
            batch.extend((0..3).map(|n| scheduled(&mut s, p2, n)));
            store.commit(&batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut heads = store.heads().unwrap();
        heads.sort_by_key(|(p, _)| *p);
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0], (p1, *s.head(&p1).unwrap()));
        assert_eq!(heads[1], (p2, *s.head(&p2).unwrap()));
        let list = store.assignments(&p1, 1, 3, 100).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(Assignment::from_message(&list[0]).unwrap().slot, 1);
        let m = Message::new().with("n", 2).with("p", 1);
        assert_eq!(store.locate(&m.id()).unwrap(), Some((p1, 2)));
        assert_eq!(store.message(&m.id()).unwrap(), Some(m));
    }

    #[test]
    fn snapshots_keep_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Id([3; 32]);
        store.put_snapshot(&p, 10, b"a").unwrap();
        store.put_snapshot(&p, 20, b"b").unwrap();
        assert_eq!(store.snapshot_at_or_before(&p, 15).unwrap(), None);
        assert_eq!(
            store.snapshot_at_or_before(&p, 25).unwrap(),
            Some((20, b"b".to_vec()))
        );
        store.put_result(&p, 4, b"{}").unwrap();
        store.put_result(&p, 7, b"{}").unwrap();
        assert_eq!(store.last_result_slot(&p).unwrap(), Some(7));
    }

    #[test]
    fn queued_pushes_survive_reopen_in_order_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let p = Id([4; 32]);
        let push = |index: u32, node: Option<&str>| QueuedPush {
            process: p,
            slot: 9,
            index,
            target: Id([5; 32]),
            node: node.map(str::to_owned),
            message: Message::new().with("n", i64::from(index)),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.push_seq_next().unwrap(), 0);
            let queued = [(7, push(0, Some("http://peer:1"))), (8, push(1, None))];
            store
                .put_computed(&p, 9, b"{\"r\":1}", Some(b"[]"), &queued)
                .unwrap();
            store.sync().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.result(&p, 9).unwrap(), Some(b"{\"r\":1}".to_vec()));
        let queued = store.queued_pushes().unwrap();
        assert_eq!(
            queued,
            vec![(7, push(0, Some("http://peer:1"))), (8, push(1, None))]
        );
        assert_eq!(store.push_seq_next().unwrap(), 9);
        store.finish_push(7, &p, 9, b"[1]").unwrap();
        assert_eq!(store.queued_push(7).unwrap(), None);
        assert_eq!(store.queued_push(8).unwrap(), Some(push(1, None)));
        assert_eq!(store.pushes(&p, 9).unwrap(), Some(b"[1]".to_vec()));
    }

    #[test]
    fn memtables_are_flushed_at_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Id([6; 32]);
        let record = vec![7u8; 64 << 10];
        // 1.5 × the bound in results: the first memtable must have been sealed (with fjall's
        // default of 64 MiB it would still be the active one).
        let records = (MEMTABLE_BYTES_MAX * 3 / 2) / record.len() as u64;
        for slot in 0..records {
            store.put_result(&p, slot, &record).unwrap();
        }
        let results = &store.results;
        assert!(
            results.sealed_memtable_count() + results.table_count() > 0,
            "no memtable was sealed after {} MiB",
            (records * record.len() as u64) >> 20
        );
        assert_eq!(store.result(&p, records - 1).unwrap(), Some(record));
    }

    #[test]
    fn compaction_writes_tables_of_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Id([7; 32]);
        // Incompressible records (lz4 cannot shrink them), 3 × the target, in shuffled order so
        // every flushed table spans all the slots: level 0 must be merged (not moved down), and
        // the merge must split its output at the target.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let records = (TABLE_TARGET_BYTES * 3) / (64 << 10);
        let mut order: Vec<u64> = (0..records).collect();
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
        for slot in order {
            let mut record = vec![0u8; 64 << 10];
            rand::RngCore::fill_bytes(&mut rng, &mut record);
            store.put_result(&p, slot, &record).unwrap();
        }
        store.results.rotate_memtable_and_wait().unwrap();
        // Compactions run on fjall's workers: wait (bounded) until a level-0 merge has put
        // tables in a deeper level (a merge swaps its tables in when it is done).
        let results = &store.results;
        let merged = || results.table_count() > results.l0_table_count();
        for _ in 0..3_000 {
            if merged() && results.sealed_memtable_count() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(merged(), "level 0 was not compacted");
        let mut tables = Vec::new();
        let mut dirs = vec![dir.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if d.ends_with("tables") {
                    tables.push(meta.len());
                }
            }
        }
        let results_bytes = records * (64 << 10);
        let largest = tables.iter().copied().max().unwrap_or(0);
        // One record past the target at most (a table is cut after the block that crosses it),
        // plus the table's index and filter.
        assert!(
            largest <= TABLE_TARGET_BYTES + (256 << 10),
            "largest table {largest} B, target {TABLE_TARGET_BYTES} B: {tables:?}"
        );
        assert!(
            tables.iter().sum::<u64>() >= results_bytes,
            "the results are not all in tables: {tables:?}"
        );
        for slot in (0..records).step_by(17) {
            assert_eq!(
                store.result(&p, slot).unwrap().map(|r| r.len()),
                Some(64 << 10)
            );
        }
    }

    /// Descriptors this process has open on files under `dir`.
    #[cfg(target_os = "linux")]
    fn open_files_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn open_table_files_stay_within_their_bound() {
        const FILES_MAX: usize = 10;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_files_max(dir.path(), FILES_MAX).unwrap();
        let p = Id([5; 32]);
        // 40 tables of ascending slots: they do not overlap, so compaction moves them down
        // whole instead of merging them, and all 40 stay separate files.
        let tables = 40u64;
        for slot in 0..tables {
            store.put_result(&p, slot, &[1; 512]).unwrap();
            store.results.rotate_memtable_and_wait().unwrap();
        }
        for _ in 0..3_000 {
            if store.results.sealed_memtable_count() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(store.results.table_count() > FILES_MAX * 2);
        // A point read opens its table's file: reading every table twice over must reuse and
        // close descriptors, not keep one per table.
        for _ in 0..2 {
            for slot in 0..tables {
                assert!(store.result(&p, slot).unwrap().is_some());
            }
        }
        // The bound is on cached table files; the journal and the other keyspaces' few
        // files come on top.
        let open = open_files_under(dir.path());
        assert!(
            open <= FILES_MAX + 12,
            "{open} files open, bound {FILES_MAX}"
        );
    }

    #[test]
    fn the_block_cache_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Id([8; 32]);
        let record = vec![9u8; 64 << 10];
        // 1.5 × the cache in table files, then read all of it back.
        let records = (BLOCK_CACHE_BYTES * 3 / 2) / record.len() as u64;
        for slot in 0..records {
            store.put_result(&p, slot, &record).unwrap();
        }
        store.results.rotate_memtable_and_wait().unwrap();
        // Flushes run on fjall's workers: wait (bounded) until no sealed memtable is left.
        for _ in 0..3_000 {
            if store.results.sealed_memtable_count() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(store.results.sealed_memtable_count(), 0);
        for slot in 0..records {
            assert_eq!(store.result(&p, slot).unwrap().as_ref(), Some(&record));
        }
        let memory = store.memory();
        assert!(
            memory.block_cache <= BLOCK_CACHE_BYTES && memory.block_cache >= BLOCK_CACHE_BYTES / 2,
            "{memory:?}"
        );
    }

    #[test]
    fn a_corrupted_queued_push_is_an_error() {
        assert!(matches!(
            QueuedPush::decode(&[0; 40]),
            Err(StoreError::Corrupted {
                keyspace: "push-queue",
                ..
            })
        ));
        let mut bytes = vec![0; 78];
        bytes[77] = 200; // a node URL longer than the entry
        assert!(QueuedPush::decode(&bytes).is_err());
    }
}
