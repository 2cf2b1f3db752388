//! SEV-SNP evidence: a report from `/dev/sev-guest` (the `sev` crate) or configfs-tsm, and the
//! VCEK/ASK/ARK when the host supplies them in the extended report's certificate table.
//!
//! The device sits behind [`SnpDevice`] so the provider's plumbing is tested without hardware.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ferrobeam_attest::snp::REPORT_BYTES;
use ferrobeam_attest::{Blob, Certificates, EvidenceKind};

use crate::{EnclaveError, EvidenceProvider, RawEvidence};

/// Where configfs-tsm reports are requested (Linux 6.7 and later).
pub const CONFIGFS_TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// At most this many certificate table entries are read (the GHCB table has a handful).
pub const CERT_TABLE_ENTRIES_MAX: usize = 64;
/// configfs-tsm retries when another writer raced ours (the generation changed).
pub const CONFIGFS_ATTEMPTS_MAX: u32 = 3;

/// GUIDs of the GHCB certificate table, as printed (the `sev` crate's byte order).
const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";

/// A report and the certificates that came with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceReport {
    /// The raw report.
    pub report: Vec<u8>,
    /// VCEK (DER), if the host supplied it.
    pub vcek: Option<Vec<u8>>,
    /// ASK (DER), if supplied.
    pub ask: Option<Vec<u8>>,
    /// ARK (DER), if supplied.
    pub ark: Option<Vec<u8>>,
}

/// Something that returns SEV-SNP reports: the guest device, configfs-tsm, or a test double.
pub trait SnpDevice {
    /// Requests a report over `report_data` at `vmpl`.
    ///
    /// # Errors
    /// An [`EnclaveError`] from the device.
    fn report(&mut self, report_data: [u8; 64], vmpl: u32) -> Result<DeviceReport, EnclaveError>;
}

/// The SEV-SNP provider.
#[derive(Debug)]
pub struct SnpProvider<D: SnpDevice> {
    device: D,
    vmpl: u32,
}

impl<D: SnpDevice> SnpProvider<D> {
    /// A provider requesting reports at VMPL `vmpl` (0 unless an SVSM runs below the guest).
    pub fn new(device: D, vmpl: u32) -> Self {
        SnpProvider { device, vmpl }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }
}

impl<D: SnpDevice> EvidenceProvider for SnpProvider<D> {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::Snp
    }

    fn evidence(&mut self, report_data: [u8; 64]) -> Result<RawEvidence, EnclaveError> {
        let got = self.device.report(report_data, self.vmpl)?;
        if got.report.len() != REPORT_BYTES {
            return Err(EnclaveError::MalformedReport(format!(
                "{} bytes, expected {REPORT_BYTES}",
                got.report.len()
            )));
        }
        // The firmware copies report_data verbatim; anything else is a broken device.
        if got.report[0x50..0x90] != report_data {
            return Err(EnclaveError::MalformedReport(
                "report_data is not what was requested".into(),
            ));
        }
        Ok(RawEvidence {
            kind: EvidenceKind::Snp,
            report: got.report,
            report_signature: None,
            pcrs: Vec::new(),
            certificates: Certificates {
                vcek: got.vcek.map(Blob),
                ask: got.ask.map(Blob),
                ark: got.ark.map(Blob),
                ..Certificates::default()
            },
        })
    }
}

/// `/dev/sev-guest` through the `sev` crate.
#[derive(Debug)]
pub struct SevGuestDevice {
    firmware: sev::firmware::guest::Firmware,
}

