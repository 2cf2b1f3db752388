//! The crash campaign on the real binary (`scripts/crash.sh`): a `ferrobeam node` with its real
//! fjall store under HTTP load, SIGKILLed at a random moment, restarted and checked, trial after
//! trial. Ignored by default (it takes minutes); the script runs it in release.
//!
//! Per trial: every message acknowledged so far (this trial and the earlier ones on the same data
//! directory) is in the schedule at its acknowledged slot with its acknowledged hashpath, the
//! chain verifies, and `ferrobeam audit` (a local recomputation of every slot, compared with the
//! node's results and hashpaths) exits 0. Recovery time is measured from the restart until
//! `/~meta@1.0/info` answers, and until the last slot's result is served.
//!
//! Environment: `FERROBEAM_CRASH_TRIALS` (default 5), `FERROBEAM_CRASH_SEED` (default: from the
//! clock, printed), `FERROBEAM_CRASH_TRIALS_PER_DIR` (default 10: a fresh store after that many).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferrobeam::message::{Hashpath, Id, Message, Wallet};
use ferrobeam::schedule::{Assignment, verify_schedule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest a restarted node may take to answer `/~meta@1.0/info` or serve its last slot before
/// the trial fails (recovery replays at most one snapshot interval per process).
const RECOVERY_MAX: Duration = Duration::from_secs(60);
/// Sender threads of the load loop.
const SENDERS: u8 = 4;

const COUNTER_WAT: &str = include_str!("../../examples/counter.wat");

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|t| t.parse().expect("a u64"))
}

fn start_node(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .args(["node", "--data"])
        .arg(data)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ferrobeam node")
}

/// Polls `path` every 5 ms until it answers 200; the time it took.
fn wait_for(base: &str, path: &str, since: Instant) -> Duration {
    loop {
        if let Ok((200, _)) = get(base, path) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < RECOVERY_MAX,
            "{path} did not answer in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Signed counter messages from `SENDERS` threads until `stop`; the acks (id → slot, hashpath).
fn load(base: &str, process: Id, trial: u64, stop: &AtomicBool) -> Vec<(Id, u64, Hashpath)> {
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..SENDERS)
            .map(|t| {
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
                                .with("amount", format!("{}", i % 7))
                                .with("nonce", format!("{trial}/{t}/{i}")),
                            &mut rand::rngs::OsRng,
                        );
                        let body =
                            serde_json::to_vec(&ferrobeam::message::json::to_json(&m)).unwrap();
                        let path = format!("/{process}/schedule");
                        let Ok(answer) = try_post(base, &path, "application/json", &body) else {
                            break; // connection refused or reset: the node is gone
                        };
                        if answer.0 == 201 {
                            let slot = answer.1["slot"].as_u64().unwrap();
                            let hashpath: Hashpath =
                                answer.1["hashpath"].as_str().unwrap().parse().unwrap();
                            acked.push((m.id(), slot, hashpath));
                        }
                    }
                    acked
                })
            })
            .collect();
        senders
            .into_iter()
            .flat_map(|s| s.join().unwrap())
            .collect()
    })
}

fn schedule(base: &str, process: &Id) -> Vec<Assignment> {
    let (_, head) = get(base, &format!("/{process}/slot")).unwrap();
    let last = head["current"].as_u64().unwrap();
    let mut assignments = Vec::new();
    while (assignments.len() as u64) <= last {
        let from = assignments.len();
        let (status, page) = get(base, &format!("/{process}/schedule?from={from}")).unwrap();
        assert_eq!(status, 200);
        for item in page["assignments"].as_array().unwrap() {
            let m = ferrobeam::message::json::from_json(&item["assignment"]).unwrap();
            assignments.push(Assignment::from_message(&m).unwrap());
        }
        assert!(assignments.len() > from, "the schedule page was empty");
    }
    assignments
}

