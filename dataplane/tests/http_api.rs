//! The HTTP API against real nodes on ephemeral ports: bad input is refused with a JSON error and
//! writes nothing; concurrent senders get gap-free, unique slots; a restart keeps everything.

mod common;

use common::*;
use ferrobeam::message::{Id, Message, Scheme, VerifiedMessage, wire};
use ferrobeam::schedule::{Assignment, verify_schedule};
use serde_json::Value as Json;

fn current_slot(base: &str, process: &Id) -> u64 {
    let (status, body) = get(base, &format!("/{process}/slot")).unwrap();
    assert_eq!(status, 200, "{body}");
    body["current"].as_u64().unwrap()
}

fn assert_error(answer: (u16, Json), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn bad_input_gets_a_json_error_and_writes_nothing() {
    let dir = tempdir();
    let mut config = config(dir.path());
    config.body_bytes_max = 64 * 1024;
    let node = InProcessNode::start(config);
    let base = node.url();
    let alice = wallet(1);
    let process = spawn_wat(&base, &alice, NOOP_WAT, &[]);
    let schedule = format!("/{process}/schedule");
    let before = current_slot(&base, &process);

    // Malformed JSON and rkyv.
    assert_error(
        post(&base, &schedule, "application/json", b"{nope"),
        400,
        "JsonInvalid",
    );
    assert_error(
        post(
            &base,
            &schedule,
            "application/x-ferrobeam-message",
            &[0x55; 100],
        ),
        400,
        "WireInvalid",
    );
    // Unsigned, and signed by someone else's signature.
    let unsigned = Message::new().with("target", process.to_string());
    assert_error(post_message(&base, &schedule, &unsigned), 401, "Unsigned");
    let signed = alice.sign(unsigned.clone().with("n", 1), &mut rand::rngs::OsRng);
    let mut forged_body = serde_json::to_value(ferrobeam::message::json::to_json(&signed)).unwrap();
    forged_body["n"] = 2.into();
    assert_error(
        post(
            &base,
            &schedule,
            "application/json",
            forged_body.to_string().as_bytes(),
        ),
        401,
        "SignatureInvalid",
    );
    // A commitment with a malformed key.
    let bad_key = serde_json::json!({
        "target": process.to_string(),
        "commitments": [{"scheme": "ed25519", "key": "AAAA", "signature": "AAAA"}],
    });
    assert_error(
        post(
            &base,
            &schedule,
            "application/json",
            bad_key.to_string().as_bytes(),
        ),
        400,
        "CommitmentInvalid",
    );
    // Unknown process, wrong target, no target.
    let ghost = Id([9; 32]);
    let to_ghost = alice.sign(
        Message::new().with("target", ghost.to_string()),
        &mut rand::rngs::OsRng,
    );
    assert_error(
        post_message(&base, &format!("/{ghost}/schedule"), &to_ghost),
        404,
        "UnknownProcess",
    );
    assert_error(
        post_message(&base, &schedule, &to_ghost),
        400,
        "TargetMismatch",
    );
    let no_target = alice.sign(Message::new().with("n", 1), &mut rand::rngs::OsRng);
    assert_error(
        post_message(&base, &schedule, &no_target),
        400,
        "BadRequest",
    );
    // A spawn naming a module the node does not have.
    let orphan = alice.sign(
        Message::new()
            .with("type", "Process")
            .with("module", Id([3; 32]).to_string()),
        &mut rand::rngs::OsRng,
    );
    assert_error(
        post_message(&base, "/~scheduler@1.0/schedule", &orphan),
        404,
        "UnknownModule",
    );
    // A body over the configured maximum.
    let big = alice.sign(
        Message::new()
            .with("target", process.to_string())
            .with("data", "x".repeat(100_000)),
        &mut rand::rngs::OsRng,
    );
    assert_error(post_message(&base, &schedule, &big), 413, "BodyTooLarge");
    // Bad ids and queries, unknown routes.
    assert_error(get(&base, "/not-an-id/slot").unwrap(), 400, "IdInvalid");
    assert_error(
        get(&base, &format!("/{ghost}/slot")).unwrap(),
        404,
        "UnknownProcess",
    );
    assert_error(
        get(&base, &format!("/{process}/compute?slot=x")).unwrap(),
        400,
        "BadRequest",
    );
    assert_error(
        get(&base, &format!("/{process}/compute?slot=999")).unwrap(),
        404,
        "SlotNotAssigned",
    );
    assert_error(
        get(&base, "/~nothing@1.0/here/at/all").unwrap(),
        404,
        "NotFound",
    );

    // Nothing was written, and the node still serves.
    assert_eq!(current_slot(&base, &process), before);
    let ack = send(&base, &alice, &process, &[("n", "1")]);
    assert_eq!(ack["slot"].as_u64(), Some(before + 1));
    let (_, metrics) = get(&base, "/metrics").unwrap();
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("ferrobeam_requests_rejected_total{code=\"SignatureInvalid\"} 1"),
        "{metrics}"
    );
}

