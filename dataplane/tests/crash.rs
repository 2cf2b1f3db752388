//! SIGKILL while messages stream in: every acknowledged message is in the schedule after a
//! restart, at the slot it was acknowledged with, and the schedule's chain still verifies.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use ferrobeam::message::{Id, Message};
use ferrobeam::schedule::{Assignment, verify_schedule};

#[test]
fn every_acked_message_survives_sigkill() {
    let dir = tempdir();
    let port = free_port();
    let node = ChildNode::start(dir.path(), port);
    let base = node.url.clone();
    let process = spawn_wat(&base, &wallet(1), NOOP_WAT, &[]);
    let stop = AtomicBool::new(false);
    let acked: Vec<(Id, u64)> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..4u8)
            .map(|t| {
                let (base, stop) = (base.clone(), &stop);
                scope.spawn(move || {
                    let w = wallet(20 + t);
                    let mut acked = Vec::new();
                    // Bounded: stops at the kill, or after 100k messages at the latest.
                    for i in 0..100_000u32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let m = w.sign(
                            Message::new()
                                .with("target", process.to_string())
                                .with("i", i64::from(i)),
                            &mut rand::rngs::OsRng,
                        );
                        let path = format!("/{process}/schedule");
                        let body =
                            serde_json::to_vec(&ferrobeam::message::json::to_json(&m)).unwrap();
                        let Ok(answer) = try_post(&base, &path, "application/json", &body) else {
                            break; // connection refused or reset: the node is gone
                        };
                        if answer.0 == 201 {
                            acked.push((m.id(), answer.1["slot"].as_u64().unwrap()));
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        senders
            .into_iter()
            .flat_map(|s| s.join().unwrap())
            .collect()
    });
    assert!(
        acked.len() > 10,
        "too few messages acknowledged before the kill: {}",
        acked.len()
    );

    let node = ChildNode::start(dir.path(), port);
    let base = node.url.clone();
    let (_, head) = get(&base, &format!("/{process}/slot")).unwrap();
    let last = head["current"].as_u64().unwrap();
    let mut assignments = Vec::new();
    let mut from = 0;
    while from <= last {
        let (status, page) = get(&base, &format!("/{process}/schedule?from={from}")).unwrap();
        assert_eq!(status, 200);
        for item in page["assignments"].as_array().unwrap() {
            let m = ferrobeam::message::json::from_json(&item["assignment"]).unwrap();
            assignments.push(Assignment::from_message(&m).unwrap());
        }
        from = assignments.len() as u64;
    }
    assert_eq!(verify_schedule(&process, &assignments), Ok(()));
    for (id, slot) in &acked {
        let a = assignments
            .get(*slot as usize)
            .unwrap_or_else(|| panic!("acked slot {slot} lost"));
        assert_eq!(a.message, *id, "slot {slot} holds another message");
    }
    eprintln!(
        "{} acked messages all present after SIGKILL ({} slots)",
        acked.len(),
        last + 1
    );
}
