//! `SimStore`: the node's durable store with crash semantics.
//!
//! Writes go to a journal in order (what fjall's write-ahead journal does). `sync` (the fsync at
//! the end of a group commit) makes every journal entry durable. A crash keeps the durable state
//! plus a random prefix of the journal: anything from nothing (power loss before the page cache
//! reached the disk) to everything (SIGKILL, the page cache survives). A batch is one journal
//! entry: it survives whole or not at all, as a fjall batch does.

use std::collections::BTreeMap;

use ferrobeam::message::{Address, Id, Message};
use ferrobeam::schedule::sequencer::{Located, ScheduleIndex};
use ferrobeam::schedule::{Assignment, ProcessHead};
use rand::Rng;
use rand::rngs::StdRng;

/// One journal entry.
#[derive(Debug, Clone)]
pub enum Write {
    /// A group commit: (assignment, signed assignment, message) per slot.
    Batch(Vec<(Assignment, Message, Message)>),
    /// A computed slot, in one batch as `Store::put_computed`: its result record (None when one
    /// is stored already), its push record, and the pushes queued for other nodes.
    Computed {
        process: Id,
        slot: u64,
        result: Option<Vec<u8>>,
        pushes: Option<Vec<u8>>,
        queued: Vec<(u64, Queued)>,
    },
    /// A queued push its target acknowledged leaves the queue (`Store::finish_push`).
    Dequeue(u64),
    /// A snapshot after a slot (older ones of the process are dropped).
    Snapshot(Id, u64, Vec<u8>),
}

/// A queued push (`store::QueuedPush`): to the node `home`, by sequence number.
#[derive(Debug, Clone)]
pub struct Queued {
    pub target: Id,
    pub home: usize,
    pub message: Message,
}

/// The keyspaces, as plain ordered maps.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub messages: BTreeMap<Id, Message>,
    pub assignments: BTreeMap<(Id, u64), (Assignment, Message)>,
    pub index: BTreeMap<Id, (Id, u64)>,
    pub results: BTreeMap<(Id, u64), Vec<u8>>,
    pub pushes: BTreeMap<(Id, u64), Vec<u8>>,
    pub queue: BTreeMap<u64, Queued>,
    pub snapshots: BTreeMap<(Id, u64), Vec<u8>>,
    /// Each process's head (kept by `apply`, as `Store::heads` reads it back).
    pub heads: BTreeMap<Id, ProcessHead>,
}

impl Tables {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::Batch(entries) => {
                for (assignment, signed, message) in entries {
                    let key = (assignment.process, assignment.slot);
                    self.messages.insert(assignment.message, message.clone());
                    self.assignments
                        .insert(key, (assignment.clone(), signed.clone()));
                    self.index.insert(assignment.message, key);
                    self.heads.insert(key.0, ProcessHead::after(assignment));
                }
            }
            Write::Computed {
                process,
                slot,
                result,
                pushes,
                queued,
            } => {
                let key = (*process, *slot);
                if let Some(result) = result {
                    self.results.insert(key, result.clone());
                }
                if let Some(pushes) = pushes {
                    self.pushes.insert(key, pushes.clone());
                }
                for (seq, push) in queued {
                    self.queue.insert(*seq, push.clone());
                }
            }
            Write::Dequeue(seq) => {
                self.queue.remove(seq);
            }
            Write::Snapshot(p, s, bytes) => {
                self.snapshots.insert((*p, *s), bytes.clone());
                let stale: Vec<_> = self
                    .snapshots
                    .range((*p, 0)..(*p, *s))
                    .map(|(k, _)| *k)
                    .collect();
                for key in stale {
                    self.snapshots.remove(&key);
                }
            }
        }
    }

    /// Slot `slot` of `process`: assignment, the message's signer, the message.
    pub fn slot(&self, process: &Id, slot: u64) -> Option<(Assignment, Address, Message)> {
        let (assignment, _) = self.assignments.get(&(*process, slot))?;
        let message = self.messages[&assignment.message].clone();
        let signer = message.commitments().first()?.address();
        Some((assignment.clone(), signer, message))
    }

    /// The assignments of `process` in slot order.
    pub fn schedule(&self, process: &Id) -> Vec<(Assignment, Message)> {
        self.assignments
            .range((*process, 0)..=(*process, u64::MAX))
            .map(|(_, (a, _))| (a.clone(), self.messages[&a.message].clone()))
            .collect()
    }

    /// The highest slot of `process` with a result.
    pub fn last_result_slot(&self, process: &Id) -> Option<u64> {
        self.results
            .range((*process, 0)..=(*process, u64::MAX))
            .next_back()
            .map(|((_, s), _)| *s)
    }

    /// The newest snapshot of `process` at or before `slot`.
    pub fn snapshot_at_or_before(&self, process: &Id, slot: u64) -> Option<(u64, Vec<u8>)> {
        self.snapshots
            .range((*process, 0)..=(*process, slot))
            .next_back()
            .map(|((_, s), b)| (*s, b.clone()))
    }
}

/// The store: durable tables, the unsynced journal, and the live view (durable + journal).
#[derive(Debug, Default)]
pub struct SimStore {
    durable: Tables,
    journal: Vec<Write>,
    live: Tables,
}

impl SimStore {
    /// What reads see (the node's own writes included, synced or not).
    pub fn live(&self) -> &Tables {
        &self.live
    }

    /// What a crash right now could not lose.
    pub fn durable(&self) -> &Tables {
        &self.durable
    }

    /// Appends to the journal (visible at once, durable at the next `sync`).
    pub fn write(&mut self, write: Write) {
        self.live.apply(&write);
        self.journal.push(write);
    }

    /// fsync: every journal entry becomes durable.
    pub fn sync(&mut self) {
        for write in self.journal.drain(..) {
            self.durable.apply(&write);
        }
    }

    /// A crash: the durable state plus a random prefix of the journal survives. Returns how many
    /// journal entries were lost.
    pub fn crash(&mut self, rng: &mut StdRng) -> usize {
        let kept = rng.gen_range(0..=self.journal.len());
        let lost = self.journal.len() - kept;
        for write in self.journal.drain(..kept) {
            self.durable.apply(&write);
        }
        self.journal.clear();
        self.live = self.durable.clone();
        lost
    }
}

/// The node's duplicate lookup over the live view (what `Store::locate` + `assignment` do).
pub struct Index<'a>(pub &'a Tables);

impl ScheduleIndex for Index<'_> {
    type Error = String;

    fn locate(&mut self, id: &Id) -> Result<Option<Located>, String> {
        let Some(key) = self.0.index.get(id) else {
            return Ok(None);
        };
        let (assignment, signed) = self
            .0
            .assignments
            .get(key)
            .ok_or_else(|| "index names a missing assignment".to_owned())?;
        Ok(Some(Located {
            assignment: assignment.clone(),
            signed: signed.id(),
        }))
    }
}
