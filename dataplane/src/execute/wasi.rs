//! The host imports of ao-json processes: WASI preview1 and the emscripten `env` functions,
//! all deterministic.
//!
//! One linker is built per module, from the module's own import list: each import is defined
//! with the signature the module declares, so one implementation serves wasm32 (`i32` pointers)
//! and memory64 (`i64` pointers, 8-byte `size_t`) builds alike. An import not listed here makes
//! the module invalid, naming it.
//!
//! | import | answer |
//! |---|---|
//! | `clock_time_get` | the assignment's timestamp (ms → ns), whatever the clock id |
//! | `clock_res_get` | 1 ms |
//! | `random_get` | SHA-256 counter stream seeded by (process, slot, message id); no OS randomness |
//! | `fd_write` to 1/2 | captured (at most [`STDIO_BYTES_MAX`] per slot); other fds: `EBADF` |
//! | `fd_read` on 0 | end of file; other fds: `EBADF` |
//! | `fd_seek` | `ESPIPE` on 0–2, else `EBADF` |
//! | `fd_close` | 0 on 0–2, else `EBADF` |
//! | `environ_*`, `args_*` | empty |
//! | `proc_exit` | ends the slot with an error `proc_exit(<code>)` |
//! | other `wasi_snapshot_preview1` functions returning an errno | `ENOSYS` |
//! | `env.__syscall_*` | `-ENOSYS` (no file system) |
//! | `env._emscripten_system` | 0 for `system(NULL)` (no shell), else `-ENOSYS` |
//! | `env.emscripten_notify_memory_growth` | nothing |
//! | `env.emscripten_date_now`, `env.emscripten_get_now` | the timestamp in ms |
//! | `env.invoke_*` | calls `__indirect_function_table[index]`; a longjmp thrown inside restores the stack pointer and calls `setThrew(1, 0)`, as emscripten's JS glue does |
//! | `env._emscripten_throw_longjmp` | unwinds to the nearest `invoke_*` |
//! | `env.abort`, `env._abort_js` | ends the slot with an error `abort` |

use sha2::{Digest, Sha256};
use wasmtime::{Caller, ExternType, FuncType, Linker, Val, ValType};

use super::ExecError;
use super::abi::HostState;

/// Bytes of stdout/stderr kept per slot; more is accepted and dropped. What is kept is appended
/// to the error of a slot that traps (for diagnosis) and otherwise discarded.
pub const STDIO_BYTES_MAX: usize = 64 * 1024;
/// Bytes of captured stdout/stderr appended to a trapped slot's error.
pub(crate) const STDIO_TAIL_BYTES: usize = 1024;

/// WASI errno values (preview1 numbering, which emscripten shares).
const ERRNO_BADF: i64 = 8;
const ERRNO_NOSYS: i64 = 52;
const ERRNO_SPIPE: i64 = 70;
const ERRNO_INVAL: i64 = 28;
/// Most iovecs one `fd_write`/`fd_read` call may pass (POSIX `IOV_MAX`).
const IOVECS_MAX: u64 = 1024;

/// The per-slot context the imports read and write.
#[derive(Debug)]
pub(crate) struct AoSlot {
    pub(crate) timestamp_ms: u64,
    /// Seed of `random_get`'s stream.
    pub(crate) seed: [u8; 32],
    pub(crate) random_counter: u64,
    /// Captured stdout/stderr, at most [`STDIO_BYTES_MAX`].
    pub(crate) stdio: Vec<u8>,
}

impl AoSlot {
    pub(crate) fn new(timestamp_ms: u64, seed: [u8; 32]) -> Self {
        Self {
            timestamp_ms,
            seed,
            random_counter: 0,
            stdio: Vec::new(),
        }
    }
}

/// `proc_exit` was called: the slot ends with this code.
#[derive(Debug, thiserror::Error)]
#[error("proc_exit({0})")]
pub(crate) struct ProcExit(pub(crate) i32);

/// An emscripten longjmp (`_emscripten_throw_longjmp`) on its way to the nearest `invoke_*`.
#[derive(Debug, thiserror::Error)]
#[error("longjmp outside any invoke_* call")]
pub(crate) struct Longjmp;

/// A guest-requested abort.
#[derive(Debug, thiserror::Error)]
#[error("abort")]
pub(crate) struct Abort;

