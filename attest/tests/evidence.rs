//! The evidence format: JSON round trip, node-key signature, binding, kind `none`, policy TOML.

use ed25519_dalek::Signer as _;
use ferrobeam_attest::{
    Blob, Certificates, Error, Evidence, EvidenceKind, Id32, NodeKeyScheme, NodePublicKey,
    NodeSignature, Policy, ProcessState, StateParts, Verifier, binding,
};

const NONCE: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW_UNIX_S: u64 = 1_750_000_000;

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42u8; 32])
}

fn state() -> StateParts {
    StateParts {
        config_id: Id32([1; 32]),
        inventory_digest: Some(Id32([2; 32])),
        process: Some(ProcessState {
            process_id: Id32([3; 32]),
            hashpath: Id32([4; 32]),
        }),
    }
}

fn none_evidence() -> Evidence {
    let state = state();
    let mut evidence = Evidence {
        version: 1,
        kind: EvidenceKind::None,
        report: Blob(vec![]),
        report_signature: None,
        pcrs: vec![],
        certificates: Certificates::default(),
        node_key_scheme: NodeKeyScheme::Ed25519,
        node_public_key: NodePublicKey(key().verifying_key().to_bytes()),
        state,
        state_digest: state.digest(),
        nonce: Blob(NONCE.to_vec()),
        signature: NodeSignature([0; 64]),
    };
    resign(&mut evidence);
    evidence
}

fn resign(evidence: &mut Evidence) {
    evidence.signature = NodeSignature(key().sign(&evidence.signing_bytes()).to_bytes());
}

fn insecure_policy() -> Policy {
    Policy {
        allow_insecure_none: true,
        ..Policy::default()
    }
}

#[test]
fn json_round_trip() {
    let evidence = none_evidence();
    let json = evidence.to_json();
    let back = Evidence::from_json(json.as_bytes()).unwrap();
    assert_eq!(back, evidence);
    assert!(json.contains("\"kind\": \"none\""), "{json}");
    // Unknown fields are refused (they would not be signed).
    let extra = json.replacen('{', "{\"extra\": 1,", 1);
    assert!(matches!(
        Evidence::from_json(extra.as_bytes()),
        Err(Error::EvidenceJson(_))
    ));
}

#[test]
fn oversized_json_is_refused_before_parsing() {
    let json = vec![b' '; ferrobeam_attest::EVIDENCE_JSON_BYTES_MAX + 1];
    assert!(matches!(
        Evidence::from_json(&json),
        Err(Error::EvidenceTooLarge { .. })
    ));
}

#[test]
fn kind_none_is_rejected_unless_insecure_is_allowed() {
    let evidence = none_evidence();
    let strict = Policy::default();
    assert_eq!(
        Verifier::new(&strict)
            .verify(&evidence, NONCE, NOW_UNIX_S)
            .err(),
        Some(Error::InsecureEvidenceRejected)
    );
    let verified = Verifier::new(&strict)
        .allow_insecure(true)
        .verify(&evidence, NONCE, NOW_UNIX_S)
        .unwrap();
    assert!(verified.is_insecure());
    let policy = insecure_policy();
    let verified = Verifier::new(&policy)
        .verify(&evidence, NONCE, NOW_UNIX_S)
        .unwrap();
    assert_eq!(verified.kind(), EvidenceKind::None);
    assert_eq!(verified.state(), &state());
    assert_eq!(verified.report_data(), &evidence.report_data());
}

#[test]
fn node_signature_detects_tampering_of_every_field() {
    let policy = insecure_policy();
    let verify = |e: &Evidence| Verifier::new(&policy).verify(e, NONCE, NOW_UNIX_S).err();
    assert_eq!(verify(&none_evidence()), None);

    type Tamper = fn(&mut Evidence);
    let tampers: [(&str, Tamper); 6] = [
        ("report", |e| e.report.0.push(0)),
        ("vcek", |e| e.certificates.vcek = Some(Blob(vec![1]))),
        ("signature", |e| e.signature.0[5] ^= 1),
        ("node key", |e| {
            e.node_public_key = NodePublicKey(
                ed25519_dalek::SigningKey::from_bytes(&[9; 32])
                    .verifying_key()
                    .to_bytes(),
            );
        }),
        ("state digest and parts", |e| {
            e.state.config_id.0[0] ^= 1;
            e.state_digest = e.state.digest();
        }),
        ("kind", |e| e.kind = EvidenceKind::Snp),
    ];
    for (what, tamper) in tampers {
        let mut evidence = none_evidence();
        tamper(&mut evidence);
        assert_eq!(
            verify(&evidence),
            Some(Error::NodeSignatureInvalid),
            "{what}"
        );
    }
}

#[test]
fn state_parts_must_match_the_digest() {
    let policy = insecure_policy();
    let mut evidence = none_evidence();
    evidence.state.inventory_digest = None;
    resign(&mut evidence);
    assert_eq!(
        Verifier::new(&policy)
            .verify(&evidence, NONCE, NOW_UNIX_S)
            .err(),
        Some(Error::StateDigestMismatch)
    );
}

