//! Node configuration: embedded defaults, optionally overridden by a TOML file and the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::server::{
    HTTP_BODY_TIMEOUT_MS_DEFAULT, HTTP_CONNECTIONS_MAX_DEFAULT, HTTP_CONNECTIONS_MAX_LIMIT,
    HTTP_HEADER_TIMEOUT_MS_DEFAULT,
};
use crate::message::Id;

/// Default HTTP listen address (HyperBEAM's port).
pub const HTTP_DEFAULT: &str = "127.0.0.1:8734";
/// Default largest request body (16 MiB): matches [`crate::message::MESSAGE_BYTES_MAX`].
pub const BODY_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Default largest group commit: 1024 messages of up to ~1 KB keep one fsync under a few ms
/// while amortizing it; the queue in front of it bounds memory (see `REQUEST_QUEUE_MAX`).
pub const COMMIT_BATCH_MAX_DEFAULT: usize = 1024;
/// Most configured operators: each is checked on register and release; 256 is far more than an
/// operator team, and a longer list is a configuration error.
pub const OPERATORS_MAX: usize = 256;

/// Everything an operator can set. Unknown keys in a file are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Where the store, the node key and the AOT cache live.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub body_bytes_max: usize,
    /// Executor threads (each pinned to a core); 0 means one per available core.
    pub exec_cores: usize,
    /// K: a snapshot of each process is taken every K slots at least, and less often for large
    /// memories (`execute::process::SNAPSHOT_BYTES_PER_SLOT` bounds the bytes written per slot).
    pub snapshot_interval: u64,
    /// Most messages in one group commit.
    pub commit_batch_max: usize,
    /// How long `compute` waits for a slot that is scheduled but not yet computed, in ms.
    pub compute_wait_ms: u64,
    /// Where processes that do not live on this node are: outbox messages to them are pushed
    /// to that node over HTTP.
    pub routes: Vec<Route>,
    /// Addresses of peer nodes trusted to carry pushed messages: a message one of them signed
    /// with `from-process` comes, for the process that receives it, from that process. Part of
    /// the public configuration (and so of what attestation binds).
    pub peers: Vec<crate::message::Address>,
    /// What unauthenticated callers of info and the asset routes see (docs/assets.md).
    pub privacy: crate::assets::Privacy,
    /// Addresses that may register assets and release any allocation, besides the node key's.
    pub operators: Vec<crate::message::Address>,
    /// Which attestation evidence the node produces: `auto`, `snp`, `tpm` or `none`.
    pub attestation: super::attest::AttestationMode,
    /// How to reach the TPM when attestation uses one: `device:/dev/tpmrm0`, or
    /// `swtpm:host=127.0.0.1,port=P` for a software TPM.
    pub tpm_tcti: String,
    /// QUIC ingress listen address (UDP), e.g. `127.0.0.1:8735`; none: no QUIC ingress.
    pub quic: Option<SocketAddr>,
    /// Which QUIC backend serves `quic` (docs/dataplane.md).
    pub transport: crate::ingress::TransportKind,
    /// Ingress threads (one QUIC endpoint each, sharing the port); 0: half the cores, at least 1.
    pub ingress_cores: usize,
    /// A QUIC connection, or a stream inside a frame, silent this long is closed (ms).
    pub quic_idle_timeout_ms: u64,
    /// Most open QUIC connections per ingress endpoint, 1..=`ingress::CONNECTIONS_MAX`; more
    /// handshakes are refused and counted.
    pub quic_connections_max: usize,
    /// Most open HTTP connections; when all are taken, new ones wait in the accept backlog.
    pub http_connections_max: usize,
    /// An HTTP client that has not sent a whole request head this long after the connection
    /// became ready to read one is disconnected (ms): slow clients, idle keep-alive connections.
    pub http_header_timeout_ms: u64,
    /// An HTTP request body not received in full this long is answered 408 (ms).
    pub http_body_timeout_ms: u64,
}