#[test]
fn wire_form_is_accepted_and_duplicates_return_the_original_ack() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let alice = wallet(2);
    let process = spawn_wat(&base, &alice, NOOP_WAT, &[]);
    let message = alice.sign(
        Message::new()
            .with("target", process.to_string())
            .with("n", 5),
        &mut rand::rngs::OsRng,
    );
    let bytes = wire::encode(&message);
    let (status, first) = post(
        &base,
        &format!("/{process}/schedule"),
        "application/x-ferrobeam-message",
        &bytes,
    );
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["id"], message.id().to_string());
    let (status, again) = post_message(&base, &format!("/{process}/schedule"), &message);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["slot"], first["slot"]);
    assert_eq!(again["assignment"], first["assignment"]);
    assert_eq!(current_slot(&base, &process), 1);
}

#[test]
fn concurrent_senders_get_unique_gap_free_slots() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let process = spawn_wat(&base, &wallet(3), NOOP_WAT, &[]);
    let (senders, each) = (8, 40);
    let acks: Vec<(u64, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..senders)
            .map(|t| {
                let base = base.clone();
                scope.spawn(move || {
                    let w = wallet(10 + t as u8);
                    (0..each)
                        .map(|i| {
                            let ack = send(&base, &w, &process, &[("i", &i.to_string())]);
                            let assignment = ack["assignment"].as_str().unwrap().to_owned();
                            (ack["slot"].as_u64().unwrap(), assignment)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let slots: Vec<u64> = acks.iter().map(|(slot, _)| *slot).collect();
    let mut sorted = slots.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), senders * each, "duplicate slots");
    assert_eq!(
        sorted,
        (1..=(senders * each) as u64).collect::<Vec<_>>(),
        "gaps"
    );
    let (_, page) = get(&base, &format!("/{process}/schedule?from=0")).unwrap();
    let signed: Vec<Message> = page["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| ferrobeam::message::json::from_json(&a["assignment"]).unwrap())
        .collect();
    let assignments: Vec<Assignment> = signed
        .iter()
        .map(|m| Assignment::from_message(m).unwrap())
        .collect();
    assert_eq!(assignments.len(), senders * each + 1);
    assert_eq!(verify_schedule(&process, &assignments), Ok(()));
    // Every assignment is signed by the node, alone or in a group commit's batch commitment,
    // and is the one its sender's ack named.
    let (_, info) = get(&base, "/~meta@1.0/info").unwrap();
    let node = info["address"].as_str().unwrap();
    for message in &signed {
        let verified = VerifiedMessage::verify(message.clone()).unwrap();
        assert_eq!(verified.from().to_string(), node);
    }
    for (slot, assignment) in &acks {
        assert_eq!(
            signed[*slot as usize].id().to_string(),
            *assignment,
            "slot {slot}"
        );
    }
    let batched = signed
        .iter()
        .filter(|m| m.commitments()[0].scheme() == Scheme::Ed25519Batch)
        .count();
    // 8 senders against one sequencer: group commits of more than one message are certain.
    assert!(
        batched > 0,
        "no batch commitment among {} slots",
        signed.len()
    );
}

/// Posts are verified in batches: a forged or unsigned post sent alongside valid ones is refused
/// as it would be alone, and never gets a valid one in its batch refused.
#[test]
fn concurrent_valid_forged_and_unsigned_posts_each_get_their_own_answer() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let process = spawn_wat(&base, &wallet(4), NOOP_WAT, &[]);
    let schedule = format!("/{process}/schedule");
    let (senders, each) = (16_usize, 12_usize);
    // Every body is made before any is sent, so the posts arrive together.
    let bodies: Vec<Vec<(Vec<u8>, u16, &str)>> = (0..senders)
        .map(|t| {
            let w = wallet(20 + u8::try_from(t).unwrap());
            (0..each)
                .map(|i| {
                    let unsigned = Message::new()
                        .with("target", process.to_string())
                        .with("n", i64::try_from(t * each + i).unwrap());
                    let signed = w.sign(unsigned.clone(), &mut rand::rngs::OsRng);
                    let mut body = ferrobeam::message::json::to_json(&signed);
                    match (t + i) % 3 {
                        0 => (body.to_string().into_bytes(), 201, ""),
                        1 => {
                            body["n"] = (-1).into();
                            (body.to_string().into_bytes(), 401, "SignatureInvalid")
                        }
                        _ => {
                            let body = ferrobeam::message::json::to_json(&unsigned);
                            (body.to_string().into_bytes(), 401, "Unsigned")
                        }
                    }
                })
                .collect()
        })
        .collect();
    let start = std::sync::Barrier::new(senders);
    let acked: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|posts| {
                let (base, schedule, start) = (&base, &schedule, &start);
                scope.spawn(move || {
                    start.wait();
                    let mut acked = 0;
                    for (body, status, code) in posts {
                        let (got, answer) = post(base, schedule, "application/json", body);
                        assert_eq!(got, *status, "{answer}");
                        if *status == 201 {
                            acked += 1;
                        } else {
                            assert_error((got, answer), *status, code);
                        }
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(acked, senders * each / 3);
    assert_eq!(current_slot(&base, &process), acked as u64);
    // Every post was verified exactly once (the spawn too), whatever the batches were.
    assert_eq!(
        node.metric("ferrobeam_http_verify_batch_size_sum "),
        (senders * each + 1) as f64
    );
    assert!(node.metric("ferrobeam_http_verify_batch_size_count ") >= 1.0);
    // Every group commit was timed, and each took some time (a write and an fsync).
    let commits = node.metric("ferrobeam_commits_total ");
    assert!(commits >= 1.0);
    assert_eq!(node.metric("ferrobeam_commit_seconds_count "), commits);
    assert!(node.metric("ferrobeam_commit_seconds_sum ") > 0.0);
}

#[test]
fn restart_keeps_processes_chains_and_the_node_key() {
    let dir = tempdir();
    let alice = wallet(4);
    let (process, address, head) = {
        let node = InProcessNode::start(config(dir.path()));
        let base = node.url();
        let process = spawn_wat(&base, &alice, NOOP_WAT, &[]);
        for i in 0..5 {
            send(&base, &alice, &process, &[("i", &i.to_string())]);
        }
        let (_, info) = get(&base, "/~meta@1.0/info").unwrap();
        let (_, head) = get(&base, &format!("/{process}/slot")).unwrap();
        (process, info["address"].clone(), head)
    };
    let node = InProcessNode::start(config(dir.path()));
    let base = node.url();
    let (_, info) = get(&base, "/~meta@1.0/info").unwrap();
    assert_eq!(info["address"], address);
    let (_, head_after) = get(&base, &format!("/{process}/slot")).unwrap();
    assert_eq!(head_after, head);
    let ack = send(&base, &alice, &process, &[("i", "after")]);
    assert_eq!(ack["slot"], 6);
}
