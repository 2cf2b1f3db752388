//! Executor cores: one pinned thread per core, each owning the processes routed to it.
//!
//! The driver is thin: it routes a [`Job`] to its core ([`process::core_for`]), asks
//! [`process::plan`] how to reach the slot, runs it, and replies with a [`JobDone`]. Each core
//! keeps at most `live_max` instances; past that the least recently used is dropped (evicted),
//! and a later job for it must carry a snapshot (the reply says so with
//! [`ExecError::SlotOutOfOrder`]), from which the node replays the slots after it.

use std::collections::HashMap;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::process::{self, Plan, Progress, SNAPSHOT_INTERVAL_DEFAULT};
use super::{Engine, ExecError, Instance, Module, SlotInput, SlotOutcome, Snapshot};
use crate::message::{Id, Message};

/// Jobs queued per core. A full queue blocks [`Executors::submit`] (backpressure on the
/// scheduler). Worst case per core: 256 × (a message up to 16 MiB + any snapshot carried), in
/// practice messages are small and snapshots rare.
pub const EXECUTOR_QUEUE_MAX: usize = 256;
/// Most executor cores (threads) one node starts.
pub const EXECUTOR_CORES_MAX: usize = 256;

const _: () = assert!(EXECUTOR_QUEUE_MAX > 0);

/// The CPUs executor threads `0..cores` are pinned to: thread i gets the i-th logical CPU this
/// process may run on (its affinity mask), modulo their count. Empty when the OS does not say
/// (then threads run unpinned). The asset registry allocates these CPUs to the node.
pub fn pin_plan(cores: usize) -> Vec<core_affinity::CoreId> {
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    if core_ids.is_empty() {
        return Vec::new();
    }
    (0..cores)
        .map(|index| core_ids[index % core_ids.len()])
        .collect()
}

/// How to start [`Executors`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorsConfig {
    /// Executor threads, 1..=[`EXECUTOR_CORES_MAX`]; thread i is pinned to the i-th core the OS
    /// reports (modulo their count), when pinning is possible.
    pub cores: usize,
    /// Queue capacity per core, at most [`EXECUTOR_QUEUE_MAX`].
    pub queue_max: usize,
    /// K: a snapshot comes back after slots 0, K, 2K, ...
    pub snapshot_interval: u64,
    /// Live instances per core; `None` divides the engine's pool evenly among the cores, so
    /// instantiation never fails for lack of pool slots.
    pub live_max: Option<usize>,
    /// The logical CPU of each thread (`cores` entries); `None`: [`pin_plan`].
    pub pinned: Option<Vec<usize>>,
}

impl ExecutorsConfig {
    /// Defaults for `cores` executor threads.
    pub fn new(cores: usize) -> Self {
        Self {
            cores,
            queue_max: EXECUTOR_QUEUE_MAX,
            snapshot_interval: SNAPSHOT_INTERVAL_DEFAULT,
            live_max: None,
            pinned: None,
        }
    }
}

/// One slot to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The process message (its limits apply; it is slot 0's message too).
    pub definition: Message,
    /// The process's compiled module, from [`Engine::load`].
    pub module: Module,
    /// A snapshot to restore from when the process is not live at `input.slot` (taken after
    /// slot `input.slot - 1`); ignored when the live instance can run the slot directly.
    pub snapshot: Option<Snapshot>,
    /// The slot.
    pub input: SlotInput,
    /// Where the result goes.
    pub reply: Sender<JobDone>,
}

/// The result of a [`Job`].
#[derive(Debug, Clone)]
pub struct JobDone {
    /// The process.
    pub process: Id,
    /// The slot.
    pub slot: u64,
    /// The slot's outcome (a guest failure is inside it), or why the slot could not run.
    pub outcome: Result<SlotOutcome, ExecError>,
    /// The state after the slot, when one is due (every `snapshot_interval` slots).
    pub snapshot: Option<Snapshot>,
}

