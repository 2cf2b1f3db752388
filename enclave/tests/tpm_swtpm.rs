//! TPM evidence for real: each test starts its own swtpm on a free localhost port, creates an
//! EK and AK through tss-esapi, quotes, and verifies with ferrobeam-attest.
//!
//! swtpm is required: CI installs it (scripts/test.sh). Without it these tests fail, loudly.

use ferrobeam_attest::{
    Error, Evidence, EvidenceKind, HardwareClaims, Id32, NodePublicKey, PcrDigest, Policy,
    StateParts, TpmPolicy, Verifier,
};
use ferrobeam_enclave::tpm::{AkAlgorithm, EkAlgorithm, TpmConfig, TpmProvider};
use ferrobeam_enclave::{NodeSigner, collect};

const NOW_UNIX_S: u64 = 1_750_000_000;
const NONCE: &[u8] = b"verifier nonce, 32 bytes long...";
/// A swtpm with its own state directory, both gone on drop.
struct Swtpm {
    tpm: ferrobeam_enclave::swtpm::Swtpm,
    state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        Swtpm::start_with_state(tempfile::tempdir().unwrap())
    }

    fn start_with_state(state: tempfile::TempDir) -> Swtpm {
        let tpm =
            ferrobeam_enclave::swtpm::Swtpm::start(state.path()).unwrap_or_else(|e| panic!("{e}"));
        Swtpm { tpm, state }
    }

    fn tcti(&self) -> String {
        self.tpm.tcti()
    }

    /// Stops swtpm and hands back its state directory.
    fn stop(self) -> tempfile::TempDir {
        self.tpm.stop();
        self.state
    }
}

fn node() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[5u8; 32])
}

fn state() -> StateParts {
    StateParts {
        config_id: Id32([9; 32]),
        inventory_digest: Some(Id32([8; 32])),
        process: None,
    }
}

fn policy_trusting(ak_name: Vec<u8>) -> Policy {
    Policy {
        tpm: Some(TpmPolicy {
            trusted_aks: vec![ak_name],
            ..TpmPolicy::default()
        }),
        ..Policy::default()
    }
}

fn verify(policy: &Policy, evidence: &Evidence, nonce: &[u8]) -> Result<(), Error> {
    Verifier::new(policy)
        .verify(evidence, nonce, NOW_UNIX_S)
        .map(|_| ())
}

fn resign(evidence: &mut Evidence) {
    evidence.signature = NodeSigner::sign(&node(), &evidence.signing_bytes());
}

fn quote_and_verify(ek: EkAlgorithm, ak: AkAlgorithm) -> (Policy, Evidence) {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = TpmConfig::new(swtpm.tcti(), dir.path().join("ak.bin"));
    config.ek_algorithm = ek;
    config.ak_algorithm = ak;
    let mut provider = TpmProvider::start(config).expect("TPM provider starts on swtpm");
    let evidence = collect(&mut provider, &node(), state(), NONCE).expect("quote");
    assert_eq!(evidence.kind, EvidenceKind::Tpm);
    let policy = policy_trusting(provider.ak_name());
    let verified = Verifier::new(&policy)
        .verify(&evidence, NONCE, NOW_UNIX_S)
        .expect("a fresh quote verifies");
    let HardwareClaims::Tpm(quote) = verified.claims() else {
        panic!("expected TPM claims");
    };
    assert_eq!(quote.ak_name(), provider.ak_name().as_slice());
    let indices: Vec<u8> = quote.pcrs().iter().map(|p| p.index).collect();
    assert_eq!(indices, (0..8).collect::<Vec<u8>>());
    (policy, evidence)
}

