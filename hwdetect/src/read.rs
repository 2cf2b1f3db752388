//! Bounded readers for sysfs and procfs files and directories. Every read has a byte cap and
//! every directory walk an entry cap, so a strange kernel (or fixture) cannot make detection
//! unbounded.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{CPU_MAX, DetectError, PROC_FILE_BYTES_MAX, SYSFS_FILE_BYTES_MAX};

/// Longest offending text quoted in a [`DetectError::Parse`].
const QUOTE_CHARS_MAX: usize = 64;

fn read_error(path: &Path, source: std::io::Error) -> DetectError {
    DetectError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads at most `bytes_max` bytes of `path` as UTF-8 (lossily).
pub(crate) fn text(path: &Path, bytes_max: u64) -> Result<String, DetectError> {
    let file = fs::File::open(path).map_err(|e| read_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(bytes_max)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, e))?;
    assert!(bytes.len() as u64 <= bytes_max);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A procfs file (cpuinfo, meminfo, mounts), capped at [`PROC_FILE_BYTES_MAX`].
pub(crate) fn proc_text(path: &Path) -> Result<String, DetectError> {
    text(path, PROC_FILE_BYTES_MAX)
}

/// A sysfs attribute, trimmed.
pub(crate) fn attribute(path: &Path) -> Result<String, DetectError> {
    Ok(text(path, SYSFS_FILE_BYTES_MAX)?.trim().to_owned())
}

/// A sysfs attribute that may be absent or unreadable (a link speed on a down link reads as
/// EINVAL); empty values count as absent.
pub(crate) fn optional_attribute(path: &Path) -> Option<String> {
    attribute(path).ok().filter(|value| !value.is_empty())
}

pub(crate) fn parse_error(path: &Path, what: &'static str, text: &str) -> DetectError {
    DetectError::Parse {
        path: path.to_path_buf(),
        what,
        text: text.chars().take(QUOTE_CHARS_MAX).collect(),
    }
}

/// A sysfs attribute holding one unsigned integer.
pub(crate) fn number<T: std::str::FromStr>(
    path: &Path,
    what: &'static str,
) -> Result<T, DetectError> {
    let value = attribute(path)?;
    value.parse().map_err(|_| parse_error(path, what, &value))
}

/// A sysfs attribute holding an unsigned integer, when present and parseable. Negative values
/// (`-1` for "unknown" in `speed` and `numa_node`) are `None`.
pub(crate) fn optional_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    optional_attribute(path)?.parse().ok()
}

/// The last component of the symlink at `path` (e.g. a driver name), when it is a symlink.
pub(crate) fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Whether `path` exists. Permission problems are errors, not "absent".
pub(crate) fn exists(path: &Path) -> Result<bool, DetectError> {
    path.try_exists().map_err(|e| read_error(path, e))
}

/// The entry names of `dir`, sorted; more than `max` is [`DetectError::TooMany`].
pub(crate) fn names(
    dir: &Path,
    what: &'static str,
    max: usize,
) -> Result<Vec<String>, DetectError> {
    let entries = fs::read_dir(dir).map_err(|e| read_error(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        if names.len() == max {
            return Err(DetectError::TooMany {
                path: dir.to_path_buf(),
                what,
                max,
            });
        }
        let entry = entry.map_err(|e| read_error(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The numbers `N` of entries named `<prefix>N` in `dir` (`cpu0`, `node1`, `index2`), sorted
/// numerically. Other entries (`cpufreq`, `online`) are skipped but still count toward `max`.
pub(crate) fn numbered(
    dir: &Path,
    prefix: &str,
    what: &'static str,
    max: usize,
) -> Result<Vec<u32>, DetectError> {
    let mut numbers: Vec<u32> = names(dir, what, max)?
        .iter()
        .filter_map(|name| name.strip_prefix(prefix)?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Parses a kernel CPU list (`0-3,8,10-11`, as in `cpulist` files) into sorted, unique ids.
/// More than [`CPU_MAX`] ids, or an id at or over it, is an error.
pub(crate) fn cpu_list(path: &Path, text: &str) -> Result<Vec<u32>, DetectError> {
    let mut ids = Vec::new();
    for range in text.trim().split(',').filter(|range| !range.is_empty()) {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let first: u32 = first
            .parse()
            .map_err(|_| parse_error(path, "CPU list", text))?;
        let last: u32 = last
            .parse()
            .map_err(|_| parse_error(path, "CPU list", text))?;
        if first > last
            || last as usize >= CPU_MAX
            || ids.len() + (last - first) as usize >= CPU_MAX
        {
            return Err(parse_error(path, "CPU list within CPU_MAX", text));
        }
        ids.extend(first..=last);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Reads and parses a CPU list attribute.
pub(crate) fn cpu_list_attribute(path: &Path) -> Result<Vec<u32>, DetectError> {
    cpu_list(path, &attribute(path)?)
}

/// Formats sorted CPU ids back as a kernel CPU list (`0-3,8`), for summaries.
pub(crate) fn format_cpu_list(ids: &[u32]) -> String {
    let mut ranges: Vec<String> = Vec::new();
    let mut index = 0;
    while index < ids.len() {
        let first = ids[index];
        let mut last = first;
        while index + 1 < ids.len() && ids[index + 1] == last + 1 {
            index += 1;
            last = ids[index];
        }
        ranges.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        index += 1;
    }
    ranges.join(",")
}

/// `root` joined with a relative path written with `/` (`"devices/system/cpu"`).
pub(crate) fn under(root: &Path, relative: &str) -> PathBuf {
    assert!(
        !relative.starts_with('/'),
        "paths under a root are relative"
    );
    root.join(relative)
}

/// A `Key: value kB`-style table (meminfo, cpuinfo blocks): the value after the first `:` of
/// the first line whose key is `key`.
pub(crate) fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then_some(value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        let path = Path::new("cpulist");
        assert_eq!(
            cpu_list(path, "0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(cpu_list(path, "").unwrap(), Vec::<u32>::new());
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn cpu_lists_reject_garbage_and_huge_ranges() {
        let path = Path::new("cpulist");
        assert!(cpu_list(path, "3-1").is_err());
        assert!(cpu_list(path, "a-b").is_err());
        assert!(cpu_list(path, "0-4294967295").is_err());
        assert!(cpu_list(path, &format!("0-{}", CPU_MAX)).is_err());
        assert_eq!(
            cpu_list(path, &format!("0-{}", CPU_MAX - 1)).unwrap().len(),
            CPU_MAX
        );
    }

    #[test]
    fn directory_walks_stop_at_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cpu10", "cpu2", "online", "cpu0"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(
            numbered(dir.path(), "cpu", "CPUs", 4).unwrap(),
            vec![0, 2, 10]
        );
        let error = numbered(dir.path(), "cpu", "CPUs", 3).unwrap_err();
        assert!(
            matches!(error, DetectError::TooMany { max: 3, .. }),
            "{error}"
        );
    }

    #[test]
    fn fields_are_found_by_exact_key() {
        let table = "MemTotal:  100 kB\nMemTotalX: 5 kB\nmodel name\t: AMD EPYC\n";
        assert_eq!(field(table, "MemTotal"), Some("100 kB"));
        assert_eq!(field(table, "model name"), Some("AMD EPYC"));
        assert_eq!(field(table, "Missing"), None);
    }
}