/// The executor cores.
pub struct Executors {
    queues: Vec<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Executors {
    /// Starts `config.cores` threads.
    ///
    /// # Errors
    /// [`ExecError::Engine`] when `cores` is 0 or above [`EXECUTOR_CORES_MAX`], or a thread
    /// cannot be spawned.
    pub fn start(engine: &Engine, config: ExecutorsConfig) -> Result<Self, ExecError> {
        if config.cores == 0 || config.cores > EXECUTOR_CORES_MAX {
            return Err(ExecError::Engine(format!(
                "executor cores must be 1..={EXECUTOR_CORES_MAX}"
            )));
        }
        let queue_max = config.queue_max.clamp(1, EXECUTOR_QUEUE_MAX);
        let pool_share = (engine.instances_max() as usize / config.cores).max(1);
        let live_max = config.live_max.unwrap_or(pool_share).max(1);
        let snapshot_interval = config.snapshot_interval.max(1);
        let plan = match &config.pinned {
            Some(cpus) => cpus
                .iter()
                .map(|id| core_affinity::CoreId { id: *id })
                .collect(),
            None => pin_plan(config.cores),
        };
        let mut queues = Vec::with_capacity(config.cores);
        let mut threads = Vec::with_capacity(config.cores);
        for index in 0..config.cores {
            let (sender, receiver) = crossbeam_channel::bounded(queue_max);
            let pin = plan.get(index).copied();
            let core = Core {
                live: HashMap::new(),
                live_max,
                snapshot_interval,
                uses: 0,
            };
            let thread = std::thread::Builder::new()
                .name(format!("executor-{index}"))
                .spawn(move || core.run(pin, receiver))
                .map_err(|e| ExecError::Engine(format!("spawning executor {index}: {e}")))?;
            queues.push(sender);
            threads.push(thread);
        }
        Ok(Self { queues, threads })
    }

    /// The number of executor cores.
    pub fn cores(&self) -> usize {
        self.queues.len()
    }

    /// Jobs waiting in `core`'s queue (not counting the one it runs): at most the configured
    /// `queue_max`, itself at most [`EXECUTOR_QUEUE_MAX`]. A gauge of the backlog.
    ///
    /// # Panics
    /// When `core` is not below [`Executors::cores`].
    pub fn queued(&self, core: usize) -> usize {
        self.queues[core].len()
    }

    /// The core that owns `process`.
    pub fn core_of(&self, process: &Id) -> usize {
        process::core_for(process, self.queues.len())
    }

    /// Queues a job on its process's core, blocking while that queue is full.
    ///
    /// # Errors
    /// [`ExecError::ExecutorStopped`] when the core's thread has died (the job is dropped).
    pub fn submit(&self, job: Job) -> Result<(), ExecError> {
        let core = self.core_of(&job.input.process);
        self.queues[core]
            .send(job)
            .map_err(|_| ExecError::ExecutorStopped)
    }

    /// Stops accepting jobs, lets each core finish its queue, and joins the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.queues.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an executor thread panicked");
            }
        }
    }
}

impl Drop for Executors {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One core's processes.
struct Core {
    live: HashMap<Id, Live>,
    live_max: usize,
    snapshot_interval: u64,
    /// Monotonic use counter for least-recently-used eviction.
    uses: u64,
}

struct Live {
    instance: Instance,
    progress: Progress,
    /// Module the instance runs: a job naming another module starts over.
    module: Id,
    last_use: u64,
}

impl Core {
    fn run(mut self, pin: Option<core_affinity::CoreId>, jobs: Receiver<Job>) {
        if let Some(core) = pin
            && !core_affinity::set_for_current(core)
        {
            tracing::warn!(
                core = core.id,
                "could not pin executor thread; running unpinned"
            );
        }
        // Ends when every sender is dropped (shutdown); each job is bounded by its fuel.
        for job in jobs {
            let done = self.job(&job);
            // A submitter that stopped listening loses only its own result.
            let _ = job.reply.send(done);
        }
    }

    fn job(&mut self, job: &Job) -> JobDone {
        let process = job.input.process;
        let slot = job.input.slot;
        let (outcome, snapshot) = match self.prepare(job) {
            Ok(()) => self.run_slot(&process, &job.input),
            Err(e) => (Err(e), None),
        };
        JobDone {
            process,
            slot,
            outcome,
            snapshot,
        }
    }

    /// Makes the process live at `job.input.slot`, or says why it cannot be.
    fn prepare(&mut self, job: &Job) -> Result<(), ExecError> {
        let process = job.input.process;
        let live = self
            .live
            .get(&process)
            .filter(|live| live.module == job.module.id());
        let live_next = live.map(|live| live.progress.next_slot());
        let snapshot_slot = job.snapshot.as_ref().map(|s| s.slot);
        let (instance, progress) = match process::plan(live_next, snapshot_slot, job.input.slot) {
            Plan::Run => return Ok(()),
            Plan::NeedSnapshot => {
                return Err(ExecError::SlotOutOfOrder {
                    process,
                    expected: live_next,
                    got: job.input.slot,
                });
            }
            Plan::Fresh => {
                self.live.remove(&process);
                let instance = Instance::new(&job.module, process, &job.definition)?;
                (instance, Progress::new(self.snapshot_interval))
            }
            Plan::Restore => {
                self.live.remove(&process);
                let snapshot = job.snapshot.as_ref().expect("plan restores only with one");
                let instance = Instance::restore(&job.module, process, &job.definition, snapshot)?;
                (
                    instance,
                    Progress::resumed(snapshot.slot, self.snapshot_interval),
                )
            }
        };
        self.evict_for_one_more();
        self.live.insert(
            process,
            Live {
                instance,
                progress,
                module: job.module.id(),
                last_use: 0,
            },
        );
        Ok(())
    }

    /// Drops least recently used instances until one more fits.
    fn evict_for_one_more(&mut self) {
        // Bounded: each pass removes one entry.
        while self.live.len() >= self.live_max {
            let oldest = self
                .live
                .iter()
                .min_by_key(|(_, live)| live.last_use)
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else { break };
            tracing::debug!(process = %oldest, "evicting live instance");
            self.live.remove(&oldest);
        }
    }

    fn run_slot(
        &mut self,
        process: &Id,
        input: &SlotInput,
    ) -> (Result<SlotOutcome, ExecError>, Option<Snapshot>) {
        self.uses += 1;
        let live = self.live.get_mut(process).expect("prepared above");
        live.last_use = self.uses;
        let outcome = match live.instance.run(input) {
            Ok(outcome) => outcome,
            Err(e) => return (Err(e), None),
        };
        let due = live
            .progress
            .ran(input.slot, live.instance.memory_bytes() as u64);
        let snapshot = due.then(|| live.instance.snapshot()).and_then(Result::ok);
        (Ok(outcome), snapshot)
    }
}
