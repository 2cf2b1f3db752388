//! Trusted-execution capabilities this OS can use: the SEV-SNP guest device, configfs-tsm, the
//! TDX guest device, and a TPM. Presence only: obtaining evidence is the `enclave` crate's job.

use serde::{Deserialize, Serialize};

use crate::{DetectError, Roots, read};

/// TEE devices and interfaces visible here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tee {
    /// `/dev/sev-guest` exists: this is an SEV-SNP guest with the guest driver loaded.
    pub sev_snp_guest_device: bool,
    /// `/sys/kernel/config/tsm/report` exists: configfs-tsm reports (SNP or TDX, Linux >= 6.7).
    pub configfs_tsm_report: bool,
    /// `/dev/tdx_guest` exists: this is an Intel TDX guest.
    pub tdx_guest_device: bool,
    /// The TPM, when one is present.
    pub tpm: Option<Tpm>,
}

/// A TPM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tpm {
    /// The device node to open: `tpmrm0` (resource manager, preferred) or `tpm0`; `None` when
    /// sysfs shows a TPM but `/dev` has no node for it.
    pub device: Option<String>,
    /// `tpm_version_major` (1 or 2), when the kernel shows it (Linux >= 5.5).
    pub version_major: Option<u8>,
}

/// Device nodes of the first TPM, best first.
const TPM_DEVICES: [&str; 2] = ["tpmrm0", "tpm0"];

/// Reads the `tee` part.
pub(crate) fn detect(roots: &Roots) -> Result<Tee, DetectError> {
    Ok(Tee {
        sev_snp_guest_device: read::exists(&read::under(&roots.dev, "sev-guest"))?,
        configfs_tsm_report: read::exists(&read::under(&roots.sys, "kernel/config/tsm/report"))?,
        tdx_guest_device: read::exists(&read::under(&roots.dev, "tdx_guest"))?,
        tpm: tpm(roots)?,
    })
}

fn tpm(roots: &Roots) -> Result<Option<Tpm>, DetectError> {
    let mut device = None;
    for name in TPM_DEVICES {
        if read::exists(&read::under(&roots.dev, name))? {
            device = Some(name.to_owned());
            break;
        }
    }
    let class_dir = read::under(&roots.sys, "class/tpm/tpm0");
    let in_sysfs = read::exists(&class_dir)?;
    if device.is_none() && !in_sysfs {
        return Ok(None);
    }
    let version_major = read::optional_number(&class_dir.join("tpm_version_major"));
    Ok(Some(Tpm {
        device,
        version_major,
    }))
}
