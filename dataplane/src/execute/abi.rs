//! The native ABI (specified in `docs/abi.md`): host imports a guest calls during `handle`, and
//! the module rules [`check_module`] enforces before a module is compiled.
//!
//! Every import works on plain bytes in linear memory, so a hand-written WAT module can use it
//! without parsing any encoding. Host functions read only the slot's input; limits are checked
//! here and a violation traps the guest with a deterministic message that becomes the slot's
//! error.

use wasmparser::{
    CompositeInnerType, ExternalKind, Imports, Operator, Parser, Payload, TypeRef, ValType,
};
use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

use super::snapshot::GLOBAL_NAME_BYTES_MAX;
use super::{ExecError, SlotInput};
use crate::message::{Key, Message, Value};

/// The import module every native-ABI host function lives in.
pub const IMPORT_MODULE: &str = "ferrobeam";
/// Most bytes a slot may `output`: 1 MiB. More traps the guest (the slot's error).
pub const OUTPUT_BYTES_MAX: usize = 1024 * 1024;
/// Most messages a slot may put in its outbox. More traps the guest (the slot's error).
pub const OUTBOX_MESSAGES_MAX: usize = 64;
/// Most tags (`send_tag` calls with distinct keys) on one outbox message. More traps the guest.
pub const SEND_TAGS_MAX: usize = 64;
/// Most bytes (targets, keys, values, data) across a slot's whole outbox: 4 MiB. With the output
/// cap this bounds one slot's result at 5 MiB. More traps the guest.
pub const OUTBOX_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest error text kept from `fail`; longer text is truncated (not an error).
pub const ERROR_BYTES_MAX: usize = 4096;
/// The keys `env_get` answers, in the order `docs/abi.md` lists them.
pub const ENV_KEYS: [&str; 6] = ["from", "id", "process", "slot", "timestamp", "owner"];

const _: () = assert!(OUTPUT_BYTES_MAX + OUTBOX_BYTES_MAX <= i32::MAX as usize);
const _: () = assert!(SEND_TAGS_MAX + 2 <= crate::message::KEYS_MAX);

/// `msg_get`/`env_get` result: the key is absent.
const ABSENT: i32 = -1;
/// `msg_get` result: the value is a nested message or a list, which the ABI does not expose.
const NOT_SCALAR: i32 = -2;

/// The host functions and their signatures (`i32` params, optional `i32` result).
const IMPORTS: [(&str, usize, bool); 8] = [
    ("msg_get", 4, true),
    ("env_get", 4, true),
    ("output", 2, false),
    ("send_begin", 2, false),
    ("send_tag", 4, false),
    ("send_data", 2, false),
    ("send_end", 0, false),
    ("fail", 2, false),
];

/// Store data: the memory limiter and, during a slot, the slot's state.
pub(crate) struct HostState {
    pub(crate) limiter: MemoryLimiter,
    pub(crate) memory: Option<Memory>,
    pub(crate) slot: Option<SlotState>,
    /// The ao-json ABI's slot context (its imports live in `wasi`).
    pub(crate) ao: Option<super::wasi::AoSlot>,
}

impl HostState {
    pub(crate) fn new(memory_bytes_limit: usize) -> Self {
        Self {
            limiter: MemoryLimiter {
                memory_bytes_limit,
                denied_bytes: None,
            },
            memory: None,
            slot: None,
            ao: None,
        }
    }
}

/// Caps linear memory at the process's `memory-limit`. Growth past it traps (instead of
/// `memory.grow` returning -1) so the slot fails at a deterministic point with a clear error;
/// growth past the module's own declared maximum returns -1 as the spec says.
pub(crate) struct MemoryLimiter {
    pub(crate) memory_bytes_limit: usize,
    /// Set when growth was refused: the size asked for. Read to name the slot's error.
    pub(crate) denied_bytes: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_limit {
            self.denied_bytes = Some(desired);
            return Err(wasmtime::Error::msg("memory-limit exceeded"));
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `table.grow` is rejected by `check_module`; this only sees instantiation.
        Ok(desired <= super::TABLE_ELEMENTS_MAX && maximum.is_none_or(|max| desired <= max))
    }
}

/// One slot's inputs and accumulating results, owned by the store while `handle` runs.
pub(crate) struct SlotState {
    message: Message,
    env: [Vec<u8>; 6],
    pub(crate) output: Vec<u8>,
    pub(crate) outbox: Vec<Message>,
    outbox_bytes: usize,
    open: Option<OpenSend>,
    /// The guest's `fail` text, first call wins.
    pub(crate) failure: Option<String>,
    /// An ABI rule the guest broke; set just before the trap it causes.
    pub(crate) violation: Option<String>,
}

