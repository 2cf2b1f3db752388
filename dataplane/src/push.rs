//! Push (the crank): turns a computed slot's outbox into messages scheduled on their targets.
//!
//! Sans-IO: this module decides what to push and builds the messages; the compute driver signs
//! them with the node key and schedules them (locally through the sequencer, or on a peer node
//! named by the route table). A pushed message is a pure function of (source process, slot, outbox
//! index, outbox message), and Ed25519 signatures are deterministic, so pushing the same slot again
//! — after a crash, or a replay — yields the same message id, which the scheduler deduplicates:
//! each outbox message is scheduled on its target exactly once.
//!
//! A push the node cannot make at once (every push to a peer node, and a local one while the
//! sequencer is unavailable) is queued durably, in the same store batch as the slot's result,
//! and retried until its target acknowledges it. [`PeerQueue`] decides, per peer, which queued
//! push goes next and when: capped, jittered exponential backoff while the peer fails; time and
//! randomness are passed in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::Rng;

use crate::message::{Address, Id, Message, MessageError, Value};

/// Deepest chain of pushes from one original message (a message pushed because of a message
/// pushed because of ...). Deeper outbox messages are not pushed: this is the loop guard that
/// stops two processes from ping-ponging forever. Reported in the slot's push record.
pub const PUSH_DEPTH_MAX: i64 = 32;

/// Keys the node sets on every pushed message (an outbox message cannot forge them).
pub mod keys {
    /// The process whose outbox held the message.
    pub const FROM_PROCESS: &str = "from-process";
    /// The slot of that process that produced it.
    pub const FROM_SLOT: &str = "from-slot";
    /// Its index in that slot's outbox.
    pub const PUSH_INDEX: &str = "push-index";
    /// How many pushes led to it (1 for an outbox message of a directly sent message).
    pub const PUSH_DEPTH: &str = "push-depth";
    /// Its index in that slot's spawns (on process messages the node spawns).
    pub const SPAWN_INDEX: &str = "spawn-index";
}

/// Plans the processes one slot's spawns create. Each becomes a process message (`type:
/// Process`) with the spawn's fields, the spawning process's `module` and `module-format`
/// unless the spawn names its own module, and the push keys; the node signs and spawns it. Like pushes,
/// the result is a pure function of its inputs, so a repeated spawn gets the same process id.
/// Spawns deeper than [`PUSH_DEPTH_MAX`] are not made (`None` in their place).
///
/// # Errors
/// A [`MessageError`] when the node's own fields do not fit the message limits.
pub fn plan_spawns(
    process: Id,
    slot: u64,
    depth: i64,
    definition: &Message,
    spawns: &[Message],
) -> Result<Vec<Option<Message>>, MessageError> {
    let mut planned = Vec::with_capacity(spawns.len());
    for (index, spawn) in spawns.iter().enumerate() {
        if depth + 1 > PUSH_DEPTH_MAX {
            planned.push(None);
            continue;
        }
        let mut message = spawn.unsigned();
        message.set("type", crate::schedule::PROCESS_TYPE)?;
        // A spawn that names no module runs its parent's, in the parent's format.
        if message.get("module").is_none() {
            for inherited in ["module", "module-format"] {
                if let Some(value) = definition.get(inherited) {
                    message.set(inherited, value.clone())?;
                }
            }
        }
        message.set(keys::FROM_PROCESS, process.to_string())?;
        message.set(keys::FROM_SLOT, slot as i64)?;
        message.set(keys::SPAWN_INDEX, index as i64)?;
        message.set(keys::PUSH_DEPTH, depth + 1)?;
        planned.push(Some(message));
    }
    Ok(planned)
}

/// What to do with one outbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// Schedule `message` (unsigned; the node signs it) on process `target`.
    Schedule {
        /// The target process.
        target: Id,
        /// The message to sign and schedule.
        message: Message,
    },
    /// Not pushed, and why (no process target, too deep): recorded, not an error of the slot.
    Skip {
        /// The outbox message's `target` text, if any.
        target: Option<String>,
        /// Why it was not pushed.
        reason: &'static str,
    },
}

/// The push depth of a message: its `push-depth` when the node itself signed it (`from_node`),
/// else 0. A user cannot lower the depth of a chain by writing the key into a message.
pub fn depth_of(message: &Message, from_node: bool) -> i64 {
    match message.get(keys::PUSH_DEPTH) {
        Some(Value::Int(depth)) if from_node => (*depth).clamp(0, PUSH_DEPTH_MAX),
        _ => 0,
    }
}

