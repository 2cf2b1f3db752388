//! One process's live instance: run slots, take and restore snapshots.
//!
//! State after a failed slot: a trap (including exhausted fuel, memory growth over the limit and
//! ABI violations) stops the guest where it is, and the process continues with the next slot
//! from the state as the trap left it: linear memory and globals keep every write made before
//! the trap, and nothing is rolled back. This is deterministic (fuel and limits stop the guest at
//! the same instruction on every node) and costs nothing per slot, where a rollback would copy
//! the memory each slot. A guest that needs atomic slots writes its state last. A `fail` or a
//! nonzero `handle` result keeps the state likewise; in every failed slot the outbox is dropped.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use wasmtime::{ExternType, Global, Memory, Mutability, Store, Trap, TypedFunc, Val};

use super::abi::{HostState, SlotState};
use super::aojson::{self, Abi, CallError};
use super::memory;
use super::wasi::{self, AoSlot};
use super::{
    AO_COMPUTE_LIMIT_DEFAULT, AO_MEMORY_LIMIT_DEFAULT, COMPUTE_LIMIT_DEFAULT, COMPUTE_LIMIT_MAX,
    ExecError, GlobalValue, MEMORY_BYTES_MAX, MEMORY_LIMIT_DEFAULT, Module, SlotInput, SlotOutcome,
    Snapshot,
};
use crate::message::{Id, Message, Value};

/// The limits a process message sets: fuel per slot and linear memory bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Fuel each slot gets (`compute-limit`, default [`COMPUTE_LIMIT_DEFAULT`]).
    pub fuel_per_slot: u64,
    /// Linear memory cap in bytes (`memory-limit`, default [`MEMORY_LIMIT_DEFAULT`], at most
    /// [`MEMORY_BYTES_MAX`]).
    pub memory_bytes: u64,
}

impl ProcessLimits {
    /// Reads `compute-limit` and `memory-limit`: an integer, decimal text, or for memory AO's
    /// `<n>-kb`, `<n>-mb`, `<n>-gb` form (binary units).
    ///
    /// # Errors
    /// [`ExecError::ProcessInvalid`] for a malformed, non-positive or too large value.
    pub fn of(process: &Message) -> Result<Self, ExecError> {
        let fuel_per_slot = match process.get("compute-limit") {
            None => COMPUTE_LIMIT_DEFAULT,
            Some(value) => positive(value, "compute-limit", false)?,
        };
        let memory_bytes = match process.get("memory-limit") {
            None => MEMORY_LIMIT_DEFAULT,
            Some(value) => positive(value, "memory-limit", true)?,
        };
        if memory_bytes > MEMORY_BYTES_MAX {
            return Err(ExecError::ProcessInvalid(format!(
                "memory-limit {memory_bytes} exceeds {MEMORY_BYTES_MAX}"
            )));
        }
        Ok(Self {
            fuel_per_slot,
            memory_bytes,
        })
    }

    /// The limits for a process of `abi`. Native: as [`ProcessLimits::of`]. ao-json: AO's
    /// defaults (`memory-limit` 1 GiB, `compute-limit` 9×10¹²) and AO's values are clamped, not
    /// refused: memory to [`MEMORY_BYTES_MAX`] (the pool's per-instance reservation), compute
    /// to [`COMPUTE_LIMIT_MAX`] fuel.
    ///
    /// # Errors
    /// [`ExecError::ProcessInvalid`] for a malformed or non-positive value.
    pub fn for_abi(process: &Message, abi: Abi) -> Result<Self, ExecError> {
        if abi == Abi::Native {
            return Self::of(process);
        }
        let fuel_per_slot = match process.get("compute-limit") {
            None => AO_COMPUTE_LIMIT_DEFAULT,
            Some(value) => positive(value, "compute-limit", false)?,
        };
        let memory_bytes = match process.get("memory-limit") {
            None => AO_MEMORY_LIMIT_DEFAULT,
            Some(value) => positive(value, "memory-limit", true)?,
        };
        Ok(Self {
            fuel_per_slot: fuel_per_slot.min(COMPUTE_LIMIT_MAX),
            memory_bytes: memory_bytes.min(MEMORY_BYTES_MAX),
        })
    }
}

