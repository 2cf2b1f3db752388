//! The verifier's policy: which evidence it accepts. Read from TOML (see docs/verifiers.md):
//!
//! ```toml
//! allow_insecure_none = false          # accept kind `none` (development only)
//!
//! [snp]
//! measurements = ["<96 hex chars>"]    # allowed launch measurements; empty allows none
//! allow_debug = false                  # accept guests whose policy has bit 19 set
//! vmpl_max = 0                         # highest VMPL a report may come from
//! product = "Milan"                    # optional: Milan, Genoa or Turin
//! [snp.min_tcb]                        # minimum reported TCB, each component
//! bootloader = 3
//! tee = 0
//! snp = 8
//! microcode = 115
//! fmc = 0                              # Turin only
//!
//! [tpm]
//! trusted_aks = ["000b<64 hex chars>"] # TPM names of pinned AKs
//! [tpm.pcrs]                           # optional: required sha256-bank PCR values
//! 0 = "<64 hex chars>"
//! ```
//!
//! A section left out rejects that kind of evidence.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::Error;
use crate::snp::{Product, SnpReport, Tcb, TcbField};

/// Largest policy file accepted.
pub const POLICY_TOML_BYTES_MAX: usize = 1024 * 1024;

/// What a verifier accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accept evidence of kind `none` (it proves nothing). The CLI's `--allow-insecure`.
    pub allow_insecure_none: bool,
    /// SNP rules; `None` rejects SNP evidence.
    pub snp: Option<SnpPolicy>,
    /// TPM rules; `None` rejects TPM evidence.
    pub tpm: Option<TpmPolicy>,
}

/// SEV-SNP rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnpPolicy {
    /// Allowed launch measurements. Empty allows none.
    pub measurements: Vec<[u8; 48]>,
    /// Minimum reported TCB, per component.
    pub min_tcb: MinTcb,
    /// Accept guests that may be debugged (policy bit 19). Default false.
    pub allow_debug: bool,
    /// Highest VMPL a report may come from (0 is the most privileged). Default 0.
    pub vmpl_max: u32,
    /// Expected product, when known in advance.
    pub product: Option<Product>,
}

/// Minimum security patch levels. Absent components are 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinTcb {
    /// FMC SPL (Turin).
    pub fmc: u8,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

/// TPM rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TpmPolicy {
    /// TPM names (nameAlg ‖ SHA-256 of the TPMT_PUBLIC) of the AKs trusted.
    pub trusted_aks: Vec<Vec<u8>>,
    /// Required sha256-bank PCR values by index.
    pub pcrs: BTreeMap<u8, [u8; 32]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow_insecure_none: bool,
    snp: Option<SnpPolicyFile>,
    tpm: Option<TpmPolicyFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnpPolicyFile {
    #[serde(default)]
    measurements: Vec<String>,
    #[serde(default)]
    min_tcb: MinTcb,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    vmpl_max: u32,
    product: Option<Product>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TpmPolicyFile {
    #[serde(default)]
    trusted_aks: Vec<String>,
    #[serde(default)]
    pcrs: BTreeMap<String, String>,
}

fn hex_array<const N: usize>(what: &str, text: &str) -> Result<[u8; N], Error> {
    let bytes = hex::decode(text).map_err(|e| Error::Policy(format!("{what}: {e}")))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| Error::Policy(format!("{what}: {} bytes, expected {N}", bytes.len())))
}

impl Policy {
    /// Parses a TOML policy.
    ///
    /// # Errors
    /// [`Error::Policy`] naming the bad key or value.
    pub fn from_toml(text: &str) -> Result<Policy, Error> {
        if text.len() > POLICY_TOML_BYTES_MAX {
            return Err(Error::Policy("policy file larger than 1 MiB".into()));
        }
        let file: PolicyFile = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        let snp = file.snp.map(SnpPolicy::from_file).transpose()?;
        let tpm = file.tpm.map(TpmPolicy::from_file).transpose()?;
        Ok(Policy {
            allow_insecure_none: file.allow_insecure_none,
            snp,
            tpm,
        })
    }
}

impl SnpPolicy {
    fn from_file(file: SnpPolicyFile) -> Result<SnpPolicy, Error> {
        let measurements = file
            .measurements
            .iter()
            .map(|m| hex_array::<48>("snp.measurements", m))
            .collect::<Result<_, _>>()?;
        Ok(SnpPolicy {
            measurements,
            min_tcb: file.min_tcb,
            allow_debug: file.allow_debug,
            vmpl_max: file.vmpl_max,
            product: file.product,
        })
    }

    /// Checks a report against these rules: debug bit, VMPL, measurement, minimum TCB (decoded
    /// for `product`). It does not check signatures: use [`crate::snp::verify_report`].
    ///
    /// # Errors
    /// [`Error::SnpDebugNotAllowed`], [`Error::SnpVmplNotAllowed`],
    /// [`Error::SnpMeasurementNotAllowed`], [`Error::SnpTcbBelowMinimum`], [`Error::SnpProduct`].
    pub fn check(&self, report: &SnpReport, product: Product) -> Result<(), Error> {
        if let Some(expected) = self.product
            && expected != product
        {
            return Err(Error::SnpProduct(format!(
                "the policy expects {expected}, the report is from {product}"
            )));
        }
        if report.debug_allowed() && !self.allow_debug {
            return Err(Error::SnpDebugNotAllowed);
        }
        if report.vmpl() > self.vmpl_max {
            return Err(Error::SnpVmplNotAllowed {
                reported: report.vmpl(),
                maximum: self.vmpl_max,
            });
        }
        let measurement = report.measurement();
        if !self.measurements.contains(&measurement) {
            return Err(Error::SnpMeasurementNotAllowed {
                measurement: hex::encode(measurement),
            });
        }
        self.min_tcb
            .check(&Tcb::decode(report.reported_tcb_raw(), product))
    }
}

impl MinTcb {
    /// Checks each component of `tcb` against its minimum.
    ///
    /// # Errors
    /// [`Error::SnpTcbBelowMinimum`] naming the first component below its minimum.
    pub fn check(&self, tcb: &Tcb) -> Result<(), Error> {
        for (field, reported) in tcb.fields() {
            let minimum = match field {
                TcbField::Fmc => self.fmc,
                TcbField::Bootloader => self.bootloader,
                TcbField::Tee => self.tee,
                TcbField::Snp => self.snp,
                TcbField::Microcode => self.microcode,
            };
            if reported < minimum {
                return Err(Error::SnpTcbBelowMinimum {
                    field,
                    reported,
                    minimum,
                });
            }
        }
        Ok(())
    }
}

impl TpmPolicy {
    fn from_file(file: TpmPolicyFile) -> Result<TpmPolicy, Error> {
        let trusted_aks = file
            .trusted_aks
            .iter()
            .map(|name| {
                let bytes = hex_array::<34>("tpm.trusted_aks", name)?;
                if bytes[..2] != [0x00, 0x0b] {
                    return Err(Error::Policy(
                        "tpm.trusted_aks: a name must start with 000b (sha256)".into(),
                    ));
                }
                Ok(bytes.to_vec())
            })
            .collect::<Result<_, _>>()?;
        let mut pcrs = BTreeMap::new();
        for (index, value) in &file.pcrs {
            let index: u8 = index
                .parse()
                .ok()
                .filter(|i| *i < 24)
                .ok_or_else(|| Error::Policy(format!("tpm.pcrs: `{index}` is not 0 to 23")))?;
            pcrs.insert(index, hex_array::<32>("tpm.pcrs", value)?);
        }
        Ok(TpmPolicy { trusted_aks, pcrs })
    }
}
