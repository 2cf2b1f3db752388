//! ferrobeam: a node for AO-Core style decentralized compute.
//!
//! The modules follow the path of a message through the node:
//!
//! ```text
//! client --HTTP/QUIC--> api / ingress --> message (validated JSON or rkyv view)
//!        --> verify (commitments, batched) --> schedule (slot, hash chain, signed assignment)
//!        --> store (durable append, group commit) --> ack to the sender
//!        --> execute (executor core owning the process: wasmtime, AOT, state = linear memory)
//!        --> results (output, outbox, spawns, hashpath)
//! ```
//!
//! `message`, `schedule` and `execute::process` are sans-IO: no sockets, files, clocks or OS
//! randomness; time and RNGs are passed in. Drivers (`store`, `execute`, `api`) are thin.
//!
//! `unsafe` is denied everywhere but in `execute::memory` (the `.cwasm` cache load), where each
//! block carries a `// SAFETY:` line.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod execute;
pub mod message;