fn positive(value: &Value, key: &str, units: bool) -> Result<u64, ExecError> {
    let invalid = || ExecError::ProcessInvalid(format!("{key}: expected a positive integer"));
    let number = match value.as_int() {
        Some(n) => u64::try_from(n).map_err(|_| invalid())?,
        None if units => {
            let text = value
                .as_text()
                .ok_or_else(invalid)?
                .trim()
                .to_ascii_lowercase();
            let (digits, unit) = text.split_once('-').ok_or_else(invalid)?;
            let scale: u64 = match unit {
                "kb" => 1 << 10,
                "mb" => 1 << 20,
                "gb" => 1 << 30,
                _ => return Err(invalid()),
            };
            let n: u64 = digits.parse().map_err(|_| invalid())?;
            n.checked_mul(scale).ok_or_else(invalid)?
        }
        None => return Err(invalid()),
    };
    if number == 0 {
        return Err(invalid());
    }
    Ok(number)
}

/// A process's live instance: its store (memory, globals, fuel, limiter) and where it stands in
/// its schedule.
pub struct Instance {
    store: Store<HostState>,
    entry: Entry,
    memory: Memory,
    /// Exported mutable globals by export name: with `memory`, the whole state.
    globals: BTreeMap<String, Global>,
    process: Id,
    limits: ProcessLimits,
    next_slot: u64,
    /// Epoch ticks each slot may run.
    epoch_ticks: u64,
}

