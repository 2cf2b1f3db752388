//! The node's attestation service: which evidence provider it runs (`--attestation`), the state
//! it attests to, and the blocking hardware calls kept off the async workers.
//!
//! ```text
//! GET /~attest@1.0/report?nonce=HEX[&process=ID]
//!   parse_nonce ─> Shared::state_parts (config id, inventory digest, process head)
//!   ─> Attestation::evidence: permit (ATTEST_WAITING_MAX) ─> spawn_blocking
//!        ─> ferrobeam_enclave::collect(provider, node key, state, nonce)
//!             binding ─> SNP report / TPM quote / none ─> node key signs the evidence body
//! ```
//!
//! The provider is chosen once, at start: `auto` asks [`ferrobeam_enclave::detect`] and logs
//! the choice and its reason; `snp`, `tpm` and `none` force one and fail the start when the
//! hardware is not there. The TPM AK lives in the data directory ([`AK_FILE_NAME`], mode 0600).

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use ferrobeam_attest::evidence::{NONCE_BYTES_MAX, NONCE_BYTES_MIN};
use ferrobeam_attest::{
    Evidence, EvidenceKind, Id32, NodeKeyScheme, NodePublicKey, NodeSignature, ProcessState,
    StateParts,
};
use ferrobeam_enclave::snp::{
    CONFIGFS_TSM_REPORT_DIR, ConfigfsTsmDevice, SevGuestDevice, SnpProvider,
};
use ferrobeam_enclave::tpm::{TpmConfig, TpmProvider};
use ferrobeam_enclave::{EnclaveError, EvidenceProvider, NodeSigner, NoneProvider};
use serde::{Deserialize, Serialize};

use super::{NodeConfig, NodeError, Shared};
use crate::message::{Id, Wallet};

/// The TCTI used when the configuration names none: the kernel's TPM resource manager.
pub const TPM_TCTI_DEFAULT: &str = "device:/dev/tpmrm0";
/// The TPM attestation key file, in the data directory (public and wrapped private blob).
pub const AK_FILE_NAME: &str = "tpm-ak.bin";
/// Evidence requests admitted at once (one runs, the others wait for the provider). A TPM quote
/// takes ~5 ms on swtpm and up to ~100 ms on a discrete TPM, so 16 waiting is under 2 s of
/// queue; each waiting request holds only its nonce and a blocking-pool thread. Beyond it the
/// node answers 503 `AttestationBusy` at once instead of queueing without bound.
pub const ATTEST_WAITING_MAX: usize = 16;
/// Longest accepted `nonce` query value: 64 bytes in hex.
pub const NONCE_HEX_CHARS_MAX: usize = 2 * NONCE_BYTES_MAX;

const _: () = assert!(NONCE_BYTES_MIN >= 16 && NONCE_BYTES_MIN <= NONCE_BYTES_MAX);
const _: () = assert!(ATTEST_WAITING_MAX >= 1);

/// Which evidence the node produces (`--attestation`, config key `attestation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AttestationMode {
    /// What the machine has: SEV-SNP, else a TPM, else none (logged with the reason).
    #[default]
    Auto,
    /// AMD SEV-SNP through `/dev/sev-guest` or configfs-tsm; the start fails without it.
    Snp,
    /// TPM 2.0 through `tpm-tcti`; the start fails without it.
    Tpm,
    /// No hardware: evidence of kind `none`, which every verifier rejects unless told
    /// `--allow-insecure`. Development only.
    None,
}

impl FromStr for AttestationMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(AttestationMode::Auto),
            "snp" => Ok(AttestationMode::Snp),
            "tpm" => Ok(AttestationMode::Tpm),
            "none" => Ok(AttestationMode::None),
            other => Err(format!("{other:?} is not one of auto, snp, tpm, none")),
        }
    }
}

