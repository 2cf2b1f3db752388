//! Hardware inventory: what this machine offers, as one versioned, serializable struct.
//!
//! [`Inventory::detect`] reads CPUs (vendor, model, flags, caches), topology (NUMA nodes, SMT
//! siblings), memory and huge pages, disks, NICs, GPUs (through NVML, loaded at run time) and TEE
//! capabilities (SEV-SNP guest device, configfs-tsm, TPM). Each part is detected on its own and
//! fails on its own: a part that cannot be read becomes `{"error": reason}` in the JSON, and the
//! rest of the inventory is still there. The node turns the inventory into an operator summary
//! ([`Inventory::summary`]), Prometheus gauges ([`Inventory::prometheus`]), allocatable assets
//! ([`Inventory::resources`]) and a digest bound into attestation ([`Inventory::digest`]).
//!
//! ```text
//!   Roots { sys, proc, dev, probe_host }
//!     |   (read-only: /sys, /proc, /dev; CPUID and NVML only when probe_host)
//!     v
//!   Inventory { schema_version, cpu, topology, memory, disks, nics, gpus, tee }
//!     |        each a Part<T>: {"ok": T} or {"error": "reason"}
//!     +--> to_json / from_json     the versioned schema (docs/hwdetect.md)
//!     +--> summary / prometheus    for `ferrobeam hw` and /metrics
//!     +--> resources               cpu-core, memory, disk, nic, gpu -> asset ids (in the node)
//!     +--> digest                  SHA-256 of the stable parts -> attestation state digest
//! ```
//!
//! What it must not do: depend on the node (no `ferrobeam` crates), contain `unsafe` code, write
//! anywhere, touch the network, or fail as a whole because one part of the machine is unreadable.
//! Every directory walk has a named bound (the `*_MAX` constants below).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cpu;
mod digest;
mod disk;
mod error;
mod gpu;
mod memory;
mod nic;
mod read;
mod report;
mod resource;
mod tee;
mod topology;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cpu::{Cache, CacheKind, Cpu, Cpuid, REPORTED_FLAGS};
pub use digest::DIGEST_DOMAIN;
pub use disk::{Disk, DiskKind};
pub use error::{DetectError, SchemaError};
pub use gpu::{Gpu, GpuCcMode, Gpus};
pub use memory::{HugePages, Memory};
pub use nic::Nic;
pub use resource::{CapacityUnit, Resource, ResourceKind};
pub use tee::{Tee, Tpm};
pub use topology::{LogicalCpu, NumaNode, Topology};

/// Version of the JSON schema in `docs/hwdetect.md`. Bumped on any change a reader could notice
/// (a field renamed, removed, or given a new meaning); [`Inventory::from_json`] rejects others.
pub const SCHEMA_VERSION: u32 = 1;

/// Most logical CPUs read (the kernel's own `NR_CPUS` ceiling). Bounds every per-CPU walk; a
/// machine with more fails the `cpu` and `topology` parts with [`DetectError::TooMany`].
pub const CPU_MAX: usize = 8192;
/// Most NUMA nodes read (the kernel's `MAX_NUMNODES` is 1024). Over it: `topology` fails.
pub const NUMA_NODE_MAX: usize = 1024;
/// Most cache descriptions (`cpuN/cache/indexM`) read per CPU; real CPUs have 4 or 5.
pub const CACHE_INDEX_MAX: usize = 16;
/// Most entries read from `/sys/class/net`, virtual interfaces included (container hosts with
/// many veths reach hundreds). Over it: the `nics` part fails.
pub const NIC_MAX: usize = 4096;
/// Most rx or tx queues counted per NIC (large NICs expose 128 to 512).
pub const NIC_QUEUE_MAX: usize = 4096;
/// Most entries read from `/sys/block`. Over it: the `disks` part fails.
pub const DISK_MAX: usize = 4096;
/// Most entries read inside one `/sys/block/<disk>` directory (attributes plus partitions).
pub const DISK_ENTRY_MAX: usize = 4096;
/// Most GPUs queried through NVML (NVLink domains stop at 8 per board; 64 leaves room).
pub const GPU_MAX: u32 = 64;
/// Most huge page sizes read from `/sys/kernel/mm/hugepages` (x86_64 has 2, arm64 up to 4).
pub const HUGE_PAGE_SIZE_MAX: usize = 16;
/// Most lines of `/proc/mounts` used to find mount points; later lines are ignored.
pub const MOUNT_LINE_MAX: usize = 65536;
/// Most bytes read from one sysfs attribute (they are one value, at most a page).
pub const SYSFS_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Most bytes read from `/proc/cpuinfo`, `/proc/meminfo` or `/proc/mounts`. Only the first
/// processor block of cpuinfo is used, so a cut-off tail loses nothing there.
pub const PROC_FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;

const _: () = assert!(CPU_MAX <= u32::MAX as usize, "CPU ids are stored as u32");
const _: () = assert!(
    NUMA_NODE_MAX <= CPU_MAX,
    "node walks reuse CPU-sized buffers"
);
const _: () = assert!(SYSFS_FILE_BYTES_MAX < PROC_FILE_BYTES_MAX);
const _: () = assert!(
    NIC_QUEUE_MAX >= 512,
    "room for the largest NICs shipping today"
);