/// An outbox message between `send_begin` and `send_end`.
struct OpenSend {
    message: Message,
    data: Vec<u8>,
}

impl SlotState {
    pub(crate) fn new(input: &SlotInput) -> Self {
        let env = [
            input.from.to_string().into_bytes(),
            input.message_id.to_string().into_bytes(),
            input.process.to_string().into_bytes(),
            input.slot.to_string().into_bytes(),
            input.timestamp_ms.to_string().into_bytes(),
            input.owner.to_string().into_bytes(),
        ];
        Self {
            message: input.message.clone(),
            env,
            output: Vec::new(),
            outbox: Vec::new(),
            outbox_bytes: 0,
            open: None,
            failure: None,
            violation: None,
        }
    }

    /// True when `handle` returned with a `send_begin` not closed by `send_end`.
    pub(crate) fn send_open(&self) -> bool {
        self.open.is_some()
    }

    fn charge_outbox(&mut self, bytes: usize) -> Result<(), Violation> {
        let total = self.outbox_bytes.saturating_add(bytes);
        if total > OUTBOX_BYTES_MAX {
            return Err(Violation(format!(
                "outbox exceeds {OUTBOX_BYTES_MAX} bytes"
            )));
        }
        self.outbox_bytes = total;
        Ok(())
    }
}

/// A broken ABI rule: the guest traps and the text becomes the slot's error.
#[derive(Debug)]
struct Violation(String);

impl Violation {
    fn new(text: &str) -> Self {
        Self(text.to_owned())
    }
}

/// The linker every instance is created through: the native ABI's host functions.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<HostState>, ExecError> {
    let mut linker = Linker::new(engine);
    let m = IMPORT_MODULE;
    let engine_error = |e: wasmtime::Error| ExecError::Engine(e.to_string());
    linker
        .func_wrap(
            m,
            "msg_get",
            |c: Caller<'_, HostState>, k: u32, kl: u32, o: u32, oc: u32| {
                host(c, |mem, slot| {
                    let key = guest(mem, k, kl)?;
                    let value = std::str::from_utf8(key)
                        .ok()
                        .and_then(|key| slot.message.get(key));
                    let scalar = match value {
                        None => return Ok(ABSENT),
                        Some(Value::Bytes(bytes)) => bytes.clone(),
                        Some(Value::Int(i)) => i.to_string().into_bytes(),
                        Some(Value::Message(_) | Value::List(_)) => return Ok(NOT_SCALAR),
                    };
                    copy_out(mem, o, oc, &scalar)
                })
            },
        )
        .map_err(engine_error)?;
    linker
        .func_wrap(
            m,
            "env_get",
            |c: Caller<'_, HostState>, k: u32, kl: u32, o: u32, oc: u32| {
                host(c, |mem, slot| {
                    let key = guest(mem, k, kl)?;
                    match ENV_KEYS.iter().position(|name| name.as_bytes() == key) {
                        Some(i) => copy_out(mem, o, oc, &slot.env[i]),
                        None => Ok(ABSENT),
                    }
                })
            },
        )
        .map_err(engine_error)?;
    linker
        .func_wrap(m, "output", |c: Caller<'_, HostState>, p: u32, len: u32| {
            host(c, |mem, slot| {
                let bytes = guest(mem, p, len)?;
                if slot.output.len() + bytes.len() > OUTPUT_BYTES_MAX {
                    return Err(Violation(format!(
                        "output exceeds {OUTPUT_BYTES_MAX} bytes"
                    )));
                }
                slot.output.extend_from_slice(bytes);
                Ok(())
            })
        })
        .map_err(engine_error)?;
    define_send(&mut linker)?;
    linker
        .func_wrap(m, "fail", |c: Caller<'_, HostState>, p: u32, len: u32| {
            host(c, |mem, slot| {
                let bytes = guest(mem, p, len)?;
                if slot.failure.is_none() {
                    let kept = &bytes[..bytes.len().min(ERROR_BYTES_MAX)];
                    slot.failure = Some(String::from_utf8_lossy(kept).into_owned());
                }
                Ok(())
            })
        })
        .map_err(engine_error)?;
    Ok(linker)
}