/// Why attestation failed to start or to answer. [`AttestError::code`] is the JSON `error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The request has no `nonce` (the report route requires one).
    #[error("nonce is required: ?nonce=<{NONCE_BYTES_MIN} to {NONCE_BYTES_MAX} bytes in hex>")]
    NonceMissing,
    /// The nonce is not hex, or not 16 to 64 bytes.
    #[error("nonce {0}; it must be {NONCE_BYTES_MIN} to {NONCE_BYTES_MAX} bytes in hex")]
    NonceInvalid(String),
    /// [`ATTEST_WAITING_MAX`] requests are already waiting for the hardware.
    #[error("{ATTEST_WAITING_MAX} attestation requests are waiting; try again")]
    AttestationBusy,
    /// The hardware (or its driver) failed to produce evidence.
    #[error("the {kind} evidence provider failed: {source}")]
    Provider {
        /// The kind of provider.
        kind: EvidenceKind,
        /// Its error.
        source: EnclaveError,
    },
    /// The node key cannot sign evidence (evidence carries Ed25519 node keys only).
    #[error("the node key is {0}; attestation needs an Ed25519 node key")]
    NodeKeyScheme(&'static str),
    /// The blocking task running the provider panicked or was cancelled (a bug).
    #[error("attestation task failed: {0}")]
    Task(String),
}

impl AttestError {
    /// The JSON `error` code: the variant name.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::NonceMissing => "NonceMissing",
            AttestError::NonceInvalid(_) => "NonceInvalid",
            AttestError::AttestationBusy => "AttestationBusy",
            AttestError::Provider { .. } => "AttestationFailed",
            AttestError::NodeKeyScheme(_) => "NodeKeyScheme",
            AttestError::Task(_) => "AttestationTask",
        }
    }

    /// The HTTP status: 400 for the caller's nonce, 503 when busy or the hardware failed (it
    /// may answer later), 500 for node bugs.
    pub fn status(&self) -> u16 {
        match self {
            AttestError::NonceMissing | AttestError::NonceInvalid(_) => 400,
            AttestError::AttestationBusy | AttestError::Provider { .. } => 503,
            AttestError::NodeKeyScheme(_) | AttestError::Task(_) => 500,
        }
    }
}

