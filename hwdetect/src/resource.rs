//! Allocatable resources: what the node's asset registry turns into asset ids
//! (`hash(node address, kind, identity)`), so each identity must name the same hardware across
//! reboots and differ between two pieces of hardware on one machine.

use serde::{Deserialize, Serialize};

use crate::{Inventory, Nic, Part};

/// One allocatable resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Resource {
    /// What it is.
    pub kind: ResourceKind,
    /// Stable hardware identity within this machine (see `docs/hwdetect.md`).
    pub identity: String,
    /// How much of it, in `unit`; `None` when unknown (a NIC's speed on a virtual link).
    pub capacity: Option<u64>,
    /// The unit of `capacity`.
    pub unit: CapacityUnit,
}

/// Resource kinds; their names are part of asset ids and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ResourceKind {
    /// One logical CPU (a hardware thread), the unit executor cores are pinned to.
    CpuCore,
    /// System memory, as one pool.
    Memory,
    /// One disk.
    Disk,
    /// One NIC.
    Nic,
    /// One GPU.
    Gpu,
}

impl ResourceKind {
    /// The kind's name: `cpu-core`, `memory`, `disk`, `nic`, `gpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::CpuCore => "cpu-core",
            ResourceKind::Memory => "memory",
            ResourceKind::Disk => "disk",
            ResourceKind::Nic => "nic",
            ResourceKind::Gpu => "gpu",
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Units of [`Resource::capacity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CapacityUnit {
    /// Logical CPUs (always 1 per cpu-core resource).
    LogicalCpus,
    /// Bytes.
    Bytes,
    /// Megabits per second.
    MbitPerSecond,
}

fn resource(
    kind: ResourceKind,
    identity: String,
    capacity: Option<u64>,
    unit: CapacityUnit,
) -> Resource {
    assert!(!identity.is_empty(), "an identity names something");
    Resource {
        kind,
        identity,
        capacity,
        unit,
    }
}

/// A NIC's MAC, unless it is missing, all zero (unconfigured SR-IOV functions) or shared with
/// another listed NIC (bond members take the bond's MAC): then its name, which is as stable as
/// the udev naming policy.
fn nic_identity(nic: &Nic, nics: &[Nic]) -> String {
    let usable = |mac: &str| mac.bytes().any(|byte| byte != b'0' && byte != b':');
    match nic.mac.as_deref() {
        Some(mac)
            if usable(mac)
                && nics
                    .iter()
                    .filter(|other| other.mac.as_deref() == Some(mac))
                    .count()
                    == 1 =>
        {
            mac.to_owned()
        }
        _ => format!("name:{}", nic.name),
    }
}

impl Inventory {
    /// The allocatable resources: one `cpu-core` per online logical CPU, `memory`, each disk,
    /// each NIC, each GPU. A part that failed contributes nothing (and `cpu-core` needs both the
    /// `cpu` and `topology` parts).
    pub fn resources(&self) -> Vec<Resource> {
        let mut resources = Vec::new();
        if let (Part::Ok(cpu), Part::Ok(topology)) = (&self.cpu, &self.topology) {
            resources.extend(topology.cpus.iter().map(|logical| {
                let identity = format!("cpu-core:{}:{}", logical.id, cpu.brand);
                resource(
                    ResourceKind::CpuCore,
                    identity,
                    Some(1),
                    CapacityUnit::LogicalCpus,
                )
            }));
        }
        if let Part::Ok(memory) = &self.memory {
            let capacity = Some(memory.total_bytes);
            resources.push(resource(
                ResourceKind::Memory,
                "memory".into(),
                capacity,
                CapacityUnit::Bytes,
            ));
        }
        if let Part::Ok(disks) = &self.disks {
            resources.extend(disks.iter().map(|disk| {
                let mut identity = disk.name.clone();
                for (key, value) in [("model", &disk.model), ("serial", &disk.serial)] {
                    if let Some(value) = value {
                        identity.push_str(&format!(";{key}={value}"));
                    }
                }
                resource(
                    ResourceKind::Disk,
                    identity,
                    Some(disk.size_bytes),
                    CapacityUnit::Bytes,
                )
            }));
        }
        if let Part::Ok(nics) = &self.nics {
            resources.extend(nics.iter().map(|nic| {
                let identity = nic_identity(nic, nics);
                let capacity = nic.speed_mbps.map(u64::from);
                resource(
                    ResourceKind::Nic,
                    identity,
                    capacity,
                    CapacityUnit::MbitPerSecond,
                )
            }));
        }
        if let Part::Ok(gpus) = &self.gpus {
            resources.extend(gpus.devices.iter().map(|gpu| {
                resource(
                    ResourceKind::Gpu,
                    gpu.uuid.clone(),
                    gpu.memory_total_bytes,
                    CapacityUnit::Bytes,
                )
            }));
        }
        resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, mac: Option<&str>) -> Nic {
        Nic {
            name: name.into(),
            mac: mac.map(str::to_owned),
            mtu: 1500,
            speed_mbps: None,
            driver: None,
            rx_queues: 1,
            tx_queues: 1,
            numa_node: None,
        }
    }

    #[test]
    fn nic_identities_fall_back_to_names_when_macs_do_not_identify() {
        let nics = vec![
            nic("eno1", Some("b4:96:91:aa:bb:01")),
            nic("bond-a", Some("b4:96:91:aa:bb:02")),
            nic("bond-b", Some("b4:96:91:aa:bb:02")),
            nic("vf0", Some("00:00:00:00:00:00")),
            nic("ib0", None),
        ];
        let identities: Vec<String> = nics.iter().map(|n| nic_identity(n, &nics)).collect();
        assert_eq!(
            identities,
            [
                "b4:96:91:aa:bb:01",
                "name:bond-a",
                "name:bond-b",
                "name:vf0",
                "name:ib0"
            ]
        );
    }
}
