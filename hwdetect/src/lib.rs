//! Hardware inventory: what this machine offers, as one versioned, serializable struct.
//!
//! This crate will hold detection of CPUs (vendor, model, flags, topology, NUMA), memory, disks,
//! NICs, GPUs (through NVML, loaded at run time) and TEE capabilities (SEV-SNP guest device, TPM),
//! each part failing independently with the reason.
//!
//! It must not depend on the node and must not contain `unsafe` code.
#![forbid(unsafe_code)]
