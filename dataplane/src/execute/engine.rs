//! The wasmtime engine, configured for deterministic execution, and the `.cwasm` cache.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::{Config, InstanceAllocationStrategy, InstancePre, Linker, PoolingAllocationConfig};

use super::abi::{self, HostState};
use super::aojson::{self, Abi};
use super::memory::CachePath;
use super::{ExecError, MEMORY_BYTES_MAX, wasi};
use crate::message::Id;

/// Instances the pooling allocator holds: the most processes live at once across all executor
/// cores of one engine. Each slot reserves [`MEMORY_BYTES_MAX`] plus a 32 MiB guard of *virtual*
/// address space (~4 TiB at 1024, of the 128 TiB a 64-bit process has); resident memory is what
/// processes actually use, at most the sum of their `memory-limit`s. Instantiating past it fails
/// with [`ExecError::Instantiate`].
pub const ENGINE_INSTANCES_MAX: u32 = 1024;
/// Most elements in a module's table (one table per module): 65,536 × 8 B = 512 KiB per
/// instance, 512 MiB for a full pool. A larger initial table fails instantiation.
pub const TABLE_ELEMENTS_MAX: usize = 65_536;
/// WebAssembly stack per call: deep recursion traps at the same depth on every node with this
/// setting (it is part of the compatibility hash, so every node uses the same value).
pub const WASM_STACK_BYTES_MAX: usize = 512 * 1024;
/// Compiled modules kept in memory per engine (each a mapping of its `.cwasm`, typically a few
/// MiB). Past it the map is cleared and modules are mapped again from disk on demand.
pub const MODULES_LOADED_MAX: usize = 256;
/// Guard region after each linear memory, so 32-bit accesses need no bounds checks.
const MEMORY_GUARD_BYTES: u64 = 32 * 1024 * 1024;
/// How often the epoch ticker advances the engines' epoch: the resolution of the wall-clock
/// deadline.
pub const EPOCH_TICK_MS: u64 = 10;
/// Default wall-clock deadline of one slot: a safety net behind fuel, which stops every
/// deterministic loop first (10⁹ fuel, the native default, runs in well under a second).
pub const SLOT_WALL_MS_DEFAULT: u64 = 60_000;

const _: () = assert!(ENGINE_INSTANCES_MAX > 0);
const _: () = assert!(SLOT_WALL_MS_DEFAULT >= EPOCH_TICK_MS);
const _: () = assert!(MEMORY_BYTES_MAX == 1 << 32, "wasm32 memories never move");

/// How to build an [`Engine`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Directory for `.cwasm` files (created if missing). It must belong to the node: a file in
    /// it is mapped as native code.
    pub cache_dir: PathBuf,
    /// Pool size, at most [`ENGINE_INSTANCES_MAX`]. Tests use small pools.
    pub instances_max: u32,
    /// Wall-clock deadline of one slot, in ms (rounded up to [`EPOCH_TICK_MS`]). A slot that
    /// runs longer fails with `wall-clock-limit exceeded`: the only nondeterministic failure.
    pub slot_wall_ms_max: u64,
    /// Compiled modules kept in memory, 1..=[`MODULES_LOADED_MAX`]. Tests use small tables.
    pub modules_loaded_max: usize,
}

impl EngineConfig {
    /// Defaults ([`ENGINE_INSTANCES_MAX`] instances) with the given cache directory.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            instances_max: ENGINE_INSTANCES_MAX,
            slot_wall_ms_max: SLOT_WALL_MS_DEFAULT,
            modules_loaded_max: MODULES_LOADED_MAX,
        }
    }
}

/// The engine: deterministic wasmtime settings, the native ABI linker, the `.cwasm` cache, and
/// the modules loaded so far. Cheap to clone (shared).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// The native ABI's engine: no exceptions, no GC.
    wasmtime: wasmtime::Engine,
    /// The ao-json ABI's engine: the same settings plus exceptions (exnref).
    ao: wasmtime::Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    /// Hex of the first 16 bytes of SHA-256 over wasmtime's compatibility hash input.
    compatibility: String,
    ao_compatibility: String,
    instances_max: u32,
    epoch_ticks: u64,
    modules_loaded_max: usize,
    loaded: Mutex<HashMap<Id, Module>>,
}

