//! The node: wires the store, the scheduler, the executors and the HTTP API together.
//!
//! One sequencer thread owns the [`Scheduler`], inside the sans-IO
//! [`SequencerCore`](crate::schedule::sequencer::SequencerCore) that makes every decision: the
//! thread drains queued requests (up to `commit-batch-max`) into it, signs the assignments it
//! asks for with the node key, appends its batch to the store in one fsynced commit, and only
//! then updates the process heads, hands the batch to compute and sends the core's answers. A
//! single owner means slots are never duplicated or skipped, without locks; the group commit
//! amortizes the fsync over every concurrent sender.

pub mod allocator;
pub mod assets;
pub mod attest;
pub mod compute;
pub mod config;
pub mod cores;
mod key;
pub mod pusher;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use config::NodeConfig;
pub use key::{KeyError, load_or_create_node_key, write_private};

use crate::message::{Hashpath, Id, Message, MessageError, VerifiedMessage, Wallet};
use crate::schedule::sequencer::{
    Located, Refused, Request as CoreRequest, ScheduleIndex, SequencerCore, Target,
};
use crate::schedule::{Assignment, PROCESS_TYPE, ScheduleError, Scheduler};
use crate::store::{Scheduled, Store, StoreError};

/// Requests waiting for the sequencer. Each holds one message (≤ 16 MiB, typically ~1 KB); a
/// full queue makes HTTP handlers wait (backpressure), it never grows.
pub use crate::schedule::sequencer::REQUEST_QUEUE_MAX;

/// Why the node refused or failed a request. `code()` is the JSON `error` string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The message is malformed, unsigned, or its signature does not verify.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// No such process on this node.
    #[error("unknown process {0}")]
    UnknownProcess(Id),
    /// The process message names a module this node does not have.
    #[error("unknown module {0}")]
    UnknownModule(Id),
    /// The module bytes fail validation.
    #[error("invalid module: {0}")]
    ModuleInvalid(String),
    /// The process message is malformed (no `module`, bad limits, ...).
    #[error("invalid process: {0}")]
    ProcessInvalid(String),
    /// The message's `target` differs from the process it was sent to.
    #[error("message target {target} differs from the process {process} in the path")]
    TargetMismatch {
        /// The message's `target`.
        target: String,
        /// The path's process.
        process: Id,
    },
    /// The slot is beyond the process's last assigned slot.
    #[error("slot {slot} of {process} is not assigned yet")]
    SlotNotAssigned {
        /// The process.
        process: Id,
        /// The slot asked for.
        slot: u64,
    },
    /// The slot is assigned but its result was not ready in time.
    #[error("slot {slot} of {process} is not computed yet")]
    ComputePending {
        /// The process.
        process: Id,
        /// The slot asked for.
        slot: u64,
    },
    /// A request body over the configured maximum.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The request body did not arrive within `http-body-timeout-ms`.
    #[error("request body not received within {0} ms")]
    RequestTimeout(u64),
    /// The request is malformed in a way that is not about the message (query, path, headers).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such resource.
    #[error("not found: {0}")]
    NotFound(String),
    /// A request's authentication header is malformed, stale or for another path.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The signer may not do this (not an operator, not the owner).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request conflicts with the current state (over-allocation, an existing asset).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The node is shutting down or its sequencer stopped.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// Attestation: a bad nonce, a busy or failing evidence provider.
    #[error(transparent)]
    Attest(#[from] attest::AttestError),
    /// The store failed; nothing was acknowledged.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl NodeError {
    /// The JSON `error` code: the variant name (for message errors, the message error's).
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Message(e) => message_error_code(e),
            NodeError::UnknownProcess(_) => "UnknownProcess",
            NodeError::UnknownModule(_) => "UnknownModule",
            NodeError::ModuleInvalid(_) => "ModuleInvalid",
            NodeError::ProcessInvalid(_) => "ProcessInvalid",
            NodeError::TargetMismatch { .. } => "TargetMismatch",
            NodeError::SlotNotAssigned { .. } => "SlotNotAssigned",
            NodeError::ComputePending { .. } => "ComputePending",
            NodeError::BodyTooLarge(_) => "BodyTooLarge",
            NodeError::RequestTimeout(_) => "RequestTimeout",
            NodeError::BadRequest(_) => "BadRequest",
            NodeError::NotFound(_) => "NotFound",
            NodeError::Unauthenticated(_) => "Unauthenticated",
            NodeError::Forbidden(_) => "Forbidden",
            NodeError::Conflict(_) => "Conflict",
            NodeError::Unavailable(_) => "Unavailable",
            NodeError::Attest(e) => e.code(),
            NodeError::Store(_) => "Store",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            NodeError::Message(MessageError::Unsigned | MessageError::SignatureInvalid)
            | NodeError::Unauthenticated(_) => 401,
            NodeError::Message(MessageError::TooLarge) | NodeError::BodyTooLarge(_) => 413,
            NodeError::Message(_)
            | NodeError::ModuleInvalid(_)
            | NodeError::ProcessInvalid(_)
            | NodeError::TargetMismatch { .. }
            | NodeError::BadRequest(_) => 400,
            NodeError::UnknownProcess(_)
            | NodeError::UnknownModule(_)
            | NodeError::SlotNotAssigned { .. }
            | NodeError::NotFound(_) => 404,
            NodeError::Forbidden(_) => 403,
            NodeError::RequestTimeout(_) => 408,
            NodeError::Conflict(_) => 409,
            NodeError::ComputePending { .. } | NodeError::Unavailable(_) => 503,
            NodeError::Store(_) => 500,
            NodeError::Attest(e) => e.status(),
        }
    }
}

