//! The sequencer's decisions, sans-IO: admission, duplicate detection, batching, and which
//! senders are answered once a batch is durable.
//!
//! ```text
//! handle_request(request) ──▶ queue (≤ REQUEST_QUEUE_MAX; full: the request comes back)
//! poll_batch(now_ms, index, sign) ──▶ Batch { id, entries }   (≤ batch_max requests looked at)
//!        driver: Store::commit(entries) (fsync) ──▶ handle_committed(id, Ok | Err)
//! poll_reply() ──▶ (reply token, Ok(Receipt) | Err(Refused))
//! ```
//!
//! [`SequencerCore`] owns the [`Scheduler`]. It never touches the store, a clock or a key: the
//! driver passes `now_ms`, a [`ScheduleIndex`] over its durable store (for messages scheduled
//! before), and a signing closure, called once per batch with all of its new assignments (so the
//! driver can sign them together: one batch commitment per group commit). At most one batch is in flight; until it is committed (or has
//! failed), `poll_batch` answers `None` and requests wait in the queue. That is what makes
//! duplicate detection exact: every message is either durable (the index finds it), in the
//! batch being built, or not scheduled at all.
//!
//! Replies come out only through `poll_reply`, and a request that got a slot is answered only
//! after `handle_committed(.., Ok)`: an acknowledgement always means "durable". On a failed
//! commit every sender of the batch gets [`Refused::CommitFailed`] and the core fail-stops:
//! after a failed fsync the store's state is unknown (the batch may or may not be on disk), so
//! writing on could reuse slots the disk already holds. It makes no further batch, and every
//! queued and later request gets [`Refused::Stopped`], until the driver restarts it from what
//! the store holds (a new core over the recovered heads).
//!
//! There are no timers: a batch is whatever is queued when the driver asks (group commit
//! amortizes the fsync over everyone who arrived during the previous one).

use std::collections::{HashMap, VecDeque};

use super::{Assignment, ProcessHead, ScheduleError, Scheduler};
use crate::message::{Id, Message};

/// Requests waiting for the sequencer. Each holds one message (≤ 16 MiB, typically ~1 KB); a
/// full queue hands the request back to the driver, which makes the sender wait
/// (backpressure): the queue never grows past it.
pub const REQUEST_QUEUE_MAX: usize = 4096;

/// What a request asks: a new process, or a message on an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Spawn: the message is a process message, scheduled at slot 0 of itself.
    Spawn,
    /// Schedule the message on this process.
    Process(Id),
}

/// One request: the message's id, what to do with it, the message itself (`M`, carried into the
/// batch for the driver to store) and the driver's reply token (`R`, handed back with the
/// answer).
#[derive(Debug)]
pub struct Request<M, R> {
    /// The (verified) message's id.
    pub id: Id,
    /// Spawn or schedule.
    pub target: Target,
    /// The message, moved into the batch when it gets a slot.
    pub message: M,
    /// Whom to answer.
    pub reply: R,
}

/// Where a message was scheduled before, as the driver's durable index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The durable assignment.
    pub assignment: Assignment,
    /// The id of the node-signed assignment message.
    pub signed: Id,
}

/// The driver's durable index: where a message id was scheduled, if anywhere.
pub trait ScheduleIndex {
    /// The driver's lookup error (handed back to the sender in [`Refused::Lookup`]).
    type Error;

    /// The durable assignment of message `id`.
    ///
    /// # Errors
    /// The driver's store failed; the sender gets the error, nothing is scheduled.
    fn locate(&mut self, id: &Id) -> Result<Option<Located>, Self::Error>;
}

/// What a sender gets once its message is durable: the data of the node's `Ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The assignment.
    pub assignment: Assignment,
    /// The id of the signed assignment message.
    pub signed: Id,
    /// True when the message had been scheduled before this request (the original slot).
    pub duplicate: bool,
}

/// Why a request got no slot. Split by fault: the sender's request (`Schedule`), or this node's
/// store (`Lookup`, `CommitFailed`).
#[derive(Debug)]
#[non_exhaustive]
pub enum Refused<E> {
    /// The scheduler refused (unknown process, existing process, ...).
    Schedule(ScheduleError),
    /// The durable index failed.
    Lookup(E),
    /// The batch's commit failed; nothing in it is durable. The text is the driver's error.
    CommitFailed(String),
    /// An earlier commit failed: the core takes no writes until it is restarted.
    Stopped,
}