fn audit(base: &str, process: &Id) -> bool {
    let status = Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .args(["audit", "--node", base, "--process", &process.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run ferrobeam audit");
    status.success()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

struct Totals {
    acked: usize,
    lost: usize,
    hashpath_mismatches: usize,
    audits_failed: usize,
    info: Vec<Duration>,
    computed: Vec<Duration>,
}

#[test]
#[ignore = "crash campaign on the real binary; run through scripts/crash.sh"]
fn crash_campaign() {
    let trials = env_u64("FERROBEAM_CRASH_TRIALS").unwrap_or(5);
    let per_dir = env_u64("FERROBEAM_CRASH_TRIALS_PER_DIR")
        .unwrap_or(10)
        .max(1);
    let seed = env_u64("FERROBEAM_CRASH_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(1, |d| d.as_nanos() as u64)
    });
    println!("crash campaign: {trials} trials, seed {seed} (FERROBEAM_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut totals = Totals {
        acked: 0,
        lost: 0,
        hashpath_mismatches: 0,
        audits_failed: 0,
        info: Vec::new(),
        computed: Vec::new(),
    };
    let owner: Wallet = wallet(1);
    let mut dir = tempdir();
    let mut acked: BTreeMap<Id, (u64, Hashpath)> = BTreeMap::new();
    let mut process = None;
    let port = free_port();
    for trial in 0..trials {
        if trial % per_dir == 0 {
            dir = tempdir();
            acked.clear();
            process = None;
        }
        let base = format!("http://127.0.0.1:{port}");
        let mut child = start_node(dir.path(), port);
        wait_for(&base, "/~meta@1.0/info", Instant::now());
        let p = *process.get_or_insert_with(|| spawn_wat(&base, &owner, COUNTER_WAT, &[]));
        let kill_after = Duration::from_millis(rng.gen_range(200..=2_000));
        let stop = AtomicBool::new(false);
        let new = std::thread::scope(|scope| {
            let loader = scope.spawn(|| load(&base, p, trial, &stop));
            std::thread::sleep(kill_after);
            child.kill().unwrap(); // SIGKILL: no shutdown path runs
            child.wait().unwrap();
            stop.store(true, Ordering::Relaxed);
            loader.join().unwrap()
        });
        let acked_now = new.len();
        for (id, slot, hashpath) in new {
            acked.insert(id, (slot, hashpath));
        }
        totals.acked += acked_now;

        let restart = Instant::now();
        let mut child = start_node(dir.path(), port);
        let info = wait_for(&base, "/~meta@1.0/info", restart);
        let (_, head) = get(&base, &format!("/{p}/slot")).unwrap();
        let last = head["current"].as_u64().unwrap();
        let computed = wait_for(&base, &format!("/{p}/compute?slot={last}"), restart);
        let assignments = schedule(&base, &p);
        assert_eq!(
            verify_schedule(&p, &assignments),
            Ok(()),
            "trial {trial}: chain"
        );
        let (mut lost, mut mismatched) = (0, 0);
        for (id, (slot, hashpath)) in &acked {
            match assignments.get(*slot as usize) {
                Some(a) if a.message == *id && a.hashpath == *hashpath => {}
                Some(a) if a.message == *id => mismatched += 1,
                _ => lost += 1,
            }
        }
        let audited = audit(&base, &p);
        child.kill().unwrap();
        child.wait().unwrap();
        println!(
            "trial {trial}: killed after {} ms, {acked_now} acked ({} on this store), {} slots, lost {lost}, hashpath mismatches {mismatched}, audit {}, recovery: info {} ms, last slot computed {} ms",
            kill_after.as_millis(),
            acked.len(),
            last + 1,
            if audited { "ok" } else { "FAILED" },
            info.as_millis(),
            computed.as_millis()
        );
        totals.lost += lost;
        totals.hashpath_mismatches += mismatched;
        totals.audits_failed += usize::from(!audited);
        totals.info.push(info);
        totals.computed.push(computed);
    }
    totals.info.sort();
    totals.computed.sort();
    println!(
        "summary: {trials} trials, {} messages acknowledged, acknowledged messages lost {}, hashpath mismatches {}, audits failed {}",
        totals.acked, totals.lost, totals.hashpath_mismatches, totals.audits_failed
    );
    println!(
        "recovery (restart → /~meta@1.0/info answers): p50 {} ms, p99 {} ms, max {} ms",
        percentile(&totals.info, 50).as_millis(),
        percentile(&totals.info, 99).as_millis(),
        totals.info.last().unwrap().as_millis()
    );
    println!(
        "recovery (restart → last slot computed): p50 {} ms, p99 {} ms, max {} ms",
        percentile(&totals.computed, 50).as_millis(),
        percentile(&totals.computed, 99).as_millis(),
        totals.computed.last().unwrap().as_millis()
    );
    assert_eq!(totals.lost, 0, "acknowledged messages lost");
    assert_eq!(totals.hashpath_mismatches, 0, "hashpath mismatches");
    assert_eq!(totals.audits_failed, 0, "audits failed");
}
