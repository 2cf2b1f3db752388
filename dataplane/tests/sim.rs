//! Deterministic simulation (see `sim/mod.rs` and docs/RELIABILITY.md): a fixed set of seeds in
//! CI, one seed with `FERROBEAM_SEED=N`, and long campaigns (`scripts/sim.sh`) through the
//! ignored `campaign` test with `FERROBEAM_SIM_SEEDS` and `FERROBEAM_SIM_START`.

#[path = "sim/mod.rs"]
mod harness;

use harness::{Faults, run_seed};

/// Seeds CI runs on every test run (debug build, 2 cores: well under two minutes together).
const CI_SEEDS: std::ops::Range<u64> = 0..32;
/// Seeds that once failed, kept as regression tests (docs/RELIABILITY.md says what each found).
const REGRESSION_SEEDS: &[u64] = &[2356, 6226, 6947];

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a u64")),
    )
}

#[test]
fn fixed_seeds() {
    let seeds: Vec<u64> = match env_u64("FERROBEAM_SEED") {
        Some(seed) => vec![seed],
        None => CI_SEEDS.chain(REGRESSION_SEEDS.iter().copied()).collect(),
    };
    let mut faults = Faults::default();
    for seed in seeds {
        let report = run_seed(seed).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "seed {seed}: {} events, {} ms simulated (liveness {} ms), {} acked, {} slots, digest {}",
            report.events,
            report.sim_ms,
            report.liveness_ms,
            report.acked,
            report.slots,
            report.digest
        );
        faults.add(&report.faults);
    }
    eprintln!("faults: {faults:?}");
}

/// The same seed twice gives the same run (event count, every head's hashpath).
#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7).unwrap_or_else(|e| panic!("{e}"));
    let b = run_seed(7).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.events, a.sim_ms, &a.digest),
        (b.events, b.sim_ms, &b.digest)
    );
}

/// A long campaign: `FERROBEAM_SIM_SEEDS` seeds from `FERROBEAM_SIM_START` (scripts/sim.sh).
/// Prints one line per failing seed and a summary; fails when any seed failed.
#[test]
#[ignore = "long campaign; run through scripts/sim.sh"]
fn campaign() {
    let count = env_u64("FERROBEAM_SIM_SEEDS").unwrap_or(100);
    let start = env_u64("FERROBEAM_SIM_START").unwrap_or(0);
    let mut faults = Faults::default();
    let (mut events, mut acked, mut slots, mut sim_ms) = (0u64, 0usize, 0u64, 0u64);
    let mut liveness_ms_max = 0;
    let mut failed = Vec::new();
    for seed in start..start + count {
        match run_seed(seed) {
            Ok(r) => {
                faults.add(&r.faults);
                events += r.events;
                acked += r.acked;
                slots += r.slots;
                sim_ms += r.sim_ms;
                liveness_ms_max = liveness_ms_max.max(r.liveness_ms);
            }
            Err(e) => {
                println!("FAIL {e}");
                failed.push(seed);
            }
        }
    }
    println!("seeds: {start}..{} ({count} run)", start + count);
    println!(
        "work: {events} events, {} s simulated, {acked} messages acked, {slots} slots; longest liveness phase {liveness_ms_max} ms",
        sim_ms / 1000
    );
    println!("faults: {faults:?}");
    println!("failures: {} {failed:?}", failed.len());
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}
