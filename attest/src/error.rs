//! The one error type of the verifier.
//!
//! Variants are grouped, as rustls does, by who is at fault: the evidence (malformed or failing a
//! check: the peer's fault), the verifier's own policy or inputs (`Policy*`, `ApiMisuse`: the
//! caller's fault, never caused by untrusted evidence), and `Unreachable` (a bug in this crate).
//! Every check has its own variant, so a verifier can say exactly what failed.

use crate::snp::{Product, TcbField};

/// Why evidence did not verify.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    // ---- evidence format ----------------------------------------------------------------------
    /// The evidence JSON is larger than [`crate::EVIDENCE_JSON_BYTES_MAX`].
    #[error("evidence JSON is {bytes} bytes, more than the {max} allowed")]
    EvidenceTooLarge {
        /// Size of the input.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The evidence is not valid JSON of the expected shape.
    #[error("evidence JSON is malformed: {0}")]
    EvidenceJson(String),
    /// The evidence has a version this verifier does not know.
    #[error("evidence version {found} is not supported (this verifier knows version {supported})")]
    EvidenceVersion {
        /// The version in the evidence.
        found: u32,
        /// The version this crate verifies.
        supported: u32,
    },
    /// A field of the evidence has the wrong size or is missing for its kind.
    #[error("evidence field `{field}` is malformed: {reason}")]
    EvidenceField {
        /// The JSON field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    // ---- node key and binding -----------------------------------------------------------------
    /// The node-key signature over the evidence body does not verify.
    #[error("the node-key signature over the evidence does not verify")]
    NodeSignatureInvalid,
    /// The evidence names a node-key scheme the configured verifier does not handle.
    #[error("node key scheme `{0}` is not supported by this verifier")]
    NodeKeySchemeUnsupported(String),
    /// `state_digest` is not the digest of the state parts carried beside it.
    #[error("state_digest does not match the digest of the state parts")]
    StateDigestMismatch,
    /// The evidence answers another nonce than the one the verifier sent.
    #[error("the evidence nonce is not the expected nonce")]
    NonceMismatch,
    /// The hardware report's report data (SNP) or qualifying data (TPM) is not the binding of
    /// node key, state digest and nonce.
    #[error("report data does not bind this node key, state digest and nonce")]
    ReportDataMismatch,
    /// Evidence of kind `none` was presented and insecure evidence is not allowed.
    #[error("evidence of kind `none` proves nothing and insecure evidence is not allowed")]
    InsecureEvidenceRejected,

    /// The policy has no section for this kind of evidence, so it accepts none of it.
    #[error("the policy accepts no evidence of kind `{0}`")]
    KindNotAllowedByPolicy(crate::EvidenceKind),

    // ---- SEV-SNP --------------------------------------------------------------------------------
    /// The SNP report is not 1184 bytes.
    #[error("SNP report is {found} bytes, expected {expected}")]
    SnpReportLength {
        /// Size found.
        found: usize,
        /// [`crate::snp::REPORT_BYTES`].
        expected: usize,
    },
    /// The SNP report has a version this verifier does not parse.
    #[error("SNP report version {0} is not supported")]
    SnpReportVersion(u32),
    /// The SNP report is signed with an algorithm other than ECDSA P-384 with SHA-384.
    #[error("SNP report signature algorithm {0} is not ECDSA P-384/SHA-384 (1)")]
    SnpSignatureAlgorithm(u32),
    /// The AMD product (Milan, Genoa, Turin) could not be determined or the sources disagree.
    #[error("AMD product: {0}")]
    SnpProduct(String),
    /// No VCEK came with the evidence or from the certificate cache. The URL is where AMD's key
    /// distribution service serves it; put the DER under `cache_file_name` in the cache directory.
    #[error(
        "no VCEK for this chip and TCB: fetch {url} and save it as {cache_file_name} in the certificate directory"
    )]
    VcekMissing {
        /// The exact AMD KDS URL of the VCEK (DER).
        url: String,
        /// The file name the certificate cache looks up.
        cache_file_name: String,
    },
    /// The certificate cache directory could not be read.
    #[error("certificate cache: {0}")]
    CertificateCache(String),
    /// A certificate does not parse as DER X.509.
    #[error("{which} certificate does not parse: {reason}")]
    CertificateParse {
        /// "VCEK", "ASK", "ARK".
        which: &'static str,
        /// Parser message.
        reason: String,
    },
    /// A certificate is outside its validity period at the time given to the verifier.
    #[error("{which} certificate is not valid at unix time {now_unix_s}")]
    CertificateNotValidAtTime {
        /// "VCEK", "ASK", "ARK".
        which: &'static str,
        /// The time passed in.
        now_unix_s: u64,
    },
    /// An ASK or ARK carried in the evidence differs from the one pinned in this binary.
    #[error("{which} in the evidence is not the pinned AMD {which} for {product}")]
    AmdCertificateNotPinned {
        /// "ASK" or "ARK".
        which: &'static str,
        /// The product whose pinned chain was used.
        product: Product,
    },
    /// The ARK is not self-signed.
    #[error("ARK is not self-signed")]
    ArkNotSelfSigned,
    /// The ARK did not sign the ASK.
    #[error("ASK is not signed by the ARK")]
    AskNotSignedByArk,
    /// The ASK did not sign the VCEK (wrong product, or a tampered VCEK).
    #[error("VCEK is not signed by the {product} ASK")]
    VcekNotSignedByAsk {
        /// The product of the chain used.
        product: Product,
    },
    /// The VCEK's public key is not a P-384 point.
    #[error("VCEK public key is not an ECDSA P-384 key")]
    VcekPublicKey,
    /// The report signature does not verify with the VCEK.
    #[error("SNP report signature does not verify with the VCEK")]
    SnpReportSignatureInvalid,
    /// A VCEK extension is missing or malformed.
    #[error("VCEK extension {oid} is missing or malformed")]
    VcekExtension {
        /// Dotted OID.
        oid: &'static str,
    },
    /// A TCB component certified by the VCEK differs from the report's reported_tcb.
    #[error("VCEK certifies {field} SPL {vcek}, the report says {report}")]
    VcekTcbMismatch {
        /// Which TCB component.
        field: TcbField,
        /// Value in the VCEK extension.
        vcek: u8,
        /// Value in reported_tcb.
        report: u8,
    },
    /// The VCEK's hwID is not the report's chip_id.
    #[error("VCEK hwID is not the report's chip_id")]
    VcekChipIdMismatch,
    /// The guest policy has the debug bit (19) set and the policy does not allow debug.
    #[error("the guest policy allows debugging (bit 19) and the verifier policy does not")]
    SnpDebugNotAllowed,
    /// The launch measurement is not in the allowed list.
    #[error("measurement {measurement} is not allowed by the policy")]
    SnpMeasurementNotAllowed {
        /// Hex of the 48-byte measurement.
        measurement: String,
    },
    /// A TCB component is below the policy's minimum.
    #[error("reported TCB {field} SPL {reported} is below the minimum {minimum}")]
    SnpTcbBelowMinimum {
        /// Which component.
        field: TcbField,
        /// Reported value.
        reported: u8,
        /// Policy minimum.
        minimum: u8,
    },
    /// The report was requested from a VMPL above the policy's maximum.
    #[error("report VMPL {reported} is above the allowed maximum {maximum}")]
    SnpVmplNotAllowed {
        /// VMPL in the report.
        reported: u32,
        /// Policy maximum.
        maximum: u32,
    },

    // ---- TPM ------------------------------------------------------------------------------------
    /// The TPMS_ATTEST structure is malformed.
    #[error("TPM quote is malformed: {0}")]
    TpmAttestMalformed(&'static str),
    /// The TPMS_ATTEST magic is not TPM_GENERATED_VALUE.
    #[error("TPM quote magic {0:#010x} is not TPM_GENERATED (0xff544347)")]
    TpmAttestMagic(u32),
    /// The TPMS_ATTEST is not a quote.
    #[error("TPM attestation type {0:#06x} is not TPM_ST_ATTEST_QUOTE (0x8018)")]
    TpmAttestType(u16),
    /// The TPMT_SIGNATURE is malformed or uses an unsupported scheme.
    #[error("TPM signature is malformed or unsupported: {0}")]
    TpmSignatureMalformed(&'static str),
    /// The AK public area is malformed or of an unsupported type.
    #[error("AK public area is malformed or unsupported: {0}")]
    TpmAkPublicMalformed(&'static str),
    /// The AK is not a restricted, fixedTPM signing key, so it could sign forged quotes.
    #[error("AK is not a restricted fixedTPM signing key")]
    TpmAkNotRestricted,
    /// The signature scheme does not match the AK's key type.
    #[error("TPM signature scheme does not match the AK key type")]
    TpmSignatureSchemeMismatch,
    /// The quote signature does not verify with the AK.
    #[error("TPM quote signature does not verify with the AK")]
    TpmQuoteSignatureInvalid,
    /// The AK is not pinned by the policy.
    #[error("AK {name} is not trusted by the policy")]
    TpmAkNotTrusted {
        /// Hex of the AK's TPM name (nameAlg ‖ SHA-256 of TPMT_PUBLIC).
        name: String,
    },
    /// The quote selects other PCRs than the evidence reports, or another bank than sha256.
    #[error("TPM quote PCR selection does not match the reported PCRs: {0}")]
    TpmPcrSelectionMismatch(&'static str),
    /// The quote's pcrDigest is not SHA-256 of the reported PCR values.
    #[error("TPM quote pcrDigest is not the digest of the reported PCR values")]
    TpmPcrDigestMismatch,
    /// A PCR the policy constrains is absent or has another value.
    #[error("PCR {index} is missing or differs from the policy's value")]
    TpmPcrNotAllowed {
        /// PCR index.
        index: u8,
    },

    // ---- the caller's fault ---------------------------------------------------------------------
    /// The policy file does not parse or is inconsistent.
    #[error("policy: {0}")]
    Policy(String),
    /// The verifier was called wrongly (never caused by untrusted evidence).
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
    /// A bug in this crate.
    #[error("internal error (a bug in ferrobeam-attest): {0}")]
    Unreachable(&'static str),
}