/// `send_begin`, `send_tag`, `send_data`, `send_end`: build outbox messages one at a time.
fn define_send(linker: &mut Linker<HostState>) -> Result<(), ExecError> {
    let m = IMPORT_MODULE;
    let engine_error = |e: wasmtime::Error| ExecError::Engine(e.to_string());
    linker
        .func_wrap(
            m,
            "send_begin",
            |c: Caller<'_, HostState>, p: u32, len: u32| {
                host(c, |mem, slot| {
                    if slot.open.is_some() {
                        return Err(Violation::new("send_begin while a message is open"));
                    }
                    if slot.outbox.len() >= OUTBOX_MESSAGES_MAX {
                        return Err(Violation(format!(
                            "outbox exceeds {OUTBOX_MESSAGES_MAX} messages"
                        )));
                    }
                    let target = guest(mem, p, len)?.to_vec();
                    slot.charge_outbox(target.len())?;
                    let mut message = Message::new();
                    message
                        .set("target", Value::Bytes(target))
                        .map_err(|e| Violation(format!("send_begin: {e}")))?;
                    slot.open = Some(OpenSend {
                        message,
                        data: Vec::new(),
                    });
                    Ok(())
                })
            },
        )
        .map_err(engine_error)?;
    linker
        .func_wrap(
            m,
            "send_tag",
            |c: Caller<'_, HostState>, k: u32, kl: u32, v: u32, vl: u32| {
                host(c, |mem, slot| {
                    let key = std::str::from_utf8(guest(mem, k, kl)?)
                        .map_err(|_| Violation::new("send_tag: key is not UTF-8"))?;
                    let key = Key::new(key).map_err(|e| Violation(format!("send_tag: {e}")))?;
                    if matches!(key.as_str(), "target" | "data") {
                        return Err(Violation(format!(
                            "send_tag: {key:?} is set by send_begin/send_data"
                        )));
                    }
                    let value = guest(mem, v, vl)?.to_vec();
                    slot.charge_outbox(key.as_str().len() + value.len())?;
                    let open = slot
                        .open
                        .as_mut()
                        .ok_or_else(|| Violation::new("send_tag without send_begin"))?;
                    // Tags plus `target` (and later `data`): the bound counts tags only.
                    if open.message.get(key.as_str()).is_none()
                        && open.message.len() > SEND_TAGS_MAX
                    {
                        return Err(Violation(format!(
                            "outbox message exceeds {SEND_TAGS_MAX} tags"
                        )));
                    }
                    open.message
                        .set(key.as_str(), Value::Bytes(value))
                        .map_err(|e| Violation(format!("send_tag: {e}")))
                })
            },
        )
        .map_err(engine_error)?;
    linker
        .func_wrap(
            m,
            "send_data",
            |c: Caller<'_, HostState>, p: u32, len: u32| {
                host(c, |mem, slot| {
                    let bytes = guest(mem, p, len)?;
                    slot.charge_outbox(bytes.len())?;
                    let open = slot
                        .open
                        .as_mut()
                        .ok_or_else(|| Violation::new("send_data without send_begin"))?;
                    open.data.extend_from_slice(bytes);
                    Ok(())
                })
            },
        )
        .map_err(engine_error)?;
    linker
        .func_wrap(m, "send_end", |c: Caller<'_, HostState>| {
            host(c, |_mem, slot| {
                let open = slot
                    .open
                    .take()
                    .ok_or_else(|| Violation::new("send_end without send_begin"))?;
                let mut message = open.message;
                if !open.data.is_empty() {
                    message
                        .set("data", Value::Bytes(open.data))
                        .map_err(|e| Violation(format!("send_end: {e}")))?;
                }
                slot.outbox.push(message);
                Ok(())
            })
        })
        .map_err(engine_error)?;
    Ok(())
}

/// Runs a host function body with the guest's memory and the slot state. A [`Violation`] is
/// recorded in the slot state (so the slot's error names it) and returned as a trap.
fn host<R>(
    mut caller: Caller<'_, HostState>,
    body: impl FnOnce(&mut [u8], &mut SlotState) -> Result<R, Violation>,
) -> wasmtime::Result<R> {
    let Some(memory) = caller.data().memory else {
        return Err(wasmtime::Error::msg(
            "native ABI called before instantiation",
        ));
    };
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let Some(slot) = state.slot.as_mut() else {
        // No slot is running: only possible from a start function, which check_module rejects.
        return Err(wasmtime::Error::msg("native ABI called outside a slot"));
    };
    body(mem, slot).map_err(|violation| {
        let text = format!("abi: {}", violation.0);
        slot.violation = Some(text.clone());
        wasmtime::Error::msg(text)
    })
}

