//! SEV-SNP verification against a real Milan report, its VCEK and AMD's Milan chain.

use ferrobeam_attest::snp::{
    self, AmdChain, CertificateCache, Product, SnpReport, TcbField, Vcek, VcekKey,
};
use ferrobeam_attest::{
    Blob, Certificates, Error, Evidence, EvidenceKind, Id32, MinTcb, NodeKeyScheme, NodePublicKey,
    NodeSignature, Policy, SnpPolicy, StateParts, Verifier,
};

/// 2025-06-15: inside the validity of the fixture VCEK (2023-04-03 to 2030-04-03) and AMD roots.
const NOW_UNIX_S: u64 = 1_750_000_000;
const VCEK_DER: &[u8] = include_bytes!("fixtures/vcek_milan.der");
const KDS_CHAIN_PEM: &str = include_str!("fixtures/cert_chain_milan");

fn report_bytes() -> Vec<u8> {
    let text = include_str!("fixtures/report_milan.hex");
    hex::decode(text.trim()).expect("fixture is hex")
}

fn matching_policy() -> SnpPolicy {
    let report = SnpReport::parse(&report_bytes()).unwrap();
    SnpPolicy {
        measurements: vec![report.measurement()],
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
    }
}

fn milan() -> AmdChain {
    AmdChain::pinned(Product::Milan).unwrap()
}

#[test]
fn real_milan_report_verifies_against_vcek_and_pinned_chain() {
    let verified = snp::verify_report(
        &report_bytes(),
        VCEK_DER,
        &milan(),
        &matching_policy(),
        NOW_UNIX_S,
    )
    .expect("the real report verifies");
    assert_eq!(verified.product(), Product::Milan);
    let tcb = verified.tcb();
    assert_eq!(
        (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
        (3, 0, 8, 115)
    );
    assert_eq!(verified.report().version(), 2);
    assert!(!verified.report().debug_allowed());
}

#[test]
fn every_pinned_chain_is_self_consistent() {
    for product in Product::ALL {
        AmdChain::pinned(product)
            .unwrap()
            .verify_roots(NOW_UNIX_S)
            .unwrap_or_else(|e| panic!("{product}: {e}"));
    }
}

fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    text.split("-----END CERTIFICATE-----")
        .filter(|block| block.contains("BEGIN"))
        .map(|block| {
            let pem = format!("{block}-----END CERTIFICATE-----\n");
            sev::certs::snp::Certificate::from_pem(pem.trim_start().as_bytes())
                .unwrap()
                .to_der()
                .unwrap()
        })
        .collect()
}

#[test]
fn pinned_milan_chain_is_the_one_amd_kds_serves() {
    let blocks = pem_blocks(KDS_CHAIN_PEM);
    assert_eq!(blocks.len(), 2, "KDS serves ASK then ARK");
    let chain = milan();
    assert_eq!(blocks[0], chain.ask_der());
    assert_eq!(blocks[1], chain.ark_der());
}

/// Flips one bit of the signed region and expects the report to be rejected.
fn assert_bit_flip_rejected(vcek: &Vcek, byte: usize, bit: u8) {
    let mut bytes = report_bytes();
    bytes[byte] ^= 1 << bit;
    let result = SnpReport::parse(&bytes).and_then(|r| snp::verify_report_signature(&r, vcek));
    match result {
        Err(Error::SnpReportSignatureInvalid) => {}
        // Flips in the version or the signature algorithm are caught by the parser first.
        Err(Error::SnpReportVersion(_)) if byte < 4 => {}
        Err(Error::SnpSignatureAlgorithm(_)) if (0x34..0x38).contains(&byte) => {}
        other => panic!("flip of byte {byte:#x} bit {bit}: {other:?}"),
    }
}

/// Every field's first and last byte, and a few reserved ones. All 0x2A0 * 8 bits run in
/// `every_bit_of_the_signed_region_is_covered` (ignored in debug builds: ~5 min; release: ~5 s).
const SAMPLE_BYTES: [usize; 24] = [
    0x00, 0x04, 0x08, 0x0A, 0x10, 0x20, 0x30, 0x34, 0x38, 0x40, 0x48, 0x4C, 0x50, 0x8F, 0x90, 0xBF,
    0xC0, 0xE0, 0x140, 0x180, 0x187, 0x1A0, 0x1DF, 0x29F,
];

#[test]
fn flipping_any_bit_of_sampled_signed_bytes_fails() {
    let vcek = Vcek::from_der(VCEK_DER).unwrap();
    for byte in SAMPLE_BYTES {
        for bit in 0..8 {
            assert_bit_flip_rejected(&vcek, byte, bit);
        }
    }
}

