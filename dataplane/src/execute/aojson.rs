//! The ao-json ABI (`docs/abi.md`, "The ao-json ABI"): the ABI of real AO/aos processes,
//! emscripten builds that take a message and an environment as NUL-terminated JSON and answer
//! with NUL-terminated JSON.
//!
//! ```text
//! SlotInput --message_json--> malloc(len+1), copy, NUL ─┐
//! process   --env_json------> malloc(len+1), copy, NUL ─┴─> handle(msg, env) -> ptr
//! ptr --read up to NUL--> {"ok", "response": {Output, Messages, Spawns, Error}} --outcome--> SlotOutcome
//! ```
//!
//! Modules are prepared on load ([`prepare`]): legacy exception opcodes are translated
//! (`legacy_eh`) and mutable globals the module keeps to itself (emscripten's stack pointer) are
//! exported as `ferrobeam.global.<index>`, so a snapshot restores them exactly. The host imports
//! live in `wasi`.

use serde_json::{Map, Value as Json, json};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType};
use wasmtime::{AsContextMut, Memory, TypedFunc};

use super::legacy_eh::{self, Rewrite, Signature};
use super::snapshot::GLOBAL_NAME_BYTES_MAX;
use super::{
    ExecError, GLOBALS_MAX, OUTBOX_BYTES_MAX, OUTBOX_MESSAGES_MAX, OUTPUT_BYTES_MAX, SEND_TAGS_MAX,
    SlotInput,
};
use crate::message::{Id, KEY_BYTES_MAX, Key, Message, Value, b64, json as message_json};

/// The memory64 module format aos targets first.
pub const MODULE_FORMAT_WASM64: &str = "wasm64-unknown-emscripten-draft_2024_02_15";
/// Prefix of the wasm32 emscripten formats (`wasm32-unknown-emscripten`, `...2`, `...3`, ...).
pub const MODULE_FORMAT_WASM32_PREFIX: &str = "wasm32-unknown-emscripten";
/// Longest response `handle` may return (bytes before the NUL). Longer: the slot fails.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Prefix of the export names given to mutable globals a module does not export.
pub const GLOBAL_EXPORT_PREFIX: &str = "ferrobeam.global.";

const _: () = assert!(RESPONSE_BYTES_MAX >= OUTPUT_BYTES_MAX + OUTBOX_BYTES_MAX);

/// Which ABI a process uses: chosen by its `module-format` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Abi {
    /// ferrobeam's own ABI (no `module-format`).
    Native,
    /// The ao-json ABI; `memory64` for `wasm64-unknown-emscripten-draft_2024_02_15`.
    AoJson {
        /// Pointers are 64-bit (memory64).
        memory64: bool,
    },
}

impl Abi {
    /// The ABI a process message asks for with `module-format`: none → native; one of the
    /// emscripten formats → ao-json.
    ///
    /// # Errors
    /// [`ExecError::ProcessInvalid`] for a `module-format` ferrobeam does not run.
    pub fn of(process: &Message) -> Result<Self, ExecError> {
        let Some(value) = process.get("module-format") else {
            return Ok(Abi::Native);
        };
        let format = value.as_text().unwrap_or_default().trim();
        if format == MODULE_FORMAT_WASM64 {
            Ok(Abi::AoJson { memory64: true })
        } else if format.starts_with(MODULE_FORMAT_WASM32_PREFIX) {
            Ok(Abi::AoJson { memory64: false })
        } else {
            Err(ExecError::ProcessInvalid(format!(
                "module-format {format:?} is not supported (expected {MODULE_FORMAT_WASM64} or {MODULE_FORMAT_WASM32_PREFIX}*)"
            )))
        }
    }
}