/// One host function, chosen by import name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    FdWrite,
    FdRead,
    FdSeek,
    FdClose,
    ProcExit,
    EmptyListSizes,
    EmptyList,
    ClockTimeGet,
    ClockResGet,
    RandomGet,
    NotSupported,
    Syscall,
    System,
    Nothing,
    DateNow,
    Invoke,
    ThrowLongjmp,
    Abort,
}

impl Host {
    fn of(module: &str, name: &str, ty: &FuncType) -> Option<Self> {
        let errno_result = ty.results().len() == 1 && ty.results().all(|t| t.is_i32());
        match (module, name) {
            ("wasi_snapshot_preview1", name) => Some(match name {
                "fd_write" => Host::FdWrite,
                "fd_read" => Host::FdRead,
                "fd_seek" => Host::FdSeek,
                "fd_close" => Host::FdClose,
                "proc_exit" => Host::ProcExit,
                "environ_sizes_get" | "args_sizes_get" => Host::EmptyListSizes,
                "environ_get" | "args_get" => Host::EmptyList,
                "clock_time_get" => Host::ClockTimeGet,
                "clock_res_get" => Host::ClockResGet,
                "random_get" => Host::RandomGet,
                "sched_yield" => Host::Nothing,
                _ if errno_result => Host::NotSupported,
                _ => return None,
            }),
            ("env", name) if name.starts_with("__syscall_") && ty.results().len() == 1 => {
                Some(Host::Syscall)
            }
            ("env", name) if name.starts_with("invoke_") && ty.params().len() >= 1 => {
                Some(Host::Invoke)
            }
            ("env", "_emscripten_system") => Some(Host::System),
            ("env", "emscripten_notify_memory_growth") => Some(Host::Nothing),
            ("env", "emscripten_date_now" | "emscripten_get_now") => Some(Host::DateNow),
            ("env", "_emscripten_throw_longjmp") => Some(Host::ThrowLongjmp),
            ("env", "abort" | "_abort_js") => Some(Host::Abort),
            _ => None,
        }
    }
}

/// The linker for one ao-json module: every import it declares, defined with its own signature.
///
/// # Errors
/// [`ExecError::ModuleInvalid`] naming an import this ABI does not provide (including imported
/// memories, tables and globals).
pub(crate) fn linker(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
) -> Result<Linker<HostState>, ExecError> {
    let mut linker = Linker::new(engine);
    for import in module.imports() {
        let (from, name) = (import.module(), import.name());
        let ExternType::Func(ty) = import.ty() else {
            return Err(ExecError::ModuleInvalid(format!(
                "import {from}::{name}: the ao-json ABI provides only functions"
            )));
        };
        let host = Host::of(from, name, &ty).ok_or_else(|| {
            ExecError::ModuleInvalid(format!(
                "import {from}::{name} is not provided by the ao-json ABI"
            ))
        })?;
        let result = ty.results().next();
        linker
            .func_new(from, name, ty.clone(), move |caller, params, results| {
                call(host, caller, params, results, result.as_ref())
            })
            .map_err(|e| ExecError::Engine(format!("defining {from}::{name}: {e}")))?;
    }
    Ok(linker)
}

/// An argument as an unsigned 64-bit number (an `i32` is zero-extended).
fn arg(params: &[Val], i: usize) -> u64 {
    match params.get(i) {
        Some(Val::I32(v)) => u64::from(*v as u32),
        Some(Val::I64(v)) => *v as u64,
        _ => 0,
    }
}

/// Writes `value` as the function's single result, in its declared type.
fn set_result(results: &mut [Val], ty: Option<&ValType>, value: i64) {
    if let (Some(slot), Some(ty)) = (results.first_mut(), ty) {
        *slot = match ty {
            ValType::I64 => Val::I64(value),
            ValType::F64 => Val::F64((value as f64).to_bits()),
            ValType::F32 => Val::F32((value as f32).to_bits()),
            // i32 results hold errno values and small counts.
            _ => Val::I32(value as i32),
        };
    }
}