fn message_error_code(e: &MessageError) -> &'static str {
    match e {
        MessageError::KeyInvalid(_) => "KeyInvalid",
        MessageError::KeyReserved(_) => "KeyReserved",
        MessageError::KeyDuplicate(_) => "KeyDuplicate",
        MessageError::TooManyKeys => "TooManyKeys",
        MessageError::TooManyItems => "TooManyItems",
        MessageError::TooDeep => "TooDeep",
        MessageError::TooLarge => "TooLarge",
        MessageError::TooManyCommitments => "TooManyCommitments",
        MessageError::JsonInvalid(_) => "JsonInvalid",
        MessageError::WireInvalid(_) => "WireInvalid",
        MessageError::CommitmentInvalid(_) => "CommitmentInvalid",
        MessageError::Unsigned => "Unsigned",
        MessageError::SignatureInvalid => "SignatureInvalid",
        MessageError::IdInvalid(_) => "IdInvalid",
    }
}

/// What a sender gets back once its message is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ack {
    /// The message id.
    pub id: Id,
    /// The process it was scheduled on (for a spawn, the new process: equal to `id`).
    pub process: Id,
    /// Its slot.
    pub slot: u64,
    /// The id of the node-signed assignment.
    pub assignment: Id,
    /// The assignment's timestamp (ms since the Unix epoch).
    pub timestamp: u64,
    /// The process's hashpath after this slot.
    pub hashpath: Hashpath,
    /// True when the message had been scheduled before (the original ack is returned).
    pub duplicate: bool,
}

impl Ack {
    fn new(assignment: &Assignment, signed: Id, duplicate: bool) -> Self {
        Self {
            id: assignment.message,
            process: assignment.process,
            slot: assignment.slot,
            assignment: signed,
            timestamp: assignment.timestamp_ms,
            hashpath: assignment.hashpath,
            duplicate,
        }
    }
}

/// What the sequencer is asked to do.
enum Request {
    Spawn(VerifiedMessage),
    Schedule {
        process: Id,
        message: VerifiedMessage,
    },
}

struct Queued {
    request: Request,
    reply: oneshot::Sender<Result<Ack, NodeError>>,
}

/// A handle for submitting messages to the sequencer. Cheap to clone. The sequencer thread runs
/// until the last handle is dropped.
#[derive(Clone)]
pub struct Sequencer {
    requests: mpsc::Sender<Queued>,
    gate: Arc<Gate>,
}

/// A handle that does not keep the sequencer running.
#[derive(Clone)]
pub struct WeakSequencer {
    requests: mpsc::WeakSender<Queued>,
    gate: Arc<Gate>,
}

impl WeakSequencer {
    /// A strong handle, while the sequencer runs.
    pub fn upgrade(&self) -> Option<Sequencer> {
        self.requests.upgrade().map(|requests| Sequencer {
            requests,
            gate: self.gate.clone(),
        })
    }

    /// [`Sequencer::hold`], without keeping the sequencer running.
    pub fn hold(&self) -> SequencerHold {
        SequencerHold::new(&self.gate)
    }
}

