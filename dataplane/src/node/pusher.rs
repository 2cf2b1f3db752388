//! The I/O half of push: signs what `crate::push` planned and schedules it, on this node through
//! the sequencer or on a peer node over HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::{WeakSequencer, read_lock};
use crate::message::{Id, Message, VerifiedMessage, Wallet, json as message_json};
use crate::push::{self, Push};
use crate::schedule::ProcessHead;

/// Attempts to deliver one message to a peer node before the push is recorded as failed.
pub const PEER_ATTEMPTS_MAX: u32 = 3;
/// Time one attempt to a peer may take.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Signs and schedules outbox messages.
pub struct Pusher {
    /// Weak: the pusher lives in the compute driver, which must not keep the sequencer alive
    /// (the sequencer's end is what stops the compute driver at shutdown).
    sequencer: WeakSequencer,
    wallet: Wallet,
    heads: Arc<RwLock<HashMap<Id, ProcessHead>>>,
    routes: HashMap<Id, String>,
    agent: ureq::Agent,
}

impl Pusher {
    /// A pusher over the node's sequencer and key, with the configured route table.
    pub fn new(
        sequencer: WeakSequencer,
        wallet: Wallet,
        heads: Arc<RwLock<HashMap<Id, ProcessHead>>>,
        routes: &[super::config::Route],
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PEER_TIMEOUT))
            .build()
            .into();
        Self {
            sequencer,
            wallet,
            heads,
            routes: routes
                .iter()
                .map(|r| (r.process, r.node.trim_end_matches('/').to_owned()))
                .collect(),
            agent,
        }
    }

    /// Pushes a slot's outbox; returns the push record (one entry per outbox message).
    pub fn push(&self, process: Id, slot: u64, depth: i64, outbox: &[Message]) -> Json {
        let plan = match push::plan(process, slot, depth, outbox) {
            Ok(plan) => plan,
            Err(e) => return json!([{ "error": e.to_string() }]),
        };
        let local: HashSet<Id> = read_lock(&self.heads).keys().copied().collect();
        let entries = plan
            .into_iter()
            .enumerate()
            .map(|(index, push)| match push {
                Push::Skip { target, reason } => {
                    json!({ "index": index, "target": target, "skipped": reason })
                }
                Push::Schedule { target, message } => {
                    let mut entry = self.schedule(target, message, local.contains(&target));
                    entry["index"] = index.into();
                    entry["target"] = target.to_string().into();
                    entry
                }
            })
            .collect();
        Json::Array(entries)
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

    fn schedule(&self, target: Id, message: Message, local: bool) -> Json {
        // Ed25519 is deterministic: the same outbox message always gets the same id.
        let signed = self.wallet.sign(message, &mut rand::rngs::OsRng);
        let id = signed.id();
        if local {
            let verified = match VerifiedMessage::verify(signed) {
                Ok(v) => v,
                Err(e) => return json!({ "id": id, "error": e.to_string() }),
            };
            let Some(sequencer) = self.sequencer.upgrade() else {
                return json!({ "id": id, "error": "the node is shutting down" });
            };
            return match sequencer.schedule_blocking(target, verified) {
                Ok(ack) => json!({ "id": id, "slot": ack.slot }),
                Err(e) => json!({ "id": id, "error": e.to_string() }),
            };
        }
        let Some(node) = self.routes.get(&target) else {
            return json!({ "id": id, "skipped": "no process here and no route to it" });
        };
        match self.post_to_peer(node, &target, &signed) {
            Ok(ack) => json!({ "id": id, "node": node, "slot": ack["slot"] }),
            Err(e) => json!({ "id": id, "node": node, "error": e }),
        }
    }

    fn post_to_peer(&self, node: &str, target: &Id, message: &Message) -> Result<Json, String> {
        let body =
            serde_json::to_vec(&message_json::to_json(message)).map_err(|e| e.to_string())?;
        let url = format!("{node}/{target}/schedule");
        let mut last = String::new();
        for attempt in 0..PEER_ATTEMPTS_MAX {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << (2 * attempt)));
            }
            match self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&body[..])
            {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let answer: Json = response.body_mut().read_json().unwrap_or_default();
                    if status < 300 {
                        return Ok(answer);
                    }
                    last = format!("peer answered {status}: {answer}");
                    if status < 500 {
                        break; // the peer refused the message: retrying will not help
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}
