//! Which evidence provider this machine supports: snp if `/dev/sev-guest` or configfs-tsm is
//! present, else tpm if `/dev/tpmrm0`, else none; with the reason.

use std::path::{Path, PathBuf};

use ferrobeam_attest::EvidenceKind;

/// The paths detection looks at (real ones by default; tests point them elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectPaths {
    /// The SEV guest device.
    pub sev_guest: PathBuf,
    /// The configfs-tsm report directory.
    pub configfs_tsm: PathBuf,
    /// The TPM resource manager device.
    pub tpm: PathBuf,
}

impl Default for DetectPaths {
    fn default() -> Self {
        DetectPaths {
            sev_guest: PathBuf::from("/dev/sev-guest"),
            configfs_tsm: PathBuf::from(crate::snp::CONFIGFS_TSM_REPORT_DIR),
            tpm: PathBuf::from("/dev/tpmrm0"),
        }
    }
}

/// The backend chosen and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The kind of evidence to produce.
    pub kind: EvidenceKind,
    /// For SNP: use configfs-tsm rather than `/dev/sev-guest`.
    pub snp_via_configfs_tsm: bool,
    /// A sentence for logs and `ferrobeam info`.
    pub reason: String,
}

/// Detects with the real paths.
pub fn detect() -> Detection {
    detect_in(&DetectPaths::default())
}

fn exists(path: &Path) -> bool {
    path.exists()
}

/// Detects with the given paths.
pub fn detect_in(paths: &DetectPaths) -> Detection {
    if exists(&paths.sev_guest) {
        return Detection {
            kind: EvidenceKind::Snp,
            snp_via_configfs_tsm: false,
            reason: format!("{} exists: SEV-SNP guest", paths.sev_guest.display()),
        };
    }
    if exists(&paths.configfs_tsm) {
        return Detection {
            kind: EvidenceKind::Snp,
            snp_via_configfs_tsm: true,
            reason: format!(
                "{} exists: confidential guest with configfs-tsm reports",
                paths.configfs_tsm.display()
            ),
        };
    }
    if exists(&paths.tpm) {
        return Detection {
            kind: EvidenceKind::Tpm,
            snp_via_configfs_tsm: false,
            reason: format!("{} exists: TPM 2.0", paths.tpm.display()),
        };
    }
    Detection {
        kind: EvidenceKind::None,
        snp_via_configfs_tsm: false,
        reason: format!(
            "none of {}, {}, {} exists: no TEE; evidence is insecure (development only)",
            paths.sev_guest.display(),
            paths.configfs_tsm.display(),
            paths.tpm.display()
        ),
    }
}