/// Closed while any [`SequencerHold`] is alive: the sequencer thread waits at it before each
/// group commit.
#[derive(Debug, Default)]
struct Gate {
    holds: std::sync::Mutex<usize>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn holds(&self) -> std::sync::MutexGuard<'_, usize> {
        self.holds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns once no hold is alive.
    fn wait_open(&self) {
        let mut holds = self.holds();
        // Each wake re-checks; ends when the last hold is dropped.
        while *holds > 0 {
            holds = self
                .opened
                .wait(holds)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Keeps the sequencer from committing (and so from acknowledging anything) until dropped; see
/// [`Sequencer::hold`].
#[derive(Debug)]
#[must_use = "the sequencer is held only while the hold is alive"]
pub struct SequencerHold(Arc<Gate>);

impl SequencerHold {
    fn new(gate: &Arc<Gate>) -> Self {
        *gate.holds() += 1;
        Self(gate.clone())
    }
}

impl Drop for SequencerHold {
    fn drop(&mut self) {
        let mut holds = self.0.holds();
        *holds -= 1;
        if *holds == 0 {
            self.0.opened.notify_all();
        }
    }
}

impl Sequencer {
    /// A handle that does not keep the sequencer running.
    pub fn downgrade(&self) -> WeakSequencer {
        WeakSequencer {
            requests: self.requests.downgrade(),
            gate: self.gate.clone(),
        }
    }

    /// Holds the sequencer: it finishes the group commit it is in, then commits and acknowledges
    /// nothing until the hold is dropped, while requests queue up to [`REQUEST_QUEUE_MAX`] and
    /// their senders then wait. Tests use it to fill the queues behind the sequencer. Drop it
    /// before the node shuts down: the sequencer thread cannot end while held.
    pub fn hold(&self) -> SequencerHold {
        SequencerHold::new(&self.gate)
    }

    /// Starts the sequencer thread over `store`, restoring every process head from it.
    /// `on_commit` runs on the sequencer thread after each durable commit, with the batch and
    /// how long its commit (write and fsync) took.
    ///
    /// # Errors
    /// [`NodeError::Store`] when the heads cannot be read.
    pub fn start(
        store: Arc<Store>,
        wallet: Wallet,
        batch_max: usize,
        on_commit: Box<dyn FnMut(Vec<Scheduled>, Duration) + Send>,
    ) -> Result<(Self, std::thread::JoinHandle<()>), NodeError> {
        Self::start_pinned(store, wallet, batch_max, on_commit, None)
    }

    /// [`Sequencer::start`] with the thread pinned to logical CPU `cpu`.
    ///
    /// # Errors
    /// As [`Sequencer::start`].
    pub fn start_pinned(
        store: Arc<Store>,
        wallet: Wallet,
        batch_max: usize,
        on_commit: Box<dyn FnMut(Vec<Scheduled>, Duration) + Send>,
        cpu: Option<usize>,
    ) -> Result<(Self, std::thread::JoinHandle<()>), NodeError> {
        let scheduler = restore_scheduler(&store)?;
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE_MAX);
        let gate = Arc::new(Gate::default());
        let worker = SequencerThread {
            store,
            wallet,
            core: SequencerCore::new(scheduler, batch_max),
            on_commit,
            gate: gate.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("ferrobeam-sequencer".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    cores::pin_current_thread(cpu);
                }
                worker.run(queue)
            })
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        Ok((Self { requests, gate }, handle))
    }

    /// Spawns a process: schedules its (verified) process message at slot 0 of itself.
    ///
    /// # Errors
    /// As the sequencer decides; [`NodeError::Unavailable`] when it stopped.
    pub async fn spawn(&self, message: VerifiedMessage) -> Result<Ack, NodeError> {
        self.submit(Request::Spawn(message)).await
    }

    /// Schedules a verified message on `process`.
    ///
    /// # Errors
    /// [`NodeError::UnknownProcess`], [`NodeError::Store`], [`NodeError::Unavailable`].
    pub async fn schedule(&self, process: Id, message: VerifiedMessage) -> Result<Ack, NodeError> {
        self.submit(Request::Schedule { process, message }).await
    }

    /// [`Sequencer::schedule`] for threads outside the async runtime (the compute driver's push).
    ///
    /// # Errors
    /// As [`Sequencer::schedule`].
    ///
    /// # Panics
    /// When called from inside an async runtime (tokio forbids blocking there).
    pub fn schedule_blocking(
        &self,
        process: Id,
        message: VerifiedMessage,
    ) -> Result<Ack, NodeError> {
        self.submit_blocking(Request::Schedule { process, message })
    }

    /// [`Sequencer::spawn`] for threads outside the async runtime (spawns from computed slots).
    ///
    /// # Errors
    /// As [`Sequencer::spawn`].
    ///
    /// # Panics
    /// When called from inside an async runtime.
    pub fn spawn_blocking(&self, message: VerifiedMessage) -> Result<Ack, NodeError> {
        self.submit_blocking(Request::Spawn(message))
    }

    fn submit_blocking(&self, request: Request) -> Result<Ack, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .blocking_send(Queued { request, reply })
            .map_err(|_| NodeError::Unavailable("sequencer stopped".into()))?;
        answer
            .blocking_recv()
            .map_err(|_| NodeError::Unavailable("sequencer dropped the request".into()))?
    }

