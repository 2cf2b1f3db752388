//! `SimNode`: one node's real sans-IO sequencer core, real wasmtime instances, the real push
//! plan and the real per-peer push queue (`push::PeerQueue`), driven the way `ferrobeam::node`
//! drives them (group commit, ack after commit; local pushes acknowledged before the result,
//! pushes to other nodes queued in the result's batch and retried with backoff until
//! acknowledged; restore from the newest snapshot plus replay), over a `SimStore`.

use std::collections::{BTreeMap, BTreeSet};

use ferrobeam::execute::{Instance, SlotInput, SlotOutcome, Snapshot};
use ferrobeam::message::{Id, Message, Wallet};
use ferrobeam::node::compute::result_record;
use ferrobeam::push::{self, PeerQueue, Push};
use ferrobeam::schedule::sequencer::{BatchId, Request, SequencerCore, Target};
use ferrobeam::schedule::{Assignment, Scheduler};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::store::{Index, Queued, SimStore, Write};
use super::{Body, Ctx, Endpoint, Event, Packet, PushKey, Tag};

/// Whom the core answers: a remote endpoint (client or peer node), or this node's own push.
#[derive(Debug)]
pub enum ReplyTo {
    Remote { to: Endpoint, tag: Tag },
    Local(PushKey),
}

type Core = SequencerCore<Message, ReplyTo, String>;

/// One outbox message on its way to a process of this node, retried until acknowledged.
#[derive(Debug, Clone)]
struct Outgoing {
    target: Id,
    message: Message,
}

/// A slot computed but not finished: its local pushes are not all acknowledged yet.
struct SlotWork {
    slot: u64,
    record: Vec<u8>,
    snapshot: Option<Snapshot>,
    waiting: BTreeSet<PushKey>,
    pushed: Vec<serde_json::Value>,
    /// Pushes to other nodes, queued (sequence numbers given) when the slot is stored.
    remote: Vec<Queued>,
    /// Whether the result was stored before (then nothing is pushed or written again).
    stored: bool,
}

/// Compute progress of one process (volatile: lost in a crash).
#[derive(Default)]
struct Proc {
    instance: Option<Instance>,
    /// The slot the instance runs next.
    next: u64,
    /// A ComputeDone is scheduled or pushes are outstanding.
    busy: bool,
    work: Option<SlotWork>,
}

pub struct SimNode {
    pub index: usize,
    pub wallet: Wallet,
    pub up: bool,
    pub epoch: u64,
    pub store: SimStore,
    core: Core,
    procs: BTreeMap<Id, Proc>,
    outgoing: BTreeMap<PushKey, Outgoing>,
    /// The push queue's volatile half, by target node (rebuilt from the store at restart).
    peers: BTreeMap<usize, PeerQueue>,
    /// Attempts in flight: sequence number → attempt number.
    attempts: BTreeMap<u64, u64>,
    attempt_next: u64,
    seq_next: u64,
    pub snapshot_interval: u64,
    batch_max: usize,
    /// The fault plan makes the next group commit's fsync fail.
    pub fail_next_commit: bool,
    clock_error_ms_max: u64,
    /// This node's wall clock: `now + now × skew_ppm / 10⁶ + offset_ms` (what `now_ms()` reads).
    clock_offset_ms: i64,
    clock_skew_ppm: i64,
}

impl SimNode {
    pub fn new(
        index: usize,
        wallet: Wallet,
        snapshot_interval: u64,
        batch_max: usize,
        clock_error_ms_max: u64,
    ) -> Self {
        Self {
            index,
            wallet,
            up: true,
            epoch: 0,
            store: SimStore::default(),
            core: Core::new(Scheduler::new(), batch_max),
            procs: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            peers: BTreeMap::new(),
            attempts: BTreeMap::new(),
            attempt_next: 0,
            seq_next: 0,
            snapshot_interval,
            batch_max,
            fail_next_commit: false,
            clock_error_ms_max,
            clock_offset_ms: 0,
            clock_skew_ppm: 0,
        }
    }

