//! The process state machine, sans-IO: which slot a process expects next, when its state is
//! snapshotted, which executor core owns it, and how to bring it to a submitted slot.
//!
//! No wasmtime, threads, files or clocks here: the executor driver asks these functions and
//! carries out the answer, so the rules are tested exhaustively on plain values.

use crate::message::Id;

/// Default K: a snapshot is taken after slot 0 and then every K slots at least. Recovery replays
/// the slots after the newest snapshot; each snapshot copies the whole memory.
pub const SNAPSHOT_INTERVAL_DEFAULT: u64 = 64;
/// Snapshot write budget: slots between snapshots are at least `memory / this`, so a process's
/// snapshots write at most this many bytes per slot on average, whatever its memory. A 64 KiB
/// counter snapshots every K slots; a 16 MiB aos process every 256 (without the budget, K = 64
/// made aos spend most of its time writing snapshots).
pub const SNAPSHOT_BYTES_PER_SLOT: u64 = 64 * 1024;
/// Most slots between snapshots, whatever the memory: bounds the replay after a restart.
pub const SNAPSHOT_INTERVAL_MAX: u64 = 16_384;

const _: () = assert!(SNAPSHOT_INTERVAL_DEFAULT <= SNAPSHOT_INTERVAL_MAX);

/// The slot bookkeeping of one live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    next_slot: u64,
    snapshot_interval: u64,
    /// The slot after which the newest snapshot was taken (or restored from).
    last_snapshot: Option<u64>,
}

impl Progress {
    /// A process that has run nothing: it expects slot 0.
    ///
    /// # Panics
    /// If `snapshot_interval` is 0 (a configuration bug).
    pub fn new(snapshot_interval: u64) -> Self {
        assert!(snapshot_interval > 0, "snapshot interval is at least 1");
        Self {
            next_slot: 0,
            snapshot_interval,
            last_snapshot: None,
        }
    }

    /// A process restored from a snapshot taken after `slot`: it expects `slot + 1`.
    ///
    /// # Panics
    /// If `snapshot_interval` is 0, or `slot` is `u64::MAX` (no slot can follow it).
    pub fn resumed(slot: u64, snapshot_interval: u64) -> Self {
        let next_slot = slot.checked_add(1).expect("a slot below u64::MAX");
        Self {
            next_slot,
            last_snapshot: Some(slot),
            ..Self::new(snapshot_interval)
        }
    }

    /// The slot the process must run next.
    pub fn next_slot(&self) -> u64 {
        self.next_slot
    }

    /// The last slot run, if any.
    pub fn last_slot(&self) -> Option<u64> {
        self.next_slot.checked_sub(1)
    }

    /// Records that `slot` ran with `memory_bytes` of linear memory; returns true when a
    /// snapshot is due after it: after the first slot, then once at least
    /// `max(K, memory / SNAPSHOT_BYTES_PER_SLOT)` slots (at most [`SNAPSHOT_INTERVAL_MAX`]) ran
    /// since the last one.
    ///
    /// # Panics
    /// If `slot` is not [`Progress::next_slot`]: the driver checks order before running.
    pub fn ran(&mut self, slot: u64, memory_bytes: u64) -> bool {
        assert_eq!(slot, self.next_slot, "slots run in order");
        self.next_slot = slot.checked_add(1).expect("a slot below u64::MAX");
        let interval = self
            .snapshot_interval
            .max(memory_bytes / SNAPSHOT_BYTES_PER_SLOT)
            .min(SNAPSHOT_INTERVAL_MAX);
        let due = self
            .last_snapshot
            .is_none_or(|last| slot.saturating_sub(last) >= interval);
        if due {
            self.last_snapshot = Some(slot);
        }
        due
    }
}

