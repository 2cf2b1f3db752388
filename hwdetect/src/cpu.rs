//! CPU identity, counts, caches and flags.
//!
//! `/proc/cpuinfo` is the source of truth for identity and flags (it is what the kernel decided
//! to use, and what tests can compare against). The CPUID instruction is read too, when the roots
//! allow host probes, and recorded beside it in [`Cpuid`]: it names the hypervisor and shows the
//! raw bits the kernel may have masked. Counts and caches come from sysfs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::topology::{self, CpuPlace};
use crate::{CACHE_INDEX_MAX, DetectError, Roots, read};

/// The CPU flags the inventory reports, by their `/proc/cpuinfo` names: the ones operators ask
/// about (vector width, crypto, SEV/TDX). Flags outside this list are not recorded.
pub const REPORTED_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "bmi1",
    "bmi2",
    "adx",
    "aes",
    "pclmulqdq",
    "vaes",
    "vpclmulqdq",
    "sha_ni",
    "gfni",
    "rdrand",
    "rdseed",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "hypervisor",
    "sme",
    "sev",
    "sev_es",
    "sev_snp",
    "tdx_guest",
];

/// CPU identity and capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Cpu {
    /// `vendor_id` (x86: `AuthenticAMD`, `GenuineIntel`) or `CPU implementer` (arm64).
    pub vendor: String,
    /// `model name`, e.g. `AMD EPYC 9354 32-Core Processor`.
    pub brand: String,
    /// `cpu family`, when the architecture has one.
    pub family: Option<u32>,
    /// `model`, when the architecture has one.
    pub model: Option<u32>,
    /// `stepping`, when the architecture has one.
    pub stepping: Option<u32>,
    /// `microcode` revision as the kernel prints it (`0x1000065`), when shown.
    pub microcode: Option<String>,
    /// Distinct physical packages among the online CPUs.
    pub sockets: u32,
    /// Distinct SMT sibling sets (physical cores) among the online CPUs.
    pub physical_cores: u32,
    /// Online logical CPUs.
    pub logical_cpus: u32,
    /// Caches, one entry per distinct (level, kind, size, sharing).
    pub caches: Vec<Cache>,
    /// The [`REPORTED_FLAGS`] present in cpuinfo, in that list's order.
    pub flags: Vec<String>,
    /// Whether the `hypervisor` flag is set (running in a VM).
    pub hypervisor: bool,
    /// What the CPUID instruction says, when host probes ran on x86_64.
    pub cpuid: Option<Cpuid>,
}

/// One kind of cache.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Cache {
    /// 1, 2, 3 ...
    pub level: u8,
    /// Data, instruction or unified.
    pub kind: CacheKind,
    /// Size of one instance.
    pub size_bytes: u64,
    /// Logical CPUs sharing one instance.
    pub shared_by_cpus: u32,
    /// Instances among the online CPUs.
    pub instances: u32,
}

/// What a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CacheKind {
    /// Data only.
    Data,
    /// Instructions only.
    Instruction,
    /// Both.
    Unified,
}

/// Facts from the CPUID instruction of the CPU that ran detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Cpuid {
    /// Vendor string (leaf 0).
    pub vendor: String,
    /// Brand string (leaves 0x80000002-4), trimmed.
    pub brand: Option<String>,
    /// Display family (base + extended).
    pub family: u32,
    /// Display model (with the extended model where the vendor uses it).
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// Hypervisor identity (leaf 0x40000000), when the hypervisor bit is set.
    pub hypervisor_vendor: Option<String>,
    /// [`REPORTED_FLAGS`] whose CPUID bits are set, in that list's order.
    pub flags: Vec<String>,
}

/// Reads the `cpu` part.
pub(crate) fn detect(roots: &Roots) -> Result<Cpu, DetectError> {
    let cpuinfo_path = read::under(&roots.proc, "cpuinfo");
    let cpuinfo = read::proc_text(&cpuinfo_path)?;
    let block = cpuinfo.split("\n\n").next().unwrap_or_default();
    let places = topology::places(roots)?;
    let flags = reported_flags(block);
    let logical_cpus = u32::try_from(places.len()).expect("places are bounded by CPU_MAX");
    let physical_cores = count_distinct(places.iter().map(|place| &place.siblings));
    let sockets = count_distinct(places.iter().map(|place| place.package_id));
    // Each CPU adds at most one package and one sibling set.
    assert!(physical_cores <= logical_cpus && sockets <= logical_cpus);
    Ok(Cpu {
        vendor: identity_field(block, &["vendor_id", "CPU implementer"], &cpuinfo_path)?,
        brand: identity_field(block, &["model name", "Hardware"], &cpuinfo_path)?,
        family: number_field(block, "cpu family"),
        model: number_field(block, "model"),
        stepping: number_field(block, "stepping"),
        microcode: read::field(block, "microcode").map(str::to_owned),
        sockets,
        physical_cores,
        logical_cpus,
        caches: caches(roots, &places)?,
        hypervisor: flags.iter().any(|flag| flag == "hypervisor"),
        flags,
        cpuid: if roots.probe_host {
            cpuid_facts()
        } else {
            None
        },
    })
}

