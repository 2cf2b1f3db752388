//! A small blocking HTTP client for the node's API, and the audit ("fisher") that recomputes a
//! process from its schedule.

use anyhow::{Context as _, Result, bail};
use serde_json::Value as Json;

use ferrobeam::execute::{Engine, EngineConfig, Instance, SlotInput};
use ferrobeam::message::{Address, Id, Message, VerifiedMessage, json as message_json};
use ferrobeam::node::compute::result_record;
use ferrobeam::schedule::{Assignment, verify_schedule};

use super::node_error;

/// A client of one node.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:8734`).
    pub fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            agent: config.into(),
        }
    }

    fn answer(path: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Json> {
        let status = response.status().as_u16();
        let body: Json = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_json()
            .with_context(|| format!("{path}: the node's answer is not JSON (status {status})"))?;
        if status >= 400 {
            return Err(node_error(status, &body));
        }
        Ok(body)
    }

    /// `GET path` → JSON.
    pub fn get_json(&self, path: &str) -> Result<Json> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .with_context(|| format!("GET {}{path}", self.base))?;
        Self::answer(path, response)
    }

    /// `GET path` → bytes (module download).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .with_context(|| format!("GET {}{path}", self.base))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()?;
        if status >= 400 {
            let body: Json = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(node_error(status, &body));
        }
        Ok(bytes)
    }

    /// `POST path` with raw bytes.
    pub fn post_bytes(&self, path: &str, media: &str, body: Vec<u8>) -> Result<Json> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", media)
            .send(&body[..])
            .with_context(|| format!("POST {}{path}", self.base))?;
        Self::answer(path, response)
    }

    /// `POST path` with a message in its JSON form.
    pub fn post_message(&self, path: &str, message: &Message) -> Result<Json> {
        let body = serde_json::to_vec(&message_json::to_json(message))?;
        self.post_bytes(path, "application/json", body)
    }
}

/// One slot of a downloaded schedule, checked.
struct Slot {
    assignment: Assignment,
    message: Message,
}

/// Downloads the schedule of `process` (slots `0..=to`), checks every signature, the node's
/// signature on every assignment, the hash chain and the hashpaths, recomputes each slot and
/// compares with the node's results. Returns the report (with `ok`).
pub fn audit(client: &Client, process: &Id, to_slot: Option<u64>) -> Result<Json> {
    let info = client.get_json("/~meta@1.0/info")?;
    let node_text = info["address"]
        .as_str()
        .context("node info has no address")?
        .to_owned();
    let node_address: Address = node_text.parse()?;
    // The node and the peers it trusts to carry pushed messages (its public configuration).
    let mut pushers = vec![node_address];
    for peer in info["config"]["peers"].as_array().into_iter().flatten() {
        pushers.push(peer.as_str().context("a peer is not text")?.parse()?);
    }
    let slot_info = client.get_json(&format!("/{process}/slot"))?;
    let last = slot_info["current"].as_u64().context("no current slot")?;
    let to = to_slot.unwrap_or(last).min(last);
    let slots = download_schedule(client, process, to, &node_text)?;
    let assignments: Vec<Assignment> = slots.iter().map(|s| s.assignment.clone()).collect();
    if let Err(i) = verify_schedule(process, &assignments) {
        return Ok(mismatch(
            i as u64,
            "the schedule's hash chain or hashpath does not follow",
        ));
    }
    let definition = &slots.first().context("empty schedule")?.message;
    let module_id = ferrobeam::node::process_module(definition)?;
    let wasm = client.get_bytes(&format!("/~wasm@1.0/module/{module_id}"))?;
    if ferrobeam::node::module_message(&wasm).unsigned_id() != module_id {
        return Ok(mismatch(
            0,
            "the module bytes the node serves do not hash to the module id",
        ));
    }
    let engine = Engine::new(EngineConfig::new(audit_cache_dir()))?;
    let module = engine.load(module_id, &wasm)?;
    let owner = definition
        .commitments()
        .first()
        .map(|c| c.address())
        .context("the process message is unsigned")?;
    let owner = ferrobeam::push::sender(definition, owner, &pushers);
    let mut instance = Instance::new(&module, *process, definition)?;
    for (slot, s) in slots.iter().enumerate() {
        let from = s
            .message
            .commitments()
            .first()
            .map(|c| c.address())
            .context("unsigned message in the schedule")?;
        let from = ferrobeam::push::sender(&s.message, from, &pushers);
        let input = SlotInput {
            process: *process,
            slot: slot as u64,
            message: s.message.clone(),
            message_id: s.assignment.message,
            from,
            owner,
            timestamp_ms: s.assignment.timestamp_ms,
        };
        let outcome = instance.run(&input)?;
        let ours = result_record(
            *process,
            slot as u64,
            s.assignment.message,
            s.assignment.hashpath,
            &outcome,
        );
        let mut theirs = client.get_json(&format!("/{process}/compute?slot={slot}"))?;
        // What the node did with the outbox is delivery, not computation.
        if let Some(record) = theirs.as_object_mut() {
            record.remove("pushed");
        }
        if theirs["hashpath"] != ours["hashpath"] {
            return Ok(mismatch(
                slot as u64,
                "the node's result names another hashpath",
            ));
        }
        if theirs != ours {
            let mut report = mismatch(
                slot as u64,
                "the node's result differs from the recomputed one",
            );
            report["mismatch"]["node"] = theirs;
            report["mismatch"]["recomputed"] = ours;
            return Ok(report);
        }
    }
    let hashpath = assignments.last().map(|a| a.hashpath.to_string());
    Ok(serde_json::json!({
        "ok": true,
        "process": process,
        "slots": slots.len(),
        "hashpath": hashpath,
        "node": node_address,
    }))
}

/// Where the audit keeps its AOT-compiled modules (reused across audits).
fn audit_cache_dir() -> std::path::PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("ferrobeam")
        .join("cwasm")
}

fn mismatch(slot: u64, what: &str) -> Json {
    serde_json::json!({ "ok": false, "mismatch": { "slot": slot, "reason": what } })
}

fn download_schedule(client: &Client, process: &Id, to: u64, node: &str) -> Result<Vec<Slot>> {
    let mut slots = Vec::new();
    let mut from = 0u64;
    // Each page holds up to SCHEDULE_PAGE_MAX slots; the loop ends when `to` is reached.
    while from <= to {
        let page = client.get_json(&format!("/{process}/schedule?from={from}&to={to}"))?;
        let items = page["assignments"]
            .as_array()
            .context("schedule without assignments")?;
        if items.is_empty() {
            bail!("the node's schedule stops at slot {from}, before slot {to}");
        }
        for item in items {
            slots.push(check_item(item, node)?);
        }
        from = slots.len() as u64;
    }
    Ok(slots)
}

fn check_item(item: &Json, node: &str) -> Result<Slot> {
    let signed = message_json::from_json(&item["assignment"])?;
    let verified = VerifiedMessage::verify(signed).context("an assignment's signature")?;
    if verified.from().to_string() != node {
        bail!(
            "an assignment is signed by {}, not by the node {node}",
            verified.from()
        );
    }
    let assignment = Assignment::from_message(verified.message())?;
    let message = message_json::from_json(&item["message"])?;
    let message = VerifiedMessage::verify(message).context("a scheduled message's signature")?;
    if message.id() != assignment.message {
        bail!(
            "slot {}: the message's id differs from the assigned one",
            assignment.slot
        );
    }
    Ok(Slot {
        assignment,
        message: message.into_message(),
    })
}