/// Where detection reads from. [`Roots::host`] is the running machine; [`Roots::under`] points at
/// a copy of `sys/`, `proc/` and `dev/` trees, as the tests' fixtures are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Roots {
    /// The sysfs root, `/sys` on a host.
    pub sys: PathBuf,
    /// The procfs root, `/proc` on a host.
    pub proc: PathBuf,
    /// The device node root, `/dev` on a host.
    pub dev: PathBuf,
    /// Whether to also ask the running machine directly: the CPUID instruction and NVML. These
    /// cannot be redirected to a fixture tree, so they are off for [`Roots::under`].
    pub probe_host: bool,
}

impl Roots {
    /// The running machine: `/sys`, `/proc`, `/dev`, with CPUID and NVML probes.
    pub fn host() -> Self {
        Self {
            sys: "/sys".into(),
            proc: "/proc".into(),
            dev: "/dev".into(),
            probe_host: true,
        }
    }

    /// A fixture tree: `base/sys`, `base/proc`, `base/dev`, with no host probes.
    pub fn under(base: impl AsRef<Path>) -> Self {
        let base = base.as_ref();
        Self {
            sys: base.join("sys"),
            proc: base.join("proc"),
            dev: base.join("dev"),
            probe_host: false,
        }
    }

    /// The same roots with host probes (CPUID, NVML) switched on or off.
    pub fn with_host_probes(mut self, probe_host: bool) -> Self {
        self.probe_host = probe_host;
        self
    }
}

impl Default for Roots {
    fn default() -> Self {
        Self::host()
    }
}

/// One independently detected part of the inventory: `{"ok": value}` or `{"error": "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part<T> {
    /// The part was read.
    Ok(T),
    /// The part could not be read; the reason, as [`DetectError`]'s message.
    Error(String),
}

impl<T> Part<T> {
    /// The value, when the part was read.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Part::Ok(value) => Some(value),
            Part::Error(_) => None,
        }
    }

    /// The reason, when the part failed.
    pub fn error(&self) -> Option<&str> {
        match self {
            Part::Ok(_) => None,
            Part::Error(reason) => Some(reason),
        }
    }

    /// The same part with its value mapped; an error stays the same error.
    pub fn map<'a, U>(&'a self, f: impl FnOnce(&'a T) -> U) -> Part<U> {
        match self {
            Part::Ok(value) => Part::Ok(f(value)),
            Part::Error(reason) => Part::Error(reason.clone()),
        }
    }
}

impl<T> From<Result<T, DetectError>> for Part<T> {
    fn from(result: Result<T, DetectError>) -> Self {
        match result {
            Ok(value) => Part::Ok(value),
            Err(error) => Part::Error(error.to_string()),
        }
    }
}

/// The hardware inventory of one machine. Serialized, it is the schema in `docs/hwdetect.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Inventory {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// CPU identity, counts, caches and flags.
    pub cpu: Part<Cpu>,
    /// NUMA nodes, logical CPUs and SMT sibling sets.
    pub topology: Part<Topology>,
    /// Memory and huge pages.
    pub memory: Part<Memory>,
    /// Block devices backed by hardware (or a hypervisor's disk), sorted by name.
    pub disks: Part<Vec<Disk>>,
    /// Network interfaces backed by a device, sorted by name.
    pub nics: Part<Vec<Nic>>,
    /// GPUs seen through NVML; an empty list with a reason when NVML is absent.
    pub gpus: Part<Gpus>,
    /// Trusted-execution capabilities visible to this OS.
    pub tee: Part<Tee>,
}

impl Inventory {
    /// Detects the running machine ([`Roots::host`]). Never fails; see [`Part`].
    pub fn detect() -> Self {
        Self::detect_at(&Roots::host())
    }

    /// Detects the machine described by `roots`. Never fails as a whole: each part that cannot be
    /// read holds its reason.
    pub fn detect_at(roots: &Roots) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            cpu: cpu::detect(roots).into(),
            topology: topology::detect(roots).into(),
            memory: memory::detect(roots).into(),
            disks: disk::detect(roots).into(),
            nics: nic::detect(roots).into(),
            gpus: gpu::detect(roots).into(),
            tee: tee::detect(roots).into(),
        }
    }

    /// The inventory as pretty-printed JSON (the documented schema).
    pub fn to_json(&self) -> String {
        // Serializing plain structs, strings and integers to a String cannot fail.
        serde_json::to_string_pretty(self).expect("inventory serializes")
    }

    /// Parses an inventory written by [`Inventory::to_json`].
    ///
    /// # Errors
    ///
    /// [`SchemaError::Json`] when `text` is not an inventory, [`SchemaError::UnsupportedVersion`]
    /// when it was written with another [`SCHEMA_VERSION`].
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        #[derive(Deserialize)]
        struct Versioned {
            schema_version: u32,
        }
        let versioned: Versioned = serde_json::from_str(text)?;
        if versioned.schema_version != SCHEMA_VERSION {
            return Err(SchemaError::UnsupportedVersion {
                found: versioned.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(serde_json::from_str(text)?)
    }
}
