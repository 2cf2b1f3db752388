//! The compute driver: feeds assigned slots to the executor cores in slot order, stores results
//! and snapshots, and restores processes that are not live (after a restart, or evicted) from
//! their newest snapshot plus a replay of the slots after it.
//!
//! One dispatcher thread owns all per-process progress. The sequencer only marks a process as
//! having new slots (never blocks on compute: scheduling and acks do not wait for execution); the
//! dispatcher reads the slots back from the store and submits at most `queue_max` jobs per core,
//! so `Executors::submit` never blocks and one slow process never stalls the others' cores.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value as Json, json};

use super::pusher::{Pushed, Pusher};
use super::{Computed, metrics::Metrics};
use crate::execute::{
    EXECUTOR_QUEUE_MAX, Engine, ExecError, Executors, ExecutorsConfig, Job, JobDone, Module,
    SlotInput, SlotOutcome, Snapshot,
};
use crate::message::{Address, Hashpath, Id, Message, Value, json as message_json};
use crate::push;
use crate::schedule::Assignment;
use crate::store::{Store, StoreError};

/// Slots one dispatcher round reads from the store for one process before moving to the next
/// process (fairness between processes; bounds the work between looks at finished jobs).
pub const READ_BATCH_MAX: usize = 256;
/// How often the dispatcher looks again at processes it could not feed (executor queues full,
/// or paused because too many of their pushes are queued).
const PUSH_PAUSE_POLL: Duration = Duration::from_millis(50);

/// The newest assigned slot of each process with slots not yet handed to the executors. At most
/// one entry per process: bounded by the number of processes.
#[derive(Debug, Default)]
pub struct Pending {
    slots: Mutex<HashMap<Id, u64>>,
}

impl Pending {
    fn mark(&self, process: Id, slot: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = slots.entry(process).or_insert(slot);
        *entry = (*entry).max(slot);
    }

