//! Human and machine renderings: the operator summary (`ferrobeam hw`) and Prometheus gauges
//! (appended to the node's `/metrics`).

use std::fmt::Write;

use crate::read::format_cpu_list;
use crate::{Cpu, Gpus, Inventory, Memory, Nic, Part, Tee, Topology};

/// Writing into a `String` cannot fail; `writeln!` still returns a `Result`.
const INFALLIBLE: &str = "writing to a String cannot fail";

/// `1.5 GiB`-style sizes for people.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn plural(count: impl Into<u64>, one: &str, many: &str) -> String {
    let count = count.into();
    format!("{count} {}", if count == 1 { one } else { many })
}

/// One summary section: its lines, or the part's error.
fn section<T>(
    out: &mut String,
    title: &str,
    part: &Part<T>,
    lines: impl FnOnce(&T) -> Vec<String>,
) {
    let lines = match part {
        Part::Ok(value) => lines(value),
        Part::Error(reason) => vec![format!("unavailable: {reason}")],
    };
    for (index, line) in lines.iter().enumerate() {
        let label = if index == 0 { title } else { "" };
        writeln!(out, "{label:<9}{line}").expect(INFALLIBLE);
    }
}

fn cpu_lines(cpu: &Cpu) -> Vec<String> {
    let number = |value: Option<u32>| value.map_or("?".to_owned(), |v| v.to_string());
    let mut lines = vec![
        format!(
            "{} ({}, family {} model {} stepping {})",
            cpu.brand,
            cpu.vendor,
            number(cpu.family),
            number(cpu.model),
            number(cpu.stepping)
        ),
        format!(
            "{}, {}, {}{}",
            plural(cpu.sockets, "socket", "sockets"),
            plural(cpu.physical_cores, "core", "cores"),
            plural(cpu.logical_cpus, "logical CPU", "logical CPUs"),
            if cpu.hypervisor {
                ", under a hypervisor"
            } else {
                ""
            }
        ),
    ];
    if !cpu.caches.is_empty() {
        let caches: Vec<String> = cpu
            .caches
            .iter()
            .map(|cache| {
                let kind = match cache.kind {
                    crate::CacheKind::Data => "d",
                    crate::CacheKind::Instruction => "i",
                    _ => "",
                };
                format!(
                    "L{}{kind} {} x{}",
                    cache.level,
                    human_bytes(cache.size_bytes),
                    cache.instances
                )
            })
            .collect();
        lines.push(format!("caches: {}", caches.join(", ")));
    }
    lines.push(format!(
        "flags: {}",
        if cpu.flags.is_empty() {
            "none reported".into()
        } else {
            cpu.flags.join(" ")
        }
    ));
    if let Some(hypervisor) = cpu
        .cpuid
        .as_ref()
        .and_then(|cpuid| cpuid.hypervisor_vendor.as_ref())
    {
        lines.push(format!("hypervisor (CPUID): {hypervisor}"));
    }
    lines
}

fn topology_lines(topology: &Topology) -> Vec<String> {
    let threads_per_core = topology
        .smt_siblings
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    let mut lines = vec![format!(
        "{}, SMT {}",
        plural(topology.numa_nodes.len() as u64, "NUMA node", "NUMA nodes"),
        if threads_per_core > 1 {
            format!("on ({threads_per_core} threads per core)")
        } else {
            "off".into()
        }
    )];
    lines.extend(topology.numa_nodes.iter().map(|node| {
        let memory = node
            .memory_total_bytes
            .map_or(String::new(), |bytes| format!(", {}", human_bytes(bytes)));
        format!(
            "node{}: CPUs {}{memory}",
            node.id,
            format_cpu_list(&node.cpus)
        )
    }));
    lines
}

fn memory_lines(memory: &Memory) -> Vec<String> {
    let available = memory.available_bytes.map_or(String::new(), |bytes| {
        format!(", {} available", human_bytes(bytes))
    });
    let mut lines = vec![format!(
        "{} total{available}",
        human_bytes(memory.total_bytes)
    )];
    lines.extend(memory.huge_pages.iter().map(|pool| {
        let default = if pool.default { " (default)" } else { "" };
        format!(
            "huge pages {}{default}: {} free of {}",
            human_bytes(pool.page_size_bytes),
            pool.free,
            pool.total
        )
    }));
    lines
}

fn disk_lines(disks: &[crate::Disk]) -> Vec<String> {
    if disks.is_empty() {
        return vec!["none".into()];
    }
    disks
        .iter()
        .map(|disk| {
            let model = disk
                .model
                .as_deref()
                .map_or(String::new(), |model| format!(" {model}"));
            let mounts = if disk.mount_points.is_empty() {
                String::new()
            } else {
                format!(" on {}", disk.mount_points.join(" "))
            };
            format!(
                "{} {} {}{model}{mounts}",
                disk.name,
                disk.kind.as_str(),
                human_bytes(disk.size_bytes)
            )
        })
        .collect()
}

