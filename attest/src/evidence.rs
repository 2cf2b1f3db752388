//! The evidence format (version 1), its JSON form, and the byte strings that are hashed or signed.
//!
//! Every byte string in the JSON form is unpadded base64url, as ferrobeam prints ids.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha512};

use crate::Error;

/// The evidence version this crate writes and verifies.
pub const EVIDENCE_VERSION: u32 = 1;
/// Largest evidence JSON accepted: a report, five certificates and 24 PCRs fit many times over.
/// Checked before parsing, so a hostile peer costs at most this much memory.
pub const EVIDENCE_JSON_BYTES_MAX: usize = 192 * 1024;
/// Largest report (SNP report or TPMS_ATTEST) or report signature.
pub const REPORT_BYTES_MAX: usize = 8 * 1024;
/// Largest certificate or AK public area.
pub const CERTIFICATE_BYTES_MAX: usize = 16 * 1024;
/// At most this many PCR values (a TPM has 24 PCRs per bank).
pub const PCR_COUNT_MAX: usize = 24;
/// Shortest nonce: 128 bits, so a verifier's nonce is never guessed.
pub const NONCE_BYTES_MIN: usize = 16;
/// Longest nonce.
pub const NONCE_BYTES_MAX: usize = 64;
/// Domain separator of the report-data binding.
pub const BINDING_DOMAIN: &[u8] = b"ferrobeam-attest-v1";
/// Domain separator of the state digest.
pub const STATE_DOMAIN: &[u8] = b"ferrobeam-state-v1";
/// Domain separator of the node-key signature over the evidence body.
pub const SIGNING_DOMAIN: &[u8] = b"ferrobeam-evidence-v1";

// Report, report signature and five certificates at their limits, base64-encoded (4/3), fit.
const _: () = assert!(
    EVIDENCE_JSON_BYTES_MAX > (2 * REPORT_BYTES_MAX + 5 * CERTIFICATE_BYTES_MAX) * 4 / 3 + 4096
);
const _: () = assert!(NONCE_BYTES_MIN <= NONCE_BYTES_MAX);

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Size in bytes.
            pub const BYTES: usize = $len;
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
            /// Parses from a slice of exactly [`Self::BYTES`] bytes.
            ///
            /// # Errors
            /// [`Error::EvidenceField`] when the length is wrong.
            pub fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, Error> {
                let array = <[u8; $len]>::try_from(bytes).map_err(|_| Error::EvidenceField {
                    field,
                    reason: format!("{} bytes, expected {}", bytes.len(), $len),
                })?;
                Ok(Self(array))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&URL_SAFE_NO_PAD.encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let bytes = decode_base64url::<D>(deserializer, $len)?;
                let array = <[u8; $len]>::try_from(bytes.as_slice()).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{} bytes where {} must be {}",
                        bytes.len(),
                        stringify!($name),
                        $len
                    ))
                })?;
                Ok(Self(array))
            }
        }
    };
}

fn decode_base64url<'de, D: Deserializer<'de>>(
    deserializer: D,
    bytes_max: usize,
) -> Result<Vec<u8>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    // base64 is 4/3 the size; reject before decoding so the limit holds for hostile input.
    if text.len() > bytes_max.div_ceil(3) * 4 {
        return Err(serde::de::Error::custom(format!(
            "more than {bytes_max} bytes of base64url"
        )));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("not unpadded base64url: {e}")))?;
    // The text check lets up to 2 bytes more through (4 characters carry 3 bytes).
    if bytes.len() > bytes_max {
        return Err(serde::de::Error::custom(format!(
            "more than {bytes_max} bytes of base64url"
        )));
    }
    Ok(bytes)
}

fixed_bytes!(
    /// An Ed25519 node public key (32 bytes).
    NodePublicKey,
    32
);
fixed_bytes!(
    /// An Ed25519 signature (64 bytes).
    NodeSignature,
    64
);
fixed_bytes!(
    /// A 32-byte id (SHA-256): a message id, a process id, a config id.
    Id32,
    32
);
fixed_bytes!(
    /// The state digest: SHA-256 over the state parts (see [`StateParts::digest`]).
    StateDigest,
    32
);
fixed_bytes!(
    /// The 64 bytes bound into the hardware report: SNP report_data, TPM qualifying data.
    ReportData,
    64
);
fixed_bytes!(
    /// A sha256-bank PCR value.
    PcrDigest,
    32
);

/// A variable-length byte string, base64url in JSON, at most [`CERTIFICATE_BYTES_MAX`] bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Vec<u8>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes_max = CERTIFICATE_BYTES_MAX.max(REPORT_BYTES_MAX);
        Ok(Self(decode_base64url::<D>(deserializer, bytes_max)?))
    }
}

/// What produced the evidence.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvidenceKind {
    /// An AMD SEV-SNP attestation report.
    Snp,
    /// A TPM 2.0 quote.
    Tpm,
    /// No hardware: development only, rejected unless insecure evidence is allowed.
    None,
}