fn call(
    host: Host,
    mut caller: Caller<'_, HostState>,
    params: &[Val],
    results: &mut [Val],
    result: Option<&ValType>,
) -> wasmtime::Result<()> {
    let value = match host {
        Host::Invoke => return invoke(caller, params, results),
        Host::ThrowLongjmp => return Err(wasmtime::Error::new(Longjmp)),
        Host::Abort => return Err(wasmtime::Error::new(Abort)),
        Host::ProcExit => return Err(wasmtime::Error::new(ProcExit(arg(params, 0) as i32))),
        Host::Nothing => 0,
        Host::NotSupported => ERRNO_NOSYS,
        Host::Syscall => -ERRNO_NOSYS,
        Host::System => {
            if arg(params, 0) == 0 {
                0
            } else {
                -ERRNO_NOSYS
            }
        }
        Host::DateNow => {
            let ms = slot(&caller)?.timestamp_ms;
            if let Some(first) = results.first_mut() {
                *first = Val::F64((ms as f64).to_bits());
            }
            return Ok(());
        }
        Host::FdWrite => fd_write(&mut caller, params)?,
        Host::FdRead => match arg(params, 0) {
            0 => {
                let width = width(&caller);
                write_uint(&mut caller, arg(params, 3), width, 0)?;
                0
            }
            _ => ERRNO_BADF,
        },
        Host::FdSeek => match arg(params, 0) {
            0..=2 => ERRNO_SPIPE,
            _ => ERRNO_BADF,
        },
        Host::FdClose => match arg(params, 0) {
            0..=2 => 0,
            _ => ERRNO_BADF,
        },
        Host::EmptyListSizes => {
            let width = width(&caller);
            write_uint(&mut caller, arg(params, 0), width, 0)?;
            write_uint(&mut caller, arg(params, 1), width, 0)?;
            0
        }
        Host::EmptyList => 0,
        Host::ClockTimeGet => {
            let ns = slot(&caller)?.timestamp_ms.saturating_mul(1_000_000);
            write_uint(&mut caller, arg(params, 2), 8, ns)?;
            0
        }
        Host::ClockResGet => {
            write_uint(&mut caller, arg(params, 1), 8, 1_000_000)?;
            0
        }
        Host::RandomGet => random_get(&mut caller, arg(params, 0), arg(params, 1))?,
    };
    set_result(results, result, value);
    Ok(())
}

fn slot<'a>(caller: &'a Caller<'_, HostState>) -> wasmtime::Result<&'a AoSlot> {
    caller
        .data()
        .ao
        .as_ref()
        .ok_or_else(|| wasmtime::Error::msg("ao-json import called outside a slot"))
}

/// Bytes of a pointer or `size_t`: 8 on memory64, else 4.
fn width(caller: &Caller<'_, HostState>) -> u64 {
    match caller.data().memory {
        Some(memory) if memory.ty(caller).is_64() => 8,
        _ => 4,
    }
}

fn memory<'a>(caller: &'a mut Caller<'_, HostState>) -> wasmtime::Result<&'a mut [u8]> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::msg("ao-json import called before instantiation"))?;
    Ok(memory.data_mut(caller))
}

fn range(mem_len: usize, ptr: u64, len: u64) -> wasmtime::Result<std::ops::Range<usize>> {
    let end = ptr
        .checked_add(len)
        .filter(|end| *end <= mem_len as u64)
        .ok_or_else(|| wasmtime::Error::msg(format!("range {ptr}+{len} outside linear memory")))?;
    // Both ends are at most the memory's length, a usize.
    Ok(ptr as usize..end as usize)
}

fn write_uint(
    caller: &mut Caller<'_, HostState>,
    ptr: u64,
    width: u64,
    value: u64,
) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    let at = range(mem.len(), ptr, width)?;
    mem[at].copy_from_slice(&value.to_le_bytes()[..width as usize]);
    Ok(())
}

fn read_uint(mem: &[u8], ptr: u64, width: u64) -> wasmtime::Result<u64> {
    let at = range(mem.len(), ptr, width)?;
    let mut bytes = [0u8; 8];
    bytes[..width as usize].copy_from_slice(&mem[at]);
    Ok(u64::from_le_bytes(bytes))
}