    /// Queues a spawn and returns once it is queued: requests are handled in queue order, so a
    /// caller that pipelines (a QUIC stream) keeps its order. Await the [`PendingAck`].
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when the sequencer stopped.
    pub async fn enqueue_spawn(&self, message: VerifiedMessage) -> Result<PendingAck, NodeError> {
        self.enqueue(Request::Spawn(message)).await
    }

    /// Queues a message for `process`; see [`Sequencer::enqueue_spawn`].
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when the sequencer stopped.
    pub async fn enqueue_schedule(
        &self,
        process: Id,
        message: VerifiedMessage,
    ) -> Result<PendingAck, NodeError> {
        self.enqueue(Request::Schedule { process, message }).await
    }

    async fn enqueue(&self, request: Request) -> Result<PendingAck, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Queued { request, reply })
            .await
            .map_err(|_| NodeError::Unavailable("sequencer stopped".into()))?;
        Ok(PendingAck(answer))
    }

    async fn submit(&self, request: Request) -> Result<Ack, NodeError> {
        self.enqueue(request).await?.await
    }
}

/// The answer to a queued request: a future of its [`Ack`] (ready once durable).
#[derive(Debug)]
pub struct PendingAck(oneshot::Receiver<Result<Ack, NodeError>>);

impl PendingAck {
    /// The answer if it has arrived, without waiting.
    pub fn try_now(&mut self) -> Option<Result<Ack, NodeError>> {
        match self.0.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(NodeError::Unavailable(
                "sequencer dropped the request".into(),
            ))),
        }
    }
}

impl std::future::Future for PendingAck {
    type Output = Result<Ack, NodeError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| {
            answer.unwrap_or_else(|_| {
                Err(NodeError::Unavailable(
                    "sequencer dropped the request".into(),
                ))
            })
        })
    }
}

fn restore_scheduler(store: &Store) -> Result<Scheduler, NodeError> {
    let mut scheduler = Scheduler::new();
    for (process, head) in store.heads()? {
        scheduler.restore(process, head);
    }
    Ok(scheduler)
}

/// Milliseconds since the Unix epoch (the sequencer's clock; the scheduler keeps it monotonic).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sequencer's driver: a thin loop over [`SequencerCore`] that brings it requests, commits
/// its batches to the store, and sends its answers.
struct SequencerThread {
    store: Arc<Store>,
    wallet: Wallet,
    core: SequencerCore<Message, oneshot::Sender<Result<Ack, NodeError>>, NodeError>,
    on_commit: Box<dyn FnMut(Vec<Scheduled>, Duration) + Send>,
    /// Closed while a [`SequencerHold`] is alive.
    gate: Arc<Gate>,
}

/// The store's message index, as the sequencer core looks up duplicates.
struct StoreIndex<'a>(&'a Store);

impl ScheduleIndex for StoreIndex<'_> {
    type Error = NodeError;

    fn locate(&mut self, id: &Id) -> Result<Option<Located>, NodeError> {
        let Some((process, slot)) = self.0.locate(id)? else {
            return Ok(None);
        };
        let signed = self
            .0
            .assignment(&process, slot)?
            .ok_or_else(|| NodeError::Unavailable("index names a missing assignment".into()))?;
        let assignment = Assignment::from_message(&signed).map_err(StoreError::from)?;
        Ok(Some(Located {
            assignment,
            signed: signed.id(),
        }))
    }
}

