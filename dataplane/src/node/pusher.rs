//! The I/O half of push: signs what `crate::push` planned and schedules it, on this node through
//! the sequencer or on a peer node over HTTP.
//!
//! A local push is made at once. A push to a peer node (and a local one while the sequencer is
//! unavailable) is queued durably instead: [`Pusher::push`] returns the queue entries, the
//! compute driver stores them in the same batch as the slot's result
//! ([`Store::put_computed`]) and then hands them to [`Pusher::enqueued`]. The queue thread sends
//! them (per peer, as [`crate::push::PeerQueue`] decides, with backoff while a peer fails) until
//! the target acknowledges or refuses each one, and only then removes it from the store and
//! writes the outcome into the slot's push record. At start every queued push is resumed.
//!
//! ```text
//! dispatcher ──put_computed──▶ store (push-queue) ◀──finish_push── queue thread ◀─outcomes─┐
//!      └──enqueued(seq…)──▶ queue thread ──(seq, peer)──▶ sender threads ──HTTP / sequencer─┘
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rand::SeedableRng;
use serde_json::{Value as Json, json};

use super::metrics::Metrics;
use super::{NodeError, WeakSequencer, read_lock};
use crate::message::{Id, Message, VerifiedMessage, Wallet, json as message_json};
use crate::push::{self, PeerQueue, Push};
use crate::schedule::ProcessHead;
use crate::store::{PUSH_NODE_URL_BYTES_MAX, QueuedPush, Store, StoreError};

/// Time one attempt to a peer may take; then it counts as failed and is retried after a backoff.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Threads that make push attempts (HTTP requests to peers, local schedules). A peer that fails
/// is probed one attempt at a time, so a dead peer holds at most one of them.
pub const PUSH_SENDER_THREADS: usize = 4;
/// The longest the queue thread sleeps without looking at its peers' timers.
const QUEUE_POLL_MS_MAX: u64 = 1_000;

/// Queued pushes per source process, for backpressure ([`crate::push::may_compute`]).
#[derive(Debug, Default)]
struct QueueDepth {
    per_process: Mutex<HashMap<Id, u32>>,
    total: AtomicUsize,
}

impl QueueDepth {
    fn add(&self, process: Id) {
        let mut counts = self
            .per_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *counts.entry(process).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self, process: Id) {
        let mut counts = self
            .per_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&process) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&process);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn may_compute(&self, process: &Id) -> bool {
        let counts = self
            .per_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let queued = counts.get(process).copied().unwrap_or(0);
        push::may_compute(queued, self.total.load(Ordering::Relaxed))
    }
}

/// What a slot's pushes became: the push record (one entry per outbox message) and the pushes
/// to queue, which the caller stores with the result before calling [`Pusher::enqueued`].
#[derive(Debug)]
pub struct Pushed {
    /// The push record.
    pub record: Json,
    /// Queue entries by sequence number.
    pub queued: Vec<(u64, QueuedPush)>,
}

/// Signs and schedules outbox messages, and owns the durable push queue's thread.
pub struct Pusher {
    /// Weak: the pusher lives in the compute driver, which must not keep the sequencer alive
    /// (the sequencer's end is what stops the compute driver at shutdown).
    sequencer: WeakSequencer,
    wallet: Wallet,
    heads: Arc<RwLock<HashMap<Id, ProcessHead>>>,
    routes: HashMap<Id, String>,
    depth: Arc<QueueDepth>,
    seq_next: AtomicU64,
    /// To the queue thread; None once dropped (which stops it).
    queue: Option<Sender<Vec<(u64, QueuedPush)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the push queue thread panicked");
        }
    }
}