    /// Draws this node's clock error (at creation and at every restart: a step, maybe back).
    pub fn set_clock(&mut self, rng: &mut StdRng) {
        use rand::Rng;
        let max = self.clock_error_ms_max as i64;
        self.clock_offset_ms = rng.gen_range(-max..=max);
        self.clock_skew_ppm = if max == 0 {
            0
        } else {
            rng.gen_range(-super::CLOCK_SKEW_PPM_MAX..=super::CLOCK_SKEW_PPM_MAX)
        };
    }

    /// What this node's wall clock reads at simulated time `now` (the assignment timestamps).
    fn wall_ms(&self, now: u64) -> u64 {
        let now = now as i64;
        (now + now * self.clock_skew_ppm / 1_000_000 + self.clock_offset_ms).max(0) as u64
    }

    /// Nothing queued, committing, computing or pushing.
    pub fn idle(&self) -> bool {
        let live = self.store.live();
        let computed = live
            .heads
            .iter()
            .all(|(p, head)| live.last_result_slot(p) == Some(head.next_slot - 1));
        self.core.queued() == 0
            && self.core.in_flight().is_none()
            && self.outgoing.is_empty()
            && live.queue.is_empty()
            && self.procs.values().all(|p| !p.busy)
            && computed
    }

    /// Why the node is not idle (for failure reports).
    pub fn busy(&self) -> String {
        let live = self.store.live();
        let uncomputed: Vec<String> = live
            .heads
            .iter()
            .filter(|(p, head)| live.last_result_slot(p) != Some(head.next_slot - 1))
            .map(|(p, head)| {
                format!(
                    "{p}: head {} result {:?}",
                    head.next_slot - 1,
                    live.last_result_slot(p)
                )
            })
            .collect();
        format!(
            "node {}: queued {} in flight {:?} queue {:?} local pushes {} busy procs {} uncomputed {uncomputed:?} peers {:?}",
            self.index,
            self.core.queued(),
            self.core.in_flight(),
            live.queue.keys().collect::<Vec<_>>(),
            self.outgoing.len(),
            self.procs.values().filter(|p| p.busy).count(),
            self.peers
                .iter()
                .map(|(h, q)| (*h, q.len(), q.poll_timeout()))
                .collect::<Vec<_>>(),
        )
    }

    /// A crash: volatile state is gone, the store keeps what its crash semantics keep.
    pub fn crash(&mut self, ctx: &mut Ctx) -> usize {
        self.up = false;
        self.epoch += 1;
        self.procs.clear();
        self.outgoing.clear();
        self.peers.clear();
        self.attempts.clear();
        self.core = Core::new(Scheduler::new(), self.batch_max);
        self.store.crash(ctx.rng)
    }

    /// A restart: heads from the store (as `Sequencer::start`), compute resumes for every process
    /// whose last slot has no result (as `compute::start`).
    pub fn restart(&mut self, ctx: &mut Ctx) {
        let mut scheduler = Scheduler::new();
        let heads: Vec<_> = self.store.live().heads.clone().into_iter().collect();
        for (process, head) in &heads {
            scheduler.restore(*process, *head);
        }
        self.core = Core::new(scheduler, self.batch_max);
        self.up = true;
        self.epoch += 1;
        self.set_clock(ctx.rng);
        // As `Pusher::new`: every queued push is resumed.
        let queue = self.store.live().queue.clone();
        self.seq_next = queue.keys().next_back().map_or(0, |last| last + 1);
        for (seq, push) in &queue {
            self.peers
                .entry(push.home)
                .or_default()
                .handle_queued(*seq, push.target);
        }
        self.pump(ctx);
        for (process, head) in heads {
            if self.store.live().last_result_slot(&process) != Some(head.next_slot - 1) {
                self.announce(ctx, process);
            }
        }
    }

    /// Offers a request to the core; false when its queue is full (the sender retries).
    pub fn offer(
        &mut self,
        ctx: &mut Ctx,
        id: Id,
        target: Target,
        message: Message,
        reply: ReplyTo,
    ) -> bool {
        let request = Request {
            id,
            target,
            message,
            reply,
        };
        let offered = self.core.handle_request(request).is_ok();
        self.drive(ctx);
        offered
    }