impl SequencerThread {
    fn run(mut self, mut queue: mpsc::Receiver<Queued>) {
        let batch_max = self.core.batch_max();
        // Runs until every Sequencer handle is dropped (node shutdown).
        while let Some(first) = queue.blocking_recv() {
            self.offer(first);
            // Bounded by batch_max: what arrived during the last commit joins this one.
            while self.core.queued() < batch_max {
                match queue.try_recv() {
                    Ok(next) => self.offer(next),
                    Err(_) => break,
                }
            }
            self.gate.wait_open();
            if !self.step() {
                // After a failed fsync the journal's state is unknown (the write may or may not
                // be on disk, and the kernel may have dropped the dirty pages): writing on would
                // risk reusing slots the disk already holds. Stop; a restart recovers from what
                // the store really has. Senders get `Unavailable` from now on.
                tracing::error!(
                    "the store failed to commit: the sequencer stops; restart the node"
                );
                return;
            }
        }
    }

    fn offer(&mut self, queued: Queued) {
        let (id, target, message) = match queued.request {
            Request::Spawn(m) => (m.id(), Target::Spawn, m),
            Request::Schedule { process, message } => {
                (message.id(), Target::Process(process), message)
            }
        };
        let request = CoreRequest {
            id,
            target,
            message: message.into_message(),
            reply: queued.reply,
        };
        if let Err(refused) = self.core.handle_request(request) {
            // Never: the loop above offers at most batch_max ≤ REQUEST_QUEUE_MAX per step.
            let _ = refused
                .reply
                .send(Err(NodeError::Unavailable("sequencer queue full".into())));
        }
    }

    /// One batch: build it, commit it (fsync), update heads and compute, then answer everyone.
    /// False when the commit failed.
    fn step(&mut self) -> bool {
        let wallet = &self.wallet;
        let mut rng = rand::rngs::OsRng;
        let mut index = StoreIndex(&self.store);
        // One signature per batch (an `ed25519-batch` commitment on each assignment): signing
        // per slot was a third of the sequencer's time (docs/BENCHMARKS.md).
        let batch = self.core.poll_batch(now_ms(), &mut index, |assignments| {
            let unsigned = assignments.iter().map(Assignment::to_message).collect();
            wallet.sign_batch(unsigned, &mut rng)
        });
        let mut healthy = true;
        if let Some(batch) = batch {
            let scheduled: Vec<Scheduled> = batch
                .entries
                .into_iter()
                .map(|e| Scheduled {
                    assignment: e.assignment,
                    signed: e.signed,
                    message: e.message,
                })
                .collect();
            let started = Instant::now();
            let committed = self.store.commit(&scheduled);
            let commit_time = started.elapsed();
            if let Err(e) = &committed {
                tracing::error!(error = %e, "group commit failed; nothing in the batch is acknowledged");
            }
            let ok = committed.is_ok();
            self.core.handle_committed(batch.id, committed);
            healthy = !self.core.stopped();
            // Heads are updated before anyone is acknowledged, so a sender that reads the
            // process right after its ack sees its slot.
            if ok {
                (self.on_commit)(scheduled, commit_time);
            }
        }
        while let Some((reply, answer)) = self.core.poll_reply() {
            let answer = answer
                .map(|r| Ack::new(&r.assignment, r.signed, r.duplicate))
                .map_err(refused_error);
            // A sender that went away no longer needs its ack; the message is durable anyway.
            let _ = reply.send(answer);
        }
        healthy
    }
}

/// The node error for a refusal of the sequencer core.
fn refused_error(refused: Refused<NodeError>) -> NodeError {
    match refused {
        Refused::Schedule(ScheduleError::UnknownProcess(p)) => NodeError::UnknownProcess(p),
        Refused::Schedule(e) => NodeError::BadRequest(e.to_string()),
        Refused::Lookup(e) => e,
        Refused::CommitFailed(e) => NodeError::Unavailable(format!("commit failed: {e}")),
        Refused::Stopped => NodeError::Unavailable(
            "the sequencer stopped after a failed commit; the node must be restarted".into(),
        ),
    }
}

/// Checks a process message before it is scheduled: `type: Process` and a `module` id.
///
/// # Errors
/// [`NodeError::ProcessInvalid`].
pub fn process_module(message: &Message) -> Result<Id, NodeError> {
    if message.text("type") != Some(PROCESS_TYPE) {
        return Err(NodeError::ProcessInvalid("type must be Process".into()));
    }
    let module = message
        .text("module")
        .ok_or_else(|| NodeError::ProcessInvalid("missing module".into()))?;
    module
        .parse()
        .map_err(|_| NodeError::ProcessInvalid("module is not a message id".into()))
}

