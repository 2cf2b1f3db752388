//! Detection against the hand-written `tests/fixtures/two-socket` tree: exact expected values.

use std::fs;
use std::path::{Path, PathBuf};

use ferrobeam_hwdetect::{Inventory, Part, ResourceKind, Roots};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two-socket")
}

fn detect_fixture() -> Inventory {
    Inventory::detect_at(&Roots::under(fixture()))
}

fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializes")
}

/// Copies a fixture tree, symlinks as symlinks, so a test can change one file.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(), dir.path());
    dir
}

#[test]
fn cpu_matches_the_fixture_exactly() {
    let inventory = detect_fixture();
    let cache = |level: u8, kind: &str, size_bytes: u64, shared_by_cpus: u32, instances: u32| {
        json!({"level": level, "kind": kind, "size_bytes": size_bytes,
               "shared_by_cpus": shared_by_cpus, "instances": instances})
    };
    let expected = json!({"ok": {
        "vendor": "AuthenticAMD",
        "brand": "AMD EPYC 9354 32-Core Processor",
        "family": 25, "model": 17, "stepping": 1, "microcode": "0xa101144",
        "sockets": 2, "physical_cores": 4, "logical_cpus": 8,
        "caches": [
            cache(1, "data", 32 << 10, 2, 4),
            cache(1, "instruction", 32 << 10, 2, 4),
            cache(2, "unified", 1 << 20, 2, 4),
            cache(3, "unified", 32 << 20, 4, 2),
        ],
        "flags": ["sse4_2", "avx", "avx2", "fma", "bmi1", "bmi2", "adx", "aes", "pclmulqdq", "vaes",
                  "vpclmulqdq", "sha_ni", "gfni", "rdrand", "rdseed", "avx512f", "avx512dq",
                  "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
                  "avx512_vnni", "sme", "sev", "sev_es", "sev_snp"],
        "hypervisor": false,
        "cpuid": null,
    }});
    assert_eq!(json_of(&inventory.cpu), expected);
}

#[test]
fn topology_matches_the_fixture_exactly() {
    let inventory = detect_fixture();
    let cpu = |id: u32| json!({"id": id, "package_id": (id / 2) % 2, "core_id": id % 2, "numa_node": (id / 2) % 2});
    let expected = json!({"ok": {
        "numa_nodes": [
            {"id": 0, "cpus": [0, 1, 4, 5], "memory_total_bytes": 131_960_606_u64 * 1024},
            {"id": 1, "cpus": [2, 3, 6, 7], "memory_total_bytes": 131_960_606_u64 * 1024},
        ],
        "cpus": (0..8).map(cpu).collect::<Vec<_>>(),
        "smt_siblings": [[0, 4], [1, 5], [2, 6], [3, 7]],
    }});
    assert_eq!(json_of(&inventory.topology), expected);
}

#[test]
fn memory_matches_the_fixture_exactly() {
    let expected = json!({"ok": {
        "total_bytes": 263_921_212_u64 * 1024,
        "available_bytes": 255_000_000_u64 * 1024,
        "huge_pages": [
            {"page_size_bytes": 2 << 20, "total": 512, "free": 500, "default": true},
            {"page_size_bytes": 1 << 30, "total": 4, "free": 4, "default": false},
        ],
    }});
    assert_eq!(json_of(&detect_fixture().memory), expected);
}

#[test]
fn disks_match_the_fixture_exactly() {
    let expected = json!({"ok": [
        {"name": "nvme0n1", "kind": "nvme", "size_bytes": 1_953_525_168_u64 * 512,
         "model": "Samsung SSD 980 PRO 1TB", "serial": "S5GXNF0R123456A",
         "mount_points": ["/", "/boot/efi"]},
        {"name": "sda", "kind": "hdd", "size_bytes": 7_814_037_168_u64 * 512,
         "model": "ST4000NM0035-1V4", "serial": null, "mount_points": ["/srv/data set"]},
    ]});
    assert_eq!(json_of(&detect_fixture().disks), expected);
}

#[test]
fn nics_match_the_fixture_exactly() {
    let expected = json!({"ok": [
        {"name": "eth0", "mac": "b4:96:91:aa:bb:01", "mtu": 9000, "speed_mbps": 25000,
         "driver": "ice", "rx_queues": 4, "tx_queues": 4, "numa_node": 1},
        {"name": "eth1", "mac": "b4:96:91:aa:bb:02", "mtu": 1500, "speed_mbps": null,
         "driver": "ice", "rx_queues": 2, "tx_queues": 2, "numa_node": null},
    ]});
    assert_eq!(json_of(&detect_fixture().nics), expected);
}

