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

use wasmtime::{ExternType, Global, Memory, Mutability, Store, Trap, TypedFunc, Val};

use super::abi::{HostState, SlotState};
use super::memory;
use super::{
    COMPUTE_LIMIT_DEFAULT, ExecError, GlobalValue, MEMORY_BYTES_MAX, MEMORY_LIMIT_DEFAULT, Module,
    SlotInput, SlotOutcome, Snapshot,
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
    handle: TypedFunc<(), i32>,
    memory: Memory,
    /// Exported mutable globals by export name: with `memory`, the whole state.
    globals: BTreeMap<String, Global>,
    process: Id,
    limits: ProcessLimits,
    next_slot: u64,
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
        let limits = ProcessLimits::of(definition)?;
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
        let handle = instance
            .get_typed_func::<(), i32>(&mut store, "handle")
            .map_err(|e| ExecError::Engine(format!("validated module's handle: {e}")))?;
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
            handle,
            memory,
            globals,
            process,
            limits,
            next_slot: 0,
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
        let state = self.store.data_mut();
        state.slot = Some(SlotState::new(input));
        state.limiter.denied_bytes = None;
        self.store
            .set_fuel(fuel)
            .map_err(|e| ExecError::Engine(e.to_string()))?;
        let result = self.handle.call(&mut self.store, ());
        // Fuel only decreases during the call; a read failure would mean fuel is off (a bug).
        let remaining = self.store.get_fuel().unwrap_or(0);
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
                &slot,
                state.limiter.denied_bytes,
                &self.limits,
            )),
        };
        self.next_slot += 1;
        let failed = error.is_some();
        Ok(SlotOutcome {
            output: slot.output,
            outbox: if failed { Vec::new() } else { slot.outbox },
            spawns: Vec::new(),
            error,
            fuel_used: fuel.saturating_sub(remaining),
        })
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
    slot: &SlotState,
    denied_bytes: Option<usize>,
    limits: &ProcessLimits,
) -> String {
    if let Some(violation) = &slot.violation {
        return violation.clone();
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
        // Display reads "wasm trap: <what>", fixed text per trap code.
        Some(trap) => trap.to_string(),
        None => format!("error: {error}"),
    }
}
