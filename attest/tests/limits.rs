//! The parsers' limits (docs/RELIABILITY.md, "Limits"): each input at its maximum is read, one
//! past it is refused with a parse error.

use ferrobeam_attest::evidence::{CERTIFICATE_BYTES_MAX, PCR_COUNT_MAX, REPORT_BYTES_MAX};
use ferrobeam_attest::policy::POLICY_TOML_BYTES_MAX;
use ferrobeam_attest::snp::{CACHE_FILE_BYTES_MAX, CertificateCache, Product, SnpReport, VcekKey};
use ferrobeam_attest::tpm::{EXTRA_DATA_BYTES_MAX, PCR_SELECTIONS_MAX, Quote};
use ferrobeam_attest::{
    Blob, Certificates, Error, Evidence, EvidenceKind, Id32, NodeKeyScheme, NodePublicKey,
    NodeSignature, PcrDigest, PcrValue, Policy, StateParts,
};

fn evidence() -> Evidence {
    let state = StateParts {
        config_id: Id32([1; 32]),
        inventory_digest: None,
        process: None,
    };
    Evidence {
        version: 1,
        kind: EvidenceKind::None,
        report: Blob(vec![]),
        report_signature: None,
        pcrs: vec![],
        certificates: Certificates::default(),
        node_key_scheme: NodeKeyScheme::Ed25519,
        node_public_key: NodePublicKey([7; 32]),
        state,
        state_digest: state.digest(),
        nonce: Blob(vec![9; 32]),
        signature: NodeSignature([0; 64]),
    }
}

fn field_error(evidence: &Evidence) -> Option<(&'static str, String)> {
    match evidence.check_shape() {
        Ok(()) => None,
        Err(Error::EvidenceField { field, reason }) => Some((field, reason)),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn report_and_pcr_count_limits_are_checked() {
    let mut at = evidence();
    at.kind = EvidenceKind::Tpm;
    at.report_signature = Some(Blob(vec![1; 64]));
    at.certificates.ak_public = Some(Blob(vec![1; 16]));
    at.report = Blob(vec![1; REPORT_BYTES_MAX]);
    at.pcrs = (0..PCR_COUNT_MAX as u8)
        .map(|index| PcrValue {
            index,
            sha256: PcrDigest([index; 32]),
        })
        .collect();
    assert_eq!(field_error(&at), None);
    // Through JSON as a verifier reads it.
    let parsed = Evidence::from_json(at.to_json().as_bytes()).unwrap();
    assert_eq!(field_error(&parsed), None);

    let mut report = at.clone();
    report.report.0.push(1);
    assert_eq!(field_error(&report), Some(("report", "too large".into())));
    let mut pcrs = at;
    pcrs.pcrs.push(PcrValue {
        index: 23,
        sha256: PcrDigest([0; 32]),
    });
    assert_eq!(
        field_error(&pcrs),
        Some(("pcrs", format!("more than {PCR_COUNT_MAX} PCR values")))
    );
}

#[test]
fn a_certificate_over_certificate_bytes_max_is_refused_while_parsing() {
    let with_vcek = |bytes: usize| {
        let mut evidence = evidence();
        evidence.certificates.vcek = Some(Blob(vec![0x30; bytes]));
        Evidence::from_json(evidence.to_json().as_bytes())
    };
    let at = with_vcek(CERTIFICATE_BYTES_MAX).unwrap();
    assert_eq!(at.certificates.vcek.unwrap().0.len(), CERTIFICATE_BYTES_MAX);
    // One and two bytes over still fit the base64 text's bound: the decoded length decides.
    for over in [1, 2, 3] {
        match with_vcek(CERTIFICATE_BYTES_MAX + over) {
            Err(Error::EvidenceJson(reason)) => assert!(
                reason.contains(&format!("more than {CERTIFICATE_BYTES_MAX} bytes")),
                "{reason}"
            ),
            other => panic!("{over} over: {other:?}"),
        }
    }
}

/// A marshalled TPMS_ATTEST quote (big-endian) with these qualifying data and PCR selections.
fn quote(extra_data: usize, selections: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xff54_4347u32.to_be_bytes()); // TPM_GENERATED
    out.extend_from_slice(&0x8018u16.to_be_bytes()); // TPM_ST_ATTEST_QUOTE
    out.extend_from_slice(&2u16.to_be_bytes()); // qualifiedSigner
    out.extend_from_slice(&[0, 0x0b]);
    out.extend_from_slice(&(extra_data as u16).to_be_bytes());
    out.extend(std::iter::repeat_n(0xaa, extra_data));
    out.extend_from_slice(&[0; 8 + 4 + 4]); // clock, resetCount, restartCount
    out.push(1); // safe
    out.extend_from_slice(&[0; 8]); // firmwareVersion
    out.extend_from_slice(&selections.to_be_bytes());
    for _ in 0..selections {
        out.extend_from_slice(&0x000bu16.to_be_bytes());
        out.extend_from_slice(&[3, 0xff, 0, 0]);
    }
    out.extend_from_slice(&32u16.to_be_bytes()); // pcrDigest
    out.extend_from_slice(&[0x55; 32]);
    out
}

#[test]
fn quote_limits_refuse_the_quote() {
    let at = Quote::parse(&quote(EXTRA_DATA_BYTES_MAX, PCR_SELECTIONS_MAX)).unwrap();
    assert_eq!(at.extra_data.len(), EXTRA_DATA_BYTES_MAX);
    assert_eq!(at.pcr_selections.len(), PCR_SELECTIONS_MAX as usize);
    assert!(matches!(
        Quote::parse(&quote(EXTRA_DATA_BYTES_MAX + 1, 1)),
        Err(Error::TpmAttestMalformed(_))
    ));
    assert_eq!(
        Quote::parse(&quote(EXTRA_DATA_BYTES_MAX, PCR_SELECTIONS_MAX + 1)),
        Err(Error::TpmAttestMalformed("too many PCR selections"))
    );
}

#[test]
fn a_policy_over_policy_toml_bytes_max_is_refused_unparsed() {
    let padded = |bytes: usize| {
        let mut text = String::from("allow_insecure_none = true\n#");
        text.extend(std::iter::repeat_n('x', bytes - text.len()));
        text
    };
    let at = Policy::from_toml(&padded(POLICY_TOML_BYTES_MAX)).unwrap();
    assert!(at.allow_insecure_none);
    assert!(matches!(
        Policy::from_toml(&padded(POLICY_TOML_BYTES_MAX + 1)),
        Err(Error::Policy(reason)) if reason.contains("larger than 1 MiB")
    ));
}

#[test]
fn a_cached_vcek_over_cache_file_bytes_max_is_refused() {
    let text = include_str!("fixtures/report_milan.hex");
    let report = SnpReport::parse(&hex::decode(text.trim()).unwrap()).unwrap();
    let key = VcekKey::for_report(&report, Product::Milan);
    let dir = tempfile::tempdir().unwrap();
    let cache = CertificateCache::new(dir.path());
    let limit = CACHE_FILE_BYTES_MAX as usize;
    cache.store_vcek(&key, &vec![0x30; limit]).unwrap();
    assert_eq!(cache.vcek(&key).unwrap().map(|der| der.len()), Some(limit));
    cache.store_vcek(&key, &vec![0x30; limit + 1]).unwrap();
    assert!(matches!(
        cache.vcek(&key),
        Err(Error::CertificateCache(reason)) if reason.contains("larger than")
    ));
}