/// An answer for one request.
pub type Reply<R, E> = (R, Result<Receipt, Refused<E>>);

/// Names one batch, so a late or repeated `handle_committed` cannot answer the wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

/// One newly scheduled message of a batch.
#[derive(Debug, Clone)]
pub struct Sequenced<M> {
    /// What the scheduler decided.
    pub assignment: Assignment,
    /// The assignment message signed by the node key.
    pub signed: Message,
    /// The scheduled message.
    pub message: M,
}

/// What the driver must make durable (in one commit, in this order) before calling
/// [`SequencerCore::handle_committed`].
#[derive(Debug)]
pub struct Batch<M> {
    /// The batch's id.
    pub id: BatchId,
    /// Newly scheduled messages, slots of one process in increasing order.
    pub entries: Vec<Sequenced<M>>,
}

/// How a request of the in-flight batch will be answered.
#[derive(Debug)]
enum Pending {
    /// With the receipt of batch entry `.0` (its own, or an earlier copy of the same message).
    Entry(usize),
}

/// The batch between `poll_batch` and `handle_committed`.
#[derive(Debug)]
struct InFlight<R> {
    id: BatchId,
    receipts: Vec<Receipt>,
    waiting: Vec<(R, Pending)>,
    /// Heads before the batch of every process it touched (None: spawned by it), for a rewind.
    undo: Vec<(Id, Option<ProcessHead>)>,
}

/// The sequencer state machine (see the module docs).
#[derive(Debug)]
pub struct SequencerCore<M, R, E> {
    scheduler: Scheduler,
    batch_max: usize,
    queue: VecDeque<Request<M, R>>,
    in_flight: Option<InFlight<R>>,
    replies: VecDeque<Reply<R, E>>,
    next_batch: u64,
    /// A commit failed: no more batches (see the module docs).
    stopped: bool,
}

impl<M, R, E> SequencerCore<M, R, E> {
    /// A core over `scheduler` (restored from the store by the driver) that looks at up to
    /// `batch_max` requests per batch (capped at [`REQUEST_QUEUE_MAX`]: a batch never holds more
    /// than the queue).
    ///
    /// # Panics
    /// If `batch_max` is 0 (configuration checks refuse it).
    pub fn new(scheduler: Scheduler, batch_max: usize) -> Self {
        assert!(batch_max > 0, "a batch holds at least one request");
        Self {
            scheduler,
            batch_max: batch_max.min(REQUEST_QUEUE_MAX),
            queue: VecDeque::new(),
            in_flight: None,
            replies: VecDeque::new(),
            next_batch: 0,
            stopped: false,
        }
    }

    /// The scheduler (heads include the in-flight batch's slots, which are not durable yet).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The most requests one batch looks at.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// Requests queued and not yet in a batch.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True once a commit failed: the core fail-stopped and the driver must restart it.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The batch waiting for `handle_committed`, if any.
    pub fn in_flight(&self) -> Option<BatchId> {
        self.in_flight.as_ref().map(|b| b.id)
    }

    /// Queues a request. Changes what `poll_batch` returns.
    ///
    /// # Errors
    /// The request itself when the queue holds [`REQUEST_QUEUE_MAX`]: the driver makes the
    /// sender wait and offers it again (backpressure).
    pub fn handle_request(&mut self, request: Request<M, R>) -> Result<(), Request<M, R>> {
        if self.stopped {
            self.replies
                .push_back((request.reply, Err(Refused::Stopped)));
            return Ok(());
        }
        if self.queue.len() >= REQUEST_QUEUE_MAX {
            return Err(request);
        }
        self.queue.push_back(request);
        assert!(self.queue.len() <= REQUEST_QUEUE_MAX);
        Ok(())
    }