#[test]
fn tee_and_gpus_match_the_fixture_exactly() {
    let inventory = detect_fixture();
    let expected = json!({"ok": {
        "sev_snp_guest_device": true, "configfs_tsm_report": true, "tdx_guest_device": false,
        "tpm": {"device": "tpmrm0", "version_major": 2},
    }});
    assert_eq!(json_of(&inventory.tee), expected);
    let gpus = inventory
        .gpus
        .ok()
        .expect("no host probes is not a failure");
    assert!(gpus.devices.is_empty());
    assert!(
        gpus.unavailable_reason
            .as_deref()
            .unwrap()
            .contains("host probes are off")
    );
}

#[test]
fn resources_list_cores_memory_disks_nics() {
    let resources = detect_fixture().resources();
    let listed: Vec<(ResourceKind, &str, Option<u64>)> = resources
        .iter()
        .map(|r| (r.kind, r.identity.as_str(), r.capacity))
        .collect();
    let brand = "AMD EPYC 9354 32-Core Processor";
    let mut expected: Vec<(ResourceKind, String, Option<u64>)> = (0..8)
        .map(|id| {
            (
                ResourceKind::CpuCore,
                format!("cpu-core:{id}:{brand}"),
                Some(1),
            )
        })
        .collect();
    expected.push((
        ResourceKind::Memory,
        "memory".into(),
        Some(263_921_212 * 1024),
    ));
    expected.push((
        ResourceKind::Disk,
        "nvme0n1;model=Samsung SSD 980 PRO 1TB;serial=S5GXNF0R123456A".into(),
        Some(1_953_525_168 * 512),
    ));
    expected.push((
        ResourceKind::Disk,
        "sda;model=ST4000NM0035-1V4".into(),
        Some(7_814_037_168 * 512),
    ));
    expected.push((ResourceKind::Nic, "b4:96:91:aa:bb:01".into(), Some(25000)));
    expected.push((ResourceKind::Nic, "b4:96:91:aa:bb:02".into(), None));
    let expected: Vec<(ResourceKind, &str, Option<u64>)> = expected
        .iter()
        .map(|(kind, identity, capacity)| (*kind, identity.as_str(), *capacity))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(json_of(&resources[0])["kind"], "cpu-core");
}

#[test]
fn prometheus_has_the_documented_gauges() {
    let text = detect_fixture().prometheus();
    for line in [
        "# TYPE ferrobeam_hw_cpu_info gauge",
        r#"ferrobeam_hw_cpu_info{vendor="AuthenticAMD",brand="AMD EPYC 9354 32-Core Processor",sockets="2",cores="4",logical="8"} 1"#,
        "ferrobeam_hw_cpu_logical_cpus 8",
        r#"ferrobeam_hw_cpu_flag{flag="sev_snp"} 1"#,
        "ferrobeam_hw_numa_nodes 2",
        "# HELP ferrobeam_hw_memory_total_bytes MemTotal from /proc/meminfo.",
        "ferrobeam_hw_memory_total_bytes 270255321088",
        "ferrobeam_hw_memory_available_bytes 261120000000",
        r#"ferrobeam_hw_hugepages_total{page_size_bytes="2097152"} 512"#,
        r#"ferrobeam_hw_disk_size_bytes{disk="nvme0n1",kind="nvme"} 1000204886016"#,
        r#"ferrobeam_hw_nic_info{nic="eth0",mac="b4:96:91:aa:bb:01",driver="ice"} 1"#,
        r#"ferrobeam_hw_nic_speed_bytes{nic="eth0"} 3125000000"#,
        "ferrobeam_hw_gpus 0",
        r#"ferrobeam_hw_tee_info{sev_snp_guest="true",configfs_tsm="true",tdx_guest="false",tpm_version="2"} 1"#,
        r#"ferrobeam_hw_detect_failed{part="cpu"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains(r#"nic_speed_bytes{nic="eth1"}"#),
        "unknown speed is not exported as 0"
    );
    assert!(
        !text.contains("ferrobeam_hw_gpu_memory_total_bytes"),
        "no GPU, no family"
    );
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("ferrobeam_hw_"), "{line}");
        value
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("integer value in {line}"));
    }
}

#[test]
fn summary_names_every_part() {
    let summary = detect_fixture().summary();
    for needle in [
        "AMD EPYC 9354 32-Core Processor (AuthenticAMD, family 25 model 17 stepping 1)",
        "2 sockets, 4 cores, 8 logical CPUs",
        "2 NUMA nodes, SMT on (2 threads per core)",
        "node1: CPUs 2-3,6-7",
        "nvme0n1 nvme 931.5 GiB Samsung SSD 980 PRO 1TB on / /boot/efi",
        "eth0 b4:96:91:aa:bb:01 mtu 9000, 25000 Mbit/s, driver ice, 4 rx / 4 tx queues",
        "SEV-SNP guest device: yes",
        "TPM: /dev/tpmrm0 (version 2)",
    ] {
        assert!(summary.contains(needle), "missing {needle:?} in\n{summary}");
    }
}