fn identity_field(block: &str, keys: &[&str], path: &Path) -> Result<String, DetectError> {
    keys.iter()
        .find_map(|key| read::field(block, key))
        .map(str::to_owned)
        .ok_or(DetectError::Missing {
            path: path.to_path_buf(),
            what: "CPU vendor or model name",
        })
}

fn number_field(block: &str, key: &str) -> Option<u32> {
    read::field(block, key)?.parse().ok()
}

/// The reported flags present in a cpuinfo block's `flags` (x86) or `Features` (arm64) line.
pub(crate) fn reported_flags(block: &str) -> Vec<String> {
    let line = read::field(block, "flags").or_else(|| read::field(block, "Features"));
    let present: BTreeSet<&str> = line.unwrap_or_default().split_whitespace().collect();
    keep_reported(|name| present.contains(name))
}

fn keep_reported(mut has: impl FnMut(&str) -> bool) -> Vec<String> {
    REPORTED_FLAGS
        .iter()
        .filter(|name| has(name))
        .map(|name| (*name).to_owned())
        .collect()
}

fn count_distinct<T: Ord>(items: impl Iterator<Item = T>) -> u32 {
    let distinct: BTreeSet<T> = items.collect();
    u32::try_from(distinct.len()).expect("bounded by CPU_MAX")
}

/// One cache instance as sysfs describes it: who shares it identifies it.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct CacheInstance {
    level: u8,
    kind: CacheKind,
    size_bytes: u64,
    shared_cpus: Vec<u32>,
}

/// Caches of all online CPUs, instances deduplicated by their sharing set, then grouped.
fn caches(roots: &Roots, places: &[CpuPlace]) -> Result<Vec<Cache>, DetectError> {
    let mut instances = BTreeSet::new();
    for place in places {
        let dir = read::under(
            &roots.sys,
            &format!("devices/system/cpu/cpu{}/cache", place.id),
        );
        if !read::exists(&dir)? {
            continue; // Some VMs and arm64 boards describe no caches.
        }
        for index in read::numbered(&dir, "index", "cache indexes", CACHE_INDEX_MAX)? {
            instances.insert(cache_instance(&dir.join(format!("index{index}")))?);
        }
    }
    let mut groups: BTreeMap<(u8, CacheKind, u64, u32), u32> = BTreeMap::new();
    for instance in &instances {
        let shared = u32::try_from(instance.shared_cpus.len()).expect("bounded by CPU_MAX");
        *groups
            .entry((instance.level, instance.kind, instance.size_bytes, shared))
            .or_default() += 1;
    }
    Ok(groups
        .into_iter()
        .map(
            |((level, kind, size_bytes, shared_by_cpus), instances)| Cache {
                level,
                kind,
                size_bytes,
                shared_by_cpus,
                instances,
            },
        )
        .collect())
}

fn cache_instance(dir: &Path) -> Result<CacheInstance, DetectError> {
    let kind_path = dir.join("type");
    let kind = match read::attribute(&kind_path)?.as_str() {
        "Data" => CacheKind::Data,
        "Instruction" => CacheKind::Instruction,
        "Unified" => CacheKind::Unified,
        other => return Err(read::parse_error(&kind_path, "cache type", other)),
    };
    let size_path = dir.join("size");
    let size_text = read::attribute(&size_path)?;
    Ok(CacheInstance {
        level: read::number(&dir.join("level"), "cache level")?,
        kind,
        size_bytes: parse_size(&size_text)
            .ok_or_else(|| read::parse_error(&size_path, "cache size", &size_text))?,
        shared_cpus: read::cpu_list_attribute(&dir.join("shared_cpu_list"))?,
    })
}

