//! Detection on the machine running the tests, checked against independent sources: the
//! kernel files read by the test itself, `getconf`/`nproc` (glibc), `ip -j link` (netlink) and
//! `lsblk` (util-linux). A tool that is not installed skips its check with a note.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use ferrobeam_hwdetect::{Inventory, REPORTED_FLAGS, SchemaError};

fn tool(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn first_cpuinfo_field(key: &str) -> Option<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
    let block = cpuinfo.split("\n\n").next().unwrap().to_owned();
    block.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim().to_owned())
    })
}

#[test]
fn logical_cpus_match_glibc_and_nproc() {
    let inventory = Inventory::detect();
    let cpu = inventory.cpu.ok().expect("cpu part reads on Linux");
    let online: u32 = tool("getconf", &["_NPROCESSORS_ONLN"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(cpu.logical_cpus, online, "getconf _NPROCESSORS_ONLN");
    let parallelism = std::thread::available_parallelism().unwrap().get() as u32;
    assert!(parallelism <= cpu.logical_cpus);
    // nproc counts the CPUs this process may run on: equal when nothing restricts affinity.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let online_list = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    if allowed == online_list.trim() {
        let nproc: u32 = tool("nproc", &[]).unwrap().trim().parse().unwrap();
        assert_eq!(cpu.logical_cpus, nproc, "nproc");
    } else {
        eprintln!("note: affinity is restricted ({allowed}); nproc comparison skipped");
    }
    let topology = inventory.topology.ok().unwrap();
    assert_eq!(topology.cpus.len() as u32, cpu.logical_cpus);
    let in_sibling_sets: usize = topology.smt_siblings.iter().map(Vec::len).sum();
    assert_eq!(
        in_sibling_sets as u32, cpu.logical_cpus,
        "SMT sets partition the CPUs"
    );
    assert_eq!(topology.smt_siblings.len() as u32, cpu.physical_cores);
}

#[test]
fn memory_total_matches_meminfo() {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let memory = Inventory::detect()
        .memory
        .ok()
        .cloned()
        .expect("memory part reads on Linux");
    assert_eq!(memory.total_bytes, kib * 1024);
    assert!(memory.available_bytes.unwrap() <= memory.total_bytes);
}

#[test]
fn flags_match_the_cpuinfo_flags_line() {
    let line = first_cpuinfo_field("flags")
        .or_else(|| first_cpuinfo_field("Features"))
        .unwrap();
    let present: BTreeSet<&str> = line.split_whitespace().collect();
    let cpu = Inventory::detect().cpu.ok().cloned().unwrap();
    for name in REPORTED_FLAGS {
        assert_eq!(
            cpu.flags.iter().any(|flag| flag == name),
            present.contains(name),
            "flag {name}"
        );
    }
    assert_eq!(cpu.hypervisor, present.contains("hypervisor"));
    assert_eq!(
        Some(cpu.vendor),
        first_cpuinfo_field("vendor_id").or_else(|| first_cpuinfo_field("CPU implementer"))
    );
    assert_eq!(
        cpu.family,
        first_cpuinfo_field("cpu family").and_then(|v| v.parse().ok())
    );
    assert_eq!(
        cpu.model,
        first_cpuinfo_field("model").and_then(|v| v.parse().ok())
    );
}

/// The CPUID instruction and the kernel agree on identity and on the reported flags, except the
/// memory-encryption ones: the kernel lists `sme`/`sev*` only when firmware enabled them, and
/// derives `tdx_guest` itself.
#[cfg(target_arch = "x86_64")]
#[test]
fn cpuid_agrees_with_cpuinfo() {
    let cpu = Inventory::detect().cpu.ok().cloned().unwrap();
    let cpuid = cpu.cpuid.as_ref().expect("host probes run CPUID on x86_64");
    assert_eq!(cpuid.vendor, cpu.vendor);
    assert_eq!(Some(cpuid.family), cpu.family);
    assert_eq!(Some(cpuid.model), cpu.model);
    assert_eq!(Some(cpuid.stepping), cpu.stepping);
    let kernel_decides = ["sme", "sev", "sev_es", "sev_snp", "tdx_guest"];
    let comparable = |flags: &[String]| -> Vec<String> {
        flags
            .iter()
            .filter(|flag| !kernel_decides.contains(&flag.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(comparable(&cpuid.flags), comparable(&cpu.flags));
    assert_eq!(cpuid.hypervisor_vendor.is_some(), cpu.hypervisor);
}

#[test]
fn nics_match_netlink() {
    let Some(links) = tool("ip", &["-j", "link"]) else {
        eprintln!("note: `ip` not installed; netlink comparison skipped");
        return;
    };
    let links: serde_json::Value = serde_json::from_str(&links).unwrap();
    let nics = Inventory::detect().nics.ok().cloned().unwrap();
    for nic in &nics {
        let link = links
            .as_array()
            .unwrap()
            .iter()
            .find(|link| link["ifname"] == nic.name.as_str());
        let link = link.unwrap_or_else(|| panic!("{} known to netlink", nic.name));
        assert_eq!(
            link["mtu"].as_u64(),
            Some(u64::from(nic.mtu)),
            "{} MTU",
            nic.name
        );
        assert_eq!(
            link["address"].as_str(),
            nic.mac.as_deref(),
            "{} MAC",
            nic.name
        );
    }
    assert!(
        nics.iter().all(|nic| nic.name != "lo"),
        "loopback is not a NIC"
    );
}

#[test]
fn disks_match_lsblk() {
    let Some(text) = tool("lsblk", &["-J", "-b", "-d", "-o", "NAME,SIZE"]) else {
        eprintln!("note: `lsblk` not installed; comparison skipped");
        return;
    };
    let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let disks = Inventory::detect().disks.ok().cloned().unwrap();
    for disk in &disks {
        let device = listed["blockdevices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == disk.name.as_str());
        let device = device.unwrap_or_else(|| panic!("{} known to lsblk", disk.name));
        assert_eq!(
            device["size"].as_u64(),
            Some(disk.size_bytes),
            "{} size",
            disk.name
        );
    }
}

/// Without an NVIDIA driver (this machine), the GPU part is an empty list with a reason, not an
/// error. With one, every GPU has a UUID and there is no reason.
#[test]
fn gpus_without_nvml_are_an_empty_list_with_a_reason() {
    let gpus = Inventory::detect()
        .gpus
        .ok()
        .cloned()
        .expect("the GPU part never fails on a missing NVML");
    match &gpus.unavailable_reason {
        Some(reason) => {
            assert!(gpus.devices.is_empty());
            assert!(reason.starts_with("NVML unavailable"), "{reason}");
        }
        None => assert!(gpus.devices.iter().all(|gpu| gpu.uuid.starts_with("GPU-"))),
    }
    let driver_present = std::path::Path::new("/dev/nvidiactl").exists();
    if !driver_present {
        assert!(
            gpus.unavailable_reason.is_some(),
            "no driver: NVML cannot have answered"
        );
    }
}

#[test]
fn host_digest_is_stable_and_json_round_trips() {
    let first = Inventory::detect();
    let second = Inventory::detect();
    assert_eq!(
        first.digest(),
        second.digest(),
        "two detections, one machine"
    );
    assert_eq!(first.digest_hex().len(), 64);
    assert_eq!(Inventory::from_json(&first.to_json()).unwrap(), first);
}

#[test]
fn other_schema_versions_are_rejected() {
    let text =
        Inventory::detect()
            .to_json()
            .replacen("\"schema_version\": 1", "\"schema_version\": 2", 1);
    match Inventory::from_json(&text) {
        Err(SchemaError::UnsupportedVersion {
            found: 2,
            supported: 1,
        }) => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(matches!(
        Inventory::from_json("{\"schema_version\": 1}"),
        Err(SchemaError::Json(_))
    ));
    assert!(matches!(
        Inventory::from_json("not json"),
        Err(SchemaError::Json(_))
    ));
}

#[test]
fn host_renderings_carry_the_numbers() {
    let inventory = Inventory::detect();
    let memory = inventory.memory.ok().unwrap();
    let text = inventory.prometheus();
    assert!(text.contains(&format!(
        "ferrobeam_hw_memory_total_bytes {}\n",
        memory.total_bytes
    )));
    let summary = inventory.summary();
    for section in [
        "CPU", "Topology", "Memory", "Disks", "NICs", "GPUs", "TEE", "Digest",
    ] {
        assert!(
            summary.lines().any(|line| line.starts_with(section)),
            "{section} in\n{summary}"
        );
    }
    println!("{summary}");
}