    /// Builds the next batch from up to `batch_max` queued requests: duplicates of durable
    /// messages and refusals are answered at once (through `poll_reply`), new messages get
    /// slots. `sign` gets the batch's new assignments, in slot order, and returns their signed
    /// assignment messages in the same order; it is not called when there are none. `None`
    /// while a batch is in flight, or when nothing new needs a commit. Changes what
    /// `poll_reply` returns.
    ///
    /// # Panics
    /// When `sign` returns a different number of messages than it was given assignments.
    pub fn poll_batch<I>(
        &mut self,
        now_ms: u64,
        index: &mut I,
        sign: impl FnOnce(&[Assignment]) -> Vec<Message>,
    ) -> Option<Batch<M>>
    where
        I: ScheduleIndex<Error = E>,
    {
        if self.stopped || self.in_flight.is_some() || self.queue.is_empty() {
            return None;
        }
        let taken = self.queue.len().min(self.batch_max);
        let mut build = Build {
            entries: Vec::with_capacity(taken),
            waiting: Vec::with_capacity(taken),
            in_batch: HashMap::with_capacity(taken),
            undo: Vec::new(),
        };
        for request in self.queue.drain(..taken) {
            let answer = admit(&mut self.scheduler, request, now_ms, index, &mut build);
            if let Some(reply) = answer {
                self.replies.push_back(reply);
            }
        }
        if build.entries.is_empty() {
            assert!(
                build.waiting.is_empty(),
                "waiting requests need a batch entry"
            );
            return None;
        }
        let (assignments, messages): (Vec<Assignment>, Vec<M>) = build.entries.into_iter().unzip();
        let signed = sign(&assignments);
        assert_eq!(
            signed.len(),
            assignments.len(),
            "one signed assignment message per assignment"
        );
        let receipts = assignments
            .iter()
            .zip(&signed)
            .map(|(assignment, signed)| Receipt {
                assignment: assignment.clone(),
                signed: signed.id(),
                duplicate: false,
            })
            .collect();
        let entries = assignments
            .into_iter()
            .zip(signed)
            .zip(messages)
            .map(|((assignment, signed), message)| Sequenced {
                assignment,
                signed,
                message,
            })
            .collect();
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        self.in_flight = Some(InFlight {
            id,
            receipts,
            waiting: build.waiting,
            undo: build.undo,
        });
        Some(Batch { id, entries })
    }

    /// The driver's commit of batch `id` finished: on `Ok` every sender of the batch is
    /// acknowledged; on `Err` the scheduler rewinds and every sender is refused. A call for any
    /// other batch is ignored (false). Changes what `poll_batch` and `poll_reply` return.
    pub fn handle_committed<D: std::fmt::Display>(
        &mut self,
        id: BatchId,
        committed: Result<(), D>,
    ) -> bool {
        if self.in_flight.as_ref().map(|b| b.id) != Some(id) {
            return false;
        }
        let batch = self.in_flight.take().expect("checked above");
        let failure = committed.err().map(|e| e.to_string());
        if failure.is_some() {
            // Fail-stop. The heads are rewound all the same, so that what the core says of
            // them matches what was acknowledged.
            self.stopped = true;
            // Reverse order: a process touched twice keeps its oldest head.
            for (process, head) in batch.undo.into_iter().rev() {
                match head {
                    Some(head) => self.scheduler.restore(process, head),
                    None => self.scheduler.forget(&process),
                }
            }
        }
        for (reply, Pending::Entry(i)) in batch.waiting {
            let answer = match &failure {
                None => Ok(batch.receipts[i].clone()),
                Some(e) => Err(Refused::CommitFailed(e.clone())),
            };
            self.replies.push_back((reply, answer));
        }
        if self.stopped {
            for request in self.queue.drain(..) {
                self.replies
                    .push_back((request.reply, Err(Refused::Stopped)));
            }
        }
        true
    }

    /// The next answer to send. Answers for durable duplicates and refusals come from
    /// `poll_batch`; acknowledgements only from a successful `handle_committed`.
    pub fn poll_reply(&mut self) -> Option<Reply<R, E>> {
        self.replies.pop_front()
    }
}

/// The batch being built by one `poll_batch`.
struct Build<M, R> {
    /// New assignments (signed once the batch is built) and their messages.
    entries: Vec<(Assignment, M)>,
    waiting: Vec<(R, Pending)>,
    in_batch: HashMap<Id, usize>,
    undo: Vec<(Id, Option<ProcessHead>)>,
}