    fn take(&self) -> HashMap<Id, u64> {
        std::mem::take(&mut *self.slots.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A handle the sequencer uses to announce new slots.
#[derive(Clone)]
pub struct ComputeHandle {
    pending: Arc<Pending>,
    doorbell: Sender<()>,
}

impl ComputeHandle {
    /// Announces that `process` has slots up to `slot`. Never blocks.
    pub fn announce(&self, process: Id, slot: u64) {
        self.pending.mark(process, slot);
        // A full doorbell already means "look again"; one ring is enough.
        let _ = self.doorbell.try_send(());
    }
}

/// What the dispatcher knows of one process.
struct ProcessState {
    definition: Message,
    owner: Address,
    module: Module,
    /// Highest slot handed to the executors in the current epoch (None: nothing yet).
    submitted: Option<u64>,
    /// Highest assigned slot known.
    assigned: u64,
    /// True when the executor holds a live instance that continues from `submitted`.
    live: bool,
    /// Jobs in flight in submission order.
    inflight: VecDeque<Inflight>,
    epoch: u64,
}

/// A job handed to an executor, remembered until its result comes back.
struct Inflight {
    slot: u64,
    epoch: u64,
    message: Id,
    hashpath: Hashpath,
    /// The push depth of the slot's message (see `crate::push::depth_of`).
    depth: i64,
}

/// What the compute driver shares with the rest of the node.
pub struct Wiring {
    /// The wasm engine (module cache).
    pub engine: Arc<Engine>,
    /// The store (schedule in, results and snapshots out).
    pub store: Arc<Store>,
    /// Where computed slots are announced to waiting requests.
    pub computed: Arc<Computed>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The pusher, set once the sequencer runs.
    pub pusher: Arc<OnceLock<Pusher>>,
    /// This node's address and its trusted peers': messages they signed are pushed messages
    /// (see `crate::push::sender`).
    pub pushers: Vec<Address>,
}

/// Starts the dispatcher thread and the executors. The thread ends (and stops the executors)
/// once every [`ComputeHandle`] is dropped, which the sequencer does when it stops.
///
/// # Errors
/// [`ExecError`] when the executors cannot start.
pub fn start(
    wiring: Wiring,
    pinned: &[usize],
    snapshot_interval: u64,
    heads: Vec<(Id, u64)>,
) -> Result<(ComputeHandle, std::thread::JoinHandle<()>), ExecError> {
    let Wiring {
        engine,
        store,
        computed,
        metrics,
        pusher,
        pushers,
    } = wiring;
    let cores = pinned.len();
    let mut config = ExecutorsConfig::new(cores);
    config.snapshot_interval = snapshot_interval;
    config.pinned = Some(pinned.to_vec());
    let executors = Executors::start(&engine, config)?;
    let queue_max = EXECUTOR_QUEUE_MAX;
    let (done_tx, done_rx) = crossbeam_channel::bounded(cores * (queue_max + 1));
    let (doorbell, ring) = crossbeam_channel::bounded(1);
    let pending = Arc::new(Pending::default());
    let handle = ComputeHandle {
        pending: pending.clone(),
        doorbell,
    };
    // Processes with slots but no stored result for the last one resume at once.
    for (process, last) in heads {
        if store.result(&process, last).ok().flatten().is_none() {
            handle.announce(process, last);
        }
    }
    let dispatcher = Dispatcher {
        engine,
        store,
        computed,
        metrics,
        executors,
        done_tx,
        pending,
        processes: HashMap::new(),
        inflight_per_core: vec![0; cores],
        queue_max,
        pusher,
        pushers,
    };
    let thread = std::thread::Builder::new()
        .name("ferrobeam-compute".into())
        .spawn(move || dispatcher.run(ring, done_rx))
        .map_err(|e| ExecError::Engine(format!("spawning the compute dispatcher: {e}")))?;
    Ok((handle, thread))
}

struct Dispatcher {
    engine: Arc<Engine>,
    store: Arc<Store>,
    computed: Arc<Computed>,
    metrics: Arc<Metrics>,
    executors: Executors,
    done_tx: Sender<JobDone>,
    pending: Arc<Pending>,
    processes: HashMap<Id, ProcessState>,
    inflight_per_core: Vec<usize>,
    queue_max: usize,
    /// Set once the sequencer exists (it is started after the executors).
    pusher: Arc<OnceLock<Pusher>>,
    pushers: Vec<Address>,
}

impl Dispatcher {
    fn run(mut self, ring: Receiver<()>, done: Receiver<JobDone>) {
        let mut waiting: HashMap<Id, u64> = HashMap::new();
        // Runs for the life of the node: ends when the sequencer (the doorbell's sender) is gone.
        loop {
            // Processes paused by push backpressure have no event of their own to wake them:
            // while any process waits, look again every PUSH_PAUSE_POLL.
            let timeout = if waiting.is_empty() {
                Duration::from_secs(3_600)
            } else {
                PUSH_PAUSE_POLL
            };
            crossbeam_channel::select! {
                recv(ring) -> rung => if rung.is_err() { break },
                recv(done) -> finished => match finished {
                    Ok(finished) => self.finish(finished),
                    Err(_) => break,
                },
                default(timeout) => {}
            }
            while let Ok(finished) = done.try_recv() {
                self.finish(finished);
            }
            for (process, slot) in self.pending.take() {
                let entry = waiting.entry(process).or_insert(slot);
                *entry = (*entry).max(slot);
            }
            waiting.retain(|process, assigned| !self.feed(*process, *assigned));
        }
    }

    /// Submits what fits of `process`'s slots up to `assigned`. True when all are submitted.
    fn feed(&mut self, process: Id, assigned: u64) -> bool {
        if let Err(e) = self.ensure_state(process) {
            tracing::error!(%process, error = %e, "cannot compute process");
            return true;
        }
        let core = self.executors.core_of(&process);
        let state = self.processes.get_mut(&process).expect("ensured above");
        state.assigned = state.assigned.max(assigned);
        let mut snapshot = None;
        if !state.live {
            match restore_point(&self.store, &process, state.submitted) {
                Ok((from, snap)) => {
                    state.submitted = from;
                    snapshot = snap;
                    state.live = true;
                    state.epoch += 1;
                }
                Err(e) => {
                    tracing::error!(%process, error = %e, "cannot restore process");
                    return true;
                }
            }
        }
        let next = state.submitted.map_or(0, |s| s + 1);
        if next > state.assigned {
            return true;
        }
        // Backpressure: too many of this process's pushes are queued (a peer is down).
        if self.pusher.get().is_some_and(|p| !p.may_compute(&process)) {
            return false;
        }
        let room = self.queue_max.saturating_sub(self.inflight_per_core[core]);
        let Some(last) = batch_last(next, state.assigned, room) else {
            return false;
        };
        let slots = match read_slots(&self.store, &process, next, last) {
            Ok(slots) => slots,
            Err(e) => {
                tracing::error!(%process, error = %e, "cannot read the schedule");
                return true;
            }
        };
        for (assignment, message) in slots {
            let Some(from) = message.commitments().first().map(|c| c.address()) else {
                tracing::error!(%process, slot = assignment.slot, "stored message is unsigned");
                return true;
            };
            let depth = push::depth_of(&message, self.pushers.contains(&from));
            let from = push::sender(&message, from, &self.pushers);
            let input = SlotInput {
                process,
                slot: assignment.slot,
                message_id: assignment.message,
                from,
                owner: state.owner,
                timestamp_ms: assignment.timestamp_ms,
                message,
            };
            let job = Job {
                definition: state.definition.clone(),
                module: state.module.clone(),
                snapshot: snapshot.take(),
                input,
                reply: self.done_tx.clone(),
            };
            if self.executors.submit(job).is_err() {
                tracing::error!("executors stopped");
                return true;
            }
            self.inflight_per_core[core] += 1;
            state.inflight.push_back(Inflight {
                slot: assignment.slot,
                epoch: state.epoch,
                message: assignment.message,
                hashpath: assignment.hashpath,
                depth,
            });
            state.submitted = Some(assignment.slot);
        }
        state.submitted == Some(state.assigned)
    }

    fn ensure_state(&mut self, process: Id) -> Result<(), String> {
        if self.processes.contains_key(&process) {
            return Ok(());
        }
        let definition = self
            .store
            .message(&process)
            .map_err(|e| e.to_string())?
            .ok_or("the process message is missing")?;
        let owner = definition
            .commitments()
            .first()
            .map(|c| c.address())
            .ok_or("the process message is unsigned")?;
        // A process spawned by another process is owned by it, not by the node that signed it.
        let owner = push::sender(&definition, owner, &self.pushers);
        let module_id = super::process_module(&definition).map_err(|e| e.to_string())?;
        let wasm = self
            .store
            .module(&module_id)
            .map_err(|e| e.to_string())?
            .ok_or("the module is missing")?;
        let module = self
            .engine
            .load(module_id, &wasm)
            .map_err(|e| e.to_string())?;
        self.processes.insert(
            process,
            ProcessState {
                definition,
                owner,
                module,
                submitted: None,
                assigned: 0,
                live: false,
                inflight: VecDeque::new(),
                epoch: 0,
            },
        );
        Ok(())
    }

    fn finish(&mut self, done: JobDone) {
        let core = self.executors.core_of(&done.process);
        self.inflight_per_core[core] = self.inflight_per_core[core].saturating_sub(1);
        let Some(state) = self.processes.get_mut(&done.process) else {
            return;
        };
        let Some(Inflight {
            slot,
            epoch,
            message,
            hashpath,
            depth,
        }) = state.inflight.pop_front()
        else {
            return;
        };
        debug_assert_eq!(slot, done.slot, "jobs of one process finish in order");
        if epoch != state.epoch {
            return; // a job of an epoch that was abandoned for a restore
        }
        match done.outcome {
            Ok(outcome) => {
                let record = result_record(done.process, slot, message, hashpath, &outcome);
                let bytes = serde_json::to_vec(&record).unwrap_or_default();
                // Spawns name the spawning process's module: they need its definition.
                let definition = (!outcome.spawns.is_empty()).then(|| state.definition.clone());
                self.store_computed(
                    done.process,
                    slot,
                    depth,
                    &outcome,
                    definition.as_ref(),
                    &bytes,
                );
                if record["error"].is_string() {
                    self.metrics.slot_errors.inc();
                }
                if let Some(snapshot) = done.snapshot
                    && let Err(e) =
                        self.store
                            .put_snapshot(&done.process, snapshot.slot, &snapshot.encode())
                {
                    tracing::error!(process = %done.process, error = %e, "storing a snapshot");
                }
                self.metrics.slots_computed.inc();
                self.computed.publish(done.process, slot);
            }
            Err(ExecError::SlotOutOfOrder { .. }) => {
                // The instance is gone (evicted): restore and replay from the last stored result.
                state.live = false;
                state.submitted = slot.checked_sub(1);
                state.epoch += 1;
                self.pending.mark(done.process, state.assigned);
            }
            Err(e) => {
                tracing::error!(process = %done.process, slot, error = %e, "slot could not run");
            }
        }
    }

    /// Stores a computed slot. A slot without a stored result has its outbox pushed first: local
    /// pushes are made at once, the others are queued, and the queue entries, the push record and
    /// the result go to the store in one batch, so a crash keeps all of them or none (then the
    /// slot is recomputed and pushed again, with the same message ids). A stored result means
    /// its pushes were made or queued before; a recomputed result must equal it (determinism).
    fn store_computed(
        &self,
        process: Id,
        slot: u64,
        depth: i64,
        outcome: &SlotOutcome,
        definition: Option<&Message>,
        result: &[u8],
    ) {
        match self.store.result(&process, slot) {
            Ok(Some(previous)) => {
                if previous != result {
                    tracing::error!(%process, slot, "recomputed result differs from the stored one");
                    self.metrics.replay_mismatches.inc();
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%process, slot, error = %e, "reading a stored result");
                return;
            }
        }
        let pushed = self.push(process, slot, depth, outcome, definition);
        let (record, queued) = match &pushed {
            Some(pushed) => (
                Some(serde_json::to_vec(&pushed.record).unwrap_or_default()),
                &pushed.queued[..],
            ),
            None => (None, &[][..]),
        };
        if let Err(e) = self
            .store
            .put_computed(&process, slot, result, record.as_deref(), queued)
        {
            tracing::error!(%process, slot, error = %e, "storing a result");
            return;
        }
        if let (Some(pushed), Some(pusher)) = (pushed, self.pusher.get()) {
            pusher.enqueued(pushed.queued);
        }
    }

    /// Pushes a slot's outbox and spawns; None when it has neither.
    fn push(
        &self,
        process: Id,
        slot: u64,
        depth: i64,
        outcome: &SlotOutcome,
        definition: Option<&Message>,
    ) -> Option<Pushed> {
        let outbox = &outcome.outbox;
        if outbox.is_empty() && outcome.spawns.is_empty() {
            return None;
        }
        let Some(pusher) = self.pusher.get() else {
            tracing::error!(%process, slot, "outbox computed before the pusher was set");
            return None;
        };
        let mut pushed = pusher.push(process, slot, depth, outbox);
        if let (Some(definition), Json::Array(entries)) = (definition, &mut pushed.record) {
            entries.extend(pusher.spawn(process, slot, depth, definition, &outcome.spawns));
        }
        self.metrics.messages_pushed.inc_by(outbox.len() as u64);
        Some(pushed)
    }
}

/// The result record of a slot, as stored and served by `GET /<pid>/compute`. `ferrobeam audit`
/// builds the same record from its own recomputation and compares them byte for byte.
pub fn result_record(
    process: Id,
    slot: u64,
    message: Id,
    hashpath: Hashpath,
    outcome: &SlotOutcome,
) -> serde_json::Value {
    json!({
        "process": process,
        "slot": slot,
        "message": message,
        "hashpath": hashpath,
        "output": message_json::value_to_json(&Value::Bytes(outcome.output.clone())),
        "messages": outcome.outbox.iter().map(message_json::to_json).collect::<Vec<_>>(),
        "spawns": outcome.spawns.iter().map(message_json::to_json).collect::<Vec<_>>(),
        "error": outcome.error,
        "fuel": outcome.fuel_used,
    })
}

/// Where a process that is not live restarts: the newest snapshot at or before the last slot
/// already handed out (or, with none, slot 0 from a fresh instance).
fn restore_point(
    store: &Store,
    process: &Id,
    submitted: Option<u64>,
) -> Result<(Option<u64>, Option<Snapshot>), String> {
    let Some(upto) = submitted.or(store.last_result_slot(process).map_err(|e| e.to_string())?)
    else {
        return Ok((None, None));
    };
    match store
        .snapshot_at_or_before(process, upto)
        .map_err(|e| e.to_string())?
    {
        None => Ok((None, None)),
        Some((slot, bytes)) => match Snapshot::decode(&bytes) {
            Ok(snapshot) => Ok((Some(slot), Some(snapshot))),
            Err(e) => {
                tracing::warn!(%process, slot, error = %e, "unusable snapshot; replaying from slot 0");
                Ok((None, None))
            }
        },
    }
}

/// The last slot of the next batch from `next` (at most `assigned`): as many as the core's queue
/// has `room` for, and at most [`READ_BATCH_MAX`]. `None` when the queue is full.
fn batch_last(next: u64, assigned: u64, room: usize) -> Option<u64> {
    debug_assert!(next <= assigned);
    let size = room.min(READ_BATCH_MAX) as u64;
    (size > 0).then(|| assigned.min(next + size - 1))
}

fn read_slots(
    store: &Store,
    process: &Id,
    from: u64,
    to: u64,
) -> Result<Vec<(Assignment, Message)>, StoreError> {
    let signed = store.assignments(process, from, to, READ_BATCH_MAX)?;
    let mut out = Vec::with_capacity(signed.len());
    for a in signed {
        let assignment = Assignment::from_message(&a)?;
        let message = store
            .message(&assignment.message)?
            .ok_or(StoreError::Corrupted {
                keyspace: "messages",
                reason: format!("message of slot {} is missing", assignment.slot),
            })?;
        // Stored messages were verified before they were scheduled (the store is this node's own
        // durable state); verifying again here would cap compute at one core's verify rate.
        out.push((assignment, message));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_at_most_read_batch_max_slots_and_the_queue_room() {
        let far = 1_000_000;
        assert_eq!(
            batch_last(0, far, usize::MAX),
            Some(READ_BATCH_MAX as u64 - 1)
        );
        assert_eq!(
            batch_last(10, far, READ_BATCH_MAX + 1),
            Some(10 + READ_BATCH_MAX as u64 - 1)
        );
        assert_eq!(batch_last(10, far, 3), Some(12));
        assert_eq!(batch_last(10, 11, 3), Some(11));
        assert_eq!(batch_last(7, 7, 1), Some(7));
        // A full queue reads nothing, also for a process that has not started (slot 0).
        assert_eq!(batch_last(0, far, 0), None);
        assert_eq!(batch_last(5, far, 0), None);
    }
}