/// Where [`Engine::load`] found a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleSource {
    /// Already loaded by this engine.
    Memory,
    /// Mapped from an existing `.cwasm` file: no compilation.
    Disk,
    /// Validated and compiled now, then written to the cache.
    Compiled,
}

/// A compiled, validated module ready to instantiate. Cheap to clone (shared).
#[derive(Clone)]
pub struct Module {
    id: Id,
    pre: InstancePre<HostState>,
    source: ModuleSource,
    abi: Abi,
    epoch_ticks: u64,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("abi", &self.abi)
            .finish_non_exhaustive()
    }
}

impl Module {
    /// The module's id (the id of the module message).
    pub fn id(&self) -> Id {
        self.id
    }

    /// Where [`Engine::load`] found it.
    pub fn source(&self) -> ModuleSource {
        self.source
    }

    /// The ABI the module was compiled for (from its shape; a process's `module-format` must
    /// agree).
    pub fn abi(&self) -> Abi {
        self.abi
    }

    pub(crate) fn pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }

    /// Epoch ticks a slot may run (the wall-clock deadline).
    pub(crate) fn epoch_ticks(&self) -> u64 {
        self.epoch_ticks
    }
}

impl Engine {
    /// Builds the engine and creates the cache directory.
    ///
    /// Settings, all part of the compatibility hash: fuel on; epoch interruption (the
    /// wall-clock deadline); NaN canonicalization; relaxed SIMD in its deterministic mode; no
    /// threads or shared memory; no GC; [`WASM_STACK_BYTES_MAX`]; pooling allocator sized by
    /// `config.instances_max` with one memory of up to [`MEMORY_BYTES_MAX`] and one table of up
    /// to [`TABLE_ELEMENTS_MAX`] per instance.
    ///
    /// Two wasmtime engines share these settings and differ in one: the native ABI's has
    /// exceptions off (its rules keep the state to memory and globals), the ao-json ABI's has
    /// them on (translated aos modules use `try_table`/`exnref`). Exception objects live only
    /// while a call runs: the ao-json rules admit no reference-typed global or table that could
    /// keep one between slots, so memory and globals stay the whole state for both. Each engine
    /// has its own pool and compatibility hash (hence its own `.cwasm` files).
    ///
    /// A thread ticks both engines' epoch every [`EPOCH_TICK_MS`]; it ends when the engine is
    /// dropped.
    ///
    /// # Errors
    /// [`ExecError::Engine`] when wasmtime rejects the settings or the pool cannot be reserved;
    /// [`ExecError::Cache`] when the cache directory cannot be created.
    pub fn new(config: EngineConfig) -> Result<Self, ExecError> {
        let instances_max = config.instances_max.clamp(1, ENGINE_INSTANCES_MAX);
        let wasmtime = wasmtime::Engine::new(&wasmtime_config(instances_max, false))
            .map_err(|e| ExecError::Engine(e.to_string()))?;
        let ao = wasmtime::Engine::new(&wasmtime_config(instances_max, true))
            .map_err(|e| ExecError::Engine(format!("ao-json engine: {e}")))?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|e| {
            ExecError::Cache(format!("creating {}: {e}", config.cache_dir.display()))
        })?;
        let linker = abi::linker(&wasmtime)?;
        let compatibility = compatibility_hex(&wasmtime);
        let ao_compatibility = compatibility_hex(&ao);
        start_ticker(&wasmtime, &ao)?;
        Ok(Self {
            inner: Arc::new(Inner {
                wasmtime,
                ao,
                linker,
                cache_dir: config.cache_dir,
                compatibility,
                ao_compatibility,
                instances_max,
                epoch_ticks: config.slot_wall_ms_max.div_ceil(EPOCH_TICK_MS).max(1),
                modules_loaded_max: config.modules_loaded_max.clamp(1, MODULES_LOADED_MAX),
                loaded: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// How many instances the pool holds.
    pub fn instances_max(&self) -> u32 {
        self.inner.instances_max
    }

    /// The cache file for a native-ABI module: `<cache>/<module-id>-<compatibility>.cwasm`.
    pub fn cache_path(&self, module_id: Id) -> PathBuf {
        self.cache_file(module_id, Abi::Native).path().to_path_buf()
    }

    /// The cache file for a module compiled for `abi` (each ABI's engine has its own hash).
    pub fn cache_path_for(&self, module_id: Id, abi: Abi) -> PathBuf {
        self.cache_file(module_id, abi).path().to_path_buf()
    }

    fn cache_file(&self, module_id: Id, abi: Abi) -> CachePath {
        let compatibility = match abi {
            Abi::Native => &self.inner.compatibility,
            Abi::AoJson { .. } => &self.inner.ao_compatibility,
        };
        let name = format!("{module_id}-{compatibility}.cwasm");
        CachePath::new(&self.inner.cache_dir, &name)
    }

    fn engine_for(&self, abi: Abi) -> &wasmtime::Engine {
        match abi {
            Abi::Native => &self.inner.wasmtime,
            Abi::AoJson { .. } => &self.inner.ao,
        }
    }

    /// Checks a module before it is accepted (module upload) or compiled. A module shaped like
    /// an ao-json module (it exports `malloc`) is
    /// prepared (legacy exception opcodes translated), validated with the ao-json engine and
    /// checked against the ao-json rules; any other module is validated with the native
    /// engine and checked against the native ABI's rules (`docs/abi.md`).
    ///
    /// # Errors
    /// [`ExecError::ModuleInvalid`] naming the problem, e.g. a WASI import in a native module.
    pub fn validate(&self, wasm: &[u8]) -> Result<(), ExecError> {
        self.validated(wasm).map(|_| ())
    }

    /// [`Engine::validate`], returning the ABI and the bytes to compile.
    fn validated<'w>(
        &self,
        wasm: &'w [u8],
    ) -> Result<(Abi, std::borrow::Cow<'w, [u8]>), ExecError> {
        if !aojson::detect(wasm) {
            wasmtime::Module::validate(&self.inner.wasmtime, wasm)
                .map_err(|e| ExecError::ModuleInvalid(format!("{e:#}")))?;
            abi::check_module(wasm)?;
            return Ok((Abi::Native, std::borrow::Cow::Borrowed(wasm)));
        }
        let prepared = aojson::prepare(wasm)?;
        wasmtime::Module::validate(&self.inner.ao, &prepared)
            .map_err(|e| ExecError::ModuleInvalid(format!("{e:#}")))?;
        let memory64 = aojson::check_module(&prepared)?;
        Ok((Abi::AoJson { memory64 }, std::borrow::Cow::Owned(prepared)))
    }

    /// The compiled module `module_id`, whose bytes are `wasm`: from memory, else from its
    /// `.cwasm` file, else validated, compiled with Cranelift, written to the cache and mapped.
    /// The caller vouches that `wasm` is the module `module_id` names (the cache is keyed by id).
    ///
    /// # Errors
    /// [`ExecError::ModuleInvalid`] for a module that fails [`Engine::validate`];
    /// [`ExecError::Cache`] when the cache cannot be written; [`ExecError::Engine`] when a valid
    /// module does not compile (a wasmtime limit or bug).
    pub fn load(&self, module_id: Id, wasm: &[u8]) -> Result<Module, ExecError> {
        if let Some(module) = self.loaded().get(&module_id) {
            let mut module = module.clone();
            module.source = ModuleSource::Memory;
            return Ok(module);
        }
        // The shape picks the engine; a cached ao-json module still needs its ABI (memory64),
        // which the compiled module answers.
        let detected = if aojson::detect(wasm) {
            Abi::AoJson { memory64: false }
        } else {
            Abi::Native
        };
        let file = self.cache_file(module_id, detected);
        let engine = self.engine_for(detected);
        let (compiled, source) = match file.path().exists().then(|| file.load(engine)) {
            Some(Ok(compiled)) => (compiled, ModuleSource::Disk),
            Some(Err(e)) => {
                // Corrupt or from another wasmtime: compile again and replace it atomically.
                tracing::warn!(module = %module_id, error = %e, "recompiling cached module");
                (self.compile(&file, detected, wasm)?, ModuleSource::Compiled)
            }
            None => (self.compile(&file, detected, wasm)?, ModuleSource::Compiled),
        };
        let (abi, pre) = match detected {
            Abi::Native => (Abi::Native, self.inner.linker.instantiate_pre(&compiled)),
            Abi::AoJson { .. } => {
                let memory64 = compiled
                    .exports()
                    .find_map(|e| e.ty().memory().map(|m| m.is_64()))
                    .unwrap_or(false);
                let linker = wasi::linker(engine, &compiled)?;
                (Abi::AoJson { memory64 }, linker.instantiate_pre(&compiled))
            }
        };
        let pre = pre.map_err(|e| ExecError::ModuleInvalid(format!("{e:#}")))?;
        let module = Module {
            id: module_id,
            pre,
            source,
            abi,
            epoch_ticks: self.inner.epoch_ticks,
        };
        let mut loaded = self.loaded();
        if loaded.len() >= self.inner.modules_loaded_max {
            loaded.clear();
        }
        loaded.insert(module_id, module.clone());
        Ok(module)
    }

    fn compile(
        &self,
        file: &CachePath,
        detected: Abi,
        wasm: &[u8],
    ) -> Result<wasmtime::Module, ExecError> {
        let (abi, prepared) = self.validated(wasm)?;
        assert_eq!(
            matches!(abi, Abi::Native),
            matches!(detected, Abi::Native),
            "validation detects the same ABI"
        );
        let engine = self.engine_for(detected);
        let compiled = engine
            .precompile_module(&prepared)
            .map_err(|e| ExecError::Engine(format!("compiling: {e:#}")))?;
        file.write(&compiled)?;
        file.load(engine)
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Module>> {
        // A panic while holding this lock leaves the map consistent (single insert/clear).
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts the thread that advances both engines' epoch every [`EPOCH_TICK_MS`]. It holds only
/// weak references, and ends once both engines are dropped.
fn start_ticker(native: &wasmtime::Engine, ao: &wasmtime::Engine) -> Result<(), ExecError> {
    let engines = [native.weak(), ao.weak()];
    std::thread::Builder::new()
        .name("ferrobeam-epoch".into())
        .spawn(move || {
            // Ends when both engines are gone; one tick per EPOCH_TICK_MS until then.
            loop {
                std::thread::sleep(std::time::Duration::from_millis(EPOCH_TICK_MS));
                let mut alive = false;
                for engine in engines.iter().filter_map(wasmtime::EngineWeak::upgrade) {
                    engine.increment_epoch();
                    alive = true;
                }
                if !alive {
                    break;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| ExecError::Engine(format!("spawning the epoch ticker: {e}")))
}

fn wasmtime_config(instances_max: u32, exceptions: bool) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(instances_max)
        .total_gc_heaps(instances_max)
        .total_memories(instances_max)
        .total_tables(instances_max)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(TABLE_ELEMENTS_MAX)
        .max_memory_size(MEMORY_BYTES_MAX as usize);
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        // Threads are off: wasmtime's `threads` feature is not compiled in (no shared memory).
        .wasm_shared_everything_threads(false)
        .epoch_interruption(true)
        .wasm_gc(false)
        .wasm_exceptions(exceptions)
        .wasm_stack_switching(false)
        .max_wasm_stack(WASM_STACK_BYTES_MAX)
        .wasm_backtrace_max_frames(None)
        .memory_reservation(MEMORY_BYTES_MAX)
        .memory_guard_size(MEMORY_GUARD_BYTES)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// A stable text form of wasmtime's compatibility hash: the `Hash` input fed to SHA-256 (not
/// `DefaultHasher`, whose output may change between Rust releases).
fn compatibility_hex(engine: &wasmtime::Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..16])
}