/// Admits one request into `build`; returns the answer when it is known now.
fn admit<M, R, I: ScheduleIndex>(
    scheduler: &mut Scheduler,
    request: Request<M, R>,
    now_ms: u64,
    index: &mut I,
    build: &mut Build<M, R>,
) -> Option<Reply<R, I::Error>> {
    let Request {
        id,
        target,
        message,
        reply,
    } = request;
    if let Some(&i) = build.in_batch.get(&id) {
        build.waiting.push((reply, Pending::Entry(i)));
        return None;
    }
    match index.locate(&id) {
        Ok(Some(located)) => {
            let receipt = Receipt {
                assignment: located.assignment,
                signed: located.signed,
                duplicate: true,
            };
            return Some((reply, Ok(receipt)));
        }
        Ok(None) => {}
        Err(e) => return Some((reply, Err(Refused::Lookup(e)))),
    }
    let process = match target {
        Target::Spawn => id,
        Target::Process(p) => p,
    };
    let before = scheduler.head(&process).copied();
    let assigned = match target {
        Target::Spawn => scheduler.spawn(id, now_ms),
        Target::Process(p) => scheduler.assign(&p, id, now_ms),
    };
    let assignment = match assigned {
        Ok(a) => a,
        Err(e) => return Some((reply, Err(Refused::Schedule(e)))),
    };
    build.undo.push((process, before));
    build.in_batch.insert(id, build.entries.len());
    build
        .waiting
        .push((reply, Pending::Entry(build.entries.len())));
    build.entries.push((assignment, message));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    /// A durable index over plain values: what "committed" batches put there.
    #[derive(Default)]
    struct Index(HashMap<Id, Located>, bool);

    impl ScheduleIndex for Index {
        type Error = &'static str;
        fn locate(&mut self, id: &Id) -> Result<Option<Located>, &'static str> {
            if self.1 {
                return Err("disk on fire");
            }
            Ok(self.0.get(id).cloned())
        }
    }

    type Core = SequencerCore<(), u32, &'static str>;

    fn request(message: u8, target: Target, reply: u32) -> Request<(), u32> {
        Request {
            id: id(message),
            target,
            message: (),
            reply,
        }
    }

    fn sign(assignments: &[Assignment]) -> Vec<Message> {
        assignments.iter().map(Assignment::to_message).collect()
    }

    fn commit(index: &mut Index, batch: &Batch<()>) {
        for e in &batch.entries {
            let located = Located {
                assignment: e.assignment.clone(),
                signed: e.signed.id(),
            };
            index.0.insert(e.assignment.message, located);
        }
    }

    fn replies(core: &mut Core) -> Vec<(u32, Result<Receipt, String>)> {
        std::iter::from_fn(|| core.poll_reply())
            .map(|(r, a)| (r, a.map_err(|e| format!("{e:?}"))))
            .collect()
    }

    #[test]
    fn acks_only_after_commit_and_duplicates_get_the_original_slot() {
        let mut core = Core::new(Scheduler::new(), 8);
        let mut index = Index::default();
        let p = Target::Process(id(1));
        core.handle_request(request(1, Target::Spawn, 10)).unwrap();
        core.handle_request(request(2, p, 11)).unwrap();
        core.handle_request(request(2, p, 12)).unwrap(); // same message twice in one batch
        let batch = core.poll_batch(5, &mut index, sign).unwrap();
        assert_eq!(batch.entries.len(), 2);
        assert!(
            replies(&mut core).is_empty(),
            "nothing acked before the commit"
        );
        core.handle_request(request(3, p, 13)).unwrap();
        assert!(
            core.poll_batch(6, &mut index, sign).is_none(),
            "one batch in flight"
        );
        commit(&mut index, &batch);
        assert!(core.handle_committed(batch.id, Ok::<(), &str>(())));
        assert!(
            !core.handle_committed(batch.id, Ok::<(), &str>(())),
            "answered once"
        );
        let got = replies(&mut core);
        assert_eq!(got.len(), 3);
        let slots: Vec<_> = got
            .iter()
            .map(|(_, a)| a.as_ref().unwrap().assignment.slot)
            .collect();
        assert_eq!(slots, [0, 1, 1]);
        core.handle_request(request(2, p, 14)).unwrap(); // durable duplicate
        let batch = core.poll_batch(7, &mut index, sign).unwrap();
        let got = replies(&mut core);
        assert_eq!(got.len(), 1);
        let receipt = got[0].1.as_ref().unwrap();
        assert!(receipt.duplicate);
        assert_eq!((got[0].0, receipt.assignment.slot), (14, 1));
        assert_eq!(batch.entries[0].assignment.slot, 2);
    }

    #[test]
    fn a_batch_is_signed_once_with_all_its_new_assignments_in_order() {
        let mut core = Core::new(Scheduler::new(), 8);
        let mut index = Index::default();
        let p = Target::Process(id(1));
        core.handle_request(request(1, Target::Spawn, 1)).unwrap();
        for (n, reply) in [(2, 2), (3, 3), (2, 4), (4, 5)] {
            core.handle_request(request(n, p, reply)).unwrap();
        }
        let mut calls = Vec::new();
        let batch = core
            .poll_batch(0, &mut index, |assignments| {
                calls.push(assignments.iter().map(|a| a.slot).collect::<Vec<_>>());
                // Any marking of the signed messages shows which receipt got which.
                assignments
                    .iter()
                    .map(|a| a.to_message().with("signed-slot", a.slot as i64))
                    .collect()
            })
            .unwrap();
        assert_eq!(
            calls,
            [vec![0, 1, 2, 3]],
            "one call, the duplicate left out"
        );
        for e in &batch.entries {
            assert_eq!(
                e.signed.get("signed-slot"),
                Some(&crate::message::Value::Int(e.assignment.slot as i64))
            );
        }
        commit(&mut index, &batch);
        core.handle_committed(batch.id, Ok::<(), &str>(()));
        for (_, receipt) in replies(&mut core) {
            let receipt = receipt.unwrap();
            let entry = &batch.entries[receipt.assignment.slot as usize];
            assert_eq!(receipt.signed, entry.signed.id());
        }
        // Nothing new to schedule (a durable duplicate): no batch, and no signing.
        core.handle_request(request(3, p, 6)).unwrap();
        assert!(
            core.poll_batch(1, &mut index, |_| unreachable!("nothing to sign"))
                .is_none()
        );
    }

    #[test]
    fn a_failed_commit_refuses_everyone_and_stops() {
        let mut core = Core::new(Scheduler::new(), 8);
        let mut index = Index::default();
        core.handle_request(request(1, Target::Spawn, 1)).unwrap();
        let b = core.poll_batch(0, &mut index, sign).unwrap();
        commit(&mut index, &b);
        core.handle_committed(b.id, Ok::<(), &str>(()));
        let _ = replies(&mut core);
        let p = Target::Process(id(1));
        core.handle_request(request(2, p, 2)).unwrap();
        core.handle_request(request(4, Target::Spawn, 3)).unwrap();
        let b = core.poll_batch(1, &mut index, sign).unwrap();
        core.handle_request(request(5, p, 4)).unwrap();
        assert!(!core.stopped());
        core.handle_committed(b.id, Err("fsync failed"));
        assert!(core.stopped());
        let got = replies(&mut core);
        assert_eq!(got.len(), 3);
        let refusal = |i: usize| got[i].1.clone().unwrap_err();
        assert!(refusal(0).starts_with("CommitFailed"), "{got:?}");
        assert!(refusal(1).starts_with("CommitFailed"), "{got:?}");
        assert_eq!(refusal(2), "Stopped", "queued: refused");
        assert!(
            core.scheduler().head(&id(4)).is_none(),
            "the spawn is undone"
        );
        // No more writes, whatever arrives.
        core.handle_request(request(2, p, 6)).unwrap();
        assert!(core.poll_batch(2, &mut index, sign).is_none());
        let later = replies(&mut core);
        assert_eq!(later.len(), 1);
        assert_eq!(
            (later[0].0, later[0].1.clone().unwrap_err()),
            (6, "Stopped".into())
        );
    }

    #[test]
    fn refusals_and_lookup_errors_are_answered_at_once() {
        let mut core = Core::new(Scheduler::new(), 2);
        let mut index = Index::default();
        core.handle_request(request(2, Target::Process(id(9)), 1))
            .unwrap();
        core.handle_request(request(3, Target::Spawn, 2)).unwrap();
        core.handle_request(request(4, Target::Spawn, 3)).unwrap();
        let b = core.poll_batch(0, &mut index, sign).unwrap();
        assert_eq!(b.entries.len(), 1, "batch_max requests looked at");
        assert_eq!(core.queued(), 1);
        let got = replies(&mut core);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.as_ref().unwrap_err().contains("UnknownProcess"));
        core.handle_committed(b.id, Ok::<(), &str>(()));
        index.1 = true;
        assert!(core.poll_batch(0, &mut index, sign).is_none());
        let got = replies(&mut core);
        assert!(
            got.iter()
                .any(|(r, a)| *r == 3 && a.as_ref().unwrap_err().contains("disk"))
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut core = Core::new(Scheduler::new(), 1);
        for n in 0..REQUEST_QUEUE_MAX {
            core.handle_request(request((n % 251) as u8, Target::Spawn, 0))
                .unwrap();
        }
        assert!(core.handle_request(request(1, Target::Spawn, 0)).is_err());
    }
}
