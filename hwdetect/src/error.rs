//! Errors. Detection errors are the machine's fault (a file missing, unreadable or malformed) and
//! end up as a part's reason string; schema errors are the reader's input's fault.

use std::path::PathBuf;

/// Why one part of the inventory could not be detected. Its message becomes the part's
/// `{"error": ...}` string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetectError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}", path = path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A file was read but its contents were not what the kernel documents.
    #[error("cannot parse {what} in {path}: {text:?}", path = path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was expected there.
        what: &'static str,
        /// The offending text, cut to a short prefix.
        text: String,
    },
    /// A file was read but a required entry was absent.
    #[error("{path} has no {what}", path = path.display())]
    Missing {
        /// The file or directory.
        path: PathBuf,
        /// The entry that was expected.
        what: &'static str,
    },
    /// A directory or list held more entries than the named limit allows.
    #[error("more than {max} {what} under {path}", path = path.display())]
    TooMany {
        /// The directory or file.
        path: PathBuf,
        /// What was counted.
        what: &'static str,
        /// The limit (one of the crate's `*_MAX` constants).
        max: usize,
    },
    /// NVML was loaded and initialized, then a query failed.
    #[error("NVML {what} failed: {reason}")]
    Nvml {
        /// The query.
        what: &'static str,
        /// NVML's error message.
        reason: String,
    },
}

/// Why [`crate::Inventory::from_json`] rejected its input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Not JSON, or not shaped like an inventory.
    #[error("not an inventory: {0}")]
    Json(#[from] serde_json::Error),
    /// Written with a schema version this crate does not read.
    #[error("inventory schema version {found} is not supported (this reader knows {supported})")]
    UnsupportedVersion {
        /// The version in the input.
        found: u32,
        /// [`crate::SCHEMA_VERSION`].
        supported: u32,
    },
}