/// Parses sysfs sizes: `32K`, `2048K`, `1M`, or plain bytes.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let scale: u64 = match unit.trim() {
        "" => 1,
        "K" | "KB" | "kB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(target_arch = "x86_64")]
fn cpuid_facts() -> Option<Cpuid> {
    let cpuid = raw_cpuid::CpuId::new();
    let vendor = cpuid.get_vendor_info()?.as_str().to_owned();
    let info = cpuid.get_feature_info()?;
    let extended = cpuid.get_extended_feature_info();
    let encryption = cpuid.get_memory_encryption_info();
    let has = |name: &str| -> bool {
        let e = extended.as_ref();
        let m = encryption.as_ref();
        match name {
            "sse4_2" => info.has_sse42(),
            "avx" => info.has_avx(),
            "fma" => info.has_fma(),
            "aes" => info.has_aesni(),
            "pclmulqdq" => info.has_pclmulqdq(),
            "rdrand" => info.has_rdrand(),
            "hypervisor" => info.has_hypervisor(),
            "avx2" => e.is_some_and(|e| e.has_avx2()),
            "bmi1" => e.is_some_and(|e| e.has_bmi1()),
            "bmi2" => e.is_some_and(|e| e.has_bmi2()),
            "adx" => e.is_some_and(|e| e.has_adx()),
            "vaes" => e.is_some_and(|e| e.has_vaes()),
            "vpclmulqdq" => e.is_some_and(|e| e.has_vpclmulqdq()),
            "sha_ni" => e.is_some_and(|e| e.has_sha()),
            "gfni" => e.is_some_and(|e| e.has_gfni()),
            "rdseed" => e.is_some_and(|e| e.has_rdseed()),
            "avx512f" => e.is_some_and(|e| e.has_avx512f()),
            "avx512dq" => e.is_some_and(|e| e.has_avx512dq()),
            "avx512cd" => e.is_some_and(|e| e.has_avx512cd()),
            "avx512bw" => e.is_some_and(|e| e.has_avx512bw()),
            "avx512vl" => e.is_some_and(|e| e.has_avx512vl()),
            "avx512ifma" => e.is_some_and(|e| e.has_avx512_ifma()),
            "avx512vbmi" => e.is_some_and(|e| e.has_avx512vbmi()),
            "avx512_vbmi2" => e.is_some_and(|e| e.has_avx512vbmi2()),
            "avx512_vnni" => e.is_some_and(|e| e.has_avx512vnni()),
            "sme" => m.is_some_and(|m| m.has_sme()),
            "sev" => m.is_some_and(|m| m.has_sev()),
            "sev_es" => m.is_some_and(|m| m.has_sev_es()),
            "sev_snp" => m.is_some_and(|m| m.has_sev_snp()),
            _ => false, // tdx_guest has no CPUID bit of its own: the kernel derives it.
        }
    };
    let flags = keep_reported(has);
    Some(Cpuid {
        vendor,
        brand: cpuid
            .get_processor_brand_string()
            .map(|brand| brand.as_str().trim().to_owned()),
        family: u32::from(info.family_id()),
        model: u32::from(info.model_id()),
        stepping: u32::from(info.stepping_id()),
        hypervisor_vendor: cpuid
            .get_hypervisor_info()
            .map(|hv| format!("{:?}", hv.identify())),
        flags,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_facts() -> Option<Cpuid> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_flags_are_unique_cpuinfo_names() {
        let unique: BTreeSet<&str> = REPORTED_FLAGS.iter().copied().collect();
        assert_eq!(unique.len(), REPORTED_FLAGS.len());
        assert!(REPORTED_FLAGS.iter().all(|name| {
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
    }

    #[test]
    fn sizes_parse_with_kernel_suffixes() {
        assert_eq!(parse_size("32K"), Some(32 * 1024));
        assert_eq!(parse_size("32768K"), Some(32 * 1024 * 1024));
        assert_eq!(parse_size("2M"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("64"), Some(64));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("K"), None);
    }

    #[test]
    fn flags_are_filtered_and_ordered_by_the_reported_list() {
        let block = "flags\t\t: fpu sha_ni avx2 hypervisor aes unknownflag\n";
        assert_eq!(
            reported_flags(block),
            vec!["avx2", "aes", "sha_ni", "hypervisor"]
        );
        assert_eq!(
            reported_flags("Features\t: fp asimd aes sha2\n"),
            vec!["aes"]
        );
        assert!(reported_flags("").is_empty());
    }
}