/// How a slot is called.
enum Entry {
    /// `handle: () -> i32`.
    Native(TypedFunc<(), i32>),
    /// `malloc`/`handle` with JSON, plus what the env JSON needs.
    Ao {
        entry: aojson::Entry,
        definition: Box<Message>,
        module: Id,
    },
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("process", &self.process)
            .field("limits", &self.limits)
            .field("next_slot", &self.next_slot)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// A fresh instance of `module` for process `process`, defined by the message `definition`
    /// (its limits come from it); it expects slot 0, which is the process message itself.
    ///
    /// # Errors
    /// [`ExecError::ProcessInvalid`] for bad limits; [`ExecError::Instantiate`] when the pool is
    /// exhausted or the module's initial memory exceeds the `memory-limit`.
    pub fn new(module: &Module, process: Id, definition: &Message) -> Result<Self, ExecError> {
        let abi = Abi::of(definition)?;
        check_abi(abi, module.abi())?;
        let limits = ProcessLimits::for_abi(definition, abi)?;
        // memory_bytes <= MEMORY_BYTES_MAX, which fits usize (asserted in execute).
        let mut store = Store::new(
            module.pre().module().engine(),
            HostState::new(limits.memory_bytes as usize),
        );
        store.limiter(|state| &mut state.limiter);
        // No start function runs (validation forbids one), but instantiation needs fuel set.
        store
            .set_fuel(limits.fuel_per_slot)
            .map_err(|e| ExecError::Engine(e.to_string()))?;
        let instance = module
            .pre()
            .instantiate(&mut store)
            .map_err(|e| ExecError::Instantiate(format!("{e:#}")))?;
        // Validation guarantees both exports; a failure here is an engine/validation bug.
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| ExecError::Engine("validated module lacks memory".into()))?;
        let entry = match abi {
            Abi::Native => Entry::Native(
                instance
                    .get_typed_func::<(), i32>(&mut store, "handle")
                    .map_err(|e| ExecError::Engine(format!("validated module's handle: {e}")))?,
            ),
            Abi::AoJson { memory64 } => Entry::Ao {
                entry: aojson::Entry::of(&instance, &mut store, memory64)?,
                definition: Box::new(definition.clone()),
                module: module.id(),
            },
        };
        store.data_mut().memory = Some(memory);
        let mut globals = BTreeMap::new();
        for export in module.pre().module().exports() {
            if let ExternType::Global(ty) = export.ty()
                && ty.mutability() == Mutability::Var
                && let Some(global) = instance.get_global(&mut store, export.name())
            {
                globals.insert(export.name().to_owned(), global);
            }
        }
        Ok(Self {
            store,
            entry,
            memory,
            globals,
            process,
            limits,
            next_slot: 0,
            epoch_ticks: module.epoch_ticks(),
        })
    }

    /// A fresh instance brought to the state in `snapshot`: memory grown to the saved size, the
    /// bytes copied, the globals set. It expects slot `snapshot.slot + 1`.
    ///
    /// # Errors
    /// As [`Instance::new`], and [`ExecError::SnapshotInvalid`] when the snapshot does not fit
    /// the module (globals differ, memory smaller than the initial size) or the `memory-limit`.
    pub fn restore(
        module: &Module,
        process: Id,
        definition: &Message,
        snapshot: &Snapshot,
    ) -> Result<Self, ExecError> {
        let mut instance = Self::new(module, process, definition)?;
        let names_match = instance.globals.keys().eq(snapshot.globals.keys());
        if !names_match {
            return Err(ExecError::SnapshotInvalid(
                "globals differ from the module's exported mutable globals".into(),
            ));
        }
        memory::write_all(instance.memory, &mut instance.store, &snapshot.memory)?;
        for (name, value) in &snapshot.globals {
            let global = instance.globals[name];
            let value = match *value {
                GlobalValue::I32(v) => Val::I32(v),
                GlobalValue::I64(v) => Val::I64(v),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            global
                .set(&mut instance.store, value)
                .map_err(|e| ExecError::SnapshotInvalid(format!("global {name}: {e}")))?;
        }
        instance.next_slot = snapshot
            .slot
            .checked_add(1)
            .ok_or_else(|| ExecError::SnapshotInvalid("slot u64::MAX".into()))?;
        Ok(instance)
    }

    /// The process this instance runs.
    pub fn process(&self) -> Id {
        self.process
    }

    /// The slot this instance expects next.
    pub fn next_slot(&self) -> u64 {
        self.next_slot
    }

    /// The process's limits.
    pub fn limits(&self) -> ProcessLimits {
        self.limits
    }

    /// Current linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Runs one slot: calls `handle` with the slot's message and context, with the process's
    /// fuel. A guest failure is the outcome's `error`, never an `Err`.
    ///
    /// # Errors
    /// [`ExecError::ProcessMismatch`] or [`ExecError::SlotOutOfOrder`]: the caller's mistake;
    /// the instance is unchanged.
    pub fn run(&mut self, input: &SlotInput) -> Result<SlotOutcome, ExecError> {
        if input.process != self.process {
            return Err(ExecError::ProcessMismatch {
                expected: self.process,
                got: input.process,
            });
        }
        if input.slot != self.next_slot {
            return Err(ExecError::SlotOutOfOrder {
                process: self.process,
                expected: Some(self.next_slot),
                got: input.slot,
            });
        }
        let fuel = self.limits.fuel_per_slot;
        self.store.data_mut().limiter.denied_bytes = None;
        self.store
            .set_fuel(fuel)
            .map_err(|e| ExecError::Engine(e.to_string()))?;
        self.store.set_epoch_deadline(self.epoch_ticks);
        let mut outcome = match &self.entry {
            Entry::Native(handle) => {
                let handle = handle.clone();
                self.run_native(&handle, input)
            }
            Entry::Ao {
                entry,
                definition,
                module,
            } => {
                let message = aojson::message_json(input, *module);
                let env = aojson::env_json(input, definition, *module);
                let entry = entry.clone();
                self.run_ao(&entry, input, &message, &env)
            }
        };
        // Fuel only decreases during the call; a read failure would mean fuel is off (a bug).
        let remaining = self.store.get_fuel().unwrap_or(0);
        outcome.fuel_used = fuel.saturating_sub(remaining);
        self.next_slot += 1;
        Ok(outcome)
    }

    fn run_native(&mut self, handle: &TypedFunc<(), i32>, input: &SlotInput) -> SlotOutcome {
        self.store.data_mut().slot = Some(SlotState::new(input));
        let result = handle.call(&mut self.store, ());
        let state = self.store.data_mut();
        let slot = state.slot.take().expect("slot state set above");
        let error = match result {
            Ok(0) if slot.send_open() => {
                Some("abi: handle returned with an unfinished send".into())
            }
            Ok(0) => slot.failure.clone(),
            Ok(code) => Some(
                slot.failure
                    .clone()
                    .unwrap_or(format!("handle returned {code}")),
            ),
            Err(e) => Some(describe_trap(
                &e,
                slot.violation.as_deref(),
                state.limiter.denied_bytes,
                &self.limits,
                self.epoch_ticks,
            )),
        };
        let failed = error.is_some();
        SlotOutcome {
            output: slot.output,
            outbox: if failed { Vec::new() } else { slot.outbox },
            spawns: Vec::new(),
            error,
            fuel_used: 0,
        }
    }

    /// One ao-json slot: message and env JSON in, response JSON out, mapped to the outcome.
    fn run_ao(
        &mut self,
        entry: &aojson::Entry,
        input: &SlotInput,
        message: &[u8],
        env: &[u8],
    ) -> SlotOutcome {
        let seed = Sha256::new()
            .chain_update(b"ferrobeam-random-v1")
            .chain_update(input.process.as_bytes())
            .chain_update(input.slot.to_be_bytes())
            .chain_update(input.message_id.as_bytes())
            .finalize()
            .into();
        self.store.data_mut().ao = Some(AoSlot::new(input.timestamp_ms, seed));
        let result = aojson::call(&mut self.store, self.memory, entry, message, env);
        let state = self.store.data_mut();
        let ao = state.ao.take().expect("ao slot state set above");
        let error = match result {
            Ok(text) => match aojson::response(&text) {
                Ok(response) => {
                    let failed = response.error.is_some();
                    return SlotOutcome {
                        output: response.output,
                        outbox: if failed { Vec::new() } else { response.outbox },
                        spawns: if failed { Vec::new() } else { response.spawns },
                        error: response.error,
                        fuel_used: 0,
                    };
                }
                Err(e) => format!("ao-json: {e}"),
            },
            Err(CallError::Abi(e)) => format!("ao-json: {e}"),
            Err(CallError::Trap(e)) => {
                let mut text = describe_trap(
                    &e,
                    None,
                    state.limiter.denied_bytes,
                    &self.limits,
                    self.epoch_ticks,
                );
                if !ao.stdio.is_empty() {
                    let tail = &ao.stdio[ao.stdio.len().saturating_sub(wasi::STDIO_TAIL_BYTES)..];
                    text.push_str("; stdout/stderr: ");
                    text.push_str(&String::from_utf8_lossy(tail));
                }
                text
            }
        };
        SlotOutcome {
            error: Some(error),
            ..SlotOutcome::default()
        }
    }

    /// The state after the last slot run.
    ///
    /// # Errors
    /// [`ExecError::NoSlotApplied`] before slot 0 has run.
    pub fn snapshot(&mut self) -> Result<Snapshot, ExecError> {
        let slot = self
            .next_slot
            .checked_sub(1)
            .ok_or(ExecError::NoSlotApplied)?;
        let mut globals = BTreeMap::new();
        for (name, global) in &self.globals {
            let value = match global.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v),
                Val::I64(v) => GlobalValue::I64(v),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                // check_module admits only numeric mutable globals.
                other => unreachable!("validated global {name} holds {other:?}"),
            };
            globals.insert(name.clone(), value);
        }
        Ok(Snapshot {
            slot,
            memory: memory::read_all(self.memory, &self.store),
            globals,
        })
    }
}