/// The highest computed slot of each process, for `compute` requests that wait for a result.
#[derive(Debug, Default)]
pub struct Computed {
    slots: std::sync::Mutex<std::collections::HashMap<Id, tokio::sync::watch::Sender<Option<u64>>>>,
}

impl Computed {
    fn sender(&self, process: Id) -> tokio::sync::watch::Sender<Option<u64>> {
        // A poisoned lock means a panic elsewhere while holding it; the map itself is still sound.
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots
            .entry(process)
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .clone()
    }

    /// Records that `slot` of `process` has its result stored.
    pub fn publish(&self, process: Id, slot: u64) {
        self.sender(process).send_if_modified(|current| {
            if current.is_none_or(|c| c < slot) {
                *current = Some(slot);
                true
            } else {
                false
            }
        });
    }

    /// Waits until `slot` of `process` is computed, at most `timeout`. True when it is.
    pub async fn wait(&self, process: Id, slot: u64, timeout: std::time::Duration) -> bool {
        let mut receiver = self.sender(process).subscribe();
        let reached = receiver.wait_for(|c| c.is_some_and(|c| c >= slot));
        matches!(tokio::time::timeout(timeout, reached).await, Ok(Ok(_)))
    }
}

pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use crate::message::Address;
use crate::schedule::ProcessHead;

/// Module bytes → module message: `{content-type: application/wasm, data: bytes}`, unsigned.
/// Its id names the module; anyone holding the bytes recomputes it.
pub fn module_message(wasm: &[u8]) -> Message {
    Message::new()
        .with("content-type", "application/wasm")
        .with("data", wasm.to_vec())
}

/// Checks module bytes before they are stored (the executor's validation).
pub type ModuleValidator = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// State shared by the HTTP handlers.
pub struct Shared {
    /// The configuration the node runs with.
    pub config: NodeConfig,
    /// The node's address (of its key).
    pub address: Address,
    /// The node's public key.
    pub public_key: Vec<u8>,
    /// The store.
    pub store: Arc<Store>,
    /// Submits messages for scheduling.
    pub sequencer: Sequencer,
    /// Exported metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Highest computed slot per process.
    pub computed: Arc<Computed>,
    /// Last durable head of every process (updated after each commit).
    pub heads: Arc<RwLock<HashMap<Id, ProcessHead>>>,
    /// Module validation.
    pub validate_module: ModuleValidator,
    /// The hardware inventory, detected at start.
    pub inventory: ferrobeam_hwdetect::Inventory,
    /// The asset registry (the executor's cores allocated at start).
    pub assets: assets::Assets,
    /// The attestation evidence provider (`/~attest@1.0/report`).
    pub attestation: Arc<attest::Attestation>,
    /// QUIC ingress counters (zero when the node has no QUIC ingress).
    pub ingress: Arc<crate::ingress::IngressMetrics>,
    /// Verifies HTTP posts in batches, off the tokio workers.
    pub verifier: crate::api::verify::Verifier,
    /// The CPUs of the pinned threads (ingress, executors, sequencer).
    pub cores: cores::CorePlan,
}