/// One entry of the route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Route {
    /// The process id.
    pub process: Id,
    /// The base URL of the node that schedules it (`http://host:port`).
    pub node: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ferrobeam-data"),
            // The constant is a valid address; parsing it cannot fail.
            http: HTTP_DEFAULT.parse().expect("default address parses"),
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            exec_cores: 0,
            snapshot_interval: 64,
            commit_batch_max: COMMIT_BATCH_MAX_DEFAULT,
            compute_wait_ms: 30_000,
            routes: Vec::new(),
            peers: Vec::new(),
            privacy: crate::assets::Privacy::default(),
            operators: Vec::new(),
            attestation: super::attest::AttestationMode::default(),
            tpm_tcti: super::attest::TPM_TCTI_DEFAULT.to_owned(),
            quic: None,
            transport: crate::ingress::TransportKind::default(),
            ingress_cores: 0,
            quic_idle_timeout_ms: crate::ingress::IDLE_TIMEOUT_MS_DEFAULT,
            quic_connections_max: crate::ingress::CONNECTIONS_MAX,
            http_connections_max: HTTP_CONNECTIONS_MAX_DEFAULT,
            http_header_timeout_ms: HTTP_HEADER_TIMEOUT_MS_DEFAULT,
            http_body_timeout_ms: HTTP_BODY_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks value ranges.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`].
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.body_bytes_max == 0 || self.body_bytes_max > crate::message::wire::WIRE_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "body-bytes-max must be 1..={}",
                crate::message::wire::WIRE_BYTES_MAX
            )));
        }
        if self.snapshot_interval == 0 {
            return Err(ConfigError::Invalid("snapshot-interval must be ≥ 1".into()));
        }
        if !(1..=65_536).contains(&self.commit_batch_max) {
            return Err(ConfigError::Invalid(
                "commit-batch-max must be 1..=65536".into(),
            ));
        }
        if self.operators.len() > OPERATORS_MAX {
            return Err(ConfigError::Invalid(format!(
                "operators: at most {OPERATORS_MAX} addresses"
            )));
        }
        if self.ingress_cores > crate::ingress::INGRESS_CORES_MAX {
            return Err(ConfigError::Invalid(format!(
                "ingress-cores must be 0..={}",
                crate::ingress::INGRESS_CORES_MAX
            )));
        }
        if !(100..=3_600_000).contains(&self.quic_idle_timeout_ms) {
            return Err(ConfigError::Invalid(
                "quic-idle-timeout-ms must be 100..=3600000".into(),
            ));
        }
        if !(1..=crate::ingress::CONNECTIONS_MAX).contains(&self.quic_connections_max) {
            return Err(ConfigError::Invalid(format!(
                "quic-connections-max must be 1..={}",
                crate::ingress::CONNECTIONS_MAX
            )));
        }
        if !(1..=HTTP_CONNECTIONS_MAX_LIMIT).contains(&self.http_connections_max) {
            return Err(ConfigError::Invalid(format!(
                "http-connections-max must be 1..={HTTP_CONNECTIONS_MAX_LIMIT}"
            )));
        }
        for (key, ms) in [
            ("http-header-timeout-ms", self.http_header_timeout_ms),
            ("http-body-timeout-ms", self.http_body_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid(format!("{key} must be 100..=3600000")));
            }
        }
        Ok(())
    }

    /// Ingress threads to start.
    pub fn ingress_threads(&self) -> usize {
        if self.ingress_cores > 0 {
            self.ingress_cores
        } else {
            (std::thread::available_parallelism().map_or(1, usize::from) / 2).max(1)
        }
    }

    /// Executor threads to start.
    pub fn exec_threads(&self) -> usize {
        if self.exec_cores > 0 {
            self.exec_cores
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// The public part of the configuration, as shown by `/~meta@1.0/info`.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "body-bytes-max": self.body_bytes_max,
            "exec-cores": self.exec_threads(),
            "snapshot-interval": self.snapshot_interval,
            "commit-batch-max": self.commit_batch_max,
            "peers": self.peers,
        })
    }

    /// SHA-256 of the public configuration's JSON (keys sorted): what attestation binds.
    pub fn public_id(&self) -> Id {
        // serde_json's Map is a BTreeMap here (no preserve_order feature): keys are sorted.
        let bytes = serde_json::to_vec(&self.public()).unwrap_or_default();
        Id(Sha256::digest(bytes).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "http = \"127.0.0.1:9000\"\nsnapshot-interval = 8\n").unwrap();
        let c = NodeConfig::from_file(&path).unwrap();
        assert_eq!(c.http.port(), 9000);
        assert_eq!(c.snapshot_interval, 8);
        assert_eq!(c.body_bytes_max, BODY_BYTES_MAX_DEFAULT);
        std::fs::write(&path, "htp = \"x\"\n").unwrap();
        assert!(matches!(
            NodeConfig::from_file(&path),
            Err(ConfigError::Parse { .. })
        ));
        let operator = crate::message::Address([5; 32]);
        std::fs::write(
            &path,
            format!("privacy = \"p2p\"\noperators = [\"{operator}\"]\n"),
        )
        .unwrap();
        let c = NodeConfig::from_file(&path).unwrap();
        assert_eq!(c.privacy, crate::assets::Privacy::P2p);
        assert_eq!(c.operators, vec![operator]);
        std::fs::write(&path, "privacy = \"secret\"\n").unwrap();
        assert!(matches!(
            NodeConfig::from_file(&path),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "snapshot-interval = 0\n").unwrap();
        assert!(matches!(
            NodeConfig::from_file(&path),
            Err(ConfigError::Invalid(_))
        ));
    }
}
