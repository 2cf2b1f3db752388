//! The fuzz targets on stable: every committed corpus and regression input replayed through its
//! target, then a short seeded mutation pass from the corpus (deterministic: same seed, same
//! inputs). A failing mutated input is written to the temp directory and its path printed, to be
//! committed under `fuzz/regressions/<target>/` with the fix.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ferrobeam_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted by name (none when the directory is absent).
fn files(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("a readable corpus file");
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_target_has_a_binary_and_a_seed_corpus() {
    for target in TARGETS {
        let name = target.name;
        let binary = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&binary).expect("a cargo-fuzz binary per target");
        assert!(text.contains(&format!("ferrobeam_fuzz_targets::{name}(data)")));
        assert!(
            !files("corpus", name).is_empty(),
            "{name} has no seed corpus"
        );
    }
    let binaries = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .count();
    assert_eq!(binaries, TARGETS.len(), "a binary without a TARGETS entry");
}

#[test]
fn committed_inputs_replay_cleanly() {
    for target in TARGETS {
        let (name, target) = (target.name, target.run);
        for kind in ["corpus", "regressions"] {
            for (path, bytes) in files(kind, name) {
                if catch_unwind(|| target(&bytes)).is_err() {
                    panic!("{name}: {} fails", path.display());
                }
            }
        }
    }
}

/// xorshift64*: a seeded generator with no dependencies; the same seed gives the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four libFuzzer-style edits: flip a bit, set a byte to an interesting value, insert,
/// delete, duplicate a range, splice in part of another input, truncate.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'0'];
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next() as u8);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let count = 1 + rng.below((len - at).min(16));
                input.drain(at..at + count);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let count = 1 + rng.below((len - at).min(64));
                let copy = input[at..at + count].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let count = 1 + rng.below((other.len() - from).min(256));
                let to = rng.below(len + 1);
                let end = (to + count).min(len);
                input.splice(to..end, other[from..from + count].iter().copied());
            }
            _ => input.truncate(rng.below(len + 1)),
        }
    }
}

/// Mutations per target: the targets that verify signatures (Ed25519, RSA, ECDSA in a debug
/// build) get fewer, so the pass takes seconds.
fn mutations(name: &str) -> usize {
    match name {
        "evidence" | "tpm_quote" => 150,
        _ => 1500,
    }
}

#[test]
fn seeded_mutations_keep_every_invariant() {
    let seed: u64 = std::env::var("FERROBEAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    for target in TARGETS {
        let (name, target) = (target.name, target.run);
        let corpus: Vec<Vec<u8>> = files("corpus", name).into_iter().map(|(_, b)| b).collect();
        let mut rng = Rng(seed ^ fnv(name) | 1);
        for round in 0..mutations(name) {
            let mut input = corpus[rng.below(corpus.len())].clone();
            let other = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, &mut input, other);
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                let path = std::env::temp_dir().join(format!("ferrobeam-fuzz-{name}-{round}"));
                std::fs::write(&path, &input).expect("the temp directory is writable");
                panic!(
                    "{name}: mutation {round} of seed {seed} fails; input saved to {}",
                    path.display()
                );
            }
        }
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
