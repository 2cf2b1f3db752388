//! The node key: an Ed25519 wallet created on first start, kept in a file only its owner can read.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::message::Wallet;

/// Why the node key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or creating the file failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is readable by others than its owner.
    #[error("node key {path} has mode {mode:o}; it must be 0600 (run: chmod 600 {path})")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a wallet JWK.
    #[error("node key {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Loads the node key from `path`, creating it (mode 0600) when absent.
///
/// # Errors
/// [`KeyError`]; a key file with group or other permissions is refused.
pub fn load_or_create_node_key(path: &Path) -> Result<Wallet, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::TooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = std::fs::read(path).map_err(io)?;
            let json: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| KeyError::Invalid {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            Wallet::from_jwk(&json).map_err(|e| KeyError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
            write_private(path, &wallet).map_err(io)?;
            Ok(wallet)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes a wallet JWK readable only by its owner (created 0600, never widened).
///
/// # Errors
/// I/O errors; an existing file is not overwritten.
pub fn write_private(path: &Path, wallet: &Wallet) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(serde_json::to_string_pretty(&wallet.to_jwk())?.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_reloaded_and_refused_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-key.json");
        let a = load_or_create_node_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create_node_key(&path).unwrap();
        assert_eq!(a.address(), b.address());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_node_key(&path),
            Err(KeyError::TooOpen { mode: 0o644, .. })
        ));
    }
}
