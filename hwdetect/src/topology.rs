//! Topology: which logical CPU sits on which package, core and NUMA node, from
//! `/sys/devices/system/cpu` and `/sys/devices/system/node`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{CPU_MAX, DetectError, NUMA_NODE_MAX, Roots, read};

/// Where the online CPUs sit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Topology {
    /// NUMA nodes, by id. Empty when the kernel exposes none (built without NUMA).
    pub numa_nodes: Vec<NumaNode>,
    /// Online logical CPUs, by id.
    pub cpus: Vec<LogicalCpu>,
    /// SMT sibling sets (the logical CPUs of one physical core), sorted. A machine without SMT
    /// has one single-CPU set per core.
    pub smt_siblings: Vec<Vec<u32>>,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NumaNode {
    /// Node id (`nodeN`).
    pub id: u32,
    /// Its CPUs (`cpulist`); empty for a memory-only node.
    pub cpus: Vec<u32>,
    /// Its memory (`MemTotal` of the node's `meminfo`), when shown.
    pub memory_total_bytes: Option<u64>,
}

/// One online logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogicalCpu {
    /// Logical CPU id (`cpuN`), as used by affinity masks.
    pub id: u32,
    /// `topology/physical_package_id`: the socket.
    pub package_id: u32,
    /// `topology/core_id`: the core within its package (not unique across packages).
    pub core_id: u32,
    /// The NUMA node holding this CPU, when there are nodes.
    pub numa_node: Option<u32>,
}

/// One online CPU's place, as read from sysfs; shared by the `cpu` and `topology` parts.
pub(crate) struct CpuPlace {
    pub(crate) id: u32,
    pub(crate) package_id: u32,
    pub(crate) core_id: u32,
    /// `thread_siblings_list`, which always includes `id`.
    pub(crate) siblings: Vec<u32>,
}

/// Reads the `topology` part.
pub(crate) fn detect(roots: &Roots) -> Result<Topology, DetectError> {
    let places = places(roots)?;
    let numa_nodes = numa_nodes(roots)?;
    let node_of: BTreeMap<u32, u32> = numa_nodes
        .iter()
        .flat_map(|node| node.cpus.iter().map(|cpu| (*cpu, node.id)))
        .collect();
    let cpus: Vec<LogicalCpu> = places
        .iter()
        .map(|place| LogicalCpu {
            id: place.id,
            package_id: place.package_id,
            core_id: place.core_id,
            numa_node: node_of.get(&place.id).copied(),
        })
        .collect();
    let smt_siblings: BTreeSet<Vec<u32>> = places.into_iter().map(|place| place.siblings).collect();
    assert!(
        smt_siblings.len() <= cpus.len(),
        "one sibling set per CPU at most"
    );
    Ok(Topology {
        numa_nodes,
        cpus,
        smt_siblings: smt_siblings.into_iter().collect(),
    })
}

/// The online CPUs (`devices/system/cpu/online`) and their places.
pub(crate) fn places(roots: &Roots) -> Result<Vec<CpuPlace>, DetectError> {
    let cpu_dir = read::under(&roots.sys, "devices/system/cpu");
    let online = read::cpu_list_attribute(&cpu_dir.join("online"))?;
    assert!(online.len() <= CPU_MAX);
    let mut places = Vec::with_capacity(online.len());
    for id in online {
        let dir = cpu_dir.join(format!("cpu{id}/topology"));
        let mut siblings = read::cpu_list_attribute(&dir.join("thread_siblings_list"))?;
        if !siblings.contains(&id) {
            // Not what the kernel writes, but a core always holds its own thread.
            siblings.push(id);
            siblings.sort_unstable();
        }
        places.push(CpuPlace {
            id,
            package_id: read::number(&dir.join("physical_package_id"), "package id")?,
            core_id: read::number(&dir.join("core_id"), "core id")?,
            siblings,
        });
    }
    Ok(places)
}

fn numa_nodes(roots: &Roots) -> Result<Vec<NumaNode>, DetectError> {
    let node_dir = read::under(&roots.sys, "devices/system/node");
    if !read::exists(&node_dir)? {
        return Ok(Vec::new());
    }
    // The directory also holds `online`, `possible`, `has_cpu` ...: allow for them in the bound.
    let ids = read::numbered(&node_dir, "node", "NUMA nodes", NUMA_NODE_MAX + 16)?;
    if ids.len() > NUMA_NODE_MAX {
        return Err(DetectError::TooMany {
            path: node_dir,
            what: "NUMA nodes",
            max: NUMA_NODE_MAX,
        });
    }
    let mut nodes = Vec::with_capacity(ids.len());
    for id in ids {
        let dir = node_dir.join(format!("node{id}"));
        nodes.push(NumaNode {
            id,
            cpus: read::cpu_list_attribute(&dir.join("cpulist"))?,
            memory_total_bytes: node_memory_total_bytes(&dir.join("meminfo")),
        });
    }
    Ok(nodes)
}

/// `Node N MemTotal:  123 kB` from a node's meminfo.
fn node_memory_total_bytes(path: &std::path::Path) -> Option<u64> {
    let text = read::text(path, crate::SYSFS_FILE_BYTES_MAX).ok()?;
    let line = text.lines().find(|line| line.contains("MemTotal:"))?;
    let value = line.split_once("MemTotal:")?.1;
    crate::memory::kib_value(value)
}