    /// Starts a batch when none is in flight, and sends every answer the core has. `poll_batch`
    /// looks at up to `batch_max` requests and answers `None` when all of them were duplicates or
    /// refusals: then it is asked again while requests are queued (the sim offers requests while
    /// a batch is in flight, so the core's queue can hold more than one batch; the node's driver
    /// never queues more than `batch_max` at a time).
    pub fn drive(&mut self, ctx: &mut Ctx) {
        let wall_ms = self.wall_ms(ctx.now);
        let batch = loop {
            let wallet = &self.wallet;
            let mut index = Index(self.store.live());
            let batch = self.core.poll_batch(wall_ms, &mut index, |assignments| {
                let unsigned = assignments.iter().map(Assignment::to_message).collect();
                wallet.sign_batch(unsigned, &mut sign_rng())
            });
            let more =
                self.core.queued() > 0 && self.core.in_flight().is_none() && !self.core.stopped();
            if batch.is_some() || !more {
                break batch;
            }
        };
        if let Some(batch) = batch {
            let entries = batch
                .entries
                .into_iter()
                .map(|e| (e.assignment, e.signed, e.message))
                .collect();
            self.store.write(Write::Batch(entries));
            let fsync_ms = ctx.fsync_ms();
            ctx.timer(
                fsync_ms,
                Event::CommitDone {
                    node: self.index,
                    epoch: self.epoch,
                    batch: batch.id,
                },
            );
        }
        self.answer(ctx);
    }

    fn answer(&mut self, ctx: &mut Ctx) {
        while let Some((reply, answer)) = self.core.poll_reply() {
            let answer = answer
                .map(|r| super::AckInfo {
                    id: r.assignment.message,
                    process: r.assignment.process,
                    slot: r.assignment.slot,
                    hashpath: r.assignment.hashpath,
                    duplicate: r.duplicate,
                })
                .map_err(|e| format!("{e:?}"));
            match reply {
                ReplyTo::Remote { to, tag } => ctx.send(Packet {
                    from: Endpoint::Node(self.index),
                    to,
                    body: Body::Ack { tag, answer },
                }),
                ReplyTo::Local(key) => self.pushed(ctx, key, answer),
            }
        }
    }

    /// The batch's fsync finished, or failed by the fault plan: then the core refuses the batch
    /// and fail-stops, and this returns true (the node must go down and restart).
    pub fn commit_done(&mut self, ctx: &mut Ctx, batch: BatchId) -> bool {
        if self.core.in_flight() != Some(batch) {
            return false;
        }
        if std::mem::take(&mut self.fail_next_commit) {
            // The batch stays in the unsynced journal: the crash that follows keeps it or not.
            assert!(
                self.core
                    .handle_committed(batch, Err("injected fsync failure"))
            );
            assert!(self.core.stopped(), "a failed commit stops the core");
            self.answer(ctx);
            let mut index = Index(self.store.live());
            assert!(
                self.core
                    .poll_batch(ctx.now, &mut index, |_| unreachable!("no batch to sign"))
                    .is_none(),
                "a stopped core makes no batch"
            );
            return true;
        }
        self.store.sync();
        let touched: Vec<Id> = self.store.live().heads.keys().copied().collect();
        assert!(self.core.handle_committed(batch, Ok::<(), String>(())));
        // As `on_commit`: compute learns of the new slots before anyone is acknowledged.
        for process in touched {
            self.announce(ctx, process);
        }
        self.drive(ctx);
        false
    }

    /// A packet for this node: a schedule request (client or peer push), or a push's ack.
    pub fn handle_packet(&mut self, ctx: &mut Ctx, packet: Packet) {
        match packet.body {
            Body::Schedule {
                target,
                message,
                tag,
            } => {
                let reply = ReplyTo::Remote {
                    to: packet.from,
                    tag,
                };
                // A full queue drops the request: the sender's retry is the backpressure.
                self.offer(ctx, message.id(), target, message, reply);
            }
            Body::Ack {
                tag:
                    Tag::Queued {
                        seq,
                        epoch,
                        attempt,
                    },
                answer,
            } if epoch == self.epoch => self.queued_answer(ctx, seq, attempt, answer),
            Body::Ack { .. } => {}
        }
    }

