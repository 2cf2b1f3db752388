//! Attestation latency: a TPM quote through swtpm (the node's `/~attest@1.0/report` cost, less
//! HTTP), and verifying TPM and SEV-SNP evidence (what `ferrobeam verify` costs). Goal: verifying
//! takes under 5 ms.
//!
//! - `attest/tpm-quote/swtpm`: `ferrobeam_enclave::collect` over a `TpmProvider` on a swtpm this
//!   bench starts (EK and AK loaded, PCRs read, quote, node-key signature).
//! - `attest/verify/tpm`: `Verifier::verify` on that evidence, with a policy pinning the AK.
//! - `attest/verify/snp`: `AmdChain::pinned` and `snp::verify_report` on the real Milan report
//!   of `attest/tests/fixtures` (ARK self-signed → ASK → VCEK, report signature, VCEK TCB, chip
//!   id, policy). The full `Verifier` adds only hashing and an Ed25519 check on top (that
//!   fixture's report data is not a ferrobeam binding, so the full path cannot succeed on it).
//!
//! swtpm is required (scripts/test.sh installs it); without it this bench fails loudly.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrobeam_attest::snp::{self, AmdChain, Product, SnpReport};
use ferrobeam_attest::{Id32, MinTcb, Policy, SnpPolicy, StateParts, TpmPolicy, Verifier};
use ferrobeam_enclave::collect;
use ferrobeam_enclave::tpm::{TpmConfig, TpmProvider};

/// 2025-06-15: inside the validity of the fixture VCEK and the AMD roots.
const NOW_UNIX_S: u64 = 1_750_000_000;
const NONCE: &[u8] = b"verifier nonce, 32 bytes long...";
const REPORT_HEX: &str = include_str!("../../attest/tests/fixtures/report_milan.hex");
const VCEK_DER: &[u8] = include_bytes!("../../attest/tests/fixtures/vcek_milan.der");

/// A swtpm with its own state directory, both gone on drop.
struct Swtpm {
    tpm: ferrobeam_enclave::swtpm::Swtpm,
    _state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        let state = tempfile::tempdir().expect("tempdir");
        let tpm =
            ferrobeam_enclave::swtpm::Swtpm::start(state.path()).unwrap_or_else(|e| panic!("{e}"));
        Swtpm { tpm, _state: state }
    }
}

fn state() -> StateParts {
    StateParts {
        config_id: Id32([9; 32]),
        inventory_digest: Some(Id32([8; 32])),
        process: None,
    }
}

fn tpm(c: &mut Criterion) {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let tcti = swtpm.tpm.tcti();
    let mut provider = TpmProvider::start(TpmConfig::new(tcti, dir.path().join("ak.bin")))
        .expect("TPM provider on swtpm");
    let node = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let mut group = c.benchmark_group("attest");
    group.bench_function("tpm-quote/swtpm", |b| {
        b.iter(|| collect(&mut provider, &node, black_box(state()), NONCE).expect("quote"))
    });
    let evidence = collect(&mut provider, &node, state(), NONCE).expect("quote");
    let policy = Policy {
        tpm: Some(TpmPolicy {
            trusted_aks: vec![provider.ak_name()],
            ..TpmPolicy::default()
        }),
        ..Policy::default()
    };
    let verifier = Verifier::new(&policy);
    verifier
        .verify(&evidence, NONCE, NOW_UNIX_S)
        .expect("the quote verifies");
    group.bench_function("verify/tpm", |b| {
        b.iter(|| verifier.verify(black_box(&evidence), NONCE, NOW_UNIX_S))
    });
    group.finish();
}

fn snp(c: &mut Criterion) {
    let report = hex::decode(REPORT_HEX.trim()).expect("fixture is hex");
    let parsed = SnpReport::parse(&report).unwrap();
    let policy = SnpPolicy {
        measurements: vec![parsed.measurement()],
        min_tcb: MinTcb {
            fmc: 0,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        },
        allow_debug: false,
        vmpl_max: 0,
        product: Some(Product::Milan),
    };
    let chain = AmdChain::pinned(Product::Milan).unwrap();
    snp::verify_report(&report, VCEK_DER, &chain, &policy, NOW_UNIX_S).expect("fixture verifies");
    let mut group = c.benchmark_group("attest");
    group.bench_function("verify/snp", |b| {
        b.iter(|| {
            // As the Verifier does: the pinned chain is built per verification.
            let chain = AmdChain::pinned(Product::Milan).unwrap();
            snp::verify_report(black_box(&report), VCEK_DER, &chain, &policy, NOW_UNIX_S)
        })
    });
    group.finish();
}

criterion_group!(benches, tpm, snp);
criterion_main!(benches);
