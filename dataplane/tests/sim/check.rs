//! The checkers: acknowledged messages are durable at their acked slot, replays from slot 0 give
//! the stored results and hashpaths, and every outbox message is scheduled on its target exactly
//! once.

use std::collections::BTreeMap;

use ferrobeam::execute::{Instance, SlotInput};
use ferrobeam::message::Id;
use ferrobeam::node::compute::result_record;
use ferrobeam::push::{self, Push};
use ferrobeam::schedule::verify_schedule;
use rand::SeedableRng;

use super::Sim;

/// Every acknowledged message of a process on `node` is in its store (after a crash: in what
/// survived) at the slot and hashpath it was acknowledged with.
pub fn acked_durable(sim: &Sim, node: usize) -> Result<(), String> {
    let tables = sim.nodes[node].store.live();
    for ack in sim.acked.values() {
        if sim.world.homes[&ack.process] != node {
            continue;
        }
        let Some((assignment, _)) = tables.assignments.get(&(ack.process, ack.slot)) else {
            return Err(format!(
                "acknowledged message {} lost: slot {} of {} is gone",
                ack.id, ack.slot, ack.process
            ));
        };
        if assignment.message != ack.id || assignment.hashpath != ack.hashpath {
            return Err(format!(
                "slot {} of {} holds {} (acknowledged: {})",
                ack.slot, ack.process, assignment.message, ack.id
            ));
        }
    }
    Ok(())
}

/// Every checker, after the liveness phase.
pub fn all(sim: &Sim) -> Result<(), String> {
    for node in 0..sim.nodes.len() {
        acked_durable(sim, node)?;
        no_message_twice(sim, node)?;
    }
    let mut expected_pushes: BTreeMap<Id, Id> = BTreeMap::new();
    for p in &sim.processes {
        replay(sim, p.id, p.home, &mut expected_pushes)?;
    }
    exactly_once(sim, &expected_pushes)
}

/// No message id holds two slots on a node (the scheduler deduplicates by id).
fn no_message_twice(sim: &Sim, node: usize) -> Result<(), String> {
    let mut seen: BTreeMap<Id, (Id, u64)> = BTreeMap::new();
    for ((process, slot), (a, _)) in &sim.nodes[node].store.live().assignments {
        if let Some(first) = seen.insert(a.message, (*process, *slot)) {
            return Err(format!(
                "message {} scheduled twice on node {node}: {first:?} and {:?}",
                a.message,
                (process, slot)
            ));
        }
    }
    Ok(())
}

/// Recomputes `process` from slot 0 on a fresh instance: the chain verifies, and every slot's
/// result record equals the node's stored one byte for byte. Collects the ids the slots'
/// outboxes must have become (message id → target).
fn replay(
    sim: &Sim,
    process: Id,
    home: usize,
    expected: &mut BTreeMap<Id, Id>,
) -> Result<(), String> {
    let node = &sim.nodes[home];
    let tables = node.store.live();
    let schedule = tables.schedule(&process);
    let assignments: Vec<_> = schedule.iter().map(|(a, _)| a.clone()).collect();
    verify_schedule(&process, &assignments)
        .map_err(|i| format!("{process}: the chain breaks at slot {i}"))?;
    let definition = &schedule.first().ok_or("empty schedule")?.1;
    let owner = definition.commitments()[0].address();
    let module = sim.world.module_of(definition);
    let mut instance = Instance::new(&module, process, definition).map_err(|e| e.to_string())?;
    for (assignment, message) in schedule.iter() {
        let slot = assignment.slot;
        let signer = message.commitments()[0].address();
        let from_node = sim.world.pushers.contains(&signer);
        let input = SlotInput {
            process,
            slot,
            message: message.clone(),
            message_id: assignment.message,
            from: push::sender(message, signer, &sim.world.pushers),
            owner,
            timestamp_ms: assignment.timestamp_ms,
        };
        let outcome = instance.run(&input).map_err(|e| e.to_string())?;
        let record = result_record(
            process,
            slot,
            assignment.message,
            assignment.hashpath,
            &outcome,
        );
        let ours = serde_json::to_vec(&record).expect("json");
        match tables.results.get(&(process, slot)) {
            None => return Err(format!("{process} slot {slot} has no stored result")),
            Some(stored) if *stored != ours => {
                return Err(format!(
                    "{process} slot {slot}: replay differs from the stored result\n  stored: {}\n  replay: {}",
                    String::from_utf8_lossy(stored),
                    String::from_utf8_lossy(&ours)
                ));
            }
            Some(_) => {}
        }
        let depth = push::depth_of(message, from_node);
        if outcome.outbox.is_empty() {
            continue;
        }
        let plan = push::plan(process, slot, depth, &outcome.outbox).map_err(|e| e.to_string())?;
        for planned in plan {
            if let Push::Schedule { target, message } = planned {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                let id = node.wallet.sign(message, &mut rng).id();
                expected.insert(id, target);
            }
        }
    }
    Ok(())
}

/// Each pushed message is on its target's schedule exactly once, and nothing signed by a node
/// is scheduled that no outbox asked for.
fn exactly_once(sim: &Sim, expected: &BTreeMap<Id, Id>) -> Result<(), String> {
    let mut found: BTreeMap<Id, Vec<(usize, Id, u64)>> = BTreeMap::new();
    for node in &sim.nodes {
        for ((process, slot), (a, _)) in &node.store.live().assignments {
            let signer = node.store.live().messages[&a.message].commitments()[0].address();
            if sim.world.pushers.contains(&signer) {
                found
                    .entry(a.message)
                    .or_default()
                    .push((node.index, *process, *slot));
            }
        }
    }
    for (id, target) in expected {
        match found.get(id).map(Vec::as_slice) {
            Some([(_, process, _)]) if process == target => {}
            other => {
                return Err(format!(
                    "pushed message {id} to {target}: scheduled {other:?}, expected exactly once"
                ));
            }
        }
    }
    if let Some((id, at)) = found.iter().find(|(id, _)| !expected.contains_key(id)) {
        return Err(format!(
            "node-signed message {id} scheduled at {at:?} but no outbox made it"
        ));
    }
    Ok(())
}
