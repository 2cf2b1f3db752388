//! The verifier side of attestation: the evidence format and every check a verifier runs.
//!
//! A ferrobeam node proves what it runs with *evidence*: a hardware report (an AMD SEV-SNP
//! attestation report or a TPM 2.0 quote) whose 64 bytes of report data bind the node's public
//! key, a digest of its state, and the verifier's nonce, all signed by the node key.
//!
//! ```text
//! verifier --nonce--> node: report_data = SHA-512("ferrobeam-attest-v1" ‖ node key ‖ state digest ‖ nonce)
//!                     TEE signs report_data  (ferrobeam-enclave)
//! verifier <--Evidence JSON--  node key signs the evidence body
//!
//! Verifier::verify(evidence, nonce, now)
//!   shape, version ─> nonce ─> state digest ─> node-key signature
//!   ─> snp: ARK ─> ASK ─> VCEK ─> report signature, VCEK TCB/hwID, policy (debug, VMPL,
//!           measurement, minimum TCB)
//!      tpm: AK attributes ─> quote signature ─> AK pinned ─> PCR selection and digest ─> policy PCRs
//!      none: only if insecure evidence is allowed
//!   ─> report data == binding   ==> Verified (a proof only this crate constructs)
//! ```
//!
//! This crate does not depend on the node, does no network I/O (a missing VCEK is an error
//! carrying the AMD KDS URL; [`snp::CertificateCache`] reads a directory the caller fills), and
//! takes the current time as an argument. It contains no `unsafe` code. Read [`manual`] first.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod manual;

mod error;
pub mod evidence;
pub mod policy;
pub mod snp;
pub mod tpm;
mod verify;

pub use error::Error;
pub use evidence::{
    Blob, Certificates, EVIDENCE_JSON_BYTES_MAX, EVIDENCE_VERSION, Evidence, EvidenceKind, Id32,
    NodeKeyScheme, NodePublicKey, NodeSignature, PcrDigest, PcrValue, ProcessState, ReportData,
    StateDigest, StateParts, binding,
};
pub use policy::{MinTcb, Policy, SnpPolicy, TpmPolicy};
pub use verify::{Ed25519Verifier, HardwareClaims, NodeKeyVerifier, Verified, Verifier};