#[test]
fn ecdsa_quote_verifies_and_each_tampering_fails_with_its_own_error() {
    let (policy, evidence) = quote_and_verify(EkAlgorithm::EccP384, AkAlgorithm::EcdsaP256);

    // Tampered quote bytes (the clock, inside the signed TPMS_ATTEST).
    let mut tampered = evidence.clone();
    let clock_offset = 4 + 2 + 2 + 34 + 2 + 64 + 3;
    tampered.report.0[clock_offset] ^= 0x01;
    resign(&mut tampered);
    assert_eq!(
        verify(&policy, &tampered, NONCE),
        Err(Error::TpmQuoteSignatureInvalid)
    );

    // Tampered PCR value.
    let mut tampered = evidence.clone();
    tampered.pcrs[3].sha256 = PcrDigest([0xAB; 32]);
    resign(&mut tampered);
    assert_eq!(
        verify(&policy, &tampered, NONCE),
        Err(Error::TpmPcrDigestMismatch)
    );

    // Wrong nonce: the verifier asked for another one.
    let other_nonce = b"another nonce of 32 bytes.......";
    assert_eq!(
        verify(&policy, &evidence, other_nonce),
        Err(Error::NonceMismatch)
    );
    // ... and a node that rewrites the nonce field cannot make the quote match it.
    let mut replayed = evidence.clone();
    replayed.nonce.0 = other_nonce.to_vec();
    resign(&mut replayed);
    assert_eq!(
        verify(&policy, &replayed, other_nonce),
        Err(Error::ReportDataMismatch)
    );

    // Unknown AK.
    let stranger = policy_trusting([vec![0x00, 0x0B], vec![0x77; 32]].concat());
    assert!(matches!(
        verify(&stranger, &evidence, NONCE),
        Err(Error::TpmAkNotTrusted { .. })
    ));

    // A PCR value the policy requires and the quote does not have.
    let mut strict = policy.clone();
    if let Some(tpm) = strict.tpm.as_mut() {
        tpm.pcrs.insert(0, [0x55; 32]);
    }
    assert_eq!(
        verify(&strict, &evidence, NONCE),
        Err(Error::TpmPcrNotAllowed { index: 0 })
    );

    // Another node key cannot claim the quote (the node-key signature breaks).
    let mut stolen = evidence.clone();
    stolen.node_public_key = NodePublicKey([3; 32]);
    assert_eq!(
        verify(&policy, &stolen, NONCE),
        Err(Error::NodeSignatureInvalid)
    );

    // Every truncation of the real structures is an error, never a panic.
    let ak_public = &evidence.certificates.ak_public.as_ref().unwrap().0;
    let signature = &evidence.report_signature.as_ref().unwrap().0;
    for len in 0..evidence.report.0.len() {
        assert!(ferrobeam_attest::tpm::Quote::parse(&evidence.report.0[..len]).is_err());
    }
    for len in 0..ak_public.len() {
        assert!(ferrobeam_attest::tpm::AkPublic::parse(&ak_public[..len]).is_err());
    }
    for len in 0..signature.len() {
        assert!(ferrobeam_attest::tpm::QuoteSignature::parse(&signature[..len]).is_err());
    }

    // No [tpm] section: TPM evidence is not accepted.
    assert_eq!(
        verify(&Policy::default(), &evidence, NONCE),
        Err(Error::KindNotAllowedByPolicy(EvidenceKind::Tpm))
    );
}

#[test]
fn rsassa_and_rsapss_quotes_verify() {
    quote_and_verify(EkAlgorithm::Rsa2048, AkAlgorithm::RsaSsa2048);
    quote_and_verify(EkAlgorithm::EccP384, AkAlgorithm::RsaPss2048);
}

#[test]
fn the_ak_survives_a_restart_of_node_and_tpm() {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let ak_path = dir.path().join("ak.bin");
    let first = TpmProvider::start(TpmConfig::new(swtpm.tcti(), &ak_path)).unwrap();
    let name = first.ak_name();
    drop(first);
    assert!(ak_path.exists(), "the AK file was written");

    // Same TPM state, new swtpm process, new provider: the same AK, and it still quotes.
    let tpm_state = swtpm.stop();
    let swtpm = Swtpm::start_with_state(tpm_state);
    let mut second = TpmProvider::start(TpmConfig::new(swtpm.tcti(), &ak_path)).unwrap();
    assert_eq!(second.ak_name(), name);
    let evidence = collect(&mut second, &node(), state(), NONCE).unwrap();
    assert_eq!(verify(&policy_trusting(name), &evidence, NONCE), Ok(()));
    // Many quotes in a row: transient handles are flushed (swtpm holds about three).
    for _ in 0..5 {
        collect(&mut second, &node(), state(), NONCE).unwrap();
    }
}

#[test]
fn a_corrupt_ak_file_is_an_error_not_a_new_key() {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let ak_path = dir.path().join("ak.bin");
    std::fs::write(&ak_path, b"not an AK").unwrap();
    let result = TpmProvider::start(TpmConfig::new(swtpm.tcti(), &ak_path));
    assert!(
        matches!(result, Err(ferrobeam_enclave::EnclaveError::AkFile { .. })),
        "{result:?}"
    );
}
