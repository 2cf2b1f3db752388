//! The verifier's manual (documentation only; no code).
//!
//! # What evidence proves
//!
//! A [`crate::Verified`] says: hardware of a known kind signed 64 bytes equal to
//! `SHA-512("ferrobeam-attest-v1" ‖ node public key ‖ state digest ‖ nonce)`, where the nonce is
//! the one you chose, and the node key signed the evidence. For SEV-SNP that hardware is an AMD
//! chip whose VCEK chains to AMD's pinned root, running a guest with an allowed launch
//! measurement, a TCB at least your minimum, and debugging off. For a TPM it is a TPM holding an
//! AK you pinned, whose PCRs had the reported values.
//!
//! # What it does not prove
//!
//! - That the *software* measured is trustworthy: you choose the allowed measurements.
//! - That a TPM is genuine: version 1 trusts AKs by name ([`crate::TpmPolicy::trusted_aks`]);
//!   EK certificates and credential activation are left to enrolment, outside this crate.
//! - Freshness beyond the nonce: use a fresh random nonce of at least 16 bytes per request.
//! - Kind `none` proves nothing and is rejected unless insecure evidence is allowed.
//!
//! # Using it
//!
//! 1. Choose a nonce, send it to the node, receive the evidence JSON.
//! 2. [`crate::Evidence::from_json`] (size-limited), load a [`crate::Policy`] from TOML.
//! 3. `Verifier::new(&policy).with_certificate_cache(&cache).verify(&evidence, &nonce, now)`.
//! 4. Act on the node key and state digest in the returned proof, never on the unverified
//!    evidence fields.
//!
//! To check only the SEV-SNP hardware side (a report whose report data is not a ferrobeam
//! binding), use [`crate::snp::verify_report`], then compare the report data yourself.
//!
//! # Defaults
//!
//! Debug guests are rejected, VMPL must be 0, an empty measurement list allows nothing, and a
//! missing policy section rejects that kind. `docs/verifiers.md` has the byte-level formats.
