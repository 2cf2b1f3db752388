//! Execution: WebAssembly processes on pinned executor cores.
//!
//! ```text
//! module bytes --Engine::load--> shape: exports malloc? --no--> native: validate (native rules)
//!                                       |yes--> ao-json: prepare (legacy_eh: try/catch -> try_table;
//!                                               export private globals), validate (ao-json rules)
//!              --> Cranelift AOT (the ABI's engine) --> <cache>/<module-id>-<compat>.cwasm --mmap--> Module
//! Job { process, module, snapshot?, SlotInput } --Executors::submit--> core = hash(process) mod N
//!     core: plan (process::plan) --> Instance::new | Instance::restore | live instance
//!           --> Instance::run(slot) --> SlotOutcome (+ Snapshot every K slots) --> JobDone
//! ```
//!
//! - [`Engine`] is the wasmtime engine configured for determinism (fuel, NaN canonicalization,
//!   deterministic relaxed SIMD, no threads) with a pooling allocator, plus the `.cwasm` cache.
//! - The native ABI (`docs/abi.md`) is implemented in `abi`: host imports under `"ferrobeam"`,
//!   exports `memory` and `handle`.
//! - The ao-json ABI of AO/aos processes (`docs/abi.md`, chosen by `module-format`: [`Abi`]) is
//!   implemented in `aojson` (JSON in and out of `malloc`/`handle`), `wasi` (deterministic WASI
//!   and emscripten imports) and `legacy_eh` (legacy exception opcodes translated on load). Its
//!   modules run on a second wasmtime engine with exceptions enabled.
//! - Every slot has a wall-clock deadline (epoch interruption, [`EPOCH_TICK_MS`]) behind its
//!   fuel: the one nondeterministic failure, reported as such ([`WALL_CLOCK_ERROR_PREFIX`]).
//! - [`Instance`] is one process's live state: linear memory plus exported mutable globals.
//!   [`Snapshot`] captures exactly that; restoring it and replaying the schedule gives identical
//!   results.
//! - [`process`] is the sans-IO part: which slot comes next, when to snapshot, which core owns a
//!   process, how to bring a process to a slot.
//! - [`Executors`] is the thin driver: threads, channels, live instances.
//!
//! Results are deterministic: the same module, process message and schedule give the same
//! [`SlotOutcome`]s on every node. A guest sees no clock, randomness or host state beyond its
//! slot's input; fuel and memory limits fail at the same instruction everywhere.
//!
//! `unsafe` lives only in `memory` (loading a `.cwasm` file, which wasmtime cannot validate).

mod abi;
pub mod aojson;
mod engine;
mod executor;
mod instance;
mod legacy_eh;
mod memory;
pub mod process;
mod snapshot;
mod wasi;

#[cfg(test)]
mod tests;

pub use abi::{
    ENV_KEYS, ERROR_BYTES_MAX, IMPORT_MODULE, OUTBOX_BYTES_MAX, OUTBOX_MESSAGES_MAX,
    OUTPUT_BYTES_MAX, SEND_TAGS_MAX,
};
pub use aojson::{
    Abi, GLOBAL_EXPORT_PREFIX, MODULE_FORMAT_WASM32_PREFIX, MODULE_FORMAT_WASM64,
    RESPONSE_BYTES_MAX, tag_key, tag_name,
};
pub use engine::{
    ENGINE_INSTANCES_MAX, EPOCH_TICK_MS, Engine, EngineConfig, MODULES_LOADED_MAX, Module,
    ModuleSource, SLOT_WALL_MS_DEFAULT, TABLE_ELEMENTS_MAX, WASM_STACK_BYTES_MAX,
};
pub use executor::{
    EXECUTOR_CORES_MAX, EXECUTOR_QUEUE_MAX, Executors, ExecutorsConfig, Job, JobDone, pin_plan,
};
pub use instance::{Instance, ProcessLimits, WALL_CLOCK_ERROR_PREFIX};
pub use legacy_eh::CONTROL_DEPTH_MAX;
pub use snapshot::{GLOBALS_MAX, GlobalValue, SNAPSHOT_VERSION, Snapshot};
pub use wasi::STDIO_BYTES_MAX;

use crate::message::{Address, Id, Message};

/// Fuel a slot gets when the process message has no `compute-limit`. One unit is roughly one
/// WebAssembly instruction, so this is on the order of a second of compute.
pub const COMPUTE_LIMIT_DEFAULT: u64 = 1_000_000_000;
/// Linear memory a process may use when its message has no `memory-limit`: 128 MiB.
pub const MEMORY_LIMIT_DEFAULT: u64 = 128 * 1024 * 1024;
/// The largest `memory-limit` a process may ask for: 4 GiB, all a 32-bit memory can address, and
/// the pooling allocator's per-memory reservation. A larger limit makes the process invalid.
pub const MEMORY_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Fuel an ao-json slot gets without `compute-limit`: AO's default of 9×10¹², clamped to
/// [`COMPUTE_LIMIT_MAX`].
pub const AO_COMPUTE_LIMIT_DEFAULT: u64 = 9_000_000_000_000;
/// Linear memory an ao-json process may use without `memory-limit`: AO's default, 1 GiB.
pub const AO_MEMORY_LIMIT_DEFAULT: u64 = 1024 * 1024 * 1024;
/// The most fuel an ao-json slot gets, whatever its `compute-limit` says: 10¹¹, on the order
/// of a minute of compute here. AO counts compute in its own units; this cap keeps a runaway
/// message a deterministic `compute-limit exceeded` failure well before the wall-clock deadline
/// would end it nondeterministically.
pub const COMPUTE_LIMIT_MAX: u64 = 100_000_000_000;
/// WebAssembly page size; memory sizes in snapshots are multiples of it.
pub const WASM_PAGE_BYTES: u64 = 64 * 1024;