impl EvidenceKind {
    /// The byte that stands for the kind in [`Evidence::signing_bytes`].
    pub fn code(self) -> u8 {
        match self {
            EvidenceKind::None => 0,
            EvidenceKind::Snp => 1,
            EvidenceKind::Tpm => 2,
        }
    }
}

impl std::fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EvidenceKind::Snp => "snp",
            EvidenceKind::Tpm => "tpm",
            EvidenceKind::None => "none",
        })
    }
}

/// The scheme of the node key that signs the evidence body.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeKeyScheme {
    /// Ed25519 (RFC 8032), verified strictly.
    #[default]
    Ed25519,
}

impl NodeKeyScheme {
    /// The byte that stands for the scheme in [`Evidence::signing_bytes`].
    pub fn code(self) -> u8 {
        match self {
            NodeKeyScheme::Ed25519 => 1,
        }
    }
}

/// One PCR value of the sha256 bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrValue {
    /// PCR index, 0 to 23.
    pub index: u8,
    /// Its sha256-bank value.
    pub sha256: PcrDigest,
}

/// Certificates and keys that back the report. All optional; which ones matter depends on kind.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificates {
    /// SNP: the VCEK (DER). Without it the verifier looks in its certificate cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcek: Option<Blob>,
    /// SNP: the ASK (DER). If present it must equal the pinned ASK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<Blob>,
    /// SNP: the ARK (DER). If present it must equal the pinned ARK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ark: Option<Blob>,
    /// TPM: the AK public area (marshalled TPMT_PUBLIC). Required for kind `tpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_public: Option<Blob>,
    /// TPM: the EK certificate (DER), informational in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<Blob>,
}

/// A process and the hashpath it has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessState {
    /// The process id.
    pub process_id: Id32,
    /// Its hashpath after the last computed slot (raw 32 bytes).
    pub hashpath: Id32,
}

/// What the state digest is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateParts {
    /// Id of the node's public configuration message.
    pub config_id: Id32,
    /// Digest of the hardware inventory, if the node reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_digest: Option<Id32>,
    /// A process and its hashpath, when the evidence speaks for one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessState>,
}

impl StateParts {
    /// `SHA-256("ferrobeam-state-v1" ‖ config_id ‖ opt(inventory_digest) ‖ opt(process_id ‖
    /// hashpath))`, where `opt(x)` is the byte 0x00 when absent and 0x01 ‖ x when present.
    /// Every part has a fixed size, so the encoding is unambiguous.
    pub fn digest(&self) -> StateDigest {
        let mut hasher = Sha256::new();
        hasher.update(STATE_DOMAIN);
        hasher.update(self.config_id.0);
        match &self.inventory_digest {
            None => hasher.update([0u8]),
            Some(inventory) => {
                hasher.update([1u8]);
                hasher.update(inventory.0);
            }
        }
        match &self.process {
            None => hasher.update([0u8]),
            Some(process) => {
                hasher.update([1u8]);
                hasher.update(process.process_id.0);
                hasher.update(process.hashpath.0);
            }
        }
        StateDigest(hasher.finalize().into())
    }
}

/// `SHA-512("ferrobeam-attest-v1" ‖ node public key (32) ‖ state digest (32) ‖ nonce)`: the 64
/// bytes a node asks its TEE to sign. The nonce is last and the other parts have fixed sizes.
pub fn binding(
    node_public_key: &NodePublicKey,
    state_digest: &StateDigest,
    nonce: &[u8],
) -> ReportData {
    let mut hasher = Sha512::new();
    hasher.update(BINDING_DOMAIN);
    hasher.update(node_public_key.0);
    hasher.update(state_digest.0);
    hasher.update(nonce);
    ReportData(hasher.finalize().into())
}

/// Evidence: a hardware report binding a node key and state digest to a verifier's nonce, signed
/// by the node key. Produced by `ferrobeam-enclave`, checked by [`crate::Verifier`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Format version, [`EVIDENCE_VERSION`].
    pub version: u32,
    /// What produced the report.
    pub kind: EvidenceKind,
    /// snp: the raw 1184-byte report; tpm: the marshalled TPMS_ATTEST; none: empty.
    pub report: Blob,
    /// tpm: the marshalled TPMT_SIGNATURE over `report`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_signature: Option<Blob>,
    /// tpm: the quoted sha256-bank PCR values, in ascending index order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcrs: Vec<PcrValue>,
    /// Certificates and keys backing the report.
    #[serde(default)]
    pub certificates: Certificates,
    /// Scheme of the node key.
    #[serde(default)]
    pub node_key_scheme: NodeKeyScheme,
    /// The node's public key.
    pub node_public_key: NodePublicKey,
    /// What the state digest covers.
    pub state: StateParts,
    /// `state.digest()`, carried so a reader need not recompute it (the verifier does).
    pub state_digest: StateDigest,
    /// The verifier's nonce.
    pub nonce: Blob,
    /// The node key's signature over [`Evidence::signing_bytes`].
    pub signature: NodeSignature,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are bounded by the JSON limit, far below u32::MAX.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, blob: Option<&Blob>) {
    match blob {
        None => out.push(0),
        Some(blob) => {
            out.push(1);
            put_bytes(out, &blob.0);
        }
    }
}