/// `fd_write(fd, iovs, iovs_len, nwritten)`: stdout and stderr are captured.
fn fd_write(caller: &mut Caller<'_, HostState>, params: &[Val]) -> wasmtime::Result<i64> {
    let (fd, iovs, count, written_ptr) = (
        arg(params, 0),
        arg(params, 1),
        arg(params, 2),
        arg(params, 3),
    );
    if !(1..=2).contains(&fd) {
        return Ok(ERRNO_BADF);
    }
    if count > IOVECS_MAX {
        return Ok(ERRNO_INVAL);
    }
    let width = width(caller);
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::msg("ao-json import called before instantiation"))?;
    let (mem, state) = memory.data_and_store_mut(&mut *caller);
    let slot = state
        .ao
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("ao-json import called outside a slot"))?;
    let mut total: u64 = 0;
    for i in 0..count {
        let iov = iovs
            .checked_add(i * 2 * width)
            .ok_or_else(|| wasmtime::Error::msg("iovec address overflows"))?;
        let buf = read_uint(mem, iov, width)?;
        let len = read_uint(mem, iov + width, width)?;
        let bytes = &mem[range(mem.len(), buf, len)?];
        let room = STDIO_BYTES_MAX.saturating_sub(slot.stdio.len());
        slot.stdio
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        total = total.saturating_add(len);
    }
    write_uint(caller, written_ptr, width, total)?;
    Ok(0)
}

/// `random_get(buf, len)`: SHA-256(seed || counter) blocks, the counter running across the
/// slot's calls. Deterministic: the seed comes from the slot.
fn random_get(caller: &mut Caller<'_, HostState>, ptr: u64, len: u64) -> wasmtime::Result<i64> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::msg("ao-json import called before instantiation"))?;
    let (mem, state) = memory.data_and_store_mut(&mut *caller);
    let slot = state
        .ao
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("ao-json import called outside a slot"))?;
    let at = range(mem.len(), ptr, len)?;
    for chunk in mem[at].chunks_mut(32) {
        let mut hasher = Sha256::new();
        hasher.update(slot.seed);
        hasher.update(slot.random_counter.to_le_bytes());
        slot.random_counter += 1;
        let block = hasher.finalize();
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    Ok(0)
}

/// `invoke_<sig>(index, args...)`: emscripten's JS trampoline. Calls the table entry; when a
/// longjmp unwinds through it, restores the stack pointer and calls `setThrew(1, 0)` so the
/// guest's setjmp site sees it. Any other failure (a trap) propagates.
fn invoke(
    mut caller: Caller<'_, HostState>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let index = arg(params, 0);
    let table = caller
        .get_export("__indirect_function_table")
        .and_then(|e| e.into_table())
        .ok_or_else(|| wasmtime::Error::msg("invoke_*: no __indirect_function_table export"))?;
    let func = table
        .get(&mut caller, index)
        .and_then(|r| r.as_func().flatten().copied())
        .ok_or_else(|| wasmtime::Error::msg(format!("invoke_*: no function at index {index}")))?;
    let stack_save = caller
        .get_export("emscripten_stack_get_current")
        .and_then(|e| e.into_func());
    let saved = match stack_save {
        Some(f) => {
            let mut out = [Val::I64(0)];
            f.call(&mut caller, &[], &mut out)?;
            Some(out[0])
        }
        None => None,
    };
    match func.call(&mut caller, &params[1..], results) {
        Ok(()) => Ok(()),
        Err(e) if e.downcast_ref::<Longjmp>().is_some() => {
            if let (Some(sp), Some(restore)) = (
                saved,
                caller
                    .get_export("_emscripten_stack_restore")
                    .and_then(|e| e.into_func()),
            ) {
                restore.call(&mut caller, &[sp], &mut [])?;
            }
            let set_threw = caller
                .get_export("setThrew")
                .and_then(|e| e.into_func())
                .ok_or_else(|| {
                    wasmtime::Error::msg("invoke_*: longjmp without a setThrew export")
                })?;
            let ty = set_threw.ty(&caller);
            let args: Vec<Val> = ty
                .params()
                .enumerate()
                .map(|(i, t)| match (t, i) {
                    (ValType::I64, 0) => Val::I64(1),
                    (_, 0) => Val::I32(1),
                    (ValType::I64, _) => Val::I64(0),
                    _ => Val::I32(0),
                })
                .collect();
            set_threw.call(&mut caller, &args, &mut [])?;
            let ty = func.ty(&caller);
            for (result, t) in results.iter_mut().zip(ty.results()) {
                *result = Val::default_for_ty(&t).unwrap_or(Val::I32(0));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
