//! The scheduler: orders messages into per-process, gap-free slots and extends each process's
//! hash chain.
//!
//! Sans-IO: [`Scheduler`] is plain state; time is passed in, signing is the caller's, and
//! durability is the driver's (`crate::node`), which appends assignments to the store in group
//! commits and only then acknowledges senders. Slot 0 of every process is the process message
//! itself. [`sequencer::SequencerCore`] holds the sequencer's decisions around it (admission,
//! duplicates, batches, acks after commit), so the node's thread and the simulator
//! (`dataplane/tests/sim`) drive the same code.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::message::{Hashpath, Id, Message, MessageError, Value, b64};

pub mod sequencer;

/// The `type` of an assignment message.
pub const ASSIGNMENT_TYPE: &str = "Assignment";
/// The `type` of a process message.
pub const PROCESS_TYPE: &str = "Process";
/// Domain separator of the assignment hash chain.
pub const CHAIN_DOMAIN: &[u8] = b"ferrobeam-chain-v1";

/// Why the scheduler refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// No process with this id has been spawned here.
    #[error("unknown process {0}")]
    UnknownProcess(Id),
    /// A process with this id already exists.
    #[error("process {0} already exists")]
    ProcessExists(Id),
    /// A process has used every slot (2^63); never expected in practice.
    #[error("process {0} has no slots left")]
    SlotsExhausted(Id),
    /// An assignment message is malformed.
    #[error("malformed assignment: {0}")]
    AssignmentInvalid(String),
}

/// What the scheduler decides for one message: which process, which slot, when, and the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The process the message is scheduled on.
    pub process: Id,
    /// Its slot, gap-free from 0.
    pub slot: u64,
    /// The scheduled message's id.
    pub message: Id,
    /// Milliseconds since the Unix epoch: the process's clock for this slot. Never decreases
    /// within a process.
    pub timestamp_ms: u64,
    /// `SHA-256(CHAIN_DOMAIN ‖ previous chain ‖ message id ‖ slot ‖ timestamp)`; the previous
    /// chain of slot 0 is the process id.
    pub hash_chain: [u8; 32],
    /// The process's hashpath after this slot (see [`Hashpath`]).
    pub hashpath: Hashpath,
}

impl Assignment {
    /// The next link of the hash chain.
    pub fn chain_next(previous: &[u8; 32], message: &Id, slot: u64, timestamp_ms: u64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(CHAIN_DOMAIN);
        hasher.update(previous);
        hasher.update(message.as_bytes());
        hasher.update(slot.to_be_bytes());
        hasher.update(timestamp_ms.to_be_bytes());
        hasher.finalize().into()
    }

    /// The assignment as an (unsigned) message; the node signs it.
    pub fn to_message(&self) -> Message {
        // Slots and timestamps stay below 2^63 (checked when assigned), so they fit an Int.
        Message::new()
            .with("type", ASSIGNMENT_TYPE)
            .with("process", self.process.to_string())
            .with("slot", self.slot as i64)
            .with("message", self.message.to_string())
            .with("timestamp", self.timestamp_ms as i64)
            .with("hash-chain", b64(&self.hash_chain))
            .with("hashpath", self.hashpath.to_string())
    }

    /// Parses an assignment message (signature checks are the caller's).
    ///
    /// # Errors
    /// [`ScheduleError::AssignmentInvalid`] naming the bad field.
    pub fn from_message(message: &Message) -> Result<Self, ScheduleError> {
        let bad = |what: &str| ScheduleError::AssignmentInvalid(what.to_owned());
        if message.text("type") != Some(ASSIGNMENT_TYPE) {
            return Err(bad("type is not Assignment"));
        }
        let id = |key: &str| -> Result<[u8; 32], ScheduleError> {
            let text = message.text(key).ok_or_else(|| bad(key))?;
            let id: Id = text.parse().map_err(|_: MessageError| bad(key))?;
            Ok(id.0)
        };
        let int = |key: &str| -> Result<u64, ScheduleError> {
            match message.get(key) {
                Some(Value::Int(i)) if *i >= 0 => Ok(*i as u64),
                _ => Err(bad(key)),
            }
        };
        Ok(Self {
            process: Id(id("process")?),
            slot: int("slot")?,
            message: Id(id("message")?),
            timestamp_ms: int("timestamp")?,
            hash_chain: id("hash-chain")?,
            hashpath: Hashpath(id("hashpath")?),
        })
    }
}

/// The scheduler's state of one process: what the next assignment extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessHead {
    /// The slot the next message gets.
    pub next_slot: u64,
    /// The chain after the last assignment (the process id before slot 0).
    pub hash_chain: [u8; 32],
    /// The hashpath after the last assignment.
    pub hashpath: Hashpath,
    /// The last assignment's timestamp.
    pub timestamp_ms: u64,
}

impl ProcessHead {
    /// The head after `assignment`.
    pub fn after(assignment: &Assignment) -> Self {
        Self {
            next_slot: assignment.slot + 1,
            hash_chain: assignment.hash_chain,
            hashpath: assignment.hashpath,
            timestamp_ms: assignment.timestamp_ms,
        }
    }
}

/// Per-process slot counters and chains. One scheduler owns all processes of a node; it is driven
/// by a single thread, so slots are assigned without locks and can never repeat or skip.
#[derive(Debug, Default)]
pub struct Scheduler {
    heads: HashMap<Id, ProcessHead>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a process's head from its last durable assignment (after a restart).
    pub fn restore(&mut self, process: Id, head: ProcessHead) {
        self.heads.insert(process, head);
    }

