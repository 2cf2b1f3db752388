//! Push (the crank): turns a computed slot's outbox into messages scheduled on their targets.
//!
//! Sans-IO: this module decides what to push and builds the messages; the compute driver signs
//! them with the node key and schedules them (locally through the sequencer, or on a peer node
//! named by the route table). A pushed message is a pure function of (source process, slot, outbox
//! index, outbox message), and Ed25519 signatures are deterministic, so pushing the same slot again
//! — after a crash, or a replay — yields the same message id, which the scheduler deduplicates:
//! each outbox message is scheduled on its target exactly once.

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

#[cfg(test)]
mod tests {
    use super::*;

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