    /// Marks that `process` may have slots to compute.
    pub fn announce(&mut self, ctx: &mut Ctx, process: Id) {
        let live = self.store.live();
        // Compute runs only slots whose commit finished (the node announces them in
        // `on_commit`): a batch still in the journal may yet be lost in a crash.
        let Some(head) = self.store.durable().heads.get(&process) else {
            return;
        };
        let proc = self.procs.entry(process).or_default();
        // Without a live instance the process resumes after its last stored result.
        let next = match &proc.instance {
            Some(_) => proc.next,
            None => live.last_result_slot(&process).map_or(0, |s| s + 1),
        };
        if proc.busy || next >= head.next_slot {
            return;
        }
        proc.busy = true;
        let exec_ms = ctx.exec_ms();
        ctx.timer(
            exec_ms,
            Event::ComputeDone {
                node: self.index,
                epoch: self.epoch,
                process,
            },
        );
    }

    /// An executor finished its job: (restore if needed, then) run the next slot.
    pub fn compute_done(&mut self, ctx: &mut Ctx, process: Id) {
        if self
            .procs
            .get(&process)
            .is_none_or(|p| p.instance.is_none())
        {
            self.restore(ctx, process);
        }
        let proc = self.procs.get_mut(&process).expect("restored above");
        let slot = proc.next;
        let Some((assignment, signed_by, message)) = self.store.live().slot(&process, slot) else {
            proc.busy = false;
            return;
        };
        let definition = self.store.live().messages[&process].clone();
        let owner = definition.commitments()[0].address();
        let depth = push::depth_of(&message, ctx.world.pushers.contains(&signed_by));
        let from = push::sender(&message, signed_by, &ctx.world.pushers);
        let input = SlotInput {
            process,
            slot,
            message_id: assignment.message,
            from,
            owner,
            timestamp_ms: assignment.timestamp_ms,
            message,
        };
        let instance = proc.instance.as_mut().expect("restored above");
        let outcome = instance.run(&input).expect("slots run in order");
        let snapshot = slot
            .is_multiple_of(self.snapshot_interval)
            .then(|| instance.snapshot().expect("a slot ran"));
        proc.next = slot + 1;
        let record = serde_json::to_vec(&result_record(
            process,
            slot,
            assignment.message,
            assignment.hashpath,
            &outcome,
        ))
        .expect("json");
        let work = SlotWork {
            slot,
            record,
            snapshot,
            waiting: BTreeSet::new(),
            pushed: Vec::new(),
            remote: Vec::new(),
            stored: false,
        };
        self.push(ctx, process, depth, &outcome, work);
    }

    /// Brings `process` back: newest snapshot at or before its last result, else slot 0.
    fn restore(&mut self, ctx: &mut Ctx, process: Id) {
        let live = self.store.live();
        let definition = &live.messages[&process];
        let module = ctx.world.module_of(definition);
        let restored = live
            .last_result_slot(&process)
            .and_then(|upto| live.snapshot_at_or_before(&process, upto))
            .map(|(slot, bytes)| (slot, Snapshot::decode(&bytes).expect("own snapshot")));
        let proc = self.procs.entry(process).or_default();
        match restored {
            Some((slot, snapshot)) => {
                proc.instance = Some(
                    Instance::restore(&module, process, definition, &snapshot).expect("restore"),
                );
                proc.next = slot + 1;
                ctx.faults.restores += 1;
            }
            None => {
                proc.instance = Some(Instance::new(&module, process, definition).expect("new"));
                proc.next = 0;
            }
        }
    }

