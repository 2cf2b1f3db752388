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
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::Signer as _;
use ferrobeam_attest::snp::{self, AmdChain, Product, SnpReport};
use ferrobeam_attest::{
    Id32, MinTcb, NodeKeyScheme, NodePublicKey, NodeSignature, Policy, SnpPolicy, StateParts,
    TpmPolicy, Verifier,
};
use ferrobeam_enclave::tpm::{TpmConfig, TpmProvider};
use ferrobeam_enclave::{NodeSigner, collect};

/// 2025-06-15: inside the validity of the fixture VCEK and the AMD roots.
const NOW_UNIX_S: u64 = 1_750_000_000;
const NONCE: &[u8] = b"verifier nonce, 32 bytes long...";
const SWTPM_START_TIMEOUT: Duration = Duration::from_secs(10);
const REPORT_HEX: &str = include_str!("../../attest/tests/fixtures/report_milan.hex");
const VCEK_DER: &[u8] = include_bytes!("../../attest/tests/fixtures/vcek_milan.der");

/// A swtpm on 127.0.0.1:port (control on port + 1), killed on drop.
struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        let port = (0..100)
            .find_map(|_| {
                let first = TcpListener::bind("127.0.0.1:0").ok()?;
                let port = first.local_addr().ok()?.port();
                (port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok())
                    .then_some(port)
            })
            .expect("a free pair of localhost ports");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.path().display()))
            .args(["--server", &format!("type=tcp,port={port}")])
            .args(["--ctrl", &format!("type=tcp,port={}", port + 1)])
            .args(["--flags", "startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `swtpm` ({e}); install swtpm (scripts/test.sh does)")
            });
        let mut swtpm = Swtpm {
            child,
            port,
            _state: state,
        };
        let deadline = Instant::now() + SWTPM_START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = swtpm.child.try_wait() {
                panic!("swtpm exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "swtpm did not open port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        swtpm
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ed25519Node(ed25519_dalek::SigningKey);

impl NodeSigner for Ed25519Node {
    fn scheme(&self) -> NodeKeyScheme {
        NodeKeyScheme::Ed25519
    }
    fn public_key(&self) -> NodePublicKey {
        NodePublicKey(self.0.verifying_key().to_bytes())
    }
    fn sign(&self, message: &[u8]) -> NodeSignature {
        NodeSignature(self.0.sign(message).to_bytes())
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
    let tcti = format!("swtpm:host=127.0.0.1,port={}", swtpm.port);
    let mut provider = TpmProvider::start(TpmConfig::new(tcti, dir.path().join("ak.bin")))
        .expect("TPM provider on swtpm");
    let node = Ed25519Node(ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]));
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