#[test]
fn json_round_trips() {
    let inventory = detect_fixture();
    let text = inventory.to_json();
    assert_eq!(Inventory::from_json(&text).unwrap(), inventory);
    assert!(text.contains("\"schema_version\": 1"));
}

#[test]
fn digest_is_stable_and_ignores_volatile_values() {
    let copy = fixture_copy();
    let before = Inventory::detect_at(&Roots::under(copy.path()));
    assert_eq!(
        before.digest(),
        detect_fixture().digest(),
        "same tree, same digest"
    );
    let meminfo = copy.path().join("proc/meminfo");
    let text = fs::read_to_string(&meminfo)
        .unwrap()
        .replace("MemAvailable:   255000000", "MemAvailable:   111");
    fs::write(&meminfo, text).unwrap();
    fs::write(
        copy.path().join("proc/mounts"),
        "/dev/sda1 /elsewhere xfs rw 0 0\n",
    )
    .unwrap();
    fs::write(
        copy.path()
            .join("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"),
        "7\n",
    )
    .unwrap();
    fs::write(copy.path().join("sys/class/net/eth1/speed"), "10000\n").unwrap();
    let after = Inventory::detect_at(&Roots::under(copy.path()));
    assert_ne!(after, before, "the inventory did change");
    assert_eq!(
        after.digest(),
        before.digest(),
        "only volatile values changed"
    );
}

#[test]
fn digest_changes_when_hardware_changes() {
    let baseline = detect_fixture().digest();
    let edits: [(&str, &str); 5] = [
        ("sys/class/net/eth0/address", "b4:96:91:aa:bb:ff\n"),
        ("sys/block/sda/size", "7814037167\n"),
        ("sys/devices/system/cpu/cpu3/cache/index3/size", "16384K\n"),
        ("sys/class/tpm/tpm0/tpm_version_major", "1\n"),
        (
            "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
            "8\n",
        ),
    ];
    for (path, contents) in edits {
        let copy = fixture_copy();
        fs::write(copy.path().join(path), contents).unwrap();
        let changed = Inventory::detect_at(&Roots::under(copy.path()));
        assert_ne!(
            changed.digest(),
            baseline,
            "editing {path} must change the digest"
        );
    }
}

#[test]
fn a_failing_part_fails_alone() {
    let copy = fixture_copy();
    fs::remove_file(copy.path().join("proc/meminfo")).unwrap();
    fs::write(
        copy.path().join("sys/devices/system/cpu/online"),
        "0-banana\n",
    )
    .unwrap();
    let inventory = Inventory::detect_at(&Roots::under(copy.path()));
    let memory_error = inventory.memory.error().expect("memory fails");
    assert!(memory_error.contains("meminfo"), "{memory_error}");
    assert!(
        inventory
            .cpu
            .error()
            .expect("cpu fails")
            .contains("CPU list")
    );
    assert!(inventory.topology.error().is_some());
    assert!(matches!(inventory.disks, Part::Ok(ref disks) if disks.len() == 2));
    assert!(matches!(inventory.nics, Part::Ok(ref nics) if nics.len() == 2));
    assert!(inventory.tee.ok().is_some());
    // The failure is visible everywhere an operator looks, and JSON keeps it.
    let json = json_of(&inventory);
    assert!(
        json["memory"]["error"]
            .as_str()
            .unwrap()
            .contains("meminfo")
    );
    assert!(inventory.summary().contains("unavailable: cannot read"));
    assert!(
        inventory
            .prometheus()
            .contains(r#"ferrobeam_hw_detect_failed{part="memory"} 1"#)
    );
    assert_eq!(
        Inventory::from_json(&inventory.to_json()).unwrap(),
        inventory
    );
    // A part failing does change the digest (an attested machine must not hide it).
    assert_ne!(inventory.digest(), detect_fixture().digest());
}

#[test]
fn a_missing_root_fails_every_part_but_still_returns() {
    let inventory = Inventory::detect_at(&Roots::under("/nonexistent/ferrobeam-hwdetect"));
    assert!(inventory.cpu.error().is_some());
    assert!(inventory.memory.error().is_some());
    assert!(inventory.disks.error().is_some());
    assert!(inventory.nics.error().is_some());
    // Absent TEE devices are just absent.
    assert_eq!(json_of(&inventory.tee)["ok"]["tpm"], Value::Null);
    assert!(inventory.resources().is_empty());
}