/// Who sent a message, as a process sees it (`from` in the ABI): for a message a trusted node
/// pushed (signed by this node or a configured peer, with `from-process`), the originating
/// process; otherwise its signer. So a process that receives a transfer from another process
/// credits that process, not the node that carried it.
pub fn sender(message: &Message, signer: Address, pushers: &[Address]) -> Address {
    if pushers.contains(&signer)
        && let Some(process) = message.text(keys::FROM_PROCESS)
        && let Ok(process) = process.parse::<Id>()
    {
        return Address(process.0);
    }
    signer
}

/// Plans the pushes of one slot's outbox. `depth` is the push depth of the slot's own message.
///
/// # Errors
/// Never for outboxes the executor produced (their keys are valid); a [`MessageError`] would
/// mean the node's own fields did not fit the message limits.
pub fn plan(
    process: Id,
    slot: u64,
    depth: i64,
    outbox: &[Message],
) -> Result<Vec<Push>, MessageError> {
    let mut pushes = Vec::with_capacity(outbox.len());
    for (index, out) in outbox.iter().enumerate() {
        let target_text = out.text("target").map(str::to_owned);
        let Some(target) = target_text.as_deref().and_then(|t| t.parse::<Id>().ok()) else {
            pushes.push(Push::Skip {
                target: target_text,
                reason: "target is not a process id",
            });
            continue;
        };
        if depth + 1 > PUSH_DEPTH_MAX {
            pushes.push(Push::Skip {
                target: target_text,
                reason: "push depth limit reached",
            });
            continue;
        }
        let mut message = out.unsigned();
        // Slots and indices stay far below 2^63.
        message.set(keys::FROM_PROCESS, process.to_string())?;
        message.set(keys::FROM_SLOT, slot as i64)?;
        message.set(keys::PUSH_INDEX, index as i64)?;
        message.set(keys::PUSH_DEPTH, depth + 1)?;
        pushes.push(Push::Schedule { target, message });
    }
    Ok(pushes)
}

/// Pushes queued on this node, in all, before compute pauses (see [`may_compute`]). An entry
/// costs the store its message (≤ the message size limit) and the pusher ~100 bytes of memory
/// (sequence number, target, per-process count); message bytes are read from the store when sent.
pub const QUEUED_PUSHES_MAX: usize = 65_536;
/// Pushes one source process may have queued before its compute pauses.
pub const QUEUED_PUSHES_PER_PROCESS_MAX: u32 = 4_096;
/// Backoff after the first failed attempt to a peer; it doubles per consecutive failure.
pub const PUSH_BACKOFF_MS_MIN: u64 = 100;
/// Longest backoff: a peer that is down is tried again at least this often.
pub const PUSH_BACKOFF_MS_MAX: u64 = 10_000;
/// Attempts to one peer in flight at once (one per target process, see [`PeerQueue`]).
pub const PEER_IN_FLIGHT_MAX: usize = 8;

const _: () = assert!(PUSH_BACKOFF_MS_MIN > 0 && PUSH_BACKOFF_MS_MIN <= PUSH_BACKOFF_MS_MAX);
const _: () = assert!(QUEUED_PUSHES_PER_PROCESS_MAX as usize <= QUEUED_PUSHES_MAX);

/// Whether a process may compute further slots while `queued` of its pushes are queued and
/// `total` are queued in all. When not, the compute driver stops handing the process's slots to
/// the executors until the queue drains (backpressure on the process, never a dropped push);
/// slots already on an executor finish, so the queue can exceed [`QUEUED_PUSHES_MAX`] by what
/// they push. Processes with nothing queued keep computing.
pub fn may_compute(queued: u32, total: usize) -> bool {
    queued < QUEUED_PUSHES_PER_PROCESS_MAX && (queued == 0 || total < QUEUED_PUSHES_MAX)
}

/// The delay before the next attempt after `failures` consecutive failures (≥ 1): exponential
/// from [`PUSH_BACKOFF_MS_MIN`], capped at [`PUSH_BACKOFF_MS_MAX`], drawn from its upper half so
/// that nodes that lost the same peer do not retry in lockstep.
pub fn backoff_ms(failures: u32, rng: &mut impl Rng) -> u64 {
    assert!(failures >= 1, "backoff follows a failure");
    let shift = (failures - 1).min(20);
    let ceiling = (PUSH_BACKOFF_MS_MIN << shift).min(PUSH_BACKOFF_MS_MAX);
    rng.gen_range(ceiling / 2..=ceiling)
}