#[test]
#[ignore = "slow in debug builds; run with `cargo test --release -- --ignored`"]
fn every_bit_of_the_signed_region_is_covered() {
    let vcek = Vcek::from_der(VCEK_DER).unwrap();
    for byte in 0..snp::SIGNED_BYTES {
        for bit in 0..8 {
            assert_bit_flip_rejected(&vcek, byte, bit);
        }
    }
}

#[test]
fn flipping_signature_bits_fails() {
    let vcek = Vcek::from_der(VCEK_DER).unwrap();
    // r low byte, r high scalar byte, r zero padding, s low byte, s high scalar byte.
    for byte in [0x2A0, 0x2A0 + 47, 0x2A0 + 60, 0x2A0 + 72, 0x2A0 + 72 + 47] {
        let mut bytes = report_bytes();
        bytes[byte] ^= 0x01;
        let report = SnpReport::parse(&bytes).unwrap();
        assert_eq!(
            snp::verify_report_signature(&report, &vcek),
            Err(Error::SnpReportSignatureInvalid),
            "byte {byte:#x}"
        );
    }
}

fn der_offset_of(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in DER")
}

#[test]
fn tampered_vcek_tbs_fails_the_ask_signature() {
    // The ucodeSPL extension value (INTEGER 0x73) and a byte of the public key.
    let ucode = der_offset_of(VCEK_DER, &[0x04, 0x03, 0x02, 0x01, 0x73]) + 4;
    let key = der_offset_of(VCEK_DER, &[0x04, 0xa1, 0x7a, 0xcc]) + 10;
    for (offset, mask) in [(ucode, 0x01), (key, 0x80)] {
        let mut der = VCEK_DER.to_vec();
        der[offset] ^= mask;
        let result = Vcek::from_der(&der).and_then(|vcek| milan().verify_vcek(&vcek, NOW_UNIX_S));
        assert!(
            matches!(
                result,
                Err(Error::VcekNotSignedByAsk { .. } | Error::VcekPublicKey)
            ),
            "offset {offset}: {result:?}"
        );
    }
}

#[test]
fn tampered_vcek_signature_fails() {
    for back in [1, 100, 511] {
        let mut der = VCEK_DER.to_vec();
        let offset = der.len() - back;
        der[offset] ^= 0x04;
        let vcek = Vcek::from_der(&der).unwrap();
        assert_eq!(
            milan().verify_vcek(&vcek, NOW_UNIX_S),
            Err(Error::VcekNotSignedByAsk {
                product: Product::Milan
            })
        );
    }
}

#[test]
fn chain_of_the_wrong_product_fails() {
    let vcek = Vcek::from_der(VCEK_DER).unwrap();
    for product in [Product::Genoa, Product::Turin] {
        let chain = AmdChain::pinned(product).unwrap();
        assert_eq!(
            chain.verify_vcek(&vcek, NOW_UNIX_S),
            Err(Error::VcekNotSignedByAsk { product })
        );
    }
    let genoa = AmdChain::pinned(Product::Genoa).unwrap();
    let milan = milan();
    // Milan ARK with Genoa's ASK, and Genoa's ARK with Milan's ASK.
    let swapped = [
        (milan.ark_der(), genoa.ask_der()),
        (genoa.ark_der(), milan.ask_der()),
    ];
    for (ark, ask) in swapped {
        let chain = AmdChain::danger_from_der(Product::Milan, ark, ask).unwrap();
        assert_eq!(
            chain.verify_vcek(&vcek, NOW_UNIX_S),
            Err(Error::AskNotSignedByArk)
        );
    }
    // An ASK posing as the root is not self-signed.
    let chain =
        AmdChain::danger_from_der(Product::Milan, milan.ask_der(), milan.ask_der()).unwrap();
    assert_eq!(
        chain.verify_vcek(&vcek, NOW_UNIX_S),
        Err(Error::ArkNotSelfSigned)
    );
}

#[test]
fn certificates_outside_their_validity_fail() {
    let vcek = Vcek::from_der(VCEK_DER).unwrap();
    let before_vcek = 1_650_000_000; // 2022-04: after the roots, before the VCEK was issued
    assert_eq!(
        milan().verify_vcek(&vcek, before_vcek),
        Err(Error::CertificateNotValidAtTime {
            which: "VCEK",
            now_unix_s: before_vcek
        })
    );
    let after_ark = 2_400_000_000; // 2046, after the Milan ARK expires
    assert!(matches!(
        milan().verify_vcek(&vcek, after_ark),
        Err(Error::CertificateNotValidAtTime {
            which: "ARK" | "ASK",
            ..
        })
    ));
}