impl SevGuestDevice {
    /// Opens `/dev/sev-guest`.
    ///
    /// # Errors
    /// [`EnclaveError::NotAnSnpGuest`] when it does not exist; [`EnclaveError::SnpFirmware`]
    /// otherwise (for instance, permission denied).
    pub fn open() -> Result<Self, EnclaveError> {
        match sev::firmware::guest::Firmware::open() {
            Ok(firmware) => Ok(SevGuestDevice { firmware }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(EnclaveError::NotAnSnpGuest),
            Err(e) => Err(EnclaveError::SnpFirmware(format!("/dev/sev-guest: {e}"))),
        }
    }
}

impl SnpDevice for SevGuestDevice {
    fn report(&mut self, report_data: [u8; 64], vmpl: u32) -> Result<DeviceReport, EnclaveError> {
        use sev::firmware::host::CertType;
        let (report, table) = self
            .firmware
            .get_ext_report(None, Some(report_data), Some(vmpl))
            .map_err(|e| EnclaveError::SnpFirmware(e.to_string()))?;
        let mut out = DeviceReport {
            report,
            ..DeviceReport::default()
        };
        for entry in table.unwrap_or_default() {
            match entry.cert_type {
                CertType::VCEK => out.vcek = Some(entry.data),
                CertType::ASK => out.ask = Some(entry.data),
                CertType::ARK => out.ark = Some(entry.data),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn guid_text(bytes: &[u8]) -> String {
    let hex = hex_lower(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a GHCB certificate table (configfs-tsm's `auxblob`): 24-byte entries of GUID, offset
/// and length (little-endian u32s, offsets from the start of the blob), ended by a zero entry.
///
/// # Errors
/// [`EnclaveError::MalformedReport`] when an entry points outside the blob, the table is not
/// terminated, or it has more than [`CERT_TABLE_ENTRIES_MAX`] entries.
pub fn parse_cert_table(blob: &[u8], out: &mut DeviceReport) -> Result<(), EnclaveError> {
    let malformed = |why: &str| EnclaveError::MalformedReport(format!("certificate table: {why}"));
    // The terminator is not an entry: CERT_TABLE_ENTRIES_MAX entries and a zero one are read.
    for index in 0..=CERT_TABLE_ENTRIES_MAX {
        let start = index * 24;
        let entry = blob
            .get(start..start + 24)
            .ok_or_else(|| malformed("not terminated"))?;
        if entry.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let word = |at: usize| {
            u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
        };
        let (offset, length) = (word(16) as usize, word(20) as usize);
        let data = offset
            .checked_add(length)
            .and_then(|end| blob.get(offset..end))
            .ok_or_else(|| malformed("entry outside the blob"))?
            .to_vec();
        match guid_text(&entry[..16]).as_str() {
            GUID_VCEK => out.vcek = Some(data),
            GUID_ASK => out.ask = Some(data),
            GUID_ARK => out.ark = Some(data),
            _ => {}
        }
    }
    Err(malformed("too many entries"))
}

/// configfs-tsm (`/sys/kernel/config/tsm/report`): one directory per request, `inblob` in,
/// `outblob` (the report) and `auxblob` (the certificate table) out.
#[derive(Debug, Clone)]
pub struct ConfigfsTsmDevice {
    root: PathBuf,
}

static CONFIGFS_REQUESTS: AtomicU64 = AtomicU64::new(0);

impl ConfigfsTsmDevice {
    /// A device rooted at `root` (normally [`CONFIGFS_TSM_REPORT_DIR`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigfsTsmDevice { root: root.into() }
    }

    fn request(
        &self,
        entry: &Path,
        report_data: &[u8; 64],
        vmpl: u32,
    ) -> Result<DeviceReport, EnclaveError> {
        let io = |what: &str, e: std::io::Error| {
            EnclaveError::ConfigfsTsm(format!("{}/{what}: {e}", entry.display()))
        };
        let provider =
            std::fs::read_to_string(entry.join("provider")).map_err(|e| io("provider", e))?;
        if provider.trim() != "sev_guest" {
            return Err(EnclaveError::ConfigfsTsm(format!(
                "provider is `{}`, not sev_guest",
                provider.trim()
            )));
        }
        if vmpl != 0 {
            std::fs::write(entry.join("privlevel"), vmpl.to_string())
                .map_err(|e| io("privlevel", e))?;
        }
        for _attempt in 0..CONFIGFS_ATTEMPTS_MAX {
            std::fs::write(entry.join("inblob"), report_data).map_err(|e| io("inblob", e))?;
            let before = std::fs::read_to_string(entry.join("generation"))
                .map_err(|e| io("generation", e))?;
            let report = std::fs::read(entry.join("outblob")).map_err(|e| io("outblob", e))?;
            let auxblob = std::fs::read(entry.join("auxblob")).unwrap_or_default();
            let after = std::fs::read_to_string(entry.join("generation"))
                .map_err(|e| io("generation", e))?;
            if before == after {
                let mut out = DeviceReport {
                    report,
                    ..DeviceReport::default()
                };
                if !auxblob.is_empty() {
                    parse_cert_table(&auxblob, &mut out)?;
                }
                return Ok(out);
            }
        }
        Err(EnclaveError::ConfigfsTsm(
            "another writer kept changing the request".into(),
        ))
    }
}

impl SnpDevice for ConfigfsTsmDevice {
    fn report(&mut self, report_data: [u8; 64], vmpl: u32) -> Result<DeviceReport, EnclaveError> {
        let sequence = CONFIGFS_REQUESTS.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .root
            .join(format!("ferrobeam-{}-{sequence}", std::process::id()));
        std::fs::create_dir(&entry)
            .map_err(|e| EnclaveError::ConfigfsTsm(format!("mkdir {}: {e}", entry.display())))?;
        let result = self.request(&entry, &report_data, vmpl);
        // configfs removes the attribute files with the directory.
        let _ = std::fs::remove_dir(&entry);
        result
    }
}
