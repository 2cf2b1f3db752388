//! The `.cwasm` cache files and their one `unsafe` load, plus linear-memory copies for
//! snapshots.
//!
//! `Module::deserialize_file` maps a file of native code and runs it without validating it, so
//! its safety rests on where the file came from. The invariant this module keeps: a cache file
//! is only ever (1) the output of this node's own engine's `precompile_module`, (2) written to a
//! fresh temporary file in the cache directory, synced, then renamed over its final name (so a
//! reader sees either nothing or the whole file), (3) named with the engine's compatibility hash
//! (so an engine only opens files an engine with its exact settings wrote), and (4) never
//! modified in place afterwards (a rewrite is a new file renamed over the name; a mapped old
//! inode stays intact). The cache directory belongs to the node: operators must not let other
//! users write to it.
#![allow(
    unsafe_code,
    reason = "Module::deserialize_file is unsafe: it maps native code the node compiled itself"
)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{AsContext, AsContextMut, Memory};

use super::{ExecError, WASM_PAGE_BYTES};

/// Distinguishes temporary files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A cache file path that this module has written or that an engine with the same compatibility
/// hash wrote. Only [`CachePath::new`] builds one, from the cache directory and the file name the
/// engine derives from the module id and compatibility hash.
#[derive(Debug, Clone)]
pub(crate) struct CachePath(PathBuf);

impl CachePath {
    /// `file_name` must be `<module-id>-<compatibility hash>.cwasm`, as `Engine` builds it.
    pub(crate) fn new(dir: &Path, file_name: &str) -> Self {
        assert!(
            file_name.ends_with(".cwasm"),
            "cache file names end in .cwasm"
        );
        assert!(
            !file_name.contains('/'),
            "cache file names stay in the cache directory"
        );
        Self(dir.join(file_name))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `compiled` (output of `Engine::precompile_module`) under this name atomically:
    /// temporary file, `sync_all`, rename.
    ///
    /// # Errors
    /// [`ExecError::Cache`] when the disk refuses.
    pub(crate) fn write(&self, compiled: &[u8]) -> Result<(), ExecError> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .0
            .with_extension(format!("tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)?;
            file.write_all(compiled)?;
            file.sync_all()?;
            fs::rename(&temp, &self.0)
        })();
        if result.is_err() {
            // Best effort: a leftover temp file is never read (it has no .cwasm name).
            let _ = fs::remove_file(&temp);
        }
        result.map_err(|e| ExecError::Cache(format!("writing {}: {e}", self.0.display())))
    }

    /// Maps the file as a compiled module.
    ///
    /// # Errors
    /// [`ExecError::Cache`] when the file is missing, unreadable, or was written by an
    /// incompatible wasmtime (its header is checked): the caller recompiles.
    pub(crate) fn load(&self, engine: &wasmtime::Engine) -> Result<wasmtime::Module, ExecError> {
        // A `CachePath` names a file in the node's cache directory that only `CachePath::write`
        // creates: the complete output of `precompile_module` of an engine whose compatibility
        // hash is in the name (hence this engine's settings), renamed into place atomically and
        // never modified afterwards. wasmtime still checks the header's version and settings.
        // SAFETY: the file is this engine's own compiled output and does not change while mapped.
        let module = unsafe { wasmtime::Module::deserialize_file(engine, &self.0) };
        module.map_err(|e| ExecError::Cache(format!("loading {}: {e}", self.0.display())))
    }
}

/// A copy of the whole linear memory (a snapshot's `memory`).
pub(crate) fn read_all(memory: Memory, store: impl AsContext) -> Vec<u8> {
    memory.data(&store).to_vec()
}

/// Makes `memory` hold exactly `bytes`: grows it to `bytes.len()` first (growth goes through the
/// store's limiter, so a snapshot larger than the process's `memory-limit` fails), then copies.
///
/// # Errors
/// [`ExecError::SnapshotInvalid`] when the saved memory is not whole pages, is smaller than the
/// module's initial memory, or cannot grow that far.
pub(crate) fn write_all(
    memory: Memory,
    mut store: impl AsContextMut,
    bytes: &[u8],
) -> Result<(), ExecError> {
    let saved = bytes.len() as u64;
    let current = memory.data_size(&store) as u64;
    if !saved.is_multiple_of(WASM_PAGE_BYTES) {
        return Err(ExecError::SnapshotInvalid(
            "memory is not whole pages".into(),
        ));
    }
    if saved < current {
        return Err(ExecError::SnapshotInvalid(format!(
            "memory of {saved} bytes is smaller than the module's initial {current}"
        )));
    }
    let delta_pages = (saved - current) / WASM_PAGE_BYTES;
    if delta_pages > 0 {
        memory
            .grow(&mut store, delta_pages)
            .map_err(|e| ExecError::SnapshotInvalid(format!("growing memory to {saved}: {e}")))?;
    }
    let data = memory.data_mut(&mut store);
    assert_eq!(data.len(), bytes.len(), "memory grown to the saved size");
    data.copy_from_slice(bytes);
    Ok(())
}