/// The queued pushes bound for one peer (or this node's own sequencer), and when to send which.
/// Sans-IO: the driver feeds queued entries, asks [`PeerQueue::poll_send`] what to send now,
/// reports each attempt's outcome, and sleeps until [`PeerQueue::poll_timeout`].
///
/// Order: pushes to one target process are sent one at a time in queue order (sequence number),
/// so a target schedules them in the order they were queued; pushes to different targets go in
/// parallel, at most [`PEER_IN_FLIGHT_MAX`] at once. After a failure the peer is backed off and
/// then probed with one attempt at a time until one succeeds.
#[derive(Debug, Default)]
pub struct PeerQueue {
    /// Per target, its queued sequence numbers in order (the front may be in flight).
    targets: BTreeMap<Id, VecDeque<u64>>,
    /// Targets whose front is ready to send, by that front's sequence number.
    ready: BTreeSet<(u64, Id)>,
    /// Attempts in flight: sequence number → target.
    in_flight: BTreeMap<u64, Id>,
    /// Consecutive failed attempts (0: the peer is healthy).
    failures: u32,
    /// No attempt starts before this time.
    not_before_ms: u64,
    queued: usize,
}

impl PeerQueue {
    /// Queued pushes, in flight included.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// A push queued under `seq` for `target`. Sequence numbers of one target must increase.
    pub fn handle_queued(&mut self, seq: u64, target: Id) {
        let fifo = self.targets.entry(target).or_default();
        assert!(fifo.back().is_none_or(|last| *last < seq), "queue order");
        fifo.push_back(seq);
        if fifo.len() == 1 {
            self.ready.insert((seq, target));
        }
        self.queued += 1;
    }

    /// The next push to attempt now, if any (it is then in flight until its outcome comes).
    pub fn poll_send(&mut self, now_ms: u64) -> Option<u64> {
        let window = if self.failures == 0 {
            PEER_IN_FLIGHT_MAX
        } else {
            1
        };
        if now_ms < self.not_before_ms || self.in_flight.len() >= window {
            return None;
        }
        let (seq, target) = self.ready.pop_first()?;
        self.in_flight.insert(seq, target);
        Some(seq)
    }

    /// When [`PeerQueue::poll_send`] may next return a push (None: only after an outcome or a
    /// new entry).
    pub fn poll_timeout(&self) -> Option<u64> {
        let window = if self.failures == 0 {
            PEER_IN_FLIGHT_MAX
        } else {
            1
        };
        (!self.ready.is_empty() && self.in_flight.len() < window).then_some(self.not_before_ms)
    }

    /// The target acknowledged `seq`, or refused it for good: it leaves the queue. Returns false
    /// when `seq` was not in flight (a stale outcome), which changes nothing.
    pub fn handle_done(&mut self, seq: u64) -> bool {
        let Some(target) = self.in_flight.remove(&seq) else {
            return false;
        };
        let fifo = self.targets.get_mut(&target).expect("in flight is queued");
        assert_eq!(fifo.pop_front(), Some(seq), "only a target's front is sent");
        match fifo.front() {
            Some(next) => {
                self.ready.insert((*next, target));
            }
            None => {
                self.targets.remove(&target);
            }
        }
        self.queued -= 1;
        self.failures = 0;
        self.not_before_ms = 0;
        true
    }