/// Parses a `nonce` query value: hex, [`NONCE_BYTES_MIN`] to [`NONCE_BYTES_MAX`] bytes.
///
/// # Errors
/// [`AttestError::NonceInvalid`] saying what is wrong (never echoing more than the limit).
pub fn parse_nonce(text: &str) -> Result<Vec<u8>, AttestError> {
    if text.len() > NONCE_HEX_CHARS_MAX {
        return Err(AttestError::NonceInvalid(format!(
            "has {} hex characters, more than {NONCE_HEX_CHARS_MAX}",
            text.len()
        )));
    }
    let bytes =
        hex::decode(text).map_err(|e| AttestError::NonceInvalid(format!("is not hex ({e})")))?;
    if !(NONCE_BYTES_MIN..=NONCE_BYTES_MAX).contains(&bytes.len()) {
        return Err(AttestError::NonceInvalid(format!(
            "is {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The node key as evidence needs it: an Ed25519 [`Wallet`], checked once at construction so
/// signing never meets an RSA key.
#[derive(Clone)]
pub struct AttestationKey {
    key: ed25519_dalek::SigningKey,
}

impl AttestationKey {
    /// Wraps the node wallet.
    ///
    /// # Errors
    /// [`AttestError::NodeKeyScheme`] for a non-Ed25519 wallet.
    pub fn new(wallet: &Wallet) -> Result<Self, AttestError> {
        let Wallet::Ed25519(key) = wallet else {
            return Err(AttestError::NodeKeyScheme(wallet.scheme().name()));
        };
        Ok(Self {
            key: (**key).clone(),
        })
    }
}

impl NodeSigner for AttestationKey {
    fn scheme(&self) -> NodeKeyScheme {
        self.key.scheme()
    }

    fn public_key(&self) -> NodePublicKey {
        NodeSigner::public_key(&self.key)
    }

    fn sign(&self, message: &[u8]) -> NodeSignature {
        NodeSigner::sign(&self.key, message)
    }
}

type Provider = Box<dyn EvidenceProvider + Send>;

/// The node's attestation service: one provider, used by one request at a time.
pub struct Attestation {
    kind: EvidenceKind,
    reason: String,
    /// The TPM AK's name (what a verifier pins), for kind `tpm`.
    ak_name: Option<Vec<u8>>,
    key: AttestationKey,
    /// Taken inside `spawn_blocking` only; providers block (TPM worker, SNP ioctl).
    provider: Mutex<Provider>,
    waiting: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestation")
            .field("kind", &self.kind)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Attestation {
    /// Starts the provider the configuration asks for (off the async workers: TPM start-up
    /// creates keys) and logs which one runs and why.
    ///
    /// # Errors
    /// [`AttestError::Provider`] when a forced backend is not there or fails to open;
    /// [`AttestError::NodeKeyScheme`] for an RSA node key.
    pub async fn start(config: &NodeConfig, wallet: &Wallet) -> Result<Arc<Self>, AttestError> {
        let key = AttestationKey::new(wallet)?;
        let mode = config.attestation;
        let tcti = config.tpm_tcti.clone();
        let ak_path = config.data_dir.join(AK_FILE_NAME);
        let started = tokio::task::spawn_blocking(move || open_provider(mode, &tcti, &ak_path))
            .await
            .map_err(|e| AttestError::Task(e.to_string()))??;
        let Opened {
            provider,
            reason,
            ak_name,
        } = started;
        let kind = provider.kind();
        match kind {
            EvidenceKind::None => tracing::warn!(
                ?mode,
                %kind,
                reason = %reason,
                "attestation: insecure evidence (verifiers reject it unless --allow-insecure)"
            ),
            _ => tracing::info!(?mode, %kind, reason = %reason, "attestation"),
        }
        Ok(Self::with_provider(provider, reason, ak_name, key))
    }

    fn with_provider(
        provider: Provider,
        reason: String,
        ak_name: Option<Vec<u8>>,
        key: AttestationKey,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind: provider.kind(),
            reason,
            ak_name,
            key,
            provider: Mutex::new(provider),
            waiting: tokio::sync::Semaphore::new(ATTEST_WAITING_MAX),
        })
    }

    /// The kind of evidence this node produces.
    pub fn kind(&self) -> EvidenceKind {
        self.kind
    }

    /// `/~meta@1.0/info`'s `attestation` object.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind,
            "reason": self.reason,
            "ak-name": self.ak_name.as_deref().map(hex::encode),
        })
    }

    /// Produces signed evidence for `state` and `nonce`, on the blocking pool.
    ///
    /// # Errors
    /// [`AttestError::AttestationBusy`], [`AttestError::Provider`], [`AttestError::Task`].
    pub async fn evidence(
        self: &Arc<Self>,
        state: StateParts,
        nonce: Vec<u8>,
    ) -> Result<Evidence, AttestError> {
        assert!((NONCE_BYTES_MIN..=NONCE_BYTES_MAX).contains(&nonce.len()));
        let _permit = self
            .waiting
            .try_acquire()
            .map_err(|_| AttestError::AttestationBusy)?;
        let this = Arc::clone(self);
        let evidence = tokio::task::spawn_blocking(move || this.collect_blocking(state, &nonce))
            .await
            .map_err(|e| AttestError::Task(e.to_string()))??;
        assert_eq!(evidence.kind, self.kind, "the provider changed its kind");
        Ok(evidence)
    }

    fn collect_blocking(&self, state: StateParts, nonce: &[u8]) -> Result<Evidence, AttestError> {
        // A panic while holding the lock leaves the provider as sound as before the call: each
        // request is independent (the TPM worker flushes its handles per quote).
        let mut provider = self.provider.lock().unwrap_or_else(PoisonError::into_inner);
        ferrobeam_enclave::collect(provider.as_mut(), &self.key, state, nonce).map_err(|source| {
            AttestError::Provider {
                kind: self.kind,
                source,
            }
        })
    }
}

struct Opened {
    provider: Provider,
    reason: String,
    ak_name: Option<Vec<u8>>,
}

fn open_provider(mode: AttestationMode, tcti: &str, ak_path: &Path) -> Result<Opened, AttestError> {
    match mode {
        AttestationMode::None => Ok(Opened {
            provider: Box::new(NoneProvider),
            reason: "--attestation none: no hardware evidence (development only)".into(),
            ak_name: None,
        }),
        AttestationMode::Tpm => open_tpm(tcti, ak_path, format!("--attestation tpm over {tcti}")),
        AttestationMode::Snp => {
            // configfs-tsm only when /dev/sev-guest is absent and configfs-tsm is present.
            let detected = ferrobeam_enclave::detect::detect();
            open_snp(detected.snp_via_configfs_tsm, "--attestation snp".into())
        }
        AttestationMode::Auto => open_detected(tcti, ak_path),
    }
}

/// `auto`: the detected backend. If it is there but cannot be opened (permissions, a broken
/// driver), the node still starts, with kind `none` and the failure as the reason, so that
/// verifiers reject it and `info` says why; forcing the backend makes that a start error.
fn open_detected(tcti: &str, ak_path: &Path) -> Result<Opened, AttestError> {
    let detected = ferrobeam_enclave::detect::detect();
    let reason = format!("--attestation auto: {}", detected.reason);
    let opened = match detected.kind {
        EvidenceKind::Snp => open_snp(detected.snp_via_configfs_tsm, reason),
        EvidenceKind::Tpm => open_tpm(tcti, ak_path, reason),
        _ => Ok(Opened {
            provider: Box::new(NoneProvider),
            reason,
            ak_name: None,
        }),
    };
    opened.or_else(|e| {
        tracing::error!(error = %e, "attestation: the detected backend failed to open");
        Ok(Opened {
            provider: Box::new(NoneProvider),
            reason: format!(
                "--attestation auto: {} but it failed to open: {e}",
                detected.reason
            ),
            ak_name: None,
        })
    })
}

fn open_tpm(tcti: &str, ak_path: &Path, reason: String) -> Result<Opened, AttestError> {
    let provider = TpmProvider::start(TpmConfig::new(tcti, ak_path)).map_err(|source| {
        AttestError::Provider {
            kind: EvidenceKind::Tpm,
            source,
        }
    })?;
    let ak_name = provider.ak_name();
    self_check(Opened {
        provider: Box::new(provider),
        reason: format!("{reason}; AK in {}", ak_path.display()),
        ak_name: Some(ak_name),
    })
}

/// Asks the hardware for one report at start (over zeros, then discarded), so that an AK file
/// the TPM no longer loads (a cleared TPM, another machine) or a device that refuses requests
/// fails the start rather than every later request.
fn self_check(mut opened: Opened) -> Result<Opened, AttestError> {
    let kind = opened.provider.kind();
    opened
        .provider
        .evidence([0u8; 64])
        .map_err(|source| AttestError::Provider { kind, source })?;
    Ok(opened)
}

fn open_snp(via_configfs_tsm: bool, reason: String) -> Result<Opened, AttestError> {
    let provider: Provider = if via_configfs_tsm {
        Box::new(SnpProvider::new(
            ConfigfsTsmDevice::new(CONFIGFS_TSM_REPORT_DIR),
            0,
        ))
    } else {
        let device = SevGuestDevice::open().map_err(|source| AttestError::Provider {
            kind: EvidenceKind::Snp,
            source,
        })?;
        Box::new(SnpProvider::new(device, 0))
    };
    self_check(Opened {
        provider,
        reason,
        ak_name: None,
    })
}

impl Shared {
    /// What the node's evidence attests to: its public config id, its hardware inventory digest
    /// and, when asked, one process with its current (durable) hashpath.
    ///
    /// # Errors
    /// [`NodeError::UnknownProcess`].
    pub fn state_parts(&self, process: Option<Id>) -> Result<StateParts, NodeError> {
        let process = match process {
            None => None,
            Some(id) => {
                let head = self.head(&id)?.ok_or(NodeError::UnknownProcess(id))?;
                Some(ProcessState {
                    process_id: Id32(id.0),
                    hashpath: Id32(head.hashpath.0),
                })
            }
        };
        Ok(StateParts {
            config_id: Id32(self.config.public_id().0),
            inventory_digest: Some(Id32(self.inventory.digest())),
            process,
        })
    }

    /// Signed evidence over this node's state (and `process`'s hashpath) for `nonce`.
    ///
    /// # Errors
    /// [`NodeError::UnknownProcess`], [`NodeError::Attest`].
    pub async fn evidence(
        &self,
        nonce: Vec<u8>,
        process: Option<Id>,
    ) -> Result<Evidence, NodeError> {
        let state = self.state_parts(process)?;
        Ok(self.attestation.evidence(state, nonce).await?)
    }

    /// The devices `/~meta@1.0/info` lists: the fixed set, `attest@1.0`, and `snp@1.0` when the
    /// node produces SEV-SNP evidence.
    pub fn devices(&self) -> Vec<&'static str> {
        let mut devices = super::DEVICES.to_vec();
        devices.push("attest@1.0");
        if self.attestation.kind() == EvidenceKind::Snp {
            devices.push("snp@1.0");
        }
        devices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_parsing_limits() {
        assert_eq!(parse_nonce(&"ab".repeat(16)).unwrap(), vec![0xab; 16]);
        assert_eq!(parse_nonce(&"0F".repeat(64)).unwrap(), vec![0x0f; 64]);
        for bad in [
            "",
            "zz",
            "abc",
            &"ab".repeat(15),
            &"ab".repeat(65),
            &"a".repeat(10_000),
        ] {
            let e = parse_nonce(bad).unwrap_err();
            assert_eq!(e.code(), "NonceInvalid", "{bad:?}");
            assert_eq!(e.status(), 400);
            assert!(e.to_string().len() < 200, "the message echoes no input");
        }
    }

    /// Kind `none` evidence, once the test lets it through the gate.
    struct Gated(std::sync::mpsc::Receiver<()>);

    impl EvidenceProvider for Gated {
        fn kind(&self) -> EvidenceKind {
            EvidenceKind::None
        }

        fn evidence(
            &mut self,
            report_data: [u8; 64],
        ) -> Result<ferrobeam_enclave::RawEvidence, EnclaveError> {
            let _ = self.0.recv();
            NoneProvider.evidence(report_data)
        }
    }

    #[test]
    fn requests_past_attest_waiting_max_are_refused_at_once() {
        // Made first, dropped last: a failing assertion drops the gate first, which frees the
        // blocked provider calls the runtime waits for.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (gate, gated) = std::sync::mpsc::channel();
        let key = AttestationKey {
            key: ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        };
        let attestation =
            Attestation::with_provider(Box::new(Gated(gated)), "test".into(), None, key);
        let state = StateParts {
            config_id: Id32([1; 32]),
            inventory_digest: None,
            process: None,
        };
        runtime.block_on(async {
            // ATTEST_WAITING_MAX requests wait on the provider (one inside it, the rest on its
            // lock), each holding a permit.
            let waiting: Vec<_> = (0..ATTEST_WAITING_MAX)
                .map(|n| {
                    let attestation = attestation.clone();
                    tokio::spawn(
                        async move { attestation.evidence(state, vec![n as u8; 16]).await },
                    )
                })
                .collect();
            let mut spins = 0;
            while attestation.waiting.available_permits() > 0 {
                spins += 1;
                assert!(spins < 1_000_000, "more than ATTEST_WAITING_MAX permits");
                tokio::task::yield_now().await;
            }
            let refused = attestation.evidence(state, vec![0xee; 16]).await;
            assert!(
                matches!(refused, Err(AttestError::AttestationBusy)),
                "{refused:?}"
            );
            // The provider answers them all; then there is room again.
            for _ in 0..=ATTEST_WAITING_MAX {
                gate.send(()).unwrap();
            }
            for request in waiting {
                assert_eq!(request.await.unwrap().unwrap().kind, EvidenceKind::None);
            }
            let again = attestation.evidence(state, vec![0xee; 16]).await.unwrap();
            assert_eq!(again.nonce.0, vec![0xee; 16]);
        });
    }

    #[test]
    fn modes_parse_and_deserialize() {
        for (text, mode) in [
            ("auto", AttestationMode::Auto),
            ("snp", AttestationMode::Snp),
            ("tpm", AttestationMode::Tpm),
            ("none", AttestationMode::None),
        ] {
            assert_eq!(text.parse::<AttestationMode>().unwrap(), mode);
            let config: NodeConfig = toml::from_str(&format!("attestation = \"{text}\"")).unwrap();
            assert_eq!(config.attestation, mode);
        }
        assert!("sgx".parse::<AttestationMode>().is_err());
        assert_eq!(NodeConfig::default().tpm_tcti, TPM_TCTI_DEFAULT);
    }

    #[test]
    fn rsa_node_keys_are_refused_and_ed25519_signs_verifiably() {
        let rsa = Wallet::generate_rsa(&mut rand::rngs::OsRng, 1024).unwrap();
        assert!(matches!(
            AttestationKey::new(&rsa),
            Err(AttestError::NodeKeyScheme(_))
        ));
        let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
        let key = AttestationKey::new(&wallet).unwrap();
        assert_eq!(key.public_key().0.to_vec(), wallet.public_key());
        let signature = key.sign(b"body");
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key.public_key().0).unwrap();
        verifying
            .verify_strict(b"body", &ed25519_dalek::Signature::from_bytes(&signature.0))
            .unwrap();
    }
}
