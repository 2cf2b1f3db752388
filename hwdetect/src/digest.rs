//! The inventory digest: SHA-256 over a canonical JSON of the parts that do not change while a
//! machine runs, bound into the attestation state digest.
//!
//! Canonical means: this module's own structs, serialized by serde_json in declaration order with
//! no whitespace (struct order does not depend on serde_json features, unlike maps), every list in
//! the order detection sorted it. Left out, because they move without the hardware changing:
//! available memory, free huge pages, disk mount points, NIC link speed, and the reason NVML was
//! unavailable. A failed part is in as its error string, so a part starting to fail changes it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Cpu, Disk, DiskKind, Gpu, Inventory, Nic, Part, Tee, Topology};

/// Prefix hashed before the canonical JSON, so this digest cannot collide with another use of
/// SHA-256 over JSON. Its version changes whenever the stable view changes.
pub const DIGEST_DOMAIN: &str = "ferrobeam-hwdetect-digest-v1\n";

#[derive(Serialize)]
struct Stable<'a> {
    schema_version: u32,
    cpu: Part<&'a Cpu>,
    topology: Part<&'a Topology>,
    memory: Part<StableMemory>,
    disks: Part<Vec<StableDisk<'a>>>,
    nics: Part<Vec<StableNic<'a>>>,
    gpus: Part<&'a [Gpu]>,
    tee: Part<&'a Tee>,
}

#[derive(Serialize)]
struct StableMemory {
    total_bytes: u64,
    /// (page size, pages reserved) per pool.
    huge_pages: Vec<(u64, u64)>,
}

#[derive(Serialize)]
struct StableDisk<'a> {
    name: &'a str,
    kind: DiskKind,
    size_bytes: u64,
    model: Option<&'a str>,
    serial: Option<&'a str>,
}

#[derive(Serialize)]
struct StableNic<'a> {
    name: &'a str,
    mac: Option<&'a str>,
    mtu: u32,
    driver: Option<&'a str>,
    rx_queues: u32,
    tx_queues: u32,
    numa_node: Option<u32>,
}

fn stable_disk(disk: &Disk) -> StableDisk<'_> {
    StableDisk {
        name: &disk.name,
        kind: disk.kind,
        size_bytes: disk.size_bytes,
        model: disk.model.as_deref(),
        serial: disk.serial.as_deref(),
    }
}

fn stable_nic(nic: &Nic) -> StableNic<'_> {
    StableNic {
        name: &nic.name,
        mac: nic.mac.as_deref(),
        mtu: nic.mtu,
        driver: nic.driver.as_deref(),
        rx_queues: nic.rx_queues,
        tx_queues: nic.tx_queues,
        numa_node: nic.numa_node,
    }
}

impl Inventory {
    /// The canonical JSON the digest is computed over (compact, one line): what
    /// [`Inventory::digest`] covers, for a person comparing two machines' digests.
    pub fn stable_json(&self) -> String {
        let stable = Stable {
            schema_version: self.schema_version,
            cpu: self.cpu.map(|cpu| cpu),
            topology: self.topology.map(|topology| topology),
            memory: self.memory.map(|memory| StableMemory {
                total_bytes: memory.total_bytes,
                huge_pages: memory
                    .huge_pages
                    .iter()
                    .map(|pool| (pool.page_size_bytes, pool.total))
                    .collect(),
            }),
            disks: self
                .disks
                .map(|disks| disks.iter().map(stable_disk).collect()),
            nics: self.nics.map(|nics| nics.iter().map(stable_nic).collect()),
            gpus: self.gpus.map(|gpus| gpus.devices.as_slice()),
            tee: self.tee.map(|tee| tee),
        };
        // Structs of strings, integers, bools and options always serialize.
        serde_json::to_string(&stable).expect("stable view serializes")
    }

    /// SHA-256 of [`DIGEST_DOMAIN`] followed by [`Inventory::stable_json`]. Equal on two
    /// detections of an unchanged machine; any change to a stable field changes it.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_DOMAIN.as_bytes());
        hasher.update(self.stable_json().as_bytes());
        hasher.finalize().into()
    }

    /// [`Inventory::digest`] as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }
}