    /// Drops `process` (undoes a spawn that never became durable).
    pub fn forget(&mut self, process: &Id) {
        self.heads.remove(process);
    }

    /// The head of `process`, if it exists.
    pub fn head(&self, process: &Id) -> Option<&ProcessHead> {
        self.heads.get(process)
    }

    /// Number of processes.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// True when no process exists.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// Creates `process` and assigns its own message to slot 0.
    ///
    /// # Errors
    /// [`ScheduleError::ProcessExists`].
    pub fn spawn(&mut self, process: Id, now_ms: u64) -> Result<Assignment, ScheduleError> {
        if self.heads.contains_key(&process) {
            return Err(ScheduleError::ProcessExists(process));
        }
        let base = ProcessHead {
            next_slot: 0,
            hash_chain: process.0,
            hashpath: Hashpath::base(&process),
            timestamp_ms: 0,
        };
        let assignment = next(&process, &base, process, now_ms)?;
        self.heads.insert(process, ProcessHead::after(&assignment));
        Ok(assignment)
    }

    /// Assigns `message` the next slot of `process`.
    ///
    /// # Errors
    /// [`ScheduleError::UnknownProcess`].
    pub fn assign(
        &mut self,
        process: &Id,
        message: Id,
        now_ms: u64,
    ) -> Result<Assignment, ScheduleError> {
        let head = self
            .heads
            .get_mut(process)
            .ok_or(ScheduleError::UnknownProcess(*process))?;
        let assignment = next(process, head, message, now_ms)?;
        *head = ProcessHead::after(&assignment);
        Ok(assignment)
    }
}

fn next(
    process: &Id,
    head: &ProcessHead,
    message: Id,
    now_ms: u64,
) -> Result<Assignment, ScheduleError> {
    if head.next_slot >= i64::MAX as u64 {
        return Err(ScheduleError::SlotsExhausted(*process));
    }
    // The process clock never runs backwards, whatever the node's clock does; and it stays an Int.
    let timestamp_ms = now_ms.max(head.timestamp_ms).min(i64::MAX as u64);
    let slot = head.next_slot;
    Ok(Assignment {
        process: *process,
        slot,
        message,
        timestamp_ms,
        hash_chain: Assignment::chain_next(&head.hash_chain, &message, slot, timestamp_ms),
        hashpath: head.hashpath.then(&message),
    })
}

/// Checks a schedule (assignments of one process in slot order, from slot 0): slots gap-free,
/// timestamps non-decreasing, chain and hashpaths recomputed. Returns the first bad slot.
///
/// # Errors
/// The index of the first assignment that does not follow from its predecessor.
pub fn verify_schedule(process: &Id, assignments: &[Assignment]) -> Result<(), usize> {
    let mut head = ProcessHead {
        next_slot: 0,
        hash_chain: process.0,
        hashpath: Hashpath::base(process),
        timestamp_ms: 0,
    };
    for (i, a) in assignments.iter().enumerate() {
        let expected = next(process, &head, a.message, a.timestamp_ms).map_err(|_| i)?;
        if a.timestamp_ms < head.timestamp_ms || *a != expected {
            return Err(i);
        }
        head = ProcessHead::after(a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn slots_are_gap_free_and_chains_verify() {
        let mut s = Scheduler::new();
        let process = id(1);
        let mut all = vec![s.spawn(process, 100).unwrap()];
        for n in 2..20 {
            all.push(s.assign(&process, id(n), 100 + u64::from(n)).unwrap());
        }
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.slot, i as u64);
        }
        assert_eq!(all[0].message, process);
        assert_eq!(verify_schedule(&process, &all), Ok(()));
        let mut tampered = all.clone();
        tampered[5].timestamp_ms += 1;
        assert_eq!(verify_schedule(&process, &tampered), Err(5));
        let mut swapped = all.clone();
        swapped.swap(3, 4);
        assert_eq!(verify_schedule(&process, &swapped), Err(3));
    }

    #[test]
    fn clock_never_runs_backwards() {
        let mut s = Scheduler::new();
        s.spawn(id(1), 1_000).unwrap();
        let a = s.assign(&id(1), id(2), 500).unwrap();
        assert_eq!(a.timestamp_ms, 1_000);
    }

    #[test]
    fn unknown_and_duplicate_processes() {
        let mut s = Scheduler::new();
        assert_eq!(
            s.assign(&id(9), id(2), 0),
            Err(ScheduleError::UnknownProcess(id(9)))
        );
        s.spawn(id(1), 0).unwrap();
        assert_eq!(s.spawn(id(1), 0), Err(ScheduleError::ProcessExists(id(1))));
    }

    #[test]
    fn assignment_message_round_trip() {
        let mut s = Scheduler::new();
        let a = s.spawn(id(3), 42).unwrap();
        assert_eq!(Assignment::from_message(&a.to_message()), Ok(a));
        assert!(Assignment::from_message(&Message::new().with("type", "Assignment")).is_err());
    }

    #[test]
    fn restore_continues_the_chain() {
        let mut s = Scheduler::new();
        s.spawn(id(1), 0).unwrap();
        let a1 = s.assign(&id(1), id(2), 5).unwrap();
        let a2 = s.assign(&id(1), id(3), 6).unwrap();
        let mut t = Scheduler::new();
        t.restore(id(1), ProcessHead::after(&a1));
        assert_eq!(t.assign(&id(1), id(3), 6).unwrap(), a2);
    }
}
