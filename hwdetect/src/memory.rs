//! Memory from `/proc/meminfo`, huge pages from `/sys/kernel/mm/hugepages`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DetectError, HUGE_PAGE_SIZE_MAX, Roots, read};

/// System memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Memory {
    /// `MemTotal`: usable RAM (installed RAM less firmware and kernel reservations).
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping (kernel estimate, volatile).
    pub available_bytes: Option<u64>,
    /// Huge page pools, one per page size, smallest first.
    pub huge_pages: Vec<HugePages>,
}

/// One huge page pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HugePages {
    /// Page size (2 MiB, 1 GiB on x86_64).
    pub page_size_bytes: u64,
    /// Pages reserved in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`; volatile).
    pub free: u64,
    /// Whether this is the default size (`Hugepagesize` in meminfo).
    pub default: bool,
}

/// Reads the `memory` part.
pub(crate) fn detect(roots: &Roots) -> Result<Memory, DetectError> {
    let path = read::under(&roots.proc, "meminfo");
    let meminfo = read::proc_text(&path)?;
    let kib = |key: &str| read::field(&meminfo, key).and_then(kib_value);
    let total_bytes = kib("MemTotal").ok_or(DetectError::Missing {
        path: path.clone(),
        what: "MemTotal",
    })?;
    let default_size_bytes = kib("Hugepagesize");
    let sysfs_dir = read::under(&roots.sys, "kernel/mm/hugepages");
    let huge_pages = if read::exists(&sysfs_dir)? {
        sysfs_huge_pages(&sysfs_dir, default_size_bytes)?
    } else {
        meminfo_huge_pages(&meminfo, default_size_bytes)
    };
    Ok(Memory {
        total_bytes,
        available_bytes: kib("MemAvailable"),
        huge_pages,
    })
}

/// `  24684084 kB` -> bytes. meminfo's "kB" is KiB.
pub(crate) fn kib_value(text: &str) -> Option<u64> {
    let number = text.trim().strip_suffix("kB").unwrap_or(text).trim();
    number.parse::<u64>().ok()?.checked_mul(1024)
}

fn sysfs_huge_pages(
    dir: &Path,
    default_size_bytes: Option<u64>,
) -> Result<Vec<HugePages>, DetectError> {
    let mut pools = Vec::new();
    for name in read::names(dir, "huge page sizes", HUGE_PAGE_SIZE_MAX)? {
        let Some(page_size_bytes) = name.strip_prefix("hugepages-").and_then(kib_value) else {
            continue;
        };
        let pool = dir.join(&name);
        pools.push(HugePages {
            page_size_bytes,
            total: read::number(&pool.join("nr_hugepages"), "huge page count")?,
            free: read::number(&pool.join("free_hugepages"), "free huge page count")?,
            default: default_size_bytes == Some(page_size_bytes),
        });
    }
    pools.sort_by_key(|pool| pool.page_size_bytes);
    Ok(pools)
}

/// Without sysfs only the default pool is known, from meminfo's `HugePages_*` lines.
fn meminfo_huge_pages(meminfo: &str, default_size_bytes: Option<u64>) -> Vec<HugePages> {
    let count = |key: &str| read::field(meminfo, key).and_then(|value| value.parse().ok());
    match (
        default_size_bytes,
        count("HugePages_Total"),
        count("HugePages_Free"),
    ) {
        (Some(page_size_bytes), Some(total), Some(free)) => {
            vec![HugePages {
                page_size_bytes,
                total,
                free,
                default: true,
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_values_parse() {
        assert_eq!(kib_value("  24684084 kB"), Some(24684084 * 1024));
        assert_eq!(kib_value("2048kB"), Some(2048 * 1024));
        assert_eq!(kib_value("x kB"), None);
    }

    #[test]
    fn meminfo_alone_gives_the_default_pool() {
        let meminfo =
            "HugePages_Total:       4\nHugePages_Free:        3\nHugepagesize:       2048 kB\n";
        let pools = meminfo_huge_pages(meminfo, Some(2 << 20));
        assert_eq!(
            pools,
            vec![HugePages {
                page_size_bytes: 2 << 20,
                total: 4,
                free: 3,
                default: true
            }]
        );
    }
}