    /// Pushes a slot's outbox unless its result is stored (then it was pushed before): local
    /// targets through this node's core, the rest queued when the slot is stored.
    fn push(
        &mut self,
        ctx: &mut Ctx,
        process: Id,
        depth: i64,
        outcome: &SlotOutcome,
        mut work: SlotWork,
    ) {
        work.stored = self
            .store
            .live()
            .results
            .contains_key(&(process, work.slot));
        let plan = if outcome.outbox.is_empty() || work.stored {
            Vec::new()
        } else {
            push::plan(process, work.slot, depth, &outcome.outbox).expect("plan")
        };
        let mut sends = Vec::new();
        for (index, planned) in plan.into_iter().enumerate() {
            let Push::Schedule { target, message } = planned else {
                work.pushed
                    .push(serde_json::json!({ "index": index, "skipped": true }));
                continue;
            };
            let Some(&home) = ctx.world.homes.get(&target) else {
                work.pushed
                    .push(serde_json::json!({ "index": index, "skipped": "no route" }));
                continue;
            };
            let signed = self.wallet.sign(message, &mut sign_rng());
            work.pushed
                .push(serde_json::json!({ "index": index, "id": signed.id() }));
            if home != self.index {
                work.remote.push(Queued {
                    target,
                    home,
                    message: signed,
                });
                continue;
            }
            let key = PushKey {
                source: process,
                slot: work.slot,
                index: index as u32,
            };
            work.waiting.insert(key);
            sends.push((
                key,
                Outgoing {
                    target,
                    message: signed,
                },
            ));
        }
        self.procs.get_mut(&process).expect("computing").work = Some(work);
        for (key, outgoing) in sends {
            self.outgoing.insert(key, outgoing);
            self.send_push(ctx, key);
        }
        self.finish_if_pushed(ctx, process);
    }

    /// A local push, offered to this node's core (as `Sequencer::schedule_blocking`).
    fn send_push(&mut self, ctx: &mut Ctx, key: PushKey) {
        let Some(out) = self.outgoing.get(&key).cloned() else {
            return;
        };
        ctx.faults.pushes_sent += 1;
        let id = out.message.id();
        if !self.offer(
            ctx,
            id,
            Target::Process(out.target),
            out.message,
            ReplyTo::Local(key),
        ) {
            ctx.timer(super::PUSH_RETRY_MS, self.retry_event(key));
        }
    }

    fn retry_event(&self, key: PushKey) -> Event {
        Event::PushRetry {
            node: self.index,
            epoch: self.epoch,
            key,
        }
    }

    /// A local push's retry timer fired: offer again unless acknowledged.
    pub fn push_retry(&mut self, ctx: &mut Ctx, key: PushKey) {
        if self.outgoing.contains_key(&key) {
            ctx.faults.push_retries += 1;
            self.send_push(ctx, key);
        }
    }

    /// A local push was answered. A refused commit is retried; any other answer ends the push.
    fn pushed(&mut self, ctx: &mut Ctx, key: PushKey, answer: Result<super::AckInfo, String>) {
        if let Err(e) = &answer {
            if super::unavailable(e) {
                return; // lost with the node's volatile state: recomputed after the restart
            }
            ctx.failures
                .push(format!("node {} push {key:?} refused: {e}", self.index));
        }
        if self.outgoing.remove(&key).is_none() {
            return; // a duplicate answer
        }
        let Some(proc) = self.procs.get_mut(&key.source) else {
            return;
        };
        if let Some(work) = proc.work.as_mut()
            && work.slot == key.slot
        {
            work.waiting.remove(&key);
        }
        self.finish_if_pushed(ctx, key.source);
    }

    /// Every local push of the slot is acknowledged: result, push record and queued pushes in
    /// one write (as `Store::put_computed`), snapshot; next slot.
    fn finish_if_pushed(&mut self, ctx: &mut Ctx, process: Id) {
        let proc = self.procs.get_mut(&process).expect("computing");
        if proc.work.as_ref().is_none_or(|w| !w.waiting.is_empty()) {
            return;
        }
        let work = proc.work.take().expect("checked above");
        proc.busy = false;
        let key = (process, work.slot);
        if work.stored {
            let previous = &self.store.live().results[&key];
            if *previous != work.record {
                ctx.failures.push(format!(
                    "node {} {process} slot {}: recomputed result differs from the stored one",
                    self.index, work.slot
                ));
            }
        } else {
            let queued: Vec<(u64, Queued)> = work
                .remote
                .into_iter()
                .map(|push| {
                    self.seq_next += 1;
                    (self.seq_next - 1, push)
                })
                .collect();
            let pushes =
                (!work.pushed.is_empty()).then(|| serde_json::to_vec(&work.pushed).expect("json"));
            self.store.write(Write::Computed {
                process,
                slot: work.slot,
                result: Some(work.record),
                pushes,
                queued: queued.clone(),
            });
            for (seq, push) in queued {
                self.peers
                    .entry(push.home)
                    .or_default()
                    .handle_queued(seq, push.target);
            }
            self.pump(ctx);
        }
        if let Some(snapshot) = work.snapshot {
            self.store
                .write(Write::Snapshot(process, snapshot.slot, snapshot.encode()));
        }
        self.announce(ctx, process);
    }