/// The executor core that owns `process` among `cores`: a stable function of the id (its first
/// eight bytes, already uniform since ids are SHA-256 digests), so every submission of a process
/// reaches the core holding its live instance.
///
/// # Panics
/// If `cores` is 0.
pub fn core_for(process: &Id, cores: usize) -> usize {
    assert!(cores > 0, "at least one executor core");
    let mut head = [0u8; 8];
    head.copy_from_slice(&process.as_bytes()[..8]);
    // The remainder is below `cores`, so it fits usize.
    (u64::from_be_bytes(head) % cores as u64) as usize
}

/// How to bring a process to a submitted slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The live instance expects this slot: run it.
    Run,
    /// Start from the process message: a fresh instance, then run slot 0.
    Fresh,
    /// Restore the submitted snapshot into a fresh instance, then run the slot.
    Restore,
    /// None of the above applies: the node must resubmit with a snapshot at `slot - 1`.
    NeedSnapshot,
}

/// Decides how to run `slot` given the live instance's next slot (if the process is live on its
/// core) and the submitted snapshot's slot (if any). A live instance at the right slot wins (no
/// restore); otherwise a snapshot right before the slot; otherwise slot 0 starts over.
pub fn plan(live_next_slot: Option<u64>, snapshot_slot: Option<u64>, slot: u64) -> Plan {
    if live_next_slot == Some(slot) {
        Plan::Run
    } else if snapshot_slot.and_then(|s| s.checked_add(1)) == Some(slot) {
        Plan::Restore
    } else if slot == 0 {
        Plan::Fresh
    } else {
        Plan::NeedSnapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_slots_and_snapshots_every_k() {
        let mut progress = Progress::new(4);
        assert_eq!(progress.last_slot(), None);
        let due: Vec<bool> = (0..9).map(|slot| progress.ran(slot, 65_536)).collect();
        assert_eq!(
            due,
            [true, false, false, false, true, false, false, false, true]
        );
        assert_eq!(progress.next_slot(), 9);
        assert_eq!(progress.last_slot(), Some(8));
        let resumed = Progress::resumed(8, 4);
        assert_eq!(resumed, progress);
    }

    #[test]
    #[should_panic(expected = "slots run in order")]
    fn progress_refuses_a_skipped_slot() {
        Progress::new(4).ran(1, 0);
    }

    #[test]
    fn big_memories_snapshot_less_often() {
        let mut progress = Progress::new(4);
        let memory = 16 * SNAPSHOT_BYTES_PER_SLOT;
        let due: Vec<u64> = (0..40).filter(|slot| progress.ran(*slot, memory)).collect();
        assert_eq!(due, [0, 16, 32]);
        let mut huge = Progress::new(4);
        let due: Vec<u64> = (0..=SNAPSHOT_INTERVAL_MAX)
            .filter(|slot| huge.ran(*slot, u64::MAX))
            .collect();
        assert_eq!(due, [0, SNAPSHOT_INTERVAL_MAX]);
    }

    #[test]
    fn plan_covers_every_case() {
        assert_eq!(plan(Some(5), None, 5), Plan::Run);
        assert_eq!(plan(Some(5), Some(4), 5), Plan::Run);
        assert_eq!(plan(Some(9), Some(4), 5), Plan::Restore);
        assert_eq!(plan(None, Some(4), 5), Plan::Restore);
        assert_eq!(plan(None, None, 0), Plan::Fresh);
        assert_eq!(plan(Some(7), None, 0), Plan::Fresh);
        assert_eq!(plan(Some(0), None, 0), Plan::Run);
        assert_eq!(plan(None, None, 5), Plan::NeedSnapshot);
        assert_eq!(plan(Some(3), Some(1), 5), Plan::NeedSnapshot);
        assert_eq!(plan(None, Some(u64::MAX), 0), Plan::Fresh);
    }

    #[test]
    fn core_for_is_stable_and_in_range() {
        for i in 0..64u8 {
            let id = Id([i.wrapping_mul(37); 32]);
            for cores in 1..9 {
                let core = core_for(&id, cores);
                assert!(core < cores);
                assert_eq!(core, core_for(&id, cores));
            }
        }
        assert_eq!(core_for(&Id([0; 32]), 3), 0);
    }
}
