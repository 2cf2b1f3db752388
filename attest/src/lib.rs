//! The verifier side of attestation: the evidence format and every check a verifier runs.
//!
//! This crate will hold the versioned evidence format, the binding of node key and state digest
//! into the report data, SEV-SNP report verification (ARK → ASK → VCEK → report, TCB and chip id,
//! policy), and TPM quote verification (AK signature, qualifying data, PCR digest, AK trust).
//!
//! It must not depend on the node, must not touch the network, and takes the current time as an
//! argument. It contains no `unsafe` code.
#![forbid(unsafe_code)]
