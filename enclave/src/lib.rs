//! The inside of the trusted execution environment: obtains evidence that binds the node key.
//!
//! This crate will hold the evidence providers — an SEV-SNP guest report (`/dev/sev-guest` or
//! configfs-tsm), a TPM 2.0 quote over the sha256 PCR bank (a real `/dev/tpmrm0` or swtpm), and
//! `none` for development — each producing the evidence types that `ferrobeam-attest` defines
//! and verifies.
//!
//! It must not verify evidence (that is `ferrobeam-attest`'s job), must not depend on the node,
//! and must not contain `unsafe` code.
#![forbid(unsafe_code)]