    /// An attempt at `seq` failed (no answer, or the peer was unavailable): it stays queued and
    /// the peer is backed off. Returns the backoff, or None for a stale outcome.
    pub fn handle_failed(&mut self, seq: u64, now_ms: u64, rng: &mut impl Rng) -> Option<u64> {
        let target = self.in_flight.remove(&seq)?;
        self.ready.insert((seq, target));
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_ms(self.failures, rng);
        self.not_before_ms = self.not_before_ms.max(now_ms + delay);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn peer_queue_keeps_target_order_and_backs_off() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (t1, t2) = (Id([1; 32]), Id([2; 32]));
        let mut q = PeerQueue::default();
        q.handle_queued(1, t1);
        q.handle_queued(2, t1);
        q.handle_queued(3, t2);
        assert_eq!(q.len(), 3);
        // One attempt per target at a time, in queue order.
        assert_eq!(q.poll_send(0), Some(1));
        assert_eq!(q.poll_send(0), Some(3));
        assert_eq!(q.poll_send(0), None, "t1's second waits for its first");
        assert_eq!(q.poll_timeout(), None);
        // A failure backs the peer off and probes one at a time.
        let delay = q.handle_failed(1, 1_000, &mut rng).unwrap();
        assert!((PUSH_BACKOFF_MS_MIN / 2..=PUSH_BACKOFF_MS_MIN).contains(&delay));
        assert_eq!(q.handle_failed(1, 1_000, &mut rng), None, "stale outcome");
        assert_eq!(q.poll_send(1_000), None, "backed off");
        assert!(q.handle_done(3));
        assert_eq!(q.poll_timeout(), Some(0), "a success ends the backoff");
        assert_eq!(
            q.poll_send(1_000),
            Some(1),
            "the failed push is sent again first"
        );
        assert!(q.handle_done(1));
        assert!(!q.handle_done(1), "a duplicate answer changes nothing");
        assert_eq!(q.poll_send(1_000), Some(2));
        assert!(q.handle_done(2));
        assert!(q.is_empty());
        assert_eq!(q.poll_send(1_000), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for failures in 1..=40 {
            let ceiling = (PUSH_BACKOFF_MS_MIN << (failures - 1).min(20)).min(PUSH_BACKOFF_MS_MAX);
            let delay = backoff_ms(failures, &mut rng);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay}"
            );
        }
        assert!(backoff_ms(100, &mut rng) >= PUSH_BACKOFF_MS_MAX / 2);
        assert!(may_compute(0, QUEUED_PUSHES_MAX));
        assert!(!may_compute(1, QUEUED_PUSHES_MAX));
        assert!(!may_compute(QUEUED_PUSHES_PER_PROCESS_MAX, 0));
        assert!(may_compute(QUEUED_PUSHES_PER_PROCESS_MAX - 1, 0));
    }

    #[test]
    fn plans_are_deterministic_and_guarded() {
        let process = Id([1; 32]);
        let target = Id([2; 32]);
        let outbox = vec![
            Message::new()
                .with("target", target.to_string())
                .with("data", "hi"),
            Message::new()
                .with("target", "not-a-process")
                .with("data", "x"),
            Message::new().with("data", "no target"),
        ];
        let a = plan(process, 7, 0, &outbox).unwrap();
        let b = plan(process, 7, 0, &outbox).unwrap();
        assert_eq!(a, b);
        let Push::Schedule { target: t, message } = &a[0] else {
            panic!("first is pushed")
        };
        assert_eq!(*t, target);
        assert_eq!(
            message.text(keys::FROM_PROCESS),
            Some(process.to_string().as_str())
        );
        assert_eq!(depth_of(message, true), 1);
        assert!(matches!(a[1], Push::Skip { .. }));
        assert!(matches!(a[2], Push::Skip { target: None, .. }));
        let deep = plan(process, 7, PUSH_DEPTH_MAX, &outbox[..1]).unwrap();
        assert!(matches!(
            deep[0],
            Push::Skip {
                reason: "push depth limit reached",
                ..
            }
        ));
    }

    #[test]
    fn pushed_messages_come_from_their_process() {
        let (node, peer, user) = (Address([9; 32]), Address([7; 32]), Address([8; 32]));
        let pushers = [node, peer];
        let pushed = Message::new().with(keys::FROM_PROCESS, Id([5; 32]).to_string());
        assert_eq!(sender(&pushed, node, &pushers), Address([5; 32]));
        assert_eq!(sender(&pushed, peer, &pushers), Address([5; 32]));
        // A user cannot claim to be a process.
        assert_eq!(sender(&pushed, user, &pushers), user);
        assert_eq!(sender(&Message::new(), node, &pushers), node);
    }

    #[test]
    fn spawns_inherit_the_module_and_name_their_parent() {
        let parent = Id([1; 32]);
        let definition = Message::new()
            .with("type", "Process")
            .with("module", "parent-module")
            .with("module-format", "wasm32-unknown-emscripten");
        let spawns = [
            Message::new().with("name", "child"),
            Message::new().with("module", "own-module"),
        ];
        let planned = plan_spawns(parent, 4, 0, &definition, &spawns).unwrap();
        let first = planned[0].as_ref().unwrap();
        assert_eq!(first.text("type"), Some("Process"));
        assert_eq!(first.text("module"), Some("parent-module"));
        assert_eq!(
            first.text("module-format"),
            Some("wasm32-unknown-emscripten")
        );
        assert_eq!(
            first.text(keys::FROM_PROCESS),
            Some(parent.to_string().as_str())
        );
        assert_eq!(
            planned[1].as_ref().unwrap().text("module"),
            Some("own-module")
        );
        assert_eq!(
            plan_spawns(parent, 4, 0, &definition, &spawns).unwrap(),
            planned
        );
        assert!(plan_spawns(parent, 4, PUSH_DEPTH_MAX, &definition, &spawns).unwrap()[0].is_none());
    }

    #[test]
    fn outbox_cannot_forge_push_fields() {
        let forged = Message::new()
            .with("target", Id([2; 32]).to_string())
            .with(keys::PUSH_DEPTH, -100);
        let Push::Schedule { message, .. } = &plan(Id([1; 32]), 0, 3, &[forged]).unwrap()[0] else {
            panic!("pushed")
        };
        assert_eq!(depth_of(message, true), 4);
        // A user message that claims a depth without being node-pushed counts as depth 0.
        let user = Message::new().with(keys::PUSH_DEPTH, 31);
        assert_eq!(depth_of(&user, false), 0);
        assert_eq!(depth_of(&user.clone().with(keys::PUSH_DEPTH, -5), true), 0);
    }
}