impl Evidence {
    /// Parses evidence JSON, refusing more than [`EVIDENCE_JSON_BYTES_MAX`] bytes.
    ///
    /// # Errors
    /// [`Error::EvidenceTooLarge`], [`Error::EvidenceJson`].
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        if json.len() > EVIDENCE_JSON_BYTES_MAX {
            return Err(Error::EvidenceTooLarge {
                bytes: json.len(),
                max: EVIDENCE_JSON_BYTES_MAX,
            });
        }
        serde_json::from_slice(json).map_err(|e| Error::EvidenceJson(e.to_string()))
    }

    /// The JSON form (pretty-printed).
    pub fn to_json(&self) -> String {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report data this evidence claims: [`binding`] of its node key, state digest, nonce.
    pub fn report_data(&self) -> ReportData {
        binding(&self.node_public_key, &self.state_digest, &self.nonce.0)
    }

    /// The byte string the node key signs (version 1), every field but `signature`:
    ///
    /// ```text
    /// "ferrobeam-evidence-v1" ‖ u32 version ‖ u8 kind ‖ bytes(report) ‖ opt(report_signature)
    /// ‖ u32 pcr_count ‖ (u8 index ‖ 32-byte value)* ‖ opt(vcek) ‖ opt(ask) ‖ opt(ark)
    /// ‖ opt(ak_public) ‖ opt(ek_certificate) ‖ u8 node_key_scheme ‖ bytes(node_public_key)
    /// ‖ state_digest (32) ‖ bytes(nonce)
    /// ```
    ///
    /// Integers are big-endian; `bytes(x)` = u32 length ‖ x; `opt(x)` = 0x00 when absent,
    /// 0x01 ‖ bytes(x) when present; kind is 0 none, 1 snp, 2 tpm; scheme 1 is Ed25519. The state
    /// parts are covered through `state_digest`, which the verifier recomputes from them.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.report.0.len());
        out.extend_from_slice(SIGNING_DOMAIN);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.kind.code());
        put_bytes(&mut out, &self.report.0);
        put_optional(&mut out, self.report_signature.as_ref());
        let pcr_count = u32::try_from(self.pcrs.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&pcr_count.to_be_bytes());
        for pcr in &self.pcrs {
            out.push(pcr.index);
            out.extend_from_slice(&pcr.sha256.0);
        }
        let certificates = &self.certificates;
        put_optional(&mut out, certificates.vcek.as_ref());
        put_optional(&mut out, certificates.ask.as_ref());
        put_optional(&mut out, certificates.ark.as_ref());
        put_optional(&mut out, certificates.ak_public.as_ref());
        put_optional(&mut out, certificates.ek_certificate.as_ref());
        out.push(self.node_key_scheme.code());
        put_bytes(&mut out, &self.node_public_key.0);
        out.extend_from_slice(&self.state_digest.0);
        put_bytes(&mut out, &self.nonce.0);
        out
    }

    /// Checks sizes and kind-specific presence of fields (no cryptography).
    ///
    /// # Errors
    /// [`Error::EvidenceVersion`], [`Error::EvidenceField`].
    pub fn check_shape(&self) -> Result<(), Error> {
        if self.version != EVIDENCE_VERSION {
            return Err(Error::EvidenceVersion {
                found: self.version,
                supported: EVIDENCE_VERSION,
            });
        }
        let nonce_bytes = self.nonce.0.len();
        if !(NONCE_BYTES_MIN..=NONCE_BYTES_MAX).contains(&nonce_bytes) {
            return Err(field(
                "nonce",
                format!("{nonce_bytes} bytes, expected 16 to 64"),
            ));
        }
        if self.report.0.len() > REPORT_BYTES_MAX {
            return Err(field("report", "too large".into()));
        }
        if self.pcrs.len() > PCR_COUNT_MAX {
            return Err(field("pcrs", "more than 24 PCR values".into()));
        }
        let ascending = self.pcrs.windows(2).all(|w| w[0].index < w[1].index);
        if !ascending || self.pcrs.iter().any(|p| p.index >= 24) {
            return Err(field(
                "pcrs",
                "indices must be ascending, unique and below 24".into(),
            ));
        }
        match self.kind {
            EvidenceKind::Tpm => {
                if self.report_signature.is_none() {
                    return Err(field("report_signature", "required for kind tpm".into()));
                }
                if self.certificates.ak_public.is_none() {
                    return Err(field(
                        "certificates.ak_public",
                        "required for kind tpm".into(),
                    ));
                }
            }
            EvidenceKind::Snp | EvidenceKind::None => {
                if self.report_signature.is_some() {
                    return Err(field("report_signature", "only kind tpm has one".into()));
                }
                if !self.pcrs.is_empty() {
                    return Err(field("pcrs", "only kind tpm has PCR values".into()));
                }
            }
        }
        Ok(())
    }
}

fn field(field: &'static str, reason: String) -> Error {
    Error::EvidenceField { field, reason }
}
