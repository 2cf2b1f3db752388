//! `ferrobeam hw --node URL`: the node's asset registry beside this machine's inventory, so an
//! operator sees which cores the executor holds and what buyers have allocated.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value as Json, json};

use ferrobeam::message::{Message, Wallet, b64, json as message_json};

use super::node_error;

/// The path the CLI reads.
const LIST_PATH: &str = "/~assets@1.0/list";

/// The `x-ferrobeam-auth` header value: a signed `Read` of `path`, timestamped now.
pub fn auth_header(wallet: &Wallet, path: &str) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let read = Message::new()
        .with("action", "Read")
        .with("path", path)
        .with("timestamp", now_ms);
    let signed = wallet.sign(read, &mut rand::rngs::OsRng);
    b64(message_json::to_json(&signed).to_string().as_bytes())
}

fn read_wallet(path: &Path) -> Result<Wallet> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let jwk: Json =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Wallet::from_jwk(&jwk)?)
}

/// `GET /~assets@1.0/list` from `node`, signed by `wallet` when given.
pub fn fetch_list(node: &str, wallet: Option<&Path>) -> Result<Json> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{}{LIST_PATH}", node.trim_end_matches('/'));
    let mut request = agent.get(&url);
    if let Some(path) = wallet {
        request = request.header(
            "x-ferrobeam-auth",
            auth_header(&read_wallet(path)?, LIST_PATH),
        );
    }
    let mut response = request.call().with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body: Json = response
        .body_mut()
        .read_json()
        .with_context(|| format!("{url}: the answer is not JSON (status {status})"))?;
    if status >= 400 {
        return Err(node_error(status, &body));
    }
    Ok(body)
}

fn amount(value: &Json) -> String {
    value.as_u64().map_or_else(|| "?".into(), |n| n.to_string())
}

/// The readable form of a list answer.
pub fn summary(list: &Json) -> String {
    let mut out = format!(
        "Assets of node {} (privacy {})\n",
        list["node"].as_str().unwrap_or("?"),
        list["privacy"].as_str().unwrap_or("?")
    );
    let Some(assets) = list["assets"].as_array() else {
        out.push_str(
            "  per kind only (the node's privacy level hides asset ids; sign with --wallet):\n",
        );
        for kind in list["kinds"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<10} {} assets, {} of {} {} allocated\n",
                kind["kind"].as_str().unwrap_or("?"),
                amount(&kind["assets"]),
                amount(&kind["allocated"]),
                amount(&kind["capacity"]),
                kind["unit"].as_str().unwrap_or("?"),
            ));
        }
        return out.trim_end().to_owned();
    };
    for asset in assets {
        let capacity = asset["capacity"]
            .as_u64()
            .map_or_else(|| "unknown".into(), |c| c.to_string());
        out.push_str(&format!(
            "  {:<10} {:<40} {}/{} {}  {}\n",
            asset["kind"].as_str().unwrap_or("?"),
            asset["identity"].as_str().unwrap_or("(identity hidden)"),
            amount(&asset["allocated"]),
            capacity,
            asset["unit"].as_str().unwrap_or("?"),
            asset["id"].as_str().unwrap_or("?"),
        ));
        for allocation in asset["allocations"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "      {} {} to {} ({}) allocation {}\n",
                amount(&allocation["amount"]),
                asset["unit"].as_str().unwrap_or("?"),
                allocation["owner"].as_str().unwrap_or("?"),
                allocation["holder"].as_str().unwrap_or("?"),
                allocation["id"].as_str().unwrap_or("?"),
            ));
        }
    }
    out.trim_end().to_owned()
}

/// `ferrobeam hw`: the local inventory, and with `node` the node's assets and allocations.
pub fn hw(json_mode: bool, node: Option<&str>, wallet: Option<&Path>) -> Result<()> {
    let inventory = ferrobeam_hwdetect::Inventory::detect();
    let Some(node) = node else {
        if json_mode {
            println!("{}", inventory.to_json());
        } else {
            println!("{}", inventory.summary());
        }
        return Ok(());
    };
    let list = fetch_list(node, wallet)?;
    if json_mode {
        let inventory: Json = serde_json::from_str(&inventory.to_json())?;
        println!("{}", json!({ "inventory": inventory, "assets": list }));
    } else {
        println!("{}\n\n{}", inventory.summary(), summary(&list));
    }
    Ok(())
}