    /// Starts every attempt the peer queues allow now, and sets a timer for the next one.
    pub fn pump(&mut self, ctx: &mut Ctx) {
        let mut wake = None;
        let mut starts = Vec::new();
        for (home, queue) in &mut self.peers {
            while let Some(seq) = queue.poll_send(ctx.now) {
                starts.push((*home, seq));
            }
            if let Some(at) = queue.poll_timeout() {
                wake = Some(wake.map_or(at, |w: u64| w.min(at)));
            }
        }
        for (home, seq) in starts {
            let attempt = self.attempt_next;
            self.attempt_next += 1;
            self.attempts.insert(seq, attempt);
            let push = self.store.live().queue[&seq].clone();
            ctx.faults.pushes_sent += 1;
            ctx.send(Packet {
                from: Endpoint::Node(self.index),
                to: Endpoint::Node(home),
                body: Body::Schedule {
                    target: Target::Process(push.target),
                    message: push.message,
                    tag: Tag::Queued {
                        seq,
                        epoch: self.epoch,
                        attempt,
                    },
                },
            });
            // As the node's HTTP client: an attempt without an answer fails after PEER_TIMEOUT.
            ctx.timer(
                super::PEER_TIMEOUT_MS,
                Event::PushTimeout {
                    node: self.index,
                    epoch: self.epoch,
                    seq,
                    attempt,
                },
            );
        }
        if let Some(at) = wake
            && at > ctx.now
        {
            let epoch = self.epoch;
            ctx.timer(
                at - ctx.now,
                Event::PushWake {
                    node: self.index,
                    epoch,
                },
            );
        }
    }

    /// An attempt at a queued push timed out: the peer queue backs off.
    pub fn push_timeout(&mut self, ctx: &mut Ctx, seq: u64, attempt: u64) {
        if self.attempts.get(&seq) == Some(&attempt) {
            self.attempts.remove(&seq);
            self.attempt_failed(ctx, seq);
        }
    }

    fn attempt_failed(&mut self, ctx: &mut Ctx, seq: u64) {
        ctx.faults.push_retries += 1;
        let home = self.store.live().queue[&seq].home;
        let queue = self.peers.get_mut(&home).expect("queued");
        queue.handle_failed(seq, ctx.now, ctx.rng);
        self.pump(ctx);
    }

    /// The answer to an attempt at a queued push (only the attempt in flight counts, as only
    /// its HTTP request is still open on the node).
    fn queued_answer(
        &mut self,
        ctx: &mut Ctx,
        seq: u64,
        attempt: u64,
        answer: Result<super::AckInfo, String>,
    ) {
        if self.attempts.get(&seq) != Some(&attempt) {
            return;
        }
        self.attempts.remove(&seq);
        match answer {
            // The target's sequencer failed its commit (a 5xx): retried after a backoff.
            Err(e) if super::unavailable(&e) => return self.attempt_failed(ctx, seq),
            Err(e) => ctx.failures.push(format!(
                "node {} queued push {seq} refused: {e}",
                self.index
            )),
            Ok(_) => {}
        }
        let home = self.store.live().queue[&seq].home;
        if self.peers.get_mut(&home).expect("queued").handle_done(seq) {
            self.store.write(Write::Dequeue(seq));
        }
        self.pump(ctx);
    }

    /// A client's or bootstrap's spawn, applied at once with an immediate commit (setup only).
    pub fn bootstrap(&mut self, ctx: &mut Ctx, process: Message) {
        let id = process.id();
        let reply = ReplyTo::Remote {
            to: Endpoint::Node(self.index),
            tag: Tag::Bootstrap,
        };
        assert!(self.offer(ctx, id, Target::Spawn, process, reply));
        let batch = self.core.in_flight().expect("a spawn needs a batch");
        assert!(!self.commit_done(ctx, batch), "setup commits do not fail");
    }
}

/// Ed25519 signing draws no randomness; a fixed-seed generator satisfies the signature, so no OS
/// randomness can reach a run.
fn sign_rng() -> StdRng {
    StdRng::seed_from_u64(0)
}