/// The guest bytes at `[ptr, ptr + len)`, or a violation when they are outside memory.
fn guest(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Violation> {
    let start = ptr as usize;
    start
        .checked_add(len as usize)
        .and_then(|end| mem.get(start..end))
        .ok_or_else(|| Violation(format!("range {ptr}+{len} outside linear memory")))
}

/// Copies as much of `value` as fits into the guest buffer `[out, out + cap)` and returns the
/// full length, so a guest whose buffer was too small can retry with a bigger one.
fn copy_out(mem: &mut [u8], out: u32, cap: u32, value: &[u8]) -> Result<i32, Violation> {
    let start = out as usize;
    let buffer = start
        .checked_add(cap as usize)
        .and_then(|end| mem.get_mut(start..end))
        .ok_or_else(|| Violation(format!("range {out}+{cap} outside linear memory")))?;
    let n = value.len().min(buffer.len());
    buffer[..n].copy_from_slice(&value[..n]);
    // Values come from messages, whose size is bounded far below i32::MAX.
    i32::try_from(value.len()).map_err(|_| Violation::new("value larger than 2 GiB"))
}

/// Mutable global types a snapshot can hold.
fn snapshot_type(ty: ValType) -> bool {
    matches!(
        ty,
        ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128
    )
}

/// Checks the native ABI's rules on a module that already passed wasmtime validation:
///
/// - imports only from [`IMPORT_MODULE`], only the functions in `docs/abi.md`, with their
///   signatures (so WASI and anything else fail here, naming the import);
/// - exports `memory` (one 32-bit, unshared memory) and `handle: () -> i32`;
/// - no start function (instantiation, which restore repeats, must not run guest code);
/// - every mutable global exported, of a numeric type, so a [`super::Snapshot`] captures it;
/// - no instruction that changes state a snapshot does not hold: `table.set`, `table.grow`,
///   `table.fill`, `table.copy`, `table.init`, `elem.drop`, `data.drop`.
///
/// # Errors
/// [`ExecError::ModuleInvalid`] naming the first rule broken.
pub(crate) fn check_module(wasm: &[u8]) -> Result<(), ExecError> {
    let mut scan = Scan::default();
    scan.read(wasm).map_err(ExecError::ModuleInvalid)?;
    scan.finish().map_err(ExecError::ModuleInvalid)
}

/// What [`check_module`] gathers in one pass over the module.
#[derive(Default)]
struct Scan {
    /// Function types by type index (`None` for non-function types).
    types: Vec<Option<(Vec<ValType>, Vec<ValType>)>>,
    /// Type index of each function, imports first.
    functions: Vec<u32>,
    /// Types of the defined globals.
    globals: Vec<wasmparser::GlobalType>,
    memories: Vec<wasmparser::MemoryType>,
    exports: Vec<(String, ExternalKind, u32)>,
}

impl Scan {
    fn read(&mut self, wasm: &[u8]) -> Result<(), String> {
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(|e| e.to_string())? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group.map_err(|e| e.to_string())?.into_types() {
                            self.types.push(match sub.composite_type.inner {
                                CompositeInnerType::Func(f) => {
                                    Some((f.params().to_vec(), f.results().to_vec()))
                                }
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for group in reader {
                        self.import_group(group.map_err(|e| e.to_string())?)?;
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        self.functions.push(ty.map_err(|e| e.to_string())?);
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        self.globals.push(global.map_err(|e| e.to_string())?.ty);
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        self.memories.push(memory.map_err(|e| e.to_string())?);
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(|e| e.to_string())?;
                        self.exports
                            .push((export.name.to_owned(), export.kind, export.index));
                    }
                }
                Payload::StartSection { .. } => {
                    return Err(
                        "a start function is not allowed (state must come from slots only)".into(),
                    );
                }
                Payload::CodeSectionEntry(body) => check_body(&body)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn import_group(&mut self, group: Imports<'_>) -> Result<(), String> {
        match group {
            Imports::Single(_, import) => self.import(import.module, import.name, import.ty),
            Imports::Compact1 { module, items } => {
                for item in items {
                    let item = item.map_err(|e| e.to_string())?;
                    self.import(module, item.name, item.ty)?;
                }
                Ok(())
            }
            Imports::Compact2 { module, ty, names } => {
                for name in names {
                    self.import(module, name.map_err(|e| e.to_string())?, ty)?;
                }
                Ok(())
            }
        }
    }

    fn import(&mut self, module: &str, name: &str, ty: TypeRef) -> Result<(), String> {
        if module != IMPORT_MODULE {
            return Err(format!(
                "import {module}::{name} is not allowed: the native ABI imports only from \"{IMPORT_MODULE}\" (no WASI)"
            ));
        }
        let Some(&(_, params, result)) = IMPORTS.iter().find(|i| i.0 == name) else {
            return Err(format!(
                "import {module}::{name} is not a native ABI function"
            ));
        };
        let (TypeRef::Func(index) | TypeRef::FuncExact(index)) = ty else {
            return Err(format!("import {module}::{name} must be a function"));
        };
        let expected = (
            vec![ValType::I32; params],
            if result { vec![ValType::I32] } else { vec![] },
        );
        if self.types.get(index as usize).cloned().flatten() != Some(expected) {
            let results = if result { " -> i32" } else { "" };
            return Err(format!(
                "import {module}::{name} has the wrong signature: expected ({} i32){results}",
                params
            ));
        }
        self.functions.push(index);
        Ok(())
    }

    fn finish(self) -> Result<(), String> {
        let export = |name: &str| self.exports.iter().find(|e| e.0 == name);
        match export("memory") {
            Some((_, ExternalKind::Memory, _)) => {}
            _ => return Err("missing export: memory".into()),
        }
        let [memory] = self.memories.as_slice() else {
            return Err(format!(
                "expected exactly one memory, found {}",
                self.memories.len()
            ));
        };
        if memory.memory64 || memory.shared {
            return Err("memory must be 32-bit and unshared".into());
        }
        let handle = match export("handle") {
            Some((_, ExternalKind::Func | ExternalKind::FuncExact, index)) => *index,
            _ => return Err("missing export: handle (a function)".into()),
        };
        let ty = self.functions.get(handle as usize).copied();
        let signature = ty.and_then(|ty| self.types.get(ty as usize).cloned().flatten());
        if signature != Some((vec![], vec![ValType::I32])) {
            return Err("export handle must have type () -> i32".into());
        }
        for (index, global) in self.globals.iter().enumerate() {
            if !global.mutable {
                continue;
            }
            let mut names = self
                .exports
                .iter()
                .filter(|(_, kind, i)| *kind == ExternalKind::Global && *i as usize == index);
            let Some((name, _, _)) = names.next() else {
                return Err(format!(
                    "mutable global {index} is not exported: a snapshot could not save it"
                ));
            };
            if name.len() > GLOBAL_NAME_BYTES_MAX {
                return Err(format!(
                    "mutable global export name longer than {GLOBAL_NAME_BYTES_MAX} bytes"
                ));
            }
            if !snapshot_type(global.content_type) {
                return Err(format!(
                    "mutable global {index} must be i32, i64, f32, f64 or v128"
                ));
            }
        }
        let mutable = self.globals.iter().filter(|g| g.mutable).count();
        if mutable > super::GLOBALS_MAX {
            return Err(format!("more than {} mutable globals", super::GLOBALS_MAX));
        }
        Ok(())
    }
}

/// Rejects instructions that change state outside linear memory and globals.
fn check_body(body: &wasmparser::FunctionBody<'_>) -> Result<(), String> {
    match forbidden_instruction(body)? {
        Some(name) => Err(format!(
            "instruction {name} is not allowed: it changes state a snapshot does not hold"
        )),
        None => Ok(()),
    }
}

/// The first instruction of `body` that changes state outside linear memory and globals (tables,
/// segments): a snapshot would not hold it, so no ABI allows it.
pub(super) fn forbidden_instruction(
    body: &wasmparser::FunctionBody<'_>,
) -> Result<Option<&'static str>, String> {
    let mut reader = body.get_operators_reader().map_err(|e| e.to_string())?;
    while !reader.eof() {
        let name = match reader.read().map_err(|e| e.to_string())? {
            Operator::TableSet { .. } => "table.set",
            Operator::TableGrow { .. } => "table.grow",
            Operator::TableFill { .. } => "table.fill",
            Operator::TableCopy { .. } => "table.copy",
            Operator::TableInit { .. } => "table.init",
            Operator::ElemDrop { .. } => "elem.drop",
            Operator::DataDrop { .. } => "data.drop",
            _ => continue,
        };
        return Ok(Some(name));
    }
    Ok(None)
}