#[test]
fn policy_that_disallows_the_measurement_fails() {
    let mut policy = matching_policy();
    policy.measurements = vec![[0x11; 48]];
    let result = snp::verify_report(&report_bytes(), VCEK_DER, &milan(), &policy, NOW_UNIX_S);
    assert!(
        matches!(result, Err(Error::SnpMeasurementNotAllowed { .. })),
        "{result:?}"
    );
    policy.measurements.clear();
    let result = snp::verify_report(&report_bytes(), VCEK_DER, &milan(), &policy, NOW_UNIX_S);
    assert!(
        matches!(result, Err(Error::SnpMeasurementNotAllowed { .. })),
        "{result:?}"
    );
}

#[test]
fn minimum_tcb_above_the_report_fails() {
    let mut policy = matching_policy();
    policy.min_tcb.microcode = 116;
    let result = snp::verify_report(&report_bytes(), VCEK_DER, &milan(), &policy, NOW_UNIX_S);
    assert_eq!(
        result.err(),
        Some(Error::SnpTcbBelowMinimum {
            field: TcbField::Microcode,
            reported: 115,
            minimum: 116
        })
    );
}

#[test]
fn policy_expecting_another_product_fails() {
    let mut policy = matching_policy();
    policy.product = Some(Product::Genoa);
    let result = snp::verify_report(&report_bytes(), VCEK_DER, &milan(), &policy, NOW_UNIX_S);
    assert!(matches!(result, Err(Error::SnpProduct(_))), "{result:?}");
}

#[test]
fn debug_guest_fails_both_signature_and_policy() {
    let mut bytes = report_bytes();
    bytes[0x08 + 2] |= 0x08; // policy bit 19
    let report = SnpReport::parse(&bytes).unwrap();
    assert!(report.debug_allowed());
    // Setting the bit breaks the signature, which is checked first.
    let result = snp::verify_report(&bytes, VCEK_DER, &milan(), &matching_policy(), NOW_UNIX_S);
    assert_eq!(result.err(), Some(Error::SnpReportSignatureInvalid));
    // The policy check alone rejects it, unless debug is allowed.
    let mut policy = matching_policy();
    assert_eq!(
        policy.check(&report, Product::Milan),
        Err(Error::SnpDebugNotAllowed)
    );
    policy.allow_debug = true;
    assert_eq!(policy.check(&report, Product::Milan), Ok(()));
}

#[test]
fn vmpl_above_the_maximum_fails_the_policy() {
    let mut bytes = report_bytes();
    bytes[0x30] = 2;
    let report = SnpReport::parse(&bytes).unwrap();
    assert_eq!(
        matching_policy().check(&report, Product::Milan),
        Err(Error::SnpVmplNotAllowed {
            reported: 2,
            maximum: 0
        })
    );
}

#[test]
fn vcek_of_another_chip_or_tcb_does_not_match() {
    let vcek = Vcek::from_der(VCEK_DER).unwrap();
    let mut bytes = report_bytes();
    bytes[0x1A0] ^= 1;
    let report = SnpReport::parse(&bytes).unwrap();
    assert_eq!(
        snp::check_vcek_matches_report(&vcek, &report),
        Err(Error::VcekChipIdMismatch)
    );
    let mut bytes = report_bytes();
    bytes[0x180 + 6] = 9; // snp SPL
    let report = SnpReport::parse(&bytes).unwrap();
    assert_eq!(
        snp::check_vcek_matches_report(&vcek, &report),
        Err(Error::VcekTcbMismatch {
            field: TcbField::Snp,
            vcek: 8,
            report: 9
        })
    );
}

#[test]
fn kds_url_and_cache_name_for_the_fixture() {
    let report = SnpReport::parse(&report_bytes()).unwrap();
    let key = VcekKey::for_report(&report, Product::Milan);
    let chip = "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc\
                15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6";
    assert_eq!(
        key.kds_url(),
        format!(
            "https://kdsintf.amd.com/vcek/v1/Milan/{chip}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
        )
    );
    assert_eq!(
        key.cache_file_name(),
        format!("vcek-Milan-{chip}-blSPL03-teeSPL00-snpSPL08-ucodeSPL115.der")
    );
}

