//! The asset registry over real HTTP: register, allocate, over-allocate, release, replays,
//! restarts, the executor's cores, the privacy levels, `/metrics` and `ferrobeam hw --node`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ferrobeam::assets::Privacy;
use ferrobeam::message::{Address, Message, Wallet, b64, json};
use ferrobeam::node::NodeConfig;
use serde_json::Value as Json;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> (u16, Json) {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

fn body(message: &Message) -> Vec<u8> {
    serde_json::to_vec(&json::to_json(message)).unwrap()
}

fn put(base: &str, path: &str, message: &Message) -> (u16, Json) {
    answer(
        agent()
            .put(format!("{base}{path}"))
            .header("content-type", "application/json")
            .send(&body(message)[..])
            .unwrap(),
    )
}

fn delete(base: &str, path: &str, message: &Message) -> (u16, Json) {
    answer(
        agent()
            .delete(format!("{base}{path}"))
            .force_send_body()
            .header("content-type", "application/json")
            .send(&body(message)[..])
            .unwrap(),
    )
}

/// `GET`, with an `x-ferrobeam-auth` header when given.
fn read(base: &str, path: &str, auth: Option<String>) -> (u16, Json) {
    let mut request = agent().get(format!("{base}{path}"));
    if let Some(auth) = auth {
        request = request.header("x-ferrobeam-auth", auth);
    }
    answer(request.call().unwrap())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A signed `Read` of `path` at `timestamp`.
fn auth(wallet: &Wallet, path: &str, timestamp: i64) -> String {
    let message = Message::new()
        .with("action", "Read")
        .with("path", path)
        .with("timestamp", timestamp);
    b64(&body(&wallet.sign(message, &mut rand::rngs::OsRng)))
}

fn sign(wallet: &Wallet, message: Message) -> Message {
    wallet.sign(message, &mut rand::rngs::OsRng)
}

fn register(identity: &str, capacity: i64) -> Message {
    Message::new()
        .with("action", "Register")
        .with("kind", "fpga")
        .with("identity", identity)
        .with("capacity", capacity)
        .with("unit", "boards")
}

fn allocate(asset: &str, amount: i64) -> Message {
    Message::new()
        .with("action", "Allocate")
        .with("asset", asset)
        .with("amount", amount)
        .with("anchor", b64(&rand::random::<[u8; 16]>()))
}

fn release(allocation: &str) -> Message {
    Message::new()
        .with("action", "Release")
        .with("allocation", allocation)
}

fn assert_error(answer: (u16, Json), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn node_config(dir: &Path, privacy: Privacy, operators: Vec<Address>) -> NodeConfig {
    NodeConfig {
        privacy,
        operators,
        ..config(dir)
    }
}

fn node_address(base: &str) -> String {
    let (status, address) = get(base, "/~meta@1.0/info/address").unwrap();
    assert_eq!(status, 200);
    address.as_str().unwrap().to_owned()
}

/// The executor's allocations in a full list: `(cpu-core identity, allocation)`.
fn executor_allocations(list: &Json) -> Vec<(String, Json)> {
    let mut out = Vec::new();
    for asset in list["assets"].as_array().unwrap() {
        for allocation in asset["allocations"].as_array().unwrap() {
            if allocation["holder"] == "executor" {
                assert_eq!(asset["kind"], "cpu-core");
                out.push((
                    asset["identity"].as_str().unwrap().to_owned(),
                    allocation.clone(),
                ));
            }
        }
    }
    out
}

#[test]
fn lifecycle_over_http_survives_a_restart() {
    let dir = tempdir();
    let (operator, alice, bob) = (wallet(10), wallet(11), wallet(12));
    let config = node_config(
        dir.path(),
        Privacy::PrivateNetwork,
        vec![operator.address()],
    );
    let node = InProcessNode::start(config.clone());
    let base = node.url();

    // Register: unsigned 401, a stranger 403, the operator 201, the same again 200.
    let fpga = register("fpga-slot-0", 4);
    assert_error(
        post_message(&base, "/assets/register", &fpga),
        401,
        "Unsigned",
    );
    assert_error(
        post_message(&base, "/assets/register", &sign(&alice, fpga.clone())),
        403,
        "Forbidden",
    );
    let (status, registered) =
        post_message(&base, "/assets/register", &sign(&operator, fpga.clone()));
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["asset"]["capacity"], 4);
    let asset = registered["asset"]["id"].as_str().unwrap().to_owned();
    let (status, again) = post_message(&base, "/assets/register", &sign(&operator, fpga));
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &Json::Bool(true)),
        "{again}"
    );
    let allocate_path = format!("/assets/{asset}/allocate");
    let release_path = format!("/assets/{asset}/release");

    // Allocate 3 of 4; the replay allocates nothing more.
    let alice_3 = sign(&alice, allocate(&asset, 3));
    let (status, first) = put(&base, &allocate_path, &alice_3);
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["allocation"]["owner"], alice.address().to_string());
    assert_eq!(first["allocation"]["id"], alice_3.id().to_string());
    let (status, replay) = put(&base, &allocate_path, &alice_3);
    assert_eq!(
        (status, &replay["duplicate"]),
        (200, &Json::Bool(true)),
        "{replay}"
    );
    let (_, state) = get(&base, &format!("/assets/{asset}")).unwrap();
    assert_eq!(
        (state["allocated"].as_u64(), state["available"].as_u64()),
        (Some(3), Some(1))
    );

    // Over-allocation 409; unsigned and forged 401; unknown asset 404; malformed 400.
    assert_error(
        put(&base, &allocate_path, &sign(&bob, allocate(&asset, 2))),
        409,
        "Conflict",
    );
    assert_error(
        put(&base, &allocate_path, &allocate(&asset, 1)),
        401,
        "Unsigned",
    );
    let mut forged = json::to_json(&sign(&bob, allocate(&asset, 1)));
    forged["amount"] = 4.into();
    let forged = answer(
        agent()
            .put(format!("{base}{allocate_path}"))
            .header("content-type", "application/json")
            .send(forged.to_string().as_bytes())
            .unwrap(),
    );
    assert_error(forged, 401, "SignatureInvalid");
    let ghost = ferrobeam::assets::AssetId::derive(&alice.address(), "gpu", "none").to_string();
    assert_error(
        put(
            &base,
            &format!("/assets/{ghost}/allocate"),
            &sign(&bob, allocate(&ghost, 1)),
        ),
        404,
        "NotFound",
    );
    assert_error(
        put(&base, &allocate_path, &sign(&bob, allocate(&asset, 0))),
        400,
        "BadRequest",
    );
    assert_error(
        put(&base, &allocate_path, &sign(&bob, allocate(&ghost, 1))),
        400,
        "BadRequest",
    );
    assert_error(
        put(
            &base,
            "/assets/not-an-id/allocate",
            &sign(&bob, allocate(&asset, 1)),
        ),
        400,
        "IdInvalid",
    );
    let bob_1 = sign(&bob, allocate(&asset, 1));
    assert_eq!(put(&base, &allocate_path, &bob_1).0, 201);

    // Release: bob may not release alice's (403); alice may (200); the replays change nothing.
    let alice_allocation = alice_3.id().to_string();
    assert_error(
        delete(
            &base,
            &release_path,
            &sign(&bob, release(&alice_allocation)),
        ),
        403,
        "Forbidden",
    );
    assert_error(
        delete(&base, &release_path, &release(&alice_allocation)),
        401,
        "Unsigned",
    );
    let alice_release = sign(&alice, release(&alice_allocation));
    let (status, released) = delete(&base, &release_path, &alice_release);
    assert_eq!(
        (status, &released["duplicate"]),
        (200, &Json::Bool(false)),
        "{released}"
    );
    assert_eq!(released["released"]["by"], alice.address().to_string());
    let (status, released) = delete(&base, &release_path, &alice_release);
    assert_eq!(
        (status, &released["duplicate"]),
        (200, &Json::Bool(true)),
        "{released}"
    );
    let (status, replay) = put(&base, &allocate_path, &alice_3);
    assert_eq!(
        (status, &replay["released"]),
        (200, &Json::Bool(true)),
        "{replay}"
    );
    let (_, state) = get(&base, &format!("/assets/{asset}")).unwrap();
    assert_eq!(state["allocated"], 1, "{state}");

    // The executor's core cannot be released over HTTP, not even by an operator.
    let (_, list) = get(&base, "/~assets@1.0/list").unwrap();
    let (_, executor) = executor_allocations(&list).remove(0);
    let core = executor["asset"].as_str().unwrap();
    let executor_id = executor["id"].as_str().unwrap();
    assert_error(
        delete(
            &base,
            &format!("/assets/{core}/release"),
            &sign(&operator, release(executor_id)),
        ),
        409,
        "Conflict",
    );
    let (_, metrics) = get(&base, "/metrics").unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("ferrobeam_asset_allocated{kind=\"fpga\",unit=\"boards\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferrobeam_asset_allocated{kind=\"cpu-core\",unit=\"logical-cpus\"} 1\n")
    );
    assert!(metrics.contains("ferrobeam_asset_capacity{kind=\"fpga\",unit=\"boards\"} 4\n"));
    drop(node);

    // Restart: the registered asset, bob's allocation, the tombstone and the executor's core.
    let node = InProcessNode::start(config);
    let base = node.url();
    let (_, state) = get(&base, &format!("/assets/{asset}")).unwrap();
    assert_eq!(state["allocated"], 1, "{state}");
    assert_eq!(state["allocations"][0]["id"], bob_1.id().to_string());
    let (status, replay) = put(&base, &allocate_path, &alice_3);
    assert_eq!(
        (status, &replay["released"]),
        (200, &Json::Bool(true)),
        "{replay}"
    );
    let (_, list) = get(&base, "/~assets@1.0/list").unwrap();
    let executor_after = executor_allocations(&list);
    assert_eq!(executor_after.len(), 1);
    assert_eq!(
        executor_after[0].1, executor,
        "same id, same timestamp after a restart"
    );
}