/// True when `wasm` has the shape of an ao-json module: it exports `malloc` (a native module
/// has no reason to). Used to pick the engine when no process is at hand (module upload); a
/// process's `module-format` must then agree. Any other module is held to the native ABI's
/// rules, so a native module with a WASI import still fails with the native ABI's message.
pub(crate) fn detect(wasm: &[u8]) -> bool {
    let mut parser = Parser::new(0);
    parser.set_features(legacy_eh::parse_features());
    for payload in parser.parse_all(wasm) {
        match payload {
            Ok(Payload::ExportSection(reader)) => {
                return reader.into_iter().flatten().any(|e| e.name == "malloc");
            }
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

/// The module as compiled: legacy exception opcodes translated, private mutable globals
/// exported. Returns the bytes unchanged when neither applies.
///
/// # Errors
/// [`ExecError::ModuleInvalid`] when the module does not parse or cannot be translated.
pub(crate) fn prepare(wasm: &[u8]) -> Result<Vec<u8>, ExecError> {
    let invalid = |e: String| ExecError::ModuleInvalid(e);
    let shape = Shape::read(wasm).map_err(invalid)?;
    let export_globals: Vec<(u32, String)> = shape
        .globals
        .iter()
        .enumerate()
        .filter(|(i, g)| {
            g.mutable
                && !shape
                    .exports
                    .iter()
                    .any(|(_, k, x)| *k == ExternalKind::Global && *x as usize == *i)
        })
        .map(|(i, _)| (i as u32, format!("{GLOBAL_EXPORT_PREFIX}{i}")))
        .collect();
    if export_globals.is_empty() && !legacy_eh::uses_legacy(wasm).map_err(invalid)? {
        return Ok(wasm.to_vec());
    }
    legacy_eh::rewrite(wasm, &Rewrite { export_globals })
        .map_err(|e| invalid(format!("translating: {e}")))
}

/// Checks the ao-json rules on a prepared module that passed wasmtime validation:
///
/// - one memory, exported as `memory`, unshared (memory64 or 32-bit: [`Abi::AoJson`]'s
///   `memory64` follows it);
/// - exports `malloc: (p) -> p` and `handle: (p, p) -> p`, `p` being the pointer type;
/// - no start function; every mutable global exported (after [`prepare`]) and numeric;
/// - no instruction that changes tables or drops segments (state a snapshot does not hold).
///
/// Returns whether the memory is 64-bit.
///
/// # Errors
/// [`ExecError::ModuleInvalid`] naming the first rule broken.
pub(crate) fn check_module(wasm: &[u8]) -> Result<bool, ExecError> {
    let shape = Shape::read(wasm).map_err(ExecError::ModuleInvalid)?;
    shape.check().map_err(ExecError::ModuleInvalid)
}

/// What the ao-json checks read from a module.
#[derive(Default)]
struct Shape {
    types: Vec<Option<Signature>>,
    functions: Vec<u32>,
    globals: Vec<wasmparser::GlobalType>,
    memories: Vec<wasmparser::MemoryType>,
    exports: Vec<(String, ExternalKind, u32)>,
    start: bool,
    /// The first state-changing table or segment instruction found.
    forbidden: Option<&'static str>,
}

impl Shape {
    fn read(wasm: &[u8]) -> Result<Self, String> {
        let mut shape = Self::default();
        let mut parser = Parser::new(0);
        parser.set_features(legacy_eh::parse_features());
        let e = |e: wasmparser::BinaryReaderError| e.to_string();
        for payload in parser.parse_all(wasm) {
            match payload.map_err(e)? {
                Payload::TypeSection(reader) => legacy_eh::read_types(reader, &mut shape.types)?,
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        match import.map_err(e)?.ty {
                            TypeRef::Func(t) | TypeRef::FuncExact(t) => shape.functions.push(t),
                            TypeRef::Memory(m) => shape.memories.push(m),
                            TypeRef::Global(g) => shape.globals.push(g),
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for t in reader {
                        shape.functions.push(t.map_err(e)?);
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        shape.globals.push(global.map_err(e)?.ty);
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        shape.memories.push(memory.map_err(e)?);
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(e)?;
                        shape
                            .exports
                            .push((export.name.to_owned(), export.kind, export.index));
                    }
                }
                Payload::StartSection { .. } => shape.start = true,
                Payload::CodeSectionEntry(body) if shape.forbidden.is_none() => {
                    shape.forbidden = super::abi::forbidden_instruction(&body)?;
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    fn check(&self) -> Result<bool, String> {
        let export = |name: &str| self.exports.iter().find(|e| e.0 == name);
        let [memory] = self.memories.as_slice() else {
            return Err(format!(
                "expected exactly one memory, found {}",
                self.memories.len()
            ));
        };
        if !matches!(export("memory"), Some((_, ExternalKind::Memory, 0))) {
            return Err("missing export: memory".into());
        }
        if memory.shared {
            return Err("memory must be unshared".into());
        }
        let pointer = if memory.memory64 {
            ValType::I64
        } else {
            ValType::I32
        };
        let signature = |name: &str| {
            let (_, kind, index) = export(name)?;
            if !matches!(kind, ExternalKind::Func | ExternalKind::FuncExact) {
                return None;
            }
            let ty = self.functions.get(*index as usize)?;
            self.types.get(*ty as usize).cloned().flatten()
        };
        if signature("malloc") != Some((vec![pointer], vec![pointer])) {
            return Err(format!(
                "export malloc must have type ({pointer}) -> {pointer}"
            ));
        }
        if signature("handle") != Some((vec![pointer, pointer], vec![pointer])) {
            return Err(format!(
                "export handle must have type ({pointer}, {pointer}) -> {pointer}"
            ));
        }
        if self.start {
            return Err("a start function is not allowed (state must come from slots only)".into());
        }
        if let Some(name) = self.forbidden {
            return Err(format!(
                "instruction {name} is not allowed: it changes state a snapshot does not hold"
            ));
        }
        self.check_globals()?;
        Ok(memory.memory64)
    }

    fn check_globals(&self) -> Result<(), String> {
        let mutable = self.globals.iter().filter(|g| g.mutable).count();
        if mutable > GLOBALS_MAX {
            return Err(format!("more than {GLOBALS_MAX} mutable globals"));
        }
        for (index, global) in self.globals.iter().enumerate() {
            if !global.mutable {
                continue;
            }
            let name = self
                .exports
                .iter()
                .find(|(_, k, i)| *k == ExternalKind::Global && *i as usize == index)
                .map(|(name, _, _)| name)
                .ok_or_else(|| format!("mutable global {index} is not exported"))?;
            if name.len() > GLOBAL_NAME_BYTES_MAX {
                return Err(format!(
                    "mutable global export name longer than {GLOBAL_NAME_BYTES_MAX} bytes"
                ));
            }
            if !matches!(
                global.content_type,
                ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128
            ) {
                return Err(format!(
                    "mutable global {index} must be i32, i64, f32, f64 or v128"
                ));
            }
        }
        Ok(())
    }
}

/// The two entry points, typed by pointer width.
#[derive(Clone)]
pub(crate) enum Entry {
    /// memory64: `malloc(i64) -> i64`, `handle(i64, i64) -> i64`.
    Wide {
        malloc: TypedFunc<u64, u64>,
        handle: TypedFunc<(u64, u64), u64>,
    },
    /// wasm32: `malloc(i32) -> i32`, `handle(i32, i32) -> i32`.
    Narrow {
        malloc: TypedFunc<u32, u32>,
        handle: TypedFunc<(u32, u32), u32>,
    },
}

impl Entry {
    pub(crate) fn of(
        instance: &wasmtime::Instance,
        mut store: impl AsContextMut,
        memory64: bool,
    ) -> Result<Self, ExecError> {
        let bug =
            |e: wasmtime::Error| ExecError::Engine(format!("validated module's exports: {e}"));
        Ok(if memory64 {
            Entry::Wide {
                malloc: instance.get_typed_func(&mut store, "malloc").map_err(bug)?,
                handle: instance.get_typed_func(&mut store, "handle").map_err(bug)?,
            }
        } else {
            Entry::Narrow {
                malloc: instance.get_typed_func(&mut store, "malloc").map_err(bug)?,
                handle: instance.get_typed_func(&mut store, "handle").map_err(bug)?,
            }
        })
    }

    fn malloc(&self, store: impl AsContextMut, bytes: u64) -> wasmtime::Result<u64> {
        match self {
            Entry::Wide { malloc, .. } => malloc.call(store, bytes),
            Entry::Narrow { malloc, .. } => {
                let bytes = u32::try_from(bytes)
                    .map_err(|_| wasmtime::Error::msg("input larger than a 32-bit memory"))?;
                malloc.call(store, bytes).map(u64::from)
            }
        }
    }

    fn handle(&self, store: impl AsContextMut, message: u64, env: u64) -> wasmtime::Result<u64> {
        match self {
            Entry::Wide { handle, .. } => handle.call(store, (message, env)),
            // Both pointers came from the 32-bit malloc above.
            Entry::Narrow { handle, .. } => handle
                .call(store, (message as u32, env as u32))
                .map(u64::from),
        }
    }
}

/// Why a slot's call did not produce a response: a guest trap, or a broken ABI rule.
pub(crate) enum CallError {
    Trap(wasmtime::Error),
    Abi(String),
}

/// Writes the message and env JSON into fresh `malloc`ed buffers, calls `handle` and reads the
/// response text.
pub(crate) fn call(
    mut store: impl AsContextMut,
    memory: Memory,
    entry: &Entry,
    message: &[u8],
    env: &[u8],
) -> Result<Vec<u8>, CallError> {
    let message_ptr = put(&mut store, memory, entry, message)?;
    let env_ptr = put(&mut store, memory, entry, env)?;
    let response = entry
        .handle(&mut store, message_ptr, env_ptr)
        .map_err(CallError::Trap)?;
    let data = memory.data(&store);
    let start = usize::try_from(response)
        .ok()
        .filter(|start| *start < data.len())
        .ok_or_else(|| CallError::Abi(format!("handle returned {response}, outside memory")))?;
    let window = &data[start..data.len().min(start.saturating_add(RESPONSE_BYTES_MAX + 1))];
    let end = window.iter().position(|b| *b == 0).ok_or_else(|| {
        CallError::Abi(format!(
            "response is not NUL-terminated within {RESPONSE_BYTES_MAX} bytes"
        ))
    })?;
    Ok(window[..end].to_vec())
}

/// `malloc(len + 1)`, then the bytes and a NUL.
fn put(
    mut store: impl AsContextMut,
    memory: Memory,
    entry: &Entry,
    bytes: &[u8],
) -> Result<u64, CallError> {
    let len = bytes.len() as u64;
    let ptr = entry.malloc(&mut store, len + 1).map_err(CallError::Trap)?;
    if ptr == 0 {
        return Err(CallError::Abi(format!("malloc({}) returned 0", len + 1)));
    }
    let data = memory.data_mut(&mut store);
    let target = usize::try_from(ptr)
        .ok()
        .and_then(|start| data.get_mut(start..start.checked_add(bytes.len() + 1)?))
        .ok_or_else(|| CallError::Abi(format!("malloc returned {ptr}, outside memory")))?;
    target[..bytes.len()].copy_from_slice(bytes);
    target[bytes.len()] = 0;
    Ok(ptr)
}

/// AO's tag name for a ferrobeam key: each `-`-separated word capitalized
/// (`module-format` → `Module-Format`, `x-reference` → `X-Reference`).
pub fn tag_name(key: &str) -> String {
    key.split('-')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The ferrobeam key for an AO tag name: lowercased, characters outside `a-z 0-9 - _ . @`
/// replaced by `_`, cut to [`KEY_BYTES_MAX`]; `None` when nothing is left or it is reserved.
pub fn tag_key(name: &str) -> Option<Key> {
    let key: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(KEY_BYTES_MAX)
        .collect();
    Key::new(&key).ok()
}

/// A field value as AO tag text: bytes as UTF-8 (base64url when not UTF-8), integers in
/// decimal, nested messages and lists as their JSON text.
fn tag_text(value: &Value) -> String {
    match value {
        Value::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => b64(bytes),
        },
        Value::Int(i) => i.to_string(),
        other => message_json::value_to_json(other).to_string(),
    }
}

/// Every field but `data` as `[{name, value}]`, in key order.
fn tags(message: &Message) -> Json {
    Json::Array(
        message
            .fields()
            .filter(|(key, _)| key.as_str() != "data")
            .map(|(key, value)| json!({"name": tag_name(key.as_str()), "value": tag_text(value)}))
            .collect(),
    )
}

/// The message JSON `handle` receives (see `docs/abi.md` for the mapping).
pub(crate) fn message_json(input: &SlotInput, module: Id) -> Vec<u8> {
    let message = &input.message;
    let field = |key: &str| message.get(key).map(tag_text);
    let from = field("from-process").unwrap_or_else(|| input.from.to_string());
    let value = json!({
        "Id": input.message_id.to_string(),
        "Owner": input.from.to_string(),
        "From": from,
        "Target": input.process.to_string(),
        "Anchor": field("anchor").unwrap_or_default(),
        "Signature": "",
        "Tags": tags(message),
        "Data": field("data").unwrap_or_default(),
        "Module": module.to_string(),
        "Block-Height": field("block-height").unwrap_or_else(|| "0".into()),
        "Timestamp": input.timestamp_ms.to_string(),
        "Slot": input.slot.to_string(),
    });
    value.to_string().into_bytes()
}

/// The env JSON: the process (id, owner, tags) and its module.
pub(crate) fn env_json(input: &SlotInput, definition: &Message, module: Id) -> Vec<u8> {
    let value = json!({
        "Process": {
            "Id": input.process.to_string(),
            "Owner": input.owner.to_string(),
            "Tags": tags(definition),
        },
        "Module": {"Id": module.to_string(), "Tags": []},
    });
    value.to_string().into_bytes()
}

/// What a response maps to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// `Output`: its JSON text, or the string itself; at most [`OUTPUT_BYTES_MAX`] bytes.
    pub output: Vec<u8>,
    /// `Messages`, each with a `target`.
    pub outbox: Vec<Message>,
    /// `Spawns`.
    pub spawns: Vec<Message>,
    /// `Error`, or the error of an `ok: false` answer.
    pub error: Option<String>,
}

/// Maps `handle`'s response to results: `Output` (its JSON text; a string as it is),
/// `Messages` → outbox, `Spawns` → spawns, `Error` (or `ok: false`) → error.
///
/// # Errors
/// The text is not a JSON object of that shape, or a result limit is exceeded: the slot's
/// error, prefixed `ao-json:`.
pub fn response(text: &[u8]) -> Result<Response, String> {
    let json: Json =
        serde_json::from_slice(text).map_err(|e| format!("response is not JSON: {e}"))?;
    let object = json.as_object().ok_or("response is not a JSON object")?;
    if object.get("ok").and_then(Json::as_bool) != Some(true) {
        let error = object.get("error").map(text_of).unwrap_or_default();
        return Ok(Response {
            error: Some(if error.is_empty() {
                "handle answered ok: false".into()
            } else {
                error
            }),
            ..Response::default()
        });
    }
    let empty = Map::new();
    let body = object
        .get("response")
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let output = match body.get("Output") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    if output.len() > OUTPUT_BYTES_MAX {
        return Err(format!("output exceeds {OUTPUT_BYTES_MAX} bytes"));
    }
    let error = match body.get("Error") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(other) => Some(text_of(other)),
    };
    let mut budget = OutboxBudget::default();
    let outbox = messages(body.get("Messages"), true, &mut budget)?;
    let spawns = messages(body.get("Spawns"), false, &mut budget)?;
    Ok(Response {
        output,
        outbox,
        spawns,
        error,
    })
}

fn text_of(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Counts messages and bytes across a slot's outbox and spawns.
#[derive(Default)]
struct OutboxBudget {
    messages: usize,
    bytes: usize,
}

impl OutboxBudget {
    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > OUTBOX_BYTES_MAX {
            return Err(format!("outbox exceeds {OUTBOX_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

/// `Messages` or `Spawns`: `{Target, Anchor, Tags: [{name, value}], Data}` each.
fn messages(
    list: Option<&Json>,
    targeted: bool,
    budget: &mut OutboxBudget,
) -> Result<Vec<Message>, String> {
    let Some(list) = list.filter(|l| !l.is_null()) else {
        return Ok(Vec::new());
    };
    let items = list.as_array().ok_or("Messages/Spawns is not a list")?;
    let mut out = Vec::with_capacity(items.len().min(OUTBOX_MESSAGES_MAX));
    for item in items {
        budget.messages += 1;
        if budget.messages > OUTBOX_MESSAGES_MAX {
            return Err(format!(
                "outbox exceeds {OUTBOX_MESSAGES_MAX} messages and spawns"
            ));
        }
        out.push(message(item, targeted, budget)?);
    }
    Ok(out)
}

fn message(item: &Json, targeted: bool, budget: &mut OutboxBudget) -> Result<Message, String> {
    let object = item
        .as_object()
        .ok_or("an outbox message is not an object")?;
    let mut message = Message::new();
    let mut set = |message: &mut Message, key: &str, text: String| -> Result<(), String> {
        budget.charge(key.len() + text.len())?;
        message.set(key, text).map_err(|e| e.to_string())
    };
    if targeted {
        let target = object
            .get("Target")
            .map(text_of)
            .ok_or("an outbox message has no Target")?;
        set(&mut message, "target", target)?;
    }
    if let Some(anchor) = object.get("Anchor").map(text_of).filter(|a| !a.is_empty()) {
        set(&mut message, "anchor", anchor)?;
    }
    let tags = match object.get("Tags") {
        None | Some(Json::Null) => &[][..],
        Some(Json::Array(tags)) => tags.as_slice(),
        Some(_) => return Err("Tags is not a list".into()),
    };
    let mut count = 0;
    for tag in tags {
        let name = tag.get("name").map(text_of).unwrap_or_default();
        let value = tag.get("value").map(text_of).unwrap_or_default();
        let Some(key) = tag_key(&name) else { continue };
        // The top-level Target and Data win over tags of the same name.
        if matches!(key.as_str(), "target" | "data") {
            continue;
        }
        count += 1;
        if count > SEND_TAGS_MAX {
            return Err(format!("an outbox message exceeds {SEND_TAGS_MAX} tags"));
        }
        set(&mut message, key.as_str(), value)?;
    }
    if let Some(data) = object.get("Data").filter(|d| !d.is_null()) {
        let data = text_of(data);
        if !data.is_empty() {
            set(&mut message, "data", data)?;
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_and_keys_map_both_ways() {
        assert_eq!(tag_name("module-format"), "Module-Format");
        assert_eq!(tag_name("action"), "Action");
        assert_eq!(tag_name("x-reference"), "X-Reference");
        assert_eq!(tag_key("Module-Format").unwrap().as_str(), "module-format");
        assert_eq!(tag_key("Odd Name!").unwrap().as_str(), "odd_name_");
        assert!(tag_key("").is_none());
        assert!(tag_key("Commitments").is_none());
    }

    #[test]
    fn formats_select_the_abi() {
        let with = |f: &str| Abi::of(&Message::new().with("module-format", f));
        assert_eq!(Abi::of(&Message::new()).unwrap(), Abi::Native);
        assert_eq!(
            with(MODULE_FORMAT_WASM64).unwrap(),
            Abi::AoJson { memory64: true }
        );
        assert_eq!(
            with("wasm32-unknown-emscripten2").unwrap(),
            Abi::AoJson { memory64: false }
        );
        assert!(with("wasm64-unknown-unknown").is_err());
    }

    #[test]
    fn responses_map_to_results() {
        let text = br#"{"ok": true, "response": {
            "Output": {"data": "2", "prompt": "> "},
            "Messages": [{"Target": "abc", "Anchor": "", "Tags": [{"name": "Action", "value": "Credit-Notice"}, {"name": "Data", "value": "x"}], "Data": "hello"}],
            "Spawns": [{"Tags": [{"name": "Type", "value": "Process"}], "Data": ""}],
            "Assignments": []}}"#;
        let r = response(text).unwrap();
        let output: Json = serde_json::from_slice(&r.output).unwrap();
        assert_eq!(output["data"], "2");
        assert_eq!(r.outbox.len(), 1);
        assert_eq!(r.outbox[0].text("target"), Some("abc"));
        assert_eq!(r.outbox[0].text("action"), Some("Credit-Notice"));
        assert_eq!(r.outbox[0].text("data"), Some("hello"));
        assert_eq!(r.spawns[0].text("type"), Some("Process"));
        assert_eq!(r.error, None);
        let failed = response(br#"{"ok": true, "response": {"Error": "boom", "Output": "x"}}"#);
        assert_eq!(failed.unwrap().error.as_deref(), Some("boom"));
        let not_ok = response(br#"{"ok": false, "error": "bad"}"#).unwrap();
        assert_eq!(not_ok.error.as_deref(), Some("bad"));
        assert!(response(b"nope").is_err());
        assert!(response(br#"{"ok": true, "response": {"Messages": [{}]}}"#).is_err());
    }

    #[test]
    fn too_many_messages_is_an_error() {
        let many: Vec<Json> = (0..=OUTBOX_MESSAGES_MAX)
            .map(|_| json!({"Target": "t"}))
            .collect();
        let text = json!({"ok": true, "response": {"Messages": many}}).to_string();
        assert!(response(text.as_bytes()).is_err());
    }
}