#[test]
fn short_or_unknown_reports_are_rejected() {
    assert_eq!(
        SnpReport::parse(&[0u8; 100]).err(),
        Some(Error::SnpReportLength {
            found: 100,
            expected: 1184
        })
    );
    let mut bytes = report_bytes();
    bytes[0] = 9;
    assert_eq!(
        SnpReport::parse(&bytes).err(),
        Some(Error::SnpReportVersion(9))
    );
}

// ---- through the full verifier ------------------------------------------------------------------

fn snp_evidence(vcek: Option<&[u8]>, nonce: &[u8]) -> Evidence {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let state = StateParts {
        config_id: Id32([1; 32]),
        inventory_digest: None,
        process: None,
    };
    let mut evidence = Evidence {
        version: 1,
        kind: EvidenceKind::Snp,
        report: Blob(report_bytes()),
        report_signature: None,
        pcrs: vec![],
        certificates: Certificates {
            vcek: vcek.map(|der| Blob(der.to_vec())),
            ..Certificates::default()
        },
        node_key_scheme: NodeKeyScheme::Ed25519,
        node_public_key: NodePublicKey(signing.verifying_key().to_bytes()),
        state,
        state_digest: state.digest(),
        nonce: Blob(nonce.to_vec()),
        signature: NodeSignature([0; 64]),
    };
    sign(&mut evidence, &signing);
    evidence
}

fn sign(evidence: &mut Evidence, key: &ed25519_dalek::SigningKey) {
    use ed25519_dalek::Signer as _;
    evidence.signature = NodeSignature(key.sign(&evidence.signing_bytes()).to_bytes());
}

fn snp_policy() -> Policy {
    Policy {
        snp: Some(matching_policy()),
        ..Policy::default()
    }
}

const NONCE: &[u8] = b"a verifier's nonce, 32 bytes....";

#[test]
fn full_verifier_checks_the_hardware_then_the_binding() {
    // The fixture's report_data is not a ferrobeam binding, so every hardware check passes and
    // the last check, the binding, fails.
    let evidence = snp_evidence(Some(VCEK_DER), NONCE);
    let policy = snp_policy();
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    assert_eq!(result.err(), Some(Error::ReportDataMismatch));
}

#[test]
fn full_verifier_rejects_a_policy_without_snp() {
    let evidence = snp_evidence(Some(VCEK_DER), NONCE);
    let policy = Policy::default();
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    assert_eq!(
        result.err(),
        Some(Error::KindNotAllowedByPolicy(EvidenceKind::Snp))
    );
}

#[test]
fn missing_vcek_names_the_kds_url_then_the_cache_supplies_it() {
    let evidence = snp_evidence(None, NONCE);
    let policy = snp_policy();
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    let Err(Error::VcekMissing {
        url,
        cache_file_name,
    }) = result
    else {
        panic!("expected VcekMissing, got {result:?}");
    };
    assert!(
        url.starts_with("https://kdsintf.amd.com/vcek/v1/Milan/d49554ec"),
        "{url}"
    );
    assert!(
        url.ends_with("?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"),
        "{url}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(&cache_file_name), VCEK_DER).unwrap();
    let cache = CertificateCache::new(dir.path());
    let result = Verifier::new(&policy)
        .with_certificate_cache(&cache)
        .verify(&evidence, NONCE, NOW_UNIX_S);
    assert_eq!(result.err(), Some(Error::ReportDataMismatch));
}

#[test]
fn missing_vcek_without_a_known_product_says_so() {
    let evidence = snp_evidence(None, NONCE);
    let mut policy = snp_policy();
    if let Some(snp) = policy.snp.as_mut() {
        snp.product = None;
    }
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    assert!(matches!(result, Err(Error::SnpProduct(_))), "{result:?}");
}

#[test]
fn carried_ask_must_be_the_pinned_one() {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut evidence = snp_evidence(Some(VCEK_DER), NONCE);
    let genoa = AmdChain::pinned(Product::Genoa).unwrap();
    evidence.certificates.ask = Some(Blob(genoa.ask_der().to_vec()));
    sign(&mut evidence, &signing);
    let policy = snp_policy();
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    assert_eq!(
        result.err(),
        Some(Error::AmdCertificateNotPinned {
            which: "ASK",
            product: Product::Milan
        })
    );
    // The pinned ASK and ARK are accepted.
    let milan = milan();
    evidence.certificates.ask = Some(Blob(milan.ask_der().to_vec()));
    evidence.certificates.ark = Some(Blob(milan.ark_der().to_vec()));
    sign(&mut evidence, &signing);
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    assert_eq!(result.err(), Some(Error::ReportDataMismatch));
}