fn nic_line(nic: &Nic) -> String {
    let speed = nic
        .speed_mbps
        .map_or("speed unknown".to_owned(), |mbps| format!("{mbps} Mbit/s"));
    format!(
        "{} {} mtu {}, {speed}, driver {}, {} rx / {} tx queues",
        nic.name,
        nic.mac.as_deref().unwrap_or("(no MAC)"),
        nic.mtu,
        nic.driver.as_deref().unwrap_or("?"),
        nic.rx_queues,
        nic.tx_queues
    )
}

fn gpu_lines(gpus: &Gpus) -> Vec<String> {
    if gpus.devices.is_empty() {
        return vec![format!(
            "none ({})",
            gpus.unavailable_reason
                .as_deref()
                .unwrap_or("NVML sees no GPU")
        )];
    }
    gpus.devices
        .iter()
        .map(|gpu| {
            let memory = gpu
                .memory_total_bytes
                .map_or("? memory".to_owned(), human_bytes);
            let cc = gpu
                .confidential_compute
                .map_or("unknown".to_owned(), |mode| mode.as_str().to_owned());
            let name = gpu.name.as_deref().unwrap_or("?");
            format!(
                "{}: {name} {memory} {} at {}, CC {cc}",
                gpu.index,
                gpu.uuid,
                gpu.pci_bus_id.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

fn tee_lines(tee: &Tee) -> Vec<String> {
    let yes_no = |present: bool| if present { "yes" } else { "no" };
    let tpm = match &tee.tpm {
        None => "none".to_owned(),
        Some(tpm) => format!(
            "{} (version {})",
            tpm.device
                .as_deref()
                .map_or("no /dev node".to_owned(), |device| format!("/dev/{device}")),
            tpm.version_major
                .map_or("?".to_owned(), |major| major.to_string())
        ),
    };
    vec![
        format!(
            "SEV-SNP guest device: {}, configfs-tsm: {}, TDX guest device: {}",
            yes_no(tee.sev_snp_guest_device),
            yes_no(tee.configfs_tsm_report),
            yes_no(tee.tdx_guest_device)
        ),
        format!("TPM: {tpm}"),
    ]
}

impl Inventory {
    /// A multi-line summary for operators (`ferrobeam hw`): one section per part, failed parts
    /// with their reason, and the digest last.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        section(&mut out, "CPU", &self.cpu, cpu_lines);
        section(&mut out, "Topology", &self.topology, topology_lines);
        section(&mut out, "Memory", &self.memory, memory_lines);
        section(&mut out, "Disks", &self.disks, |disks| disk_lines(disks));
        section(&mut out, "NICs", &self.nics, |nics| {
            if nics.is_empty() {
                vec!["none".into()]
            } else {
                nics.iter().map(nic_line).collect()
            }
        });
        section(&mut out, "GPUs", &self.gpus, gpu_lines);
        section(&mut out, "TEE", &self.tee, tee_lines);
        writeln!(
            out,
            "{:<9}{} (schema {})",
            "Digest",
            self.digest_hex(),
            self.schema_version
        )
        .expect(INFALLIBLE);
        out
    }
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
pub(crate) fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One gauge family with its samples; a family without samples is left out entirely.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Self {
        assert!(
            name.starts_with("ferrobeam_hw_"),
            "one namespace for hardware gauges"
        );
        Self {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, labels: Vec<(&'static str, String)>, value: u64) -> &mut Self {
        self.samples.push((labels, value));
        self
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        writeln!(out, "# HELP {} {}", self.name, self.help).expect(INFALLIBLE);
        writeln!(out, "# TYPE {} gauge", self.name).expect(INFALLIBLE);
        for (labels, value) in &self.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape_label(value)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            writeln!(out, "{}{labels} {value}", self.name).expect(INFALLIBLE);
        }
    }
}

fn cpu_families(cpu: &Cpu) -> Vec<Family> {
    let mut info = Family::new(
        "ferrobeam_hw_cpu_info",
        "CPU identity and counts; always 1.",
    );
    info.sample(
        vec![
            ("vendor", cpu.vendor.clone()),
            ("brand", cpu.brand.clone()),
            ("sockets", cpu.sockets.to_string()),
            ("cores", cpu.physical_cores.to_string()),
            ("logical", cpu.logical_cpus.to_string()),
        ],
        1,
    );
    let mut logical = Family::new("ferrobeam_hw_cpu_logical_cpus", "Online logical CPUs.");
    logical.sample(vec![], u64::from(cpu.logical_cpus));
    let mut flags = Family::new(
        "ferrobeam_hw_cpu_flag",
        "Reported CPU flags present (from /proc/cpuinfo); always 1.",
    );
    for flag in &cpu.flags {
        flags.sample(vec![("flag", flag.clone())], 1);
    }
    vec![info, logical, flags]
}

fn memory_families(memory: &Memory) -> Vec<Family> {
    let mut total = Family::new(
        "ferrobeam_hw_memory_total_bytes",
        "MemTotal from /proc/meminfo.",
    );
    total.sample(vec![], memory.total_bytes);
    let mut available = Family::new(
        "ferrobeam_hw_memory_available_bytes",
        "MemAvailable from /proc/meminfo.",
    );
    if let Some(bytes) = memory.available_bytes {
        available.sample(vec![], bytes);
    }
    let mut huge_total = Family::new(
        "ferrobeam_hw_hugepages_total",
        "Huge pages reserved, per page size.",
    );
    let mut huge_free = Family::new(
        "ferrobeam_hw_hugepages_free",
        "Huge pages free, per page size.",
    );
    for pool in &memory.huge_pages {
        huge_total.sample(
            vec![("page_size_bytes", pool.page_size_bytes.to_string())],
            pool.total,
        );
        huge_free.sample(
            vec![("page_size_bytes", pool.page_size_bytes.to_string())],
            pool.free,
        );
    }
    vec![total, available, huge_total, huge_free]
}

fn device_families(inventory: &Inventory) -> Vec<Family> {
    let mut disk = Family::new("ferrobeam_hw_disk_size_bytes", "Disk capacity.");
    for d in inventory.disks.ok().into_iter().flatten() {
        disk.sample(
            vec![
                ("disk", d.name.clone()),
                ("kind", d.kind.as_str().to_owned()),
            ],
            d.size_bytes,
        );
    }
    let mut nic_info = Family::new("ferrobeam_hw_nic_info", "NIC identity; always 1.");
    let mut nic_speed = Family::new(
        "ferrobeam_hw_nic_speed_bytes",
        "NIC link speed in bytes per second, when known.",
    );
    for nic in inventory.nics.ok().into_iter().flatten() {
        let mac = nic.mac.clone().unwrap_or_default();
        let driver = nic.driver.clone().unwrap_or_default();
        nic_info.sample(
            vec![("nic", nic.name.clone()), ("mac", mac), ("driver", driver)],
            1,
        );
        if let Some(mbps) = nic.speed_mbps {
            nic_speed.sample(vec![("nic", nic.name.clone())], u64::from(mbps) * 125_000);
        }
    }
    let mut gpu_memory = Family::new(
        "ferrobeam_hw_gpu_memory_total_bytes",
        "GPU framebuffer memory.",
    );
    let mut gpu_count = Family::new("ferrobeam_hw_gpus", "GPUs visible through NVML.");
    if let Part::Ok(gpus) = &inventory.gpus {
        gpu_count.sample(vec![], gpus.devices.len() as u64);
        for gpu in &gpus.devices {
            let name = gpu.name.clone().unwrap_or_default();
            gpu_memory.sample(
                vec![("uuid", gpu.uuid.clone()), ("name", name)],
                gpu.memory_total_bytes.unwrap_or(0),
            );
        }
    }
    vec![disk, nic_info, nic_speed, gpu_count, gpu_memory]
}

fn tee_family(tee: &Tee) -> Family {
    let mut family = Family::new("ferrobeam_hw_tee_info", "TEE interfaces present; always 1.");
    let tpm = tee.tpm.as_ref().map_or("none".to_owned(), |tpm| {
        tpm.version_major
            .map_or("unknown".to_owned(), |major| major.to_string())
    });
    family.sample(
        vec![
            ("sev_snp_guest", tee.sev_snp_guest_device.to_string()),
            ("configfs_tsm", tee.configfs_tsm_report.to_string()),
            ("tdx_guest", tee.tdx_guest_device.to_string()),
            ("tpm_version", tpm),
        ],
        1,
    );
    family
}

fn failure_family(inventory: &Inventory) -> Family {
    let mut family = Family::new(
        "ferrobeam_hw_detect_failed",
        "1 when a part of the inventory could not be read.",
    );
    let parts = [
        ("cpu", inventory.cpu.error().is_some()),
        ("topology", inventory.topology.error().is_some()),
        ("memory", inventory.memory.error().is_some()),
        ("disks", inventory.disks.error().is_some()),
        ("nics", inventory.nics.error().is_some()),
        ("gpus", inventory.gpus.error().is_some()),
        ("tee", inventory.tee.error().is_some()),
    ];
    for (part, failed) in parts {
        family.sample(vec![("part", part.to_owned())], u64::from(failed));
    }
    family
}

impl Inventory {
    /// node_exporter-style gauges (text exposition format 0.0.4, HELP and TYPE lines included)
    /// for the node to append to `/metrics`. Families with no sample are left out.
    pub fn prometheus(&self) -> String {
        let mut families = Vec::new();
        if let Part::Ok(cpu) = &self.cpu {
            families.extend(cpu_families(cpu));
        }
        if let Part::Ok(topology) = &self.topology {
            let mut nodes = Family::new("ferrobeam_hw_numa_nodes", "NUMA nodes.");
            nodes.sample(vec![], topology.numa_nodes.len() as u64);
            families.push(nodes);
        }
        if let Part::Ok(memory) = &self.memory {
            families.extend(memory_families(memory));
        }
        families.extend(device_families(self));
        if let Part::Ok(tee) = &self.tee {
            families.push(tee_family(tee));
        }
        families.push(failure_family(self));
        let mut out = String::new();
        for family in &families {
            family.write(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a "b" \c"#), r#"a \"b\" \\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(32 * 1024), "32.0 KiB");
        assert_eq!(human_bytes(24_684_084 * 1024), "23.5 GiB");
    }
}