const _: () = assert!(MEMORY_LIMIT_DEFAULT <= MEMORY_BYTES_MAX);
const _: () = assert!(AO_MEMORY_LIMIT_DEFAULT <= MEMORY_BYTES_MAX);
const _: () = assert!(COMPUTE_LIMIT_DEFAULT <= COMPUTE_LIMIT_MAX);
const _: () = assert!(MEMORY_BYTES_MAX.is_multiple_of(WASM_PAGE_BYTES));
const _: () = assert!(MEMORY_BYTES_MAX <= usize::MAX as u64);

/// Everything a slot's computation may see besides the message itself: the assignment's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInput {
    /// The process the message is scheduled on.
    pub process: Id,
    /// The slot the scheduler assigned (slot 0 is the process message itself).
    pub slot: u64,
    /// The message to handle.
    pub message: Message,
    /// The message's id.
    pub message_id: Id,
    /// The committer of the message (the sender).
    pub from: Address,
    /// The committer of the process message (the process owner).
    pub owner: Address,
    /// The assignment's timestamp in milliseconds: the only clock a process sees.
    pub timestamp_ms: u64,
}

/// The result of one slot: what the process said, sent and spawned, or why it failed.
///
/// When `error` is set the outbox and spawns are empty (a failed slot sends nothing); `output`
/// keeps whatever the guest wrote before failing, for diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotOutcome {
    /// Bytes the guest wrote with `output`, at most [`OUTPUT_BYTES_MAX`].
    pub output: Vec<u8>,
    /// Messages to schedule on other processes: each has a `target` field, tags and `data`.
    pub outbox: Vec<Message>,
    /// New processes to create. Always empty in the native ABI (it has no `spawn_*` import yet).
    pub spawns: Vec<Message>,
    /// Why the slot failed: a trap, exhausted fuel, memory growth over the limit, an ABI
    /// violation, the guest's own `fail`, or a nonzero `handle` result. Deterministic text.
    pub error: Option<String>,
    /// Fuel the slot consumed (equal to the limit when it ran out).
    pub fuel_used: u64,
}

/// Why execution could not produce a slot result.
///
/// Split by fault, as in rustls: the module's or process's bytes (`ModuleInvalid`,
/// `ProcessInvalid`, `SnapshotInvalid`), the caller (`SlotOutOfOrder`, `NoSlotApplied`,
/// `ProcessMismatch`), or the node's environment (`Cache`, `Engine`, `Instantiate`,
/// `ExecutorStopped`). A guest's failure inside a slot is never an `ExecError`: it is that slot's
/// [`SlotOutcome::error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The module fails WebAssembly validation or the native ABI's rules; the text says which.
    #[error("invalid module: {0}")]
    ModuleInvalid(String),
    /// The process message's `compute-limit` or `memory-limit` is malformed or out of range.
    #[error("invalid process: {0}")]
    ProcessInvalid(String),
    /// A snapshot is malformed, or does not fit the module or the process's limits.
    #[error("invalid snapshot: {0}")]
    SnapshotInvalid(String),
    /// The slot is not the one the process expects next, and no usable snapshot was given: the
    /// node must restore from a snapshot at `slot - 1` (or replay from slot 0).
    #[error("process {process}: slot {got} out of order (expected {expected:?})")]
    SlotOutOfOrder {
        /// The process.
        process: Id,
        /// The slot the live instance expects, if the process is live on its core.
        expected: Option<u64>,
        /// The slot that was submitted.
        got: u64,
    },
    /// A snapshot was asked of an instance that has not run any slot (there is nothing to save).
    #[error("no slot has run yet: nothing to snapshot")]
    NoSlotApplied,
    /// A slot input names a different process than the instance runs.
    #[error("slot input for process {got}, instance runs {expected}")]
    ProcessMismatch {
        /// The instance's process.
        expected: Id,
        /// The process the input names.
        got: Id,
    },
    /// Reading or writing the `.cwasm` cache failed (the node's disk, not the module).
    #[error("module cache: {0}")]
    Cache(String),
    /// The wasmtime engine could not be built or could not compile a valid module.
    #[error("engine: {0}")]
    Engine(String),
    /// A process could not be instantiated: pool exhausted, or its initial memory exceeds its
    /// `memory-limit`.
    #[error("instantiate: {0}")]
    Instantiate(String),
    /// The executor thread owning the process has stopped (it panicked or was shut down).
    #[error("executor stopped")]
    ExecutorStopped,
}
