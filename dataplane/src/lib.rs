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
//! `unsafe` is denied everywhere but in `execute::memory` (the `.cwasm` cache load) and
//! `ingress::uring::ring` (the io_uring boundary), where each block carries a `// SAFETY:` line.
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Modules in the order a message meets them (each comment keeps rustfmt from sorting them).
// Model, ids, commitments, JSON and rkyv forms, hashpaths.
pub mod message;
// QUIC ingress: framing, TLS identity, backends (quinn-proto on io_uring, quinn on tokio).
pub mod ingress;
// Slots, hash chains, assignments (sans-IO).
pub mod schedule;
// Durable state: fjall, group commit.
pub mod store;
// Executor cores: wasmtime, the native ABI, snapshots.
pub mod execute;
// Hardware as assets: ids, allocations, privacy views (sans-IO).
pub mod assets;
// Outbox → messages scheduled on their targets (sans-IO).
pub mod push;
// Wiring: sequencer, compute driver, configuration, node key, metrics.
pub mod node;
// HTTP routes.
pub mod api;
