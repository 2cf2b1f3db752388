//! Every bound on what detection reads (docs/RELIABILITY.md, "Limits"), hit on a copy of the
//! `two-socket` fixture: a directory one entry past its maximum fails its part alone, and a file
//! longer than its byte cap is read only up to the cap.

use std::fs;
use std::path::Path;

use ferrobeam_hwdetect::{
    CACHE_INDEX_MAX, DISK_ENTRY_MAX, DISK_MAX, HUGE_PAGE_SIZE_MAX, Inventory, MOUNT_LINE_MAX,
    NIC_MAX, NIC_QUEUE_MAX, NUMA_NODE_MAX, PROC_FILE_BYTES_MAX, Part, Roots, SYSFS_FILE_BYTES_MAX,
};

fn fixture_copy() -> tempfile::TempDir {
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
    // Thousands of entries: on tmpfs when there is one, where creating them is cheap.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two-socket");
    copy_tree(&fixture, dir.path());
    dir
}

/// Adds empty files named `<prefix>N` to `dir` until it holds `entries` entries.
fn fill(dir: &Path, prefix: &str, entries: usize) {
    let present = fs::read_dir(dir).unwrap().count();
    for n in present..entries {
        fs::write(dir.join(format!("{prefix}{}", 10_000 + n)), "").unwrap();
    }
    assert_eq!(fs::read_dir(dir).unwrap().count(), entries);
}

fn error<T: std::fmt::Debug>(part: &Part<T>) -> &str {
    part.error()
        .unwrap_or_else(|| panic!("the part did not fail: {part:?}"))
}

#[test]
fn a_directory_past_its_maximum_fails_its_part_alone() {
    let copy = fixture_copy();
    let sys = copy.path().join("sys");
    fill(&sys.join("class/net"), "veth", NIC_MAX + 1);
    fill(&sys.join("block"), "ram", DISK_MAX + 1);
    fill(
        &sys.join("kernel/mm/hugepages"),
        "x",
        HUGE_PAGE_SIZE_MAX + 1,
    );
    fill(
        &sys.join("devices/system/cpu/cpu0/cache"),
        "index",
        CACHE_INDEX_MAX + 1,
    );
    fill(&sys.join("devices/system/node"), "node", NUMA_NODE_MAX + 6);
    let inventory = Inventory::detect_at(&Roots::under(copy.path()));
    let over = |error: &str, max: usize, what: &str| {
        assert!(
            error.contains(&format!("more than {max} {what}")),
            "{error}"
        );
    };
    over(error(&inventory.nics), NIC_MAX, "network interfaces");
    over(error(&inventory.disks), DISK_MAX, "block devices");
    over(
        error(&inventory.memory),
        HUGE_PAGE_SIZE_MAX,
        "huge page sizes",
    );
    over(error(&inventory.cpu), CACHE_INDEX_MAX, "cache indexes");
    over(error(&inventory.topology), NUMA_NODE_MAX, "NUMA nodes");
    assert!(inventory.tee.ok().is_some(), "other parts still answer");

    // The per-NIC and per-disk walks, behind the walks above.
    let copy = fixture_copy();
    let sys = copy.path().join("sys");
    fill(
        &sys.join("class/net/eth0/queues"),
        "rx-",
        2 * NIC_QUEUE_MAX + 1,
    );
    fill(&sys.join("block/sda"), "x", DISK_ENTRY_MAX + 1);
    let inventory = Inventory::detect_at(&Roots::under(copy.path()));
    over(error(&inventory.nics), 2 * NIC_QUEUE_MAX, "NIC queues");
    over(error(&inventory.disks), DISK_ENTRY_MAX, "disk entries");
    assert!(inventory.memory.ok().is_some());
}

#[test]
fn files_are_read_up_to_their_byte_cap() {
    let copy = fixture_copy();
    // sysfs: the value sits at the end of SYSFS_FILE_BYTES_MAX bytes, garbage after it.
    let mut size = " ".repeat(SYSFS_FILE_BYTES_MAX as usize - 5);
    size.push_str("1000\n");
    size.push_str("not a number\n");
    fs::write(copy.path().join("sys/block/sda/size"), size).unwrap();
    // procfs: PROC_FILE_BYTES_MAX bytes of other fields, then the real meminfo, unread.
    let meminfo = copy.path().join("proc/meminfo");
    let real = fs::read_to_string(&meminfo).unwrap();
    let padding = "Padding:  0 kB\n";
    let mut text = padding.repeat(PROC_FILE_BYTES_MAX as usize / padding.len());
    text.push_str(&" ".repeat(PROC_FILE_BYTES_MAX as usize - text.len()));
    text.push_str(&real);
    fs::write(&meminfo, text).unwrap();
    // mounts: MOUNT_LINE_MAX lines of other mounts, then the real ones, ignored.
    let mounts = copy.path().join("proc/mounts");
    let real = fs::read_to_string(&mounts).unwrap();
    let mut text = "tmpfs /tmp tmpfs rw 0 0\n".repeat(MOUNT_LINE_MAX);
    text.push_str(&real);
    assert!(text.len() as u64 <= PROC_FILE_BYTES_MAX);
    fs::write(&mounts, text).unwrap();

    let inventory = Inventory::detect_at(&Roots::under(copy.path()));
    let disks = inventory.disks.ok().expect("disks");
    let sda = disks.iter().find(|d| d.name == "sda").unwrap();
    assert_eq!(sda.size_bytes, 1000 * 512);
    assert!(disks.iter().all(|d| d.mount_points.is_empty()), "{disks:?}");
    let memory = error(&inventory.memory);
    assert!(memory.contains("MemTotal"), "{memory}");
}