impl Shared {
    /// `/~meta@1.0/info`: identity, version, devices and public configuration.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "address": self.address,
            "public-key": crate::message::b64(&self.public_key),
            "scheme": "ed25519",
            "version": env!("CARGO_PKG_VERSION"),
            "devices": self.devices(),
            "attestation": self.attestation.info(),
            "config": self.config.public(),
            "config-id": self.config.public_id(),
            "processes": self.read_heads().len(),
            "inventory-digest": self.inventory.digest_hex(),
            "cores": self.cores,
        })
    }

    /// `/metrics` text.
    pub fn metrics_text(&self) -> String {
        self.metrics.processes.set(self.read_heads().len() as i64);
        let memory = self.store.memory();
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.metrics
            .store_write_buffer_bytes
            .set(gauge(memory.write_buffer));
        self.metrics
            .store_block_cache_bytes
            .set(gauge(memory.block_cache));
        let mut text = self.metrics.render();
        // prometheus-client ends with `# EOF`; the inventory gauges go before it.
        if let Some(stripped) = text.strip_suffix("# EOF\n") {
            text = stripped.to_owned();
        }
        text.push_str(&self.inventory.prometheus());
        text.push_str(&self.assets.prometheus());
        text.push_str(&self.ingress.render());
        text.push_str(&self.verifier.render());
        if let Some(stats) = allocator::stats() {
            text.push_str(&allocator::prometheus(&stats));
        }
        text.push_str("# EOF\n");
        text
    }

    fn read_heads(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Id, ProcessHead>> {
        // The map is only ever replaced entry by entry; a poisoned lock still holds sound data.
        self.heads
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The durable head of `process`.
    ///
    /// # Errors
    /// Never today; the signature leaves room for a store lookup.
    pub fn head(&self, process: &Id) -> Result<Option<ProcessHead>, NodeError> {
        Ok(self.read_heads().get(process).copied())
    }

    /// Validates and stores module bytes; returns the module id.
    ///
    /// # Errors
    /// [`NodeError::ModuleInvalid`], [`NodeError::Store`].
    pub async fn add_module(&self, wasm: &[u8]) -> Result<Id, NodeError> {
        (self.validate_module)(wasm).map_err(NodeError::ModuleInvalid)?;
        let id = module_message(wasm).unsigned_id();
        let store = self.store.clone();
        let bytes = wasm.to_vec();
        tokio::task::spawn_blocking(move || store.put_module(&id, &bytes))
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))??;
        Ok(id)
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers only insert whole entries; a poisoned lock still holds sound data.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The devices this node runs, as `/~meta@1.0/info` lists them.
pub const DEVICES: &[&str] = &[
    "meta@1.0",
    "message@1.0",
    "scheduler@1.0",
    "process@1.0",
    "wasm@1.0",
    "assets@1.0",
];

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// The node could not start a component.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The QUIC ingress could not start.
    #[error(transparent)]
    Ingress(#[from] crate::ingress::IngressError),
    /// The HTTP address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A started node: store open, sequencer and executors running, HTTP bound.
pub struct Node {
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    /// The HTTP verifier, sequencer and compute threads, joined at shutdown (sequencer before
    /// compute: its end stops the compute driver), so the store is closed when `serve` returns.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The QUIC ingress, when configured; shut down before the threads are joined.
    ingress: Option<Box<dyn crate::ingress::Transport>>,
}

impl Node {
    /// Opens the data directory, loads (or creates) the node key, restores every process, starts
    /// the sequencer and binds the HTTP address.
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        config.check()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let wallet = load_or_create_node_key(&config.data_dir.join("node-key.json"))?;
        let inventory = tokio::task::spawn_blocking(ferrobeam_hwdetect::Inventory::detect)
            .await
            .map_err(|e| NodeError::Unavailable(format!("hardware detection: {e}")))?;
        let attestation = attest::Attestation::start(&config, &wallet)
            .await
            .map_err(NodeError::from)?;
        let store = Arc::new(Store::open(&config.data_dir.join("store"))?);
        let heads: HashMap<Id, ProcessHead> = store.heads()?.into_iter().collect();
        let mut config = config;
        let cores = cores::CorePlan::detect(
            inventory.topology.ok(),
            config.ingress_cores,
            config.exec_cores,
        );
        // From here on the configuration holds the resolved counts (also in its public part).
        config.ingress_cores = cores.ingress.len();
        config.exec_cores = cores.exec.len();
        let pinned: Vec<u32> = cores
            .exec
            .iter()
            .filter_map(|cpu| u32::try_from(*cpu).ok())
            .collect();
        let assets = assets::Assets::open(
            store.clone(),
            &inventory.resources(),
            wallet.address(),
            &config.operators,
            config.privacy,
            &pinned,
        )?;
        let heads = Arc::new(RwLock::new(heads));
        let metrics = Arc::new(metrics::Metrics::new());
        let computed = Arc::new(Computed::default());
        let engine = Arc::new(
            crate::execute::Engine::new(crate::execute::EngineConfig::new(
                config.data_dir.join("cwasm"),
            ))
            .map_err(|e| NodeError::Unavailable(format!("starting the wasm engine: {e}")))?,
        );
        let pusher = Arc::new(std::sync::OnceLock::new());
        let last_slots = read_lock(&heads)
            .iter()
            .map(|(process, head)| (*process, head.next_slot - 1))
            .collect();
        let (compute, compute_thread) = compute::start(
            compute::Wiring {
                engine: engine.clone(),
                store: store.clone(),
                computed: computed.clone(),
                metrics: metrics.clone(),
                pusher: pusher.clone(),
                pushers: std::iter::once(wallet.address())
                    .chain(config.peers.iter().copied())
                    .collect(),
            },
            &cores.exec,
            config.snapshot_interval,
            last_slots,
        )
        .map_err(|e| NodeError::Unavailable(format!("starting the executors: {e}")))?;
        let on_commit = {
            let heads = heads.clone();
            let metrics = metrics.clone();
            Box::new(move |batch: Vec<Scheduled>, commit_time: Duration| {
                metrics.commits.inc();
                metrics.commit_batch_size.observe(batch.len() as f64);
                metrics.commit_seconds.observe(commit_time.as_secs_f64());
                let mut heads = heads
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for s in &batch {
                    heads.insert(s.assignment.process, ProcessHead::after(&s.assignment));
                }
                drop(heads);
                // Slots of one process are in increasing order within a batch: the last wins.
                for s in &batch {
                    compute.announce(s.assignment.process, s.assignment.slot);
                }
            })
        };
        let (sequencer, sequencer_thread) = Sequencer::start_pinned(
            store.clone(),
            wallet.clone(),
            config.commit_batch_max,
            on_commit,
            Some(cores.sequencer),
        )?;
        // The compute driver pushes through the sequencer, which starts after it.
        let _ = pusher.set(pusher::Pusher::new(
            sequencer.downgrade(),
            wallet.clone(),
            heads.clone(),
            &config.routes,
            store.clone(),
            metrics.clone(),
        )?);
        let (verifier, verifier_thread) =
            crate::api::verify::Verifier::start(Some(cores.http_verify))?;
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http,
                source,
            })?;
        let shared = Arc::new(Shared {
            address: wallet.address(),
            public_key: wallet.public_key(),
            config,
            store,
            sequencer,
            metrics,
            computed,
            heads,
            validate_module: Box::new(move |wasm| engine.validate(wasm).map_err(|e| e.to_string())),
            inventory,
            assets,
            attestation,
            ingress: Arc::new(crate::ingress::IngressMetrics::new()),
            verifier,
            cores,
        });
        let ingress = match shared.config.quic {
            Some(listen) => Some(crate::ingress::start(
                shared.clone(),
                &wallet,
                crate::ingress::Settings {
                    listen,
                    threads: shared.config.ingress_threads(),
                    idle_timeout: std::time::Duration::from_millis(
                        shared.config.quic_idle_timeout_ms,
                    ),
                    max_udp_payload: shared.config.quic_max_udp_payload,
                    connections_max: shared.config.quic_connections_max,
                    cores: shared.cores.ingress.clone(),
                },
            )?),
            None => None,
        };
        Ok(Self {
            shared,
            listener,
            threads: vec![verifier_thread, sequencer_thread, compute_thread],
            ingress,
        })
    }

    /// The bound HTTP address (useful with port 0).
    ///
    /// # Errors
    /// I/O errors from the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound QUIC ingress address, when the node has one.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.ingress.as_ref().map(|t| t.local_addr())
    }

    /// The QUIC backend serving the ingress (`uring` may have fallen back to `tokio`).
    pub fn quic_transport(&self) -> Option<crate::ingress::TransportKind> {
        self.ingress.as_ref().map(|t| t.kind())
    }

    /// The node's address.
    pub fn address(&self) -> Address {
        self.shared.address
    }

    /// A handle on the node's sequencer that does not keep it running (for
    /// [`WeakSequencer::hold`]).
    pub fn sequencer(&self) -> WeakSequencer {
        self.shared.sequencer.downgrade()
    }

    /// Serves HTTP until `shutdown` completes.
    ///
    /// # Errors
    /// I/O errors of the listener.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = crate::api::server::HttpLimits {
            connections_max: self.shared.config.http_connections_max,
            header_timeout: std::time::Duration::from_millis(
                self.shared.config.http_header_timeout_ms,
            ),
        };
        let metrics = self.shared.metrics.clone();
        let app = crate::api::router(self.shared);
        let served = crate::api::server::serve(self.listener, app, limits, metrics, shutdown).await;
        // The router (and with it the last Sequencer handle) is gone: the threads wind down
        // once the ingress, which holds the other handles, is shut down.
        let threads = self.threads;
        let ingress = self.ingress;
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(ingress) = ingress {
                ingress.shutdown();
            }
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a node thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("joining the node threads failed");
        }
        served
    }
}