#[test]
fn wrong_nonce_and_bad_sizes_are_rejected() {
    let policy = insecure_policy();
    let evidence = none_evidence();
    let other = b"fedcba9876543210fedcba9876543210";
    assert_eq!(
        Verifier::new(&policy)
            .verify(&evidence, other, NOW_UNIX_S)
            .err(),
        Some(Error::NonceMismatch)
    );
    let mut short = none_evidence();
    short.nonce = Blob(vec![1; 8]);
    resign(&mut short);
    assert!(matches!(
        Verifier::new(&policy).verify(&short, &[1; 8], NOW_UNIX_S),
        Err(Error::EvidenceField { field: "nonce", .. })
    ));
    let mut future = none_evidence();
    future.version = 2;
    assert!(matches!(
        Verifier::new(&policy).verify(&future, NONCE, NOW_UNIX_S),
        Err(Error::EvidenceVersion { found: 2, .. })
    ));
}

/// Test vectors, also printed in docs/verifiers.md.
#[test]
fn binding_and_state_digest_vectors() {
    let minimal = StateParts {
        config_id: Id32([0; 32]),
        inventory_digest: None,
        process: None,
    };
    let full = state();
    let key = NodePublicKey([0x11; 32]);
    let nonce = [0x22u8; 32];
    let minimal_digest = minimal.digest();
    let full_digest = full.digest();
    let report_data = binding(&key, &full_digest, &nonce);
    println!("minimal state digest {}", hex::encode(minimal_digest.0));
    println!("full state digest {}", hex::encode(full_digest.0));
    println!("report data {}", hex::encode(report_data.0));
    // Recompute by hand from the documented byte strings.
    use sha2::Digest as _;
    let mut bytes = b"ferrobeam-state-v1".to_vec();
    bytes.extend([0u8; 32]);
    bytes.extend([0u8, 0u8]);
    assert_eq!(
        minimal_digest.0,
        <[u8; 32]>::from(sha2::Sha256::digest(&bytes))
    );
    let mut bytes = b"ferrobeam-state-v1".to_vec();
    bytes.extend([1u8; 32]);
    bytes.push(1);
    bytes.extend([2u8; 32]);
    bytes.push(1);
    bytes.extend([3u8; 32]);
    bytes.extend([4u8; 32]);
    assert_eq!(
        full_digest.0,
        <[u8; 32]>::from(sha2::Sha256::digest(&bytes))
    );
    let mut bytes = b"ferrobeam-attest-v1".to_vec();
    bytes.extend([0x11u8; 32]);
    bytes.extend(full_digest.0);
    bytes.extend(nonce);
    assert_eq!(
        report_data.0,
        <[u8; 64]>::from(sha2::Sha512::digest(&bytes))
    );
    assert_eq!(
        hex::encode(full_digest.0),
        "b3423348b2a1c1e1ad0c656d204cfe7f5523dfe044d8082405d9d75596dbedee"
    );
    assert_eq!(
        hex::encode(minimal_digest.0),
        "96d8e45855f73600128622ca7e27b9724dd60a917c5820f3df54a8b2c15febd5"
    );
    assert_eq!(
        hex::encode(report_data.0),
        "f78d600ac910fcfb78d5df854ddd3582df6f7140ca5f4f3c13d601172165ada7\
         c9d73c26ce6227586b4d61df534893de98b34e6a5eea9b7217fc1b8eba4d3a11"
    );
}

#[test]
fn policy_toml_parses_and_rejects_mistakes() {
    let text = r#"
allow_insecure_none = false

[snp]
measurements = ["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"]
allow_debug = false
vmpl_max = 0
product = "Milan"
[snp.min_tcb]
bootloader = 3
snp = 8
microcode = 115

[tpm]
trusted_aks = ["000b0000000000000000000000000000000000000000000000000000000000000000"]
[tpm.pcrs]
0 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;
    let policy = Policy::from_toml(text).unwrap();
    let snp = policy.snp.as_ref().unwrap();
    assert_eq!(snp.measurements.len(), 1);
    assert_eq!(snp.min_tcb.microcode, 115);
    assert_eq!(snp.min_tcb.tee, 0);
    let tpm = policy.tpm.as_ref().unwrap();
    assert_eq!(tpm.trusted_aks[0].len(), 34);
    assert_eq!(tpm.pcrs.get(&0), Some(&[0u8; 32]));

    for bad in [
        "allow_insecure = true",            // misspelt key
        "[snp]\nmeasurements = [\"abcd\"]", // short measurement
        "[snp]\nallow_debug = \"yes\"",     // wrong type
        "[tpm]\ntrusted_aks = [\"00\"]",    // short name
        "[tpm.pcrs]\n24 = \"00\"",          // PCR out of range
        "[snp]\nproduct = \"Naples\"",      // no SNP on Naples
    ] {
        assert!(
            matches!(Policy::from_toml(bad), Err(Error::Policy(_))),
            "{bad}"
        );
    }
}