/// The slot error for a trapped call, in deterministic words (no addresses or backtraces).
fn describe_trap(
    error: &wasmtime::Error,
    violation: Option<&str>,
    denied_bytes: Option<usize>,
    limits: &ProcessLimits,
    epoch_ticks: u64,
) -> String {
    if let Some(violation) = violation {
        return violation.to_owned();
    }
    if let Some(bytes) = denied_bytes {
        return format!(
            "memory-limit exceeded: growing to {bytes} bytes, limit {}",
            limits.memory_bytes
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => format!(
            "compute-limit exceeded: all {} fuel consumed",
            limits.fuel_per_slot
        ),
        // The one nondeterministic failure: another node may finish the slot in time.
        Some(Trap::Interrupt) => format!(
            "{WALL_CLOCK_ERROR_PREFIX} slot ran longer than {} ms",
            epoch_ticks * super::EPOCH_TICK_MS
        ),
        // Display reads "wasm trap: <what>", fixed text per trap code.
        Some(trap) => trap.to_string(),
        None => {
            if let Some(exit) = error.downcast_ref::<wasi::ProcExit>() {
                exit.to_string()
            } else if error.downcast_ref::<wasi::Abort>().is_some()
                || error.downcast_ref::<wasi::Longjmp>().is_some()
            {
                format!("error: {}", error.root_cause())
            } else {
                format!("error: {error}")
            }
        }
    }
}

/// The start of a slot error caused by the wall-clock deadline (epoch interruption): the only
/// slot error that is not deterministic. A node that records it says "this node gave up", not
/// "the process failed"; `docs/abi.md` says how it is reported.
pub const WALL_CLOCK_ERROR_PREFIX: &str = "wall-clock-limit exceeded (nondeterministic):";

/// A process's `module-format` must name the ABI its module was built for.
fn check_abi(process: Abi, module: Abi) -> Result<(), ExecError> {
    match (process, module) {
        (Abi::Native, Abi::Native) => Ok(()),
        (Abi::AoJson { memory64: a }, Abi::AoJson { memory64: b }) if a == b => Ok(()),
        (Abi::AoJson { memory64 }, Abi::AoJson { .. }) => Err(ExecError::ProcessInvalid(format!(
            "module-format names a {} module, but the module's memory is {}",
            if memory64 { "memory64" } else { "32-bit" },
            if memory64 { "32-bit" } else { "64-bit" },
        ))),
        (Abi::Native, _) => Err(ExecError::ProcessInvalid(
            "the module uses the ao-json ABI: the process needs a module-format tag".into(),
        )),
        (_, Abi::Native) => Err(ExecError::ProcessInvalid(
            "module-format names the ao-json ABI, but the module uses the native ABI".into(),
        )),
    }
}
