//! Attestation targets: evidence v1 (JSON, shape, and the whole verifier), SEV-SNP reports and
//! VCEKs, TPM quote structures. No network: SNP chains are the pinned AMD roots, the time is
//! fixed, and a VCEK comes only from the input.

use ed25519_dalek::{Signer, SigningKey};
use ferrobeam_attest::policy::{MinTcb, Policy, SnpPolicy, TpmPolicy};
use ferrobeam_attest::snp::{
    KDS_BASE_URL, POLICY_DEBUG_BIT, Product, REPORT_BYTES, SnpReport, Tcb, Vcek, VcekKey,
    check_vcek_matches_report,
};
use ferrobeam_attest::tpm::{self, AkPublic, Quote, QuoteParts, QuoteSignature};
use ferrobeam_attest::{
    Evidence, EvidenceKind, NodePublicKey, NodeSignature, PcrDigest, PcrValue, ReportData, Verifier,
};

/// 2025-06-15: inside the validity of the AMD roots and of the fixture VCEK.
const NOW_UNIX_S: u64 = 1_750_000_000;

/// The node key evidence is re-signed with, so that the checks behind the node-key signature
/// (SNP chain and report, TPM quote) see the fuzzer's bytes.
fn fuzz_node_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

/// The launch measurement of the real Milan report in attest's fixtures.
fn fixture_measurement() -> [u8; 48] {
    static MEASUREMENT: std::sync::OnceLock<[u8; 48]> = std::sync::OnceLock::new();
    *MEASUREMENT.get_or_init(|| {
        let hex = include_str!("../../attest/tests/fixtures/report_milan.hex");
        let raw = hex::decode(hex.trim()).expect("the fixture is hex");
        SnpReport::parse(&raw)
            .expect("the fixture is a report")
            .measurement()
    })
}

/// The fixed policy: Milan, no debug, VMPL 0, the fixture's measurement, a minimum TCB; a TPM
/// policy trusting `ak_name` (the AK the input carries, so trust is not where every quote stops)
/// and requiring PCR 0 to be zero.
fn policy(ak_name: Option<Vec<u8>>) -> Policy {
    Policy {
        allow_insecure_none: false,
        snp: Some(SnpPolicy {
            measurements: vec![fixture_measurement()],
            min_tcb: MinTcb {
                bootloader: 1,
                snp: 1,
                microcode: 1,
                ..MinTcb::default()
            },
            allow_debug: false,
            vmpl_max: 0,
            product: Some(Product::Milan),
        }),
        tpm: Some(TpmPolicy {
            trusted_aks: ak_name.into_iter().collect(),
            pcrs: [(0u8, [0u8; 32])].into_iter().collect(),
        }),
    }
}

