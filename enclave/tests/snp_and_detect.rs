//! The SNP provider's plumbing with a test double for the device, the certificate table parser,
//! kind `none`, and auto detection.

use ferrobeam_attest::{
    Error, EvidenceKind, Id32, MinTcb, Policy, SnpPolicy, StateParts, Verifier,
};
use ferrobeam_enclave::detect::{DetectPaths, detect_in};
use ferrobeam_enclave::snp::{
    CERT_TABLE_ENTRIES_MAX, DeviceReport, SnpDevice, SnpProvider, parse_cert_table,
};
use ferrobeam_enclave::{EnclaveError, NoneProvider, collect};

const REPORT_HEX: &str = include_str!("../../attest/tests/fixtures/report_milan.hex");
const VCEK_DER: &[u8] = include_bytes!("../../attest/tests/fixtures/vcek_milan.der");
const NONCE: &[u8] = b"sixteen+ bytes of nonce.........";
const NOW_UNIX_S: u64 = 1_750_000_000;

fn node() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[1u8; 32])
}

fn state() -> StateParts {
    StateParts {
        config_id: Id32([6; 32]),
        inventory_digest: None,
        process: None,
    }
}

/// Plays the firmware: copies report_data into the real Milan report (which breaks AMD's
/// signature, as a forged report would), and records what it was asked.
struct FakeDevice {
    asked: Vec<([u8; 64], u32)>,
    truncate: bool,
    ignore_report_data: bool,
}

impl FakeDevice {
    fn new() -> Self {
        FakeDevice {
            asked: Vec::new(),
            truncate: false,
            ignore_report_data: false,
        }
    }
}

impl SnpDevice for FakeDevice {
    fn report(&mut self, report_data: [u8; 64], vmpl: u32) -> Result<DeviceReport, EnclaveError> {
        self.asked.push((report_data, vmpl));
        let mut report = hex::decode(REPORT_HEX.trim()).unwrap();
        if !self.ignore_report_data {
            report[0x50..0x90].copy_from_slice(&report_data);
        }
        if self.truncate {
            report.truncate(1000);
        }
        Ok(DeviceReport {
            report,
            vcek: Some(VCEK_DER.to_vec()),
            ask: None,
            ark: None,
        })
    }
}

#[test]
fn snp_provider_binds_the_node_key_and_nonce_into_report_data() {
    let mut provider = SnpProvider::new(FakeDevice::new(), 0);
    let evidence = collect(&mut provider, &node(), state(), NONCE).unwrap();
    assert_eq!(evidence.kind, EvidenceKind::Snp);
    assert_eq!(evidence.report.0[0x50..0x90], evidence.report_data().0);
    assert_eq!(evidence.certificates.vcek.as_ref().unwrap().0, VCEK_DER);

    // A verifier accepts every field but AMD's signature over the altered report.
    let report =
        ferrobeam_attest::snp::SnpReport::parse(&hex::decode(REPORT_HEX.trim()).unwrap()).unwrap();
    let policy = Policy {
        snp: Some(SnpPolicy {
            measurements: vec![report.measurement()],
            min_tcb: MinTcb::default(),
            ..SnpPolicy::default()
        }),
        ..Policy::default()
    };
    let result = Verifier::new(&policy).verify(&evidence, NONCE, NOW_UNIX_S);
    assert_eq!(result.err(), Some(Error::SnpReportSignatureInvalid));
}

#[test]
fn snp_provider_passes_vmpl_and_rejects_broken_devices() {
    let mut provider = SnpProvider::new(FakeDevice::new(), 2);
    let evidence = collect(&mut provider, &node(), state(), NONCE).unwrap();
    assert_eq!(provider.device().asked, vec![(evidence.report_data().0, 2)]);

    let mut device = FakeDevice::new();
    device.truncate = true;
    let mut provider = SnpProvider::new(device, 0);
    assert!(matches!(
        collect(&mut provider, &node(), state(), NONCE),
        Err(EnclaveError::MalformedReport(_))
    ));

    let mut device = FakeDevice::new();
    device.ignore_report_data = true;
    let mut provider = SnpProvider::new(device, 0);
    assert!(matches!(
        collect(&mut provider, &node(), state(), NONCE),
        Err(EnclaveError::MalformedReport(_))
    ));

    assert!(matches!(
        collect(&mut NoneProvider, &node(), state(), &[0; 8]),
        Err(EnclaveError::NonceLength(8))
    ));
}