#[test]
fn executor_cores_are_allocated_to_the_node_and_follow_restarts() {
    let dir = tempdir();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut config = node_config(dir.path(), Privacy::PrivateNetwork, vec![]);
    config.exec_cores = cpus;
    let node = InProcessNode::start(config.clone());
    let base = node.url();
    let address = node_address(&base);
    let (status, list) = get(&base, "/~assets@1.0/list").unwrap();
    assert_eq!(status, 200, "{list}");
    let held = executor_allocations(&list);
    assert_eq!(held.len(), cpus, "one core per executor thread: {list}");
    for (identity, allocation) in &held {
        assert!(identity.starts_with("cpu-core:"), "{identity}");
        assert_eq!(allocation["owner"], address.as_str());
        assert_eq!(allocation["amount"], 1);
    }
    // Every pinned core is full: a buyer gets 409.
    let core = held[0].1["asset"].as_str().unwrap().to_owned();
    assert_error(
        put(
            &base,
            &format!("/assets/{core}/allocate"),
            &sign(&wallet(3), allocate(&core, 1)),
        ),
        409,
        "Conflict",
    );
    drop(node);

    // Fewer executor threads: the extra cores are released at start.
    config.exec_cores = 1;
    let node = InProcessNode::start(config);
    let (_, list) = get(&node.url(), "/~assets@1.0/list").unwrap();
    let after = executor_allocations(&list);
    assert_eq!(after.len(), 1);
    // The executor's CPU is the node's core plan's (after the ingress's), as info reports it.
    let (_, info) = get(&node.url(), "/~meta@1.0/info").unwrap();
    let first_cpu = info["cores"]["exec"][0].as_u64().expect("cores in info");
    assert!(
        after[0].0.starts_with(&format!("cpu-core:{first_cpu}:")),
        "{after:?}"
    );
    assert!(
        held.contains(&after[0]),
        "the first core keeps its allocation"
    );
    let cores_allocated: u64 = list["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "cpu-core")
        .map(|k| k["allocated"].as_u64().unwrap())
        .sum();
    assert_eq!(cores_allocated, 1);
}

/// Starts a node at `privacy` with a registered asset and one allocation; returns the node, its
/// node key, the asset id.
fn node_at(dir: &Path, privacy: Privacy) -> (InProcessNode, Wallet, String) {
    let node = InProcessNode::start(node_config(dir, privacy, vec![]));
    let jwk: Json =
        serde_json::from_slice(&std::fs::read(dir.join("node-key.json")).unwrap()).unwrap();
    let node_key = Wallet::from_jwk(&jwk).unwrap();
    let base = node.url();
    let (status, registered) = post_message(
        &base,
        "/assets/register",
        &sign(&node_key, register("fpga-secret-serial", 2)),
    );
    assert_eq!(status, 201, "{registered}");
    let asset = registered["asset"]["id"].as_str().unwrap().to_owned();
    let (status, _) = put(
        &base,
        &format!("/assets/{asset}/allocate"),
        &sign(&wallet(4), allocate(&asset, 1)),
    );
    assert_eq!(status, 201);
    (node, node_key, asset)
}

fn has_identities(list: &Json) -> bool {
    list["assets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["identity"].is_string())
}

#[test]
fn privacy_levels_decide_what_unauthenticated_callers_see() {
    const LIST: &str = "/~assets@1.0/list";
    const INFO: &str = "/~meta@1.0/info";

    // private: the address only; asset routes 403; an operator's signed read sees everything.
    let dir = tempdir();
    let (node, node_key, asset) = node_at(dir.path(), Privacy::Private);
    let base = node.url();
    let (status, info) = read(&base, INFO, None);
    assert_eq!(status, 200);
    assert_eq!(
        info.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["address"],
        "{info}"
    );
    assert_error(read(&base, LIST, None), 403, "Forbidden");
    assert_error(
        read(&base, &format!("/assets/{asset}"), None),
        403,
        "Forbidden",
    );
    let (status, list) = read(&base, LIST, Some(auth(&node_key, LIST, now_ms())));
    assert_eq!(status, 200, "{list}");
    assert!(has_identities(&list));
    // /metrics names hardware: an operator only, here.
    assert_error(read(&base, "/metrics", None), 403, "Forbidden");
    let (status, _) = read(
        &base,
        "/metrics",
        Some(auth(&node_key, "/metrics", now_ms())),
    );
    assert_eq!(status, 200);
    let (_, info) = read(&base, INFO, Some(auth(&node_key, INFO, now_ms())));
    assert_eq!(info["privacy"], "private");
    assert!(info["config"].is_object(), "{info}");
    // A stranger's signature 403; a stale one, or one for another path, 401.
    assert_error(
        read(&base, LIST, Some(auth(&wallet(5), LIST, now_ms()))),
        403,
        "Forbidden",
    );
    assert_error(
        read(
            &base,
            LIST,
            Some(auth(&node_key, LIST, now_ms() - 3_600_000)),
        ),
        401,
        "Unauthenticated",
    );
    assert_error(
        read(&base, LIST, Some(auth(&node_key, INFO, now_ms()))),
        401,
        "Unauthenticated",
    );
    assert_error(read(&base, LIST, Some("!!".into())), 401, "Unauthenticated");
    drop(node);

    // private-network: a loopback caller sees everything (a remote one is unit-tested).
    let dir = tempdir();
    let (node, _, _) = node_at(dir.path(), Privacy::PrivateNetwork);
    let (_, info) = read(&node.url(), INFO, None);
    assert!(
        info["config"].is_object() && info["privacy"] == "private-network",
        "{info}"
    );
    let (_, list) = read(&node.url(), LIST, None);
    assert!(has_identities(&list));
    drop(node);

    // p2p: kinds and counts; no ids, no configuration.
    let dir = tempdir();
    let (node, _, asset) = node_at(dir.path(), Privacy::P2p);
    let base = node.url();
    let (_, info) = read(&base, INFO, None);
    assert!(
        info.get("config").is_none() && info.get("inventory-digest").is_none(),
        "{info}"
    );
    assert!(
        info["assets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"] == "fpga" && k["allocated"] == 1)
    );
    let (status, list) = read(&base, LIST, None);
    assert_eq!(status, 200);
    assert!(list.get("assets").is_none(), "{list}");
    assert!(
        list["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"] == "cpu-core")
    );
    assert_error(
        read(&base, &format!("/assets/{asset}"), None),
        403,
        "Forbidden",
    );
    drop(node);

    // public-network: assets and allocations, without hardware identities.
    let dir = tempdir();
    let (node, _, asset) = node_at(dir.path(), Privacy::PublicNetwork);
    let base = node.url();
    let (_, list) = read(&base, LIST, None);
    let assets = list["assets"].as_array().unwrap();
    assert!(
        assets.len() > 2 && assets.iter().all(|a| a.get("identity").is_none()),
        "{list}"
    );
    assert!(!list.to_string().contains("fpga-secret-serial"));
    let (status, one) = read(&base, &format!("/assets/{asset}"), None);
    assert_eq!(status, 200);
    assert!(
        one.get("identity").is_none() && one["allocated"] == 1,
        "{one}"
    );
    let (_, info) = read(&base, INFO, None);
    assert!(info["config"].is_object());
    drop(node);

    // full-public: everything.
    let dir = tempdir();
    let (node, _, asset) = node_at(dir.path(), Privacy::FullPublic);
    let (_, list) = read(&node.url(), LIST, None);
    assert!(has_identities(&list));
    let (_, one) = read(&node.url(), &format!("/assets/{asset}"), None);
    assert_eq!(one["identity"], "fpga-secret-serial");
    assert_eq!(
        one["allocations"][0]["owner"],
        wallet(4).address().to_string()
    );
}

#[test]
fn hw_with_node_shows_the_executor_allocations() {
    let dir = tempdir();
    let node = InProcessNode::start(node_config(dir.path(), Privacy::Private, vec![]));
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
            .args(["hw", "--node", &node.url()])
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // At `private` the list needs the node key's signature.
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("403") && stderr.contains("Forbidden"),
        "{stderr}"
    );
    let key = dir.path().join("node-key.json");
    let (code, stdout, stderr) = run(&["--wallet", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("Assets of node") && stdout.contains("(executor)"),
        "{stdout}"
    );
    let (code, stdout, stderr) = run(&["--wallet", key.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let out: Json = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["inventory"]["schema_version"], 1);
    assert_eq!(executor_allocations(&out["assets"]).len(), 1);
}