/// Evidence v1: JSON parsing, its serde round trip, the shape checks, and the verifier run on the
/// evidence re-bound to the fuzz node key (state digest recomputed, signature remade), so every
/// hardware check is reached. The expensive crypto only runs on evidence whose shape is valid.
pub fn evidence(data: &[u8]) {
    let Ok(evidence) = Evidence::from_json(data) else {
        return;
    };
    let text = serde_json::to_vec(&evidence).expect("evidence serializes");
    let back: Evidence = serde_json::from_slice(&text).expect("serialized evidence parses");
    assert_eq!(back, evidence);
    assert_eq!(back.signing_bytes(), evidence.signing_bytes());
    let ak_name = evidence
        .certificates
        .ak_public
        .as_ref()
        .and_then(|blob| AkPublic::parse(&blob.0).ok())
        .map(|ak| ak.name);
    let policy = policy(ak_name);
    let verifier = Verifier::new(&policy);
    if evidence.check_shape().is_err() {
        assert!(
            verifier
                .verify(&evidence, &evidence.nonce.0, NOW_UNIX_S)
                .is_err()
        );
        return;
    }
    let key = fuzz_node_key();
    let mut bound = evidence;
    bound.node_public_key = NodePublicKey(key.verifying_key().to_bytes());
    bound.state_digest = bound.state.digest();
    bound.signature = NodeSignature(key.sign(&bound.signing_bytes()).to_bytes());
    let wrong_nonce = [0xeeu8; 32];
    if bound.nonce.0 != wrong_nonce {
        assert!(verifier.verify(&bound, &wrong_nonce, NOW_UNIX_S).is_err());
    }
    match verifier.verify(&bound, &bound.nonce.0, NOW_UNIX_S) {
        Ok(verified) => {
            assert_eq!(verified.kind(), bound.kind);
            assert_ne!(
                verified.kind(),
                EvidenceKind::None,
                "insecure evidence accepted"
            );
            assert_eq!(*verified.node_public_key(), bound.node_public_key);
            assert_eq!(*verified.report_data(), bound.report_data());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A SEV-SNP report (the first 1184 bytes) and a VCEK (DER, the rest): parsing, accessors, TCB
/// decoding for every product, KDS URLs and cache file names, the policy and the VCEK/report
/// match. The ECDSA and certificate-chain signatures are fuzzed through [`evidence`].
pub fn snp_report(data: &[u8]) {
    let (raw, vcek_der) = data.split_at(data.len().min(REPORT_BYTES));
    let vcek = Vcek::from_der(vcek_der);
    if let Ok(vcek) = &vcek {
        assert_eq!(vcek.der(), vcek_der);
        let _ = (
            vcek.product(),
            vcek.tcb(),
            vcek.hw_id(),
            vcek.validity_unix_s(),
        );
    }
    let Ok(report) = SnpReport::parse(raw) else {
        return;
    };
    assert_eq!(report.as_bytes().as_slice(), raw);
    assert_eq!(
        report.debug_allowed(),
        report.policy() & POLICY_DEBUG_BIT != 0
    );
    assert!((2..=5).contains(&report.version()));
    let _ = (
        report.guest_svn(),
        report.vmpl(),
        report.measurement(),
        report.host_data(),
    );
    let _ = report.report_data();
    assert_eq!(report.signed_bytes(), &raw[..report.signed_bytes().len()]);
    let policy = policy(None);
    let snp = policy.snp.as_ref().expect("the fuzz policy has SNP rules");
    for product in Product::ALL {
        let tcb = Tcb::decode(report.reported_tcb_raw(), product);
        assert_eq!(tcb.fields().count(), 4 + usize::from(tcb.fmc.is_some()));
        let key = VcekKey::for_report(&report, product);
        assert!(key.kds_url().starts_with(KDS_BASE_URL));
        let file = key.cache_file_name();
        // Cache file names come from report bytes: they must not name another directory.
        assert!(
            file.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{file:?}"
        );
        let _ = snp.check(&report, product);
    }
    let _ = report.product_from_cpuid();
    if let Ok(vcek) = &vcek {
        let _ = check_vcek_matches_report(vcek, &report);
    }
}

/// TPM quote structures: `u16 BE` length of a TPMS_ATTEST, `u16 BE` length of a TPMT_SIGNATURE,
/// then the AK's TPMT_PUBLIC. Each is parsed alone; when all three parse, the whole quote is
/// verified (AK signature, trust, qualifying data, PCR selection and digest).
pub fn tpm_quote(data: &[u8]) {
    let Some((attest, signature, ak_public)) = split_tpm(data) else {
        return;
    };
    let quote = Quote::parse(attest);
    if let Ok(quote) = &quote {
        assert!(quote.extra_data.len() <= tpm::EXTRA_DATA_BYTES_MAX);
        assert!(quote.pcr_selections.len() <= tpm::PCR_SELECTIONS_MAX as usize);
        for selection in &quote.pcr_selections {
            assert!(selection.indices.windows(2).all(|w| w[0] < w[1]));
            assert!(selection.indices.iter().all(|&i| i < 32));
        }
    }
    let parsed_signature = QuoteSignature::parse(signature);
    let ak = AkPublic::parse(ak_public);
    if let Ok(ak) = &ak {
        assert_eq!(ak.name.len(), 34);
        assert_eq!(ak.name[..2], [0x00, 0x0b]);
    }
    let (Ok(quote), Ok(_), Ok(ak)) = (quote, parsed_signature, ak) else {
        return;
    };
    // PCR values for the first bank's selection (all zero: the fuzzer cannot meet a digest
    // otherwise), and the quote's own qualifying data as the expected report data when it is
    // 64 bytes long, so a valid seed verifies end to end.
    let pcrs: Vec<PcrValue> = quote
        .pcr_selections
        .first()
        .map(|s| {
            s.indices
                .iter()
                .filter(|&&i| i < 24)
                .copied()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .map(|index| PcrValue {
            index,
            sha256: PcrDigest([0; 32]),
        })
        .collect();
    let expected =
        ReportData::from_slice("extra_data", &quote.extra_data).unwrap_or(ReportData([0; 64]));
    let policy = policy(Some(ak.name.clone()));
    let tpm_policy = policy.tpm.as_ref().expect("the fuzz policy has TPM rules");
    let parts = QuoteParts {
        attest,
        signature,
        ak_public,
        pcrs: &pcrs,
    };
    if let Ok(verified) = tpm::verify_quote(parts, &expected, tpm_policy) {
        assert_eq!(verified.quote(), &quote);
        assert_eq!(verified.ak_name(), ak.name.as_slice());
        assert!(ak.is_restricted_signing_key());
        assert_eq!(quote.extra_data.as_slice(), expected.0.as_slice());
    }
}

fn split_tpm(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (lengths, rest) = data.split_at_checked(4)?;
    let attest_len = usize::from(u16::from_be_bytes([lengths[0], lengths[1]]));
    let signature_len = usize::from(u16::from_be_bytes([lengths[2], lengths[3]]));
    let (attest, rest) = rest.split_at_checked(attest_len)?;
    let (signature, ak_public) = rest.split_at_checked(signature_len)?;
    Some((attest, signature, ak_public))
}

/// A `tpm_quote` input from its three parts (for building seeds).
pub fn tpm_input(attest: &[u8], signature: &[u8], ak_public: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + attest.len() + signature.len() + ak_public.len());
    out.extend_from_slice(
        &u16::try_from(attest.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(
        &u16::try_from(signature.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(attest);
    out.extend_from_slice(signature);
    out.extend_from_slice(ak_public);
    out
}
