//! The inside of the trusted execution environment: obtains evidence that binds the node key.
//!
//! ```text
//! collect(provider, signer, state, nonce)
//!   report_data = binding(node key, state digest, nonce)      (ferrobeam_attest::binding)
//!   provider.evidence(report_data) -> RawEvidence               snp: /dev/sev-guest or configfs-tsm
//!                                                               tpm: quote over sha256 PCRs (tss-esapi)
//!                                                               none: nothing (development)
//!   Evidence { .., signature = signer.sign(evidence.signing_bytes()) }
//! ```
//!
//! Providers: [`snp::SnpProvider`] over an [`snp::SnpDevice`] ([`snp::SevGuestDevice`],
//! [`snp::ConfigfsTsmDevice`]), [`tpm::TpmProvider`] (a thread owning the TPM context), and
//! [`NoneProvider`]. [`detect::detect`] picks one for the machine.
//!
//! It must not verify evidence (that is `ferrobeam-attest`'s job), must not depend on the node,
//! and must not contain `unsafe` code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod detect;
pub mod snp;
pub mod swtpm;
pub mod tpm;

use ferrobeam_attest::evidence::{NONCE_BYTES_MAX, NONCE_BYTES_MIN};
use ferrobeam_attest::{
    Blob, Certificates, EVIDENCE_VERSION, Evidence, EvidenceKind, NodeKeyScheme, NodePublicKey,
    NodeSignature, PcrValue, ReportData, StateParts, binding,
};

/// Why evidence could not be obtained.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    /// `/dev/sev-guest` does not exist: this machine is not an SEV-SNP guest.
    #[error("not an SEV-SNP guest (/dev/sev-guest not found)")]
    NotAnSnpGuest,
    /// The SEV-SNP firmware or the guest driver refused the request.
    #[error("SEV-SNP guest request failed: {0}")]
    SnpFirmware(String),
    /// The configfs-tsm interface failed.
    #[error("configfs-tsm: {0}")]
    ConfigfsTsm(String),
    /// The device returned a report that is not 1184 bytes, or a malformed certificate table.
    #[error("the device returned a malformed report: {0}")]
    MalformedReport(String),
    /// A TPM command failed.
    #[error("TPM: {0}")]
    Tpm(String),
    /// The TPM worker thread is gone.
    #[error("the TPM worker thread stopped")]
    TpmWorkerStopped,
    /// The AK file could not be read or written.
    #[error("AK file {path}: {reason}")]
    AkFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The caller passed a nonce outside 16 to 64 bytes (never caused by the hardware).
    #[error("nonce of {0} bytes; it must be 16 to 64 bytes")]
    NonceLength(usize),
}

/// What a provider returns: the hardware's part of the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvidence {
    /// The kind.
    pub kind: EvidenceKind,
    /// snp: the 1184-byte report; tpm: the marshalled TPMS_ATTEST; none: empty.
    pub report: Vec<u8>,
    /// tpm: the marshalled TPMT_SIGNATURE.
    pub report_signature: Option<Vec<u8>>,
    /// tpm: the quoted sha256 PCR values, ascending.
    pub pcrs: Vec<PcrValue>,
    /// VCEK/ASK/ARK (snp, when the host supplies them) or AK public / EK certificate (tpm).
    pub certificates: Certificates,
}

/// Obtains evidence from one kind of hardware.
pub trait EvidenceProvider {
    /// The kind of evidence this provider produces.
    fn kind(&self) -> EvidenceKind;

    /// Asks the hardware to sign `report_data` (the binding of node key, state and nonce).
    ///
    /// # Errors
    /// An [`EnclaveError`] naming the failing device or command.
    fn evidence(&mut self, report_data: [u8; 64]) -> Result<RawEvidence, EnclaveError>;
}

/// The node key, as far as evidence needs it. The node implements this over its key store.
pub trait NodeSigner {
    /// The key's scheme.
    fn scheme(&self) -> NodeKeyScheme;
    /// The public key.
    fn public_key(&self) -> NodePublicKey;
    /// Signs `message` (the evidence's signing bytes).
    fn sign(&self, message: &[u8]) -> NodeSignature;
}

impl NodeSigner for ed25519_dalek::SigningKey {
    fn scheme(&self) -> NodeKeyScheme {
        NodeKeyScheme::Ed25519
    }

    fn public_key(&self) -> NodePublicKey {
        NodePublicKey(self.verifying_key().to_bytes())
    }

    fn sign(&self, message: &[u8]) -> NodeSignature {
        NodeSignature(ed25519_dalek::Signer::sign(self, message).to_bytes())
    }
}

/// Produces signed evidence: binds the signer's key, `state` and `nonce` into report data, asks
/// `provider` for the hardware report, and signs the evidence body with the node key.
///
/// # Errors
/// [`EnclaveError::NonceLength`], or the provider's error.
pub fn collect(
    provider: &mut dyn EvidenceProvider,
    signer: &dyn NodeSigner,
    state: StateParts,
    nonce: &[u8],
) -> Result<Evidence, EnclaveError> {
    if !(NONCE_BYTES_MIN..=NONCE_BYTES_MAX).contains(&nonce.len()) {
        return Err(EnclaveError::NonceLength(nonce.len()));
    }
    let node_public_key = signer.public_key();
    let state_digest = state.digest();
    let ReportData(report_data) = binding(&node_public_key, &state_digest, nonce);
    let raw = provider.evidence(report_data)?;
    assert_eq!(
        raw.kind,
        provider.kind(),
        "a provider returned another kind"
    );
    let mut evidence = Evidence {
        version: EVIDENCE_VERSION,
        kind: raw.kind,
        report: Blob(raw.report),
        report_signature: raw.report_signature.map(Blob),
        pcrs: raw.pcrs,
        certificates: raw.certificates,
        node_key_scheme: signer.scheme(),
        node_public_key,
        state,
        state_digest,
        nonce: Blob(nonce.to_vec()),
        signature: NodeSignature([0; 64]),
    };
    evidence.signature = signer.sign(&evidence.signing_bytes());
    Ok(evidence)
}

/// Development only: evidence of kind `none`, which verifiers reject unless told
/// `--allow-insecure`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoneProvider;

impl EvidenceProvider for NoneProvider {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::None
    }

    fn evidence(&mut self, _report_data: [u8; 64]) -> Result<RawEvidence, EnclaveError> {
        Ok(RawEvidence {
            kind: EvidenceKind::None,
            report: Vec::new(),
            report_signature: None,
            pcrs: Vec::new(),
            certificates: Certificates::default(),
        })
    }
}