#[test]
fn sev_guest_is_not_found_outside_an_snp_guest() {
    if std::path::Path::new("/dev/sev-guest").exists() {
        return; // on a real SNP guest the device opens; nothing to check here
    }
    assert!(matches!(
        ferrobeam_enclave::snp::SevGuestDevice::open(),
        Err(EnclaveError::NotAnSnpGuest)
    ));
}

fn guid(text: &str) -> Vec<u8> {
    hex::decode(text.replace('-', "")).unwrap()
}

#[test]
fn certificate_table_yields_vcek_ask_ark() {
    let entries = [
        ("63da758d-e664-4564-adc5-f4b93be8accd", b"vcek".as_slice()),
        ("4ab7b379-bbac-4fe4-a02f-05aef327c782", b"ask".as_slice()),
        ("c0b406a4-a803-4952-9743-3fb6014cd0ae", b"ark".as_slice()),
    ];
    let mut table = Vec::new();
    let mut data = Vec::new();
    let data_start = (entries.len() + 1) * 24;
    for (id, bytes) in entries {
        table.extend(guid(id));
        table.extend(((data_start + data.len()) as u32).to_le_bytes());
        table.extend((bytes.len() as u32).to_le_bytes());
        data.extend_from_slice(bytes);
    }
    table.extend([0u8; 24]);
    table.extend(&data);
    let mut out = DeviceReport::default();
    parse_cert_table(&table, &mut out).unwrap();
    assert_eq!(out.vcek.as_deref(), Some(b"vcek".as_slice()));
    assert_eq!(out.ask.as_deref(), Some(b"ask".as_slice()));
    assert_eq!(out.ark.as_deref(), Some(b"ark".as_slice()));

    // An entry pointing past the end, and a table without its terminator, are errors.
    let mut bad = table.clone();
    bad[20] = 0xFF;
    assert!(parse_cert_table(&bad, &mut DeviceReport::default()).is_err());
    assert!(parse_cert_table(&table[..30], &mut DeviceReport::default()).is_err());
}

#[test]
fn a_certificate_table_past_cert_table_entries_max_is_refused() {
    // `entries` entries of an unknown GUID with empty data, then the terminator.
    let table = |entries: usize| {
        let mut table = Vec::new();
        for n in 0..entries {
            table.extend(guid("11111111-2222-3333-4444-555555555555"));
            table.extend((n as u32).to_le_bytes());
            table.extend(0u32.to_le_bytes());
        }
        table.extend([0u8; 24]);
        table
    };
    parse_cert_table(&table(CERT_TABLE_ENTRIES_MAX), &mut DeviceReport::default()).unwrap();
    let over = parse_cert_table(
        &table(CERT_TABLE_ENTRIES_MAX + 1),
        &mut DeviceReport::default(),
    );
    assert!(
        matches!(&over, Err(EnclaveError::MalformedReport(why)) if why.contains("too many entries")),
        "{over:?}"
    );
}

#[test]
fn none_evidence_is_rejected_unless_insecure_is_allowed() {
    let evidence = collect(&mut NoneProvider, &node(), state(), NONCE).unwrap();
    let policy = Policy::default();
    assert_eq!(
        Verifier::new(&policy)
            .verify(&evidence, NONCE, NOW_UNIX_S)
            .err(),
        Some(Error::InsecureEvidenceRejected)
    );
    let verified = Verifier::new(&policy)
        .allow_insecure(true)
        .verify(&evidence, NONCE, NOW_UNIX_S)
        .unwrap();
    assert!(verified.is_insecure());
}

#[test]
fn detection_prefers_snp_then_tpm_then_none() {
    let dir = tempfile::tempdir().unwrap();
    let paths = DetectPaths {
        sev_guest: dir.path().join("sev-guest"),
        configfs_tsm: dir.path().join("tsm"),
        tpm: dir.path().join("tpmrm0"),
    };
    let found = detect_in(&paths);
    assert_eq!(found.kind, EvidenceKind::None);
    assert!(found.reason.contains("development"), "{}", found.reason);

    std::fs::write(&paths.tpm, b"").unwrap();
    assert_eq!(detect_in(&paths).kind, EvidenceKind::Tpm);

    std::fs::create_dir(&paths.configfs_tsm).unwrap();
    let found = detect_in(&paths);
    assert_eq!(
        (found.kind, found.snp_via_configfs_tsm),
        (EvidenceKind::Snp, true)
    );

    std::fs::write(&paths.sev_guest, b"").unwrap();
    let found = detect_in(&paths);
    assert_eq!(
        (found.kind, found.snp_via_configfs_tsm),
        (EvidenceKind::Snp, false)
    );
    assert!(found.reason.contains("sev-guest"), "{}", found.reason);
}
