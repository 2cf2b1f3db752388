//! Disks from `/sys/block`, mount points from `/proc/mounts`.
//!
//! Only block devices backed by a device are listed: loop, zram, ram, device-mapper and md
//! devices (everything under `/sys/devices/virtual/block`) are views over other disks or memory,
//! not hardware, and are skipped; so are devices of size 0 (drives without media).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DISK_ENTRY_MAX, DISK_MAX, DetectError, MOUNT_LINE_MAX, Roots, read};

/// Bytes per sector in `/sys/block/<disk>/size`, whatever the device's own sector size.
const SECTOR_BYTES: u64 = 512;

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Disk {
    /// Kernel name (`nvme0n1`, `sda`, `vda`).
    pub name: String,
    /// What kind of device it is.
    pub kind: DiskKind,
    /// Capacity.
    pub size_bytes: u64,
    /// `device/model`, trimmed, when the driver shows one.
    pub model: Option<String>,
    /// `device/serial` or the disk's own `serial`, trimmed, when shown.
    pub serial: Option<String>,
    /// Mount points of the disk and its partitions (from `/proc/mounts`), sorted.
    pub mount_points: Vec<String>,
}

/// What kind of disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DiskKind {
    /// An NVMe namespace.
    Nvme,
    /// Non-rotational (`queue/rotational` = 0), not NVMe.
    Ssd,
    /// Rotational.
    Hdd,
    /// A hypervisor's paravirtual disk (virtio-blk, Xen): its media is unknown.
    Virtual,
}

impl DiskKind {
    /// The schema name: `nvme`, `ssd`, `hdd`, `virtual`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskKind::Nvme => "nvme",
            DiskKind::Ssd => "ssd",
            DiskKind::Hdd => "hdd",
            DiskKind::Virtual => "virtual",
        }
    }
}

/// Reads the `disks` part.
pub(crate) fn detect(roots: &Roots) -> Result<Vec<Disk>, DetectError> {
    let block_dir = read::under(&roots.sys, "block");
    let mounts_path = read::under(&roots.proc, "mounts");
    let mounts = read::proc_text(&mounts_path)?;
    let sys_root = roots
        .sys
        .canonicalize()
        .map_err(|source| DetectError::Read {
            path: roots.sys.clone(),
            source,
        })?;
    let mut disks = Vec::new();
    for name in read::names(&block_dir, "block devices", DISK_MAX)? {
        let dir = block_dir.join(&name);
        let device_path = dir.canonicalize().map_err(|source| DetectError::Read {
            path: dir.clone(),
            source,
        })?;
        let relative = device_path.strip_prefix(&sys_root).unwrap_or(&device_path);
        if relative.starts_with("devices/virtual") {
            continue;
        }
        let disk = disk(&dir, &name, &relative.to_string_lossy(), &mounts)?;
        if disk.size_bytes > 0 {
            disks.push(disk); // Size 0 is a drive without media (card reader, CD): nothing to allocate.
        }
    }
    Ok(disks)
}

fn disk(dir: &Path, name: &str, device_path: &str, mounts: &str) -> Result<Disk, DetectError> {
    let sectors: u64 = read::number(&dir.join("size"), "disk size")?;
    let rotational: Option<u8> = read::optional_number(&dir.join("queue/rotational"));
    let mut devices = partitions(dir, name)?;
    devices.push(name.to_owned());
    Ok(Disk {
        name: name.to_owned(),
        kind: kind(name, device_path, rotational),
        size_bytes: sectors.saturating_mul(SECTOR_BYTES),
        model: read::optional_attribute(&dir.join("device/model")),
        serial: read::optional_attribute(&dir.join("device/serial"))
            .or_else(|| read::optional_attribute(&dir.join("serial"))),
        mount_points: mount_points(mounts, &devices),
    })
}

/// NVMe by name; paravirtual by where the kernel put the device; otherwise by rotation.
fn kind(name: &str, device_path: &str, rotational: Option<u8>) -> DiskKind {
    let paravirtual = device_path
        .split('/')
        .any(|part| part.starts_with("virtio") || part == "xen");
    if name.starts_with("nvme") {
        DiskKind::Nvme
    } else if paravirtual || name.starts_with("xvd") {
        DiskKind::Virtual
    } else if rotational == Some(0) {
        DiskKind::Ssd
    } else {
        DiskKind::Hdd
    }
}

/// Partition names: subdirectories of the disk holding a `partition` attribute.
fn partitions(dir: &Path, name: &str) -> Result<Vec<String>, DetectError> {
    let entries = read::names(dir, "disk entries", DISK_ENTRY_MAX)?;
    Ok(entries
        .into_iter()
        .filter(|entry| entry.starts_with(name) && dir.join(entry).join("partition").is_file())
        .collect())
}

/// Mount points whose source is `/dev/<one of devices>`, sorted and deduplicated.
fn mount_points(mounts: &str, devices: &[String]) -> Vec<String> {
    let mut points: Vec<String> = mounts
        .lines()
        .take(MOUNT_LINE_MAX)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?.strip_prefix("/dev/")?;
            let point = fields.next()?;
            devices
                .iter()
                .any(|device| device == source)
                .then(|| unescape_mount(point))
        })
        .collect();
    points.sort();
    points.dedup();
    points
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            kind(
                "nvme0n1",
                "devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
                Some(0)
            ),
            DiskKind::Nvme
        );
        assert_eq!(
            kind(
                "vda",
                "devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
                Some(1)
            ),
            DiskKind::Virtual
        );
        assert_eq!(
            kind("sda", "devices/pci0000:00/ata1/host0/block/sda", Some(0)),
            DiskKind::Ssd
        );
        assert_eq!(
            kind("sdb", "devices/pci0000:00/ata2/host1/block/sdb", Some(1)),
            DiskKind::Hdd
        );
        assert_eq!(
            kind("xvda", "devices/vbd-51712/block/xvda", None),
            DiskKind::Virtual
        );
    }

    #[test]
    fn mount_points_match_whole_device_names_and_unescape() {
        let mounts = "/dev/sda1 /data\\040disk ext4 rw 0 0\n/dev/sda10 /other ext4 rw 0 0\n\
                      /dev/sda /raw ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n";
        let devices = vec!["sda1".to_owned(), "sda".to_owned()];
        assert_eq!(mount_points(mounts, &devices), vec!["/data disk", "/raw"]);
        assert_eq!(unescape_mount("a\\134b\\0"), "a\\b\\0");
    }
}