impl Pusher {
    /// A pusher over the node's sequencer and key, with the configured route table. Starts the
    /// queue thread, which resumes every push the store holds queued.
    ///
    /// # Errors
    /// [`StoreError`] when the queue cannot be read, or the thread cannot start.
    pub fn new(
        sequencer: WeakSequencer,
        wallet: Wallet,
        heads: Arc<RwLock<HashMap<Id, ProcessHead>>>,
        routes: &[super::config::Route],
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let routes: HashMap<Id, String> = routes
            .iter()
            .map(|r| (r.process, r.node.trim_end_matches('/').to_owned()))
            .collect();
        let depth = Arc::new(QueueDepth::default());
        let resumed = store.queued_pushes()?;
        let seq_next = store.push_seq_next()?;
        for (_, push) in &resumed {
            depth.add(push.process);
        }
        let (queue, queued) = crossbeam_channel::unbounded();
        let driver = QueueDriver::new(store, sequencer.clone(), metrics, depth.clone());
        let thread = std::thread::Builder::new()
            .name("ferrobeam-push".into())
            .spawn(move || driver.run(resumed, queued))
            .map_err(|e| StoreError::Corrupted {
                keyspace: "push-queue",
                reason: format!("starting the push thread: {e}"),
            })?;
        Ok(Self {
            sequencer,
            wallet,
            heads,
            routes,
            depth,
            seq_next: AtomicU64::new(seq_next),
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// False while `process` has too many pushes queued (see [`crate::push::may_compute`]).
    pub fn may_compute(&self, process: &Id) -> bool {
        self.depth.may_compute(process)
    }

    /// Pushes a slot's outbox: local targets at once, the rest as queue entries.
    pub fn push(&self, process: Id, slot: u64, depth: i64, outbox: &[Message]) -> Pushed {
        let plan = match push::plan(process, slot, depth, outbox) {
            Ok(plan) => plan,
            Err(e) => {
                return Pushed {
                    record: json!([{ "error": e.to_string() }]),
                    queued: Vec::new(),
                };
            }
        };
        let local: HashSet<Id> = read_lock(&self.heads).keys().copied().collect();
        let mut queued = Vec::new();
        let entries = plan
            .into_iter()
            .enumerate()
            .map(|(index, push)| match push {
                Push::Skip { target, reason } => {
                    json!({ "index": index, "target": target, "skipped": reason })
                }
                Push::Schedule { target, message } => {
                    let mut entry = match self.schedule(target, message, local.contains(&target)) {
                        Scheduled::Done(entry) => entry,
                        Scheduled::Queue { node, message } => {
                            let seq = self.seq_next.fetch_add(1, Ordering::Relaxed);
                            let entry =
                                json!({ "id": message.id(), "node": node, "status": "queued" });
                            queued.push((
                                seq,
                                QueuedPush {
                                    process,
                                    slot,
                                    index: index as u32,
                                    target,
                                    node,
                                    message,
                                },
                            ));
                            entry
                        }
                    };
                    entry["index"] = index.into();
                    entry["target"] = target.to_string().into();
                    entry
                }
            })
            .collect();
        Pushed {
            record: Json::Array(entries),
            queued,
        }
    }

    /// Hands pushes to the queue thread once they are in the store.
    pub fn enqueued(&self, queued: Vec<(u64, QueuedPush)>) {
        if queued.is_empty() {
            return;
        }
        for (_, push) in &queued {
            self.depth.add(push.process);
        }
        if let Some(queue) = &self.queue {
            // The thread ends only when this sender is dropped.
            let _ = queue.send(queued);
        }
    }

    /// Creates the processes a slot spawned; returns one record entry per spawn.
    pub fn spawn(
        &self,
        process: Id,
        slot: u64,
        depth: i64,
        definition: &Message,
        spawns: &[Message],
    ) -> Vec<Json> {
        let planned = match push::plan_spawns(process, slot, depth, definition, spawns) {
            Ok(planned) => planned,
            Err(e) => return vec![json!({ "error": e.to_string() })],
        };
        planned
            .into_iter()
            .enumerate()
            .map(|(index, message)| {
                let Some(message) = message else {
                    return json!({ "spawn": index, "skipped": "push depth limit reached" });
                };
                let signed = self.wallet.sign(message, &mut rand::rngs::OsRng);
                let id = signed.id();
                let answer = match (VerifiedMessage::verify(signed), self.sequencer.upgrade()) {
                    (Err(e), _) => Err(e.to_string()),
                    (_, None) => Err("the node is shutting down".to_owned()),
                    (Ok(verified), Some(sequencer)) => sequencer
                        .spawn_blocking(verified)
                        .map_err(|e| e.to_string()),
                };
                match answer {
                    Ok(ack) => json!({ "spawn": index, "process": ack.process, "slot": ack.slot }),
                    Err(e) => json!({ "spawn": index, "id": id, "error": e }),
                }
            })
            .collect()
    }

    fn schedule(&self, target: Id, message: Message, local: bool) -> Scheduled {
        // Ed25519 is deterministic: the same outbox message always gets the same id.
        let signed = self.wallet.sign(message, &mut rand::rngs::OsRng);
        let id = signed.id();
        if !local {
            return match self.routes.get(&target) {
                None => Scheduled::Done(
                    json!({ "id": id, "skipped": "no process here and no route to it" }),
                ),
                Some(node) if node.len() > PUSH_NODE_URL_BYTES_MAX => Scheduled::Done(
                    json!({ "id": id, "error": "the route's node URL is too long" }),
                ),
                Some(node) => Scheduled::Queue {
                    node: Some(node.clone()),
                    message: signed,
                },
            };
        }
        match deliver_local(&self.sequencer, target, signed.clone()) {
            Attempt::Acked(answer) => Scheduled::Done(json!({ "id": id, "slot": answer["slot"] })),
            Attempt::Refused(e) => Scheduled::Done(json!({ "id": id, "error": e })),
            // The sequencer is unavailable (stopping, or stopped after a failed commit): queued,
            // so that the push survives the restart that brings it back.
            Attempt::Failed(_) => Scheduled::Queue {
                node: None,
                message: signed,
            },
        }
    }
}

enum Scheduled {
    /// The record entry (scheduled, skipped or refused).
    Done(Json),
    /// To be queued for `node` (None: this node).
    Queue {
        node: Option<String>,
        message: Message,
    },
}

/// The outcome of one attempt.
enum Attempt {
    /// The target scheduled it: the acknowledgement (with `slot`).
    Acked(Json),
    /// The target refused it for good (a 4xx answer): retrying would not help.
    Refused(String),
    /// No answer, or the target was unavailable: retried after a backoff.
    Failed(String),
}

fn deliver_local(sequencer: &WeakSequencer, target: Id, message: Message) -> Attempt {
    let verified = match VerifiedMessage::verify(message) {
        Ok(v) => v,
        Err(e) => return Attempt::Refused(e.to_string()),
    };
    let Some(sequencer) = sequencer.upgrade() else {
        return Attempt::Failed("the node is shutting down".to_owned());
    };
    match sequencer.schedule_blocking(target, verified) {
        Ok(ack) => Attempt::Acked(json!({ "slot": ack.slot })),
        Err(e @ (NodeError::Unavailable(_) | NodeError::Store(_))) => {
            Attempt::Failed(e.to_string())
        }
        Err(e) => Attempt::Refused(e.to_string()),
    }
}

fn deliver_remote(agent: &ureq::Agent, node: &str, push: &QueuedPush) -> Attempt {
    let body = match serde_json::to_vec(&message_json::to_json(&push.message)) {
        Ok(body) => body,
        Err(e) => return Attempt::Refused(e.to_string()),
    };
    let url = format!("{node}/{}/schedule", push.target);
    match agent
        .post(&url)
        .header("content-type", "application/json")
        .send(&body[..])
    {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let answer: Json = response.body_mut().read_json().unwrap_or_default();
            match status {
                200..=299 => Attempt::Acked(answer),
                400..=499 => Attempt::Refused(format!("peer answered {status}: {answer}")),
                _ => Attempt::Failed(format!("peer answered {status}: {answer}")),
            }
        }
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

/// One attempt's outcome, from a sender thread to the queue thread.
struct Outcome {
    seq: u64,
    /// The entry as the sender read it (None: it was no longer queued).
    push: Option<QueuedPush>,
    attempt: Attempt,
}

/// The queue thread: one [`PeerQueue`] per peer (and one for this node), attempts handed to the
/// sender threads, outcomes written back to the store.
struct QueueDriver {
    store: Arc<Store>,
    sequencer: WeakSequencer,
    metrics: Arc<Metrics>,
    depth: Arc<QueueDepth>,
    /// By peer URL (None: this node's sequencer).
    peers: BTreeMap<Option<String>, PeerQueue>,
    /// Queued sequence numbers: their peer and source process.
    entries: HashMap<u64, (Option<String>, Id)>,
    rng: rand::rngs::StdRng,
    started: Instant,
}

impl QueueDriver {
    fn new(
        store: Arc<Store>,
        sequencer: WeakSequencer,
        metrics: Arc<Metrics>,
        depth: Arc<QueueDepth>,
    ) -> Self {
        Self {
            store,
            sequencer,
            metrics,
            depth,
            peers: BTreeMap::new(),
            entries: HashMap::new(),
            rng: rand::rngs::StdRng::from_entropy(),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn add(&mut self, seq: u64, push: &QueuedPush) {
        self.peers
            .entry(push.node.clone())
            .or_default()
            .handle_queued(seq, push.target);
        self.entries.insert(seq, (push.node.clone(), push.process));
    }

    fn run(mut self, resumed: Vec<(u64, QueuedPush)>, queued: Receiver<Vec<(u64, QueuedPush)>>) {
        if !resumed.is_empty() {
            tracing::info!(queued = resumed.len(), "resuming queued pushes");
        }
        for (seq, push) in &resumed {
            self.add(*seq, push);
        }
        // Attempts in flight are bounded by the peer queues' windows: never more than
        // PEER_IN_FLIGHT_MAX per peer, so these channels stay small.
        let (jobs, work) = crossbeam_channel::unbounded::<(u64, Option<String>)>();
        let (done, outcomes) = crossbeam_channel::unbounded::<Outcome>();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PEER_TIMEOUT))
            .build()
            .into();
        let senders: Vec<_> = (0..PUSH_SENDER_THREADS)
            .map(|_| {
                let (work, done) = (work.clone(), done.clone());
                let (store, sequencer, agent) =
                    (self.store.clone(), self.sequencer.clone(), agent.clone());
                std::thread::spawn(move || send_loop(&work, &done, &store, &sequencer, &agent))
            })
            .collect();
        drop((work, done));
        // Runs until the pusher is dropped (node shutdown).
        loop {
            self.metrics.push_queue_depth.set(self.entries.len() as i64);
            let now = self.now_ms();
            let mut wake = now + QUEUE_POLL_MS_MAX;
            for (peer, queue) in &mut self.peers {
                while let Some(seq) = queue.poll_send(now) {
                    self.metrics.push_attempts.inc();
                    let _ = jobs.send((seq, peer.clone()));
                }
                if let Some(at) = queue.poll_timeout() {
                    wake = wake.min(at);
                }
            }
            let timeout = Duration::from_millis(wake.saturating_sub(now));
            crossbeam_channel::select! {
                recv(queued) -> batch => match batch {
                    Ok(batch) => {
                        for (seq, push) in &batch {
                            self.add(*seq, push);
                        }
                    }
                    Err(_) => break,
                },
                recv(outcomes) -> outcome => {
                    if let Ok(outcome) = outcome {
                        self.finish(outcome);
                    }
                },
                default(timeout) => {}
            }
        }
        drop(jobs);
        for sender in senders {
            let _ = sender.join();
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some((peer, process)) = self.entries.get(&outcome.seq).cloned() else {
            return;
        };
        let now = self.now_ms();
        let queue = self
            .peers
            .get_mut(&peer)
            .expect("an entry's peer has a queue");
        let entry = match outcome.attempt {
            Attempt::Failed(reason) => {
                self.metrics.push_failures.inc();
                if let Some(delay) = queue.handle_failed(outcome.seq, now, &mut self.rng) {
                    tracing::debug!(seq = outcome.seq, node = ?peer, %reason, delay_ms = delay,
                        "push attempt failed; retrying after a backoff");
                }
                return;
            }
            Attempt::Acked(answer) => json!({ "slot": answer["slot"] }),
            Attempt::Refused(reason) => {
                self.metrics.push_refused.inc();
                tracing::warn!(seq = outcome.seq, node = ?peer, %reason, "push refused by its target");
                json!({ "error": reason })
            }
        };
        if !queue.handle_done(outcome.seq) {
            return;
        }
        if queue.is_empty() {
            self.peers.remove(&peer);
        }
        if let Some(push) = &outcome.push
            && let Err(e) = self.record(outcome.seq, push, entry)
        {
            // The entry stays in the store: sent again after a restart, deduplicated there.
            tracing::error!(seq = outcome.seq, error = %e, "recording a finished push");
        }
        self.entries.remove(&outcome.seq);
        self.depth.remove(process);
    }

    /// Removes the entry from the store and writes its outcome into the slot's push record.
    fn record(&self, seq: u64, push: &QueuedPush, outcome: Json) -> Result<(), StoreError> {
        let mut record: Json = match self.store.pushes(&push.process, push.slot)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or(Json::Null),
            None => Json::Null,
        };
        if let Some(entry) = record
            .as_array_mut()
            .and_then(|entries| entries.get_mut(push.index as usize))
            && let Some(fields) = entry.as_object_mut()
        {
            fields.remove("status");
            if let Some(outcome) = outcome.as_object() {
                fields.extend(outcome.clone());
            }
        }
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        self.store
            .finish_push(seq, &push.process, push.slot, &bytes)
    }
}

/// A sender thread: makes the attempts the queue thread hands it until the queue thread ends.
fn send_loop(
    work: &Receiver<(u64, Option<String>)>,
    done: &Sender<Outcome>,
    store: &Store,
    sequencer: &WeakSequencer,
    agent: &ureq::Agent,
) {
    for (seq, peer) in work {
        let (push, attempt) = match store.queued_push(seq) {
            Err(e) => (None, Attempt::Failed(e.to_string())),
            Ok(None) => (None, Attempt::Refused("no longer queued".into())),
            Ok(Some(push)) => {
                let attempt = match &peer {
                    None => deliver_local(sequencer, push.target, push.message.clone()),
                    Some(node) => deliver_remote(agent, node, &push),
                };
                (Some(push), attempt)
            }
        };
        if done.send(Outcome { seq, push, attempt }).is_err() {
            return;
        }
    }
}
