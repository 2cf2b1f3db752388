//! TPM 2.0 quotes: a small parser for TPMS_ATTEST, TPMT_PUBLIC and TPMT_SIGNATURE (big-endian,
//! every length bounds-checked), and the quote checks.
//!
//! ```text
//! AK (TPMT_PUBLIC, trusted by name) --signs--> TPMS_ATTEST { extraData = binding,
//!                                                           pcrDigest = SHA-256(PCR values) }
//! ```

use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

use crate::Error;
use crate::evidence::{PcrValue, ReportData};
use crate::policy::TpmPolicy;

/// TPM_GENERATED_VALUE: only the TPM writes this into structures it signs.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// Largest qualifying data (TPM2B_DATA in a quote).
pub const EXTRA_DATA_BYTES_MAX: usize = 64;
/// At most this many PCR selections in a quote (one per bank).
pub const PCR_SELECTIONS_MAX: u32 = 16;

const ALG_RSA: u16 = 0x0001;
const ALG_SHA256: u16 = 0x000B;
const ALG_NULL: u16 = 0x0010;
const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;
const ALG_ECC: u16 = 0x0023;
const ECC_NIST_P256: u16 = 0x0003;

const ATTRIBUTE_FIXED_TPM: u32 = 1 << 1;
const ATTRIBUTE_RESTRICTED: u32 = 1 << 16;
const ATTRIBUTE_SIGN: u32 = 1 << 18;

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], &'static str> {
        if self.bytes.len() < count {
            return Err(self.what);
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }
    /// A TPM2B: u16 size then that many bytes, at most `max`.
    fn sized(&mut self, max: usize) -> Result<&'a [u8], &'static str> {
        let size = usize::from(self.u16()?);
        if size > max {
            return Err(self.what);
        }
        self.take(size)
    }
    fn finish(&self) -> Result<(), &'static str> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

/// One PCR selection of a quote: a bank and a bitmap of PCR indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's hash algorithm (0x000B is sha256).
    pub hash_algorithm: u16,
    /// The selected indices, ascending.
    pub indices: Vec<u8>,
}

/// A parsed TPMS_ATTEST of type quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The qualifying data (ferrobeam puts the 64-byte binding here).
    pub extra_data: Vec<u8>,
    /// TPM clock, milliseconds.
    pub clock_ms: u64,
    /// TPM resets since the clock was last cleared.
    pub reset_count: u32,
    /// TPM restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock is known not to have gone backwards.
    pub safe: bool,
    /// Firmware version.
    pub firmware_version: u64,
    /// The quoted PCRs.
    pub pcr_selections: Vec<PcrSelection>,
    /// Digest of the quoted PCR values.
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a marshalled TPMS_ATTEST, which must be a quote and consume every byte.
    ///
    /// # Errors
    /// [`Error::TpmAttestMagic`], [`Error::TpmAttestType`], [`Error::TpmAttestMalformed`].
    pub fn parse(bytes: &[u8]) -> Result<Quote, Error> {
        let mut r = Reader {
            bytes,
            what: "truncated or oversized field",
        };
        let malformed = Error::TpmAttestMalformed;
        let magic = r.u32().map_err(malformed)?;
        if magic != TPM_GENERATED {
            return Err(Error::TpmAttestMagic(magic));
        }
        let kind = r.u16().map_err(malformed)?;
        if kind != ST_ATTEST_QUOTE {
            return Err(Error::TpmAttestType(kind));
        }
        Quote::parse_body(&mut r).map_err(malformed)
    }

    fn parse_body(r: &mut Reader<'_>) -> Result<Quote, &'static str> {
        // TPMU_NAME is at most a 2-byte algorithm and a 64-byte digest.
        let qualified_signer = r.sized(2 + 64)?.to_vec();
        let extra_data = r.sized(EXTRA_DATA_BYTES_MAX)?.to_vec();
        let clock_ms = r.u64()?;
        let reset_count = r.u32()?;
        let restart_count = r.u32()?;
        let safe = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err("clockInfo.safe is not 0 or 1"),
        };
        let firmware_version = r.u64()?;
        let count = r.u32()?;
        if count > PCR_SELECTIONS_MAX {
            return Err("too many PCR selections");
        }
        let mut pcr_selections = Vec::new();
        for _ in 0..count {
            let hash_algorithm = r.u16()?;
            let size = usize::from(r.u8()?);
            // TPM2_PCR_SELECT_MAX: 24 PCRs fit in 3 bytes; allow up to 4 as the spec does.
            if size > 4 {
                return Err("pcrSelect larger than 4 bytes");
            }
            let bitmap = r.take(size)?;
            let indices = (0..size * 8)
                .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .map(|i| i as u8)
                .collect();
            pcr_selections.push(PcrSelection {
                hash_algorithm,
                indices,
            });
        }
        let pcr_digest = r.sized(64)?.to_vec();
        r.finish()?;
        Ok(Quote {
            qualified_signer,
            extra_data,
            clock_ms,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_selections,
            pcr_digest,
        })
    }
}

/// The key of an AK.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AkKey {
    /// ECC NIST P-256, the point's coordinates.
    EccP256 {
        /// x, big-endian.
        x: Vec<u8>,
        /// y, big-endian.
        y: Vec<u8>,
    },
    /// RSA.
    Rsa {
        /// Modulus, big-endian.
        modulus: Vec<u8>,
        /// Public exponent.
        exponent: u32,
    },
}

/// A parsed AK public area (TPMT_PUBLIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AkPublic {
    /// objectAttributes.
    pub attributes: u32,
    /// The key.
    pub key: AkKey,
    /// The TPM name: 0x000B ‖ SHA-256(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

impl AkPublic {
    /// Parses a marshalled TPMT_PUBLIC with nameAlg sha256 of type RSA or ECC P-256.
    ///
    /// # Errors
    /// [`Error::TpmAkPublicMalformed`].
    pub fn parse(bytes: &[u8]) -> Result<AkPublic, Error> {
        let mut r = Reader {
            bytes,
            what: "truncated or oversized field",
        };
        let (attributes, key) = parse_public(&mut r).map_err(Error::TpmAkPublicMalformed)?;
        r.finish().map_err(Error::TpmAkPublicMalformed)?;
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(bytes));
        Ok(AkPublic {
            attributes,
            key,
            name,
        })
    }

    /// Whether the key is a restricted, fixedTPM signing key: the TPM signs only structures
    /// it generated with it (TPM_GENERATED), so it cannot sign a forged quote.
    pub fn is_restricted_signing_key(&self) -> bool {
        let required = ATTRIBUTE_FIXED_TPM | ATTRIBUTE_RESTRICTED | ATTRIBUTE_SIGN;
        self.attributes & required == required
    }
}

/// Skips a TPMT_SYM_DEF_OBJECT, or a scheme (algorithm, then a hash unless NULL).
fn skip_algorithm_and_detail(r: &mut Reader<'_>, detail_words: usize) -> Result<(), &'static str> {
    if r.u16()? != ALG_NULL {
        r.take(2 * detail_words)?;
    }
    Ok(())
}

fn parse_public(r: &mut Reader<'_>) -> Result<(u32, AkKey), &'static str> {
    let kind = r.u16()?;
    if r.u16()? != ALG_SHA256 {
        return Err("nameAlg is not sha256");
    }
    let attributes = r.u32()?;
    r.sized(64)?; // authPolicy
    skip_algorithm_and_detail(r, 2)?; // symmetric: keyBits, mode
    match kind {
        ALG_RSA => {
            skip_algorithm_and_detail(r, 1)?; // scheme: hashAlg
            let _key_bits = r.u16()?;
            let exponent = match r.u32()? {
                0 => 65537,
                e => e,
            };
            let modulus = r.sized(512)?.to_vec();
            Ok((attributes, AkKey::Rsa { modulus, exponent }))
        }
        ALG_ECC => {
            skip_algorithm_and_detail(r, 1)?; // scheme: hashAlg
            if r.u16()? != ECC_NIST_P256 {
                return Err("ECC curve is not NIST P-256");
            }
            skip_algorithm_and_detail(r, 1)?; // kdf: hashAlg
            let x = r.sized(32)?.to_vec();
            let y = r.sized(32)?.to_vec();
            Ok((attributes, AkKey::EccP256 { x, y }))
        }
        _ => Err("type is neither RSA nor ECC"),
    }
}

/// A parsed TPMT_SIGNATURE (sha256 only).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuoteSignature {
    /// ECDSA with SHA-256.
    Ecdsa {
        /// r, big-endian.
        r: Vec<u8>,
        /// s, big-endian.
        s: Vec<u8>,
    },
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaSsa(Vec<u8>),
    /// RSASSA-PSS with SHA-256.
    RsaPss(Vec<u8>),
}

impl QuoteSignature {
    /// Parses a marshalled TPMT_SIGNATURE.
    ///
    /// # Errors
    /// [`Error::TpmSignatureMalformed`].
    pub fn parse(bytes: &[u8]) -> Result<QuoteSignature, Error> {
        let mut r = Reader {
            bytes,
            what: "truncated or oversized field",
        };
        let signature = parse_signature(&mut r).map_err(Error::TpmSignatureMalformed)?;
        r.finish().map_err(Error::TpmSignatureMalformed)?;
        Ok(signature)
    }
}

fn parse_signature(r: &mut Reader<'_>) -> Result<QuoteSignature, &'static str> {
    let algorithm = r.u16()?;
    if r.u16()? != ALG_SHA256 {
        return Err("hash is not sha256");
    }
    match algorithm {
        ALG_ECDSA => {
            let r_bytes = r.sized(32)?.to_vec();
            let s_bytes = r.sized(32)?.to_vec();
            Ok(QuoteSignature::Ecdsa {
                r: r_bytes,
                s: s_bytes,
            })
        }
        ALG_RSASSA => Ok(QuoteSignature::RsaSsa(r.sized(512)?.to_vec())),
        ALG_RSAPSS => Ok(QuoteSignature::RsaPss(r.sized(512)?.to_vec())),
        _ => Err("scheme is not ECDSA, RSASSA or RSAPSS"),
    }
}

fn left_pad_32(bytes: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let start = 32usize.checked_sub(bytes.len())?;
    out[start..].copy_from_slice(bytes);
    Some(out)
}

/// Checks `signature` over `message` with the AK's key.
///
/// # Errors
/// [`Error::TpmSignatureSchemeMismatch`], [`Error::TpmAkPublicMalformed`],
/// [`Error::TpmQuoteSignatureInvalid`].
pub fn verify_signature(
    ak: &AkPublic,
    signature: &QuoteSignature,
    message: &[u8],
) -> Result<(), Error> {
    match (&ak.key, signature) {
        (AkKey::EccP256 { x, y }, QuoteSignature::Ecdsa { r, s }) => {
            let bad_point = Error::TpmAkPublicMalformed("not a P-256 point");
            let (x, y) = (left_pad_32(x), left_pad_32(y));
            let (x, y) = x.zip(y).ok_or(bad_point.clone())?;
            let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            let key =
                p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|_| bad_point)?;
            let (r, s) = left_pad_32(r)
                .zip(left_pad_32(s))
                .ok_or(Error::TpmQuoteSignatureInvalid)?;
            let signature = p256::ecdsa::Signature::from_scalars(r, s).map_err(invalid)?;
            key.verify(message, &signature).map_err(invalid)
        }
        (
            AkKey::Rsa { modulus, exponent },
            QuoteSignature::RsaSsa(sig) | QuoteSignature::RsaPss(sig),
        ) => {
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(*exponent),
            )
            .map_err(|_| Error::TpmAkPublicMalformed("not a usable RSA key"))?;
            let digest = Sha256::digest(message);
            match signature {
                QuoteSignature::RsaSsa(_) => key
                    .verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
                    .map_err(invalid),
                _ => verify_pss(&key, &digest, sig),
            }
        }
        _ => Err(Error::TpmSignatureSchemeMismatch),
    }
}

fn invalid<E>(_: E) -> Error {
    Error::TpmQuoteSignatureInvalid
}

/// TPMs use either the digest size or the largest possible salt for RSA-PSS; accept both.
fn verify_pss(key: &rsa::RsaPublicKey, digest: &[u8], sig: &[u8]) -> Result<(), Error> {
    use rsa::traits::PublicKeyParts as _;
    let digest_salt = Sha256::output_size();
    let max_salt = key.size().saturating_sub(digest_salt + 2);
    for salt in [digest_salt, max_salt] {
        let scheme = rsa::Pss::new_with_salt::<Sha256>(salt);
        if key.verify(scheme, digest, sig).is_ok() {
            return Ok(());
        }
    }
    Err(Error::TpmQuoteSignatureInvalid)
}

/// SHA-256 over the concatenated values, the pcrDigest a sha256-signing AK produces.
pub fn pcr_digest(pcrs: &[PcrValue]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for pcr in pcrs {
        hasher.update(pcr.sha256.0);
    }
    hasher.finalize().into()
}

/// A quote whose signature, AK trust, qualifying data and PCRs checked out. Only
/// [`verify_quote`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedQuote {
    quote: Quote,
    ak_name: Vec<u8>,
    pcrs: Vec<PcrValue>,
}

impl VerifiedQuote {
    /// The parsed quote.
    pub fn quote(&self) -> &Quote {
        &self.quote
    }
    /// The AK's TPM name.
    pub fn ak_name(&self) -> &[u8] {
        &self.ak_name
    }
    /// The quoted PCR values.
    pub fn pcrs(&self) -> &[PcrValue] {
        &self.pcrs
    }
}

/// The parts of TPM evidence.
#[derive(Clone, Copy, Debug)]
pub struct QuoteParts<'a> {
    /// Marshalled TPMS_ATTEST.
    pub attest: &'a [u8],
    /// Marshalled TPMT_SIGNATURE.
    pub signature: &'a [u8],
    /// Marshalled TPMT_PUBLIC of the AK.
    pub ak_public: &'a [u8],
    /// The reported sha256 PCR values, ascending.
    pub pcrs: &'a [PcrValue],
}

/// Verifies a quote: structure, AK attributes, signature, AK trusted by `policy`, qualifying
/// data equal to `expected`, the sha256 selection equal to the reported PCRs, pcrDigest, and
/// the PCR values the policy requires.
///
/// # Errors
/// The TPM variants of [`Error`] and [`Error::ReportDataMismatch`].
pub fn verify_quote(
    parts: QuoteParts<'_>,
    expected: &ReportData,
    policy: &TpmPolicy,
) -> Result<VerifiedQuote, Error> {
    let quote = Quote::parse(parts.attest)?;
    let ak = AkPublic::parse(parts.ak_public)?;
    if !ak.is_restricted_signing_key() {
        return Err(Error::TpmAkNotRestricted);
    }
    let signature = QuoteSignature::parse(parts.signature)?;
    verify_signature(&ak, &signature, parts.attest)?;
    if !policy.trusted_aks.contains(&ak.name) {
        return Err(Error::TpmAkNotTrusted {
            name: hex::encode(&ak.name),
        });
    }
    if quote.extra_data.as_slice() != expected.0.as_slice() {
        return Err(Error::ReportDataMismatch);
    }
    check_pcrs(&quote, parts.pcrs, policy)?;
    Ok(VerifiedQuote {
        quote,
        ak_name: ak.name,
        pcrs: parts.pcrs.to_vec(),
    })
}

fn check_pcrs(quote: &Quote, pcrs: &[PcrValue], policy: &TpmPolicy) -> Result<(), Error> {
    let [selection] = quote.pcr_selections.as_slice() else {
        return Err(Error::TpmPcrSelectionMismatch(
            "expected exactly one PCR bank",
        ));
    };
    if selection.hash_algorithm != ALG_SHA256 {
        return Err(Error::TpmPcrSelectionMismatch("the bank is not sha256"));
    }
    let reported: Vec<u8> = pcrs.iter().map(|p| p.index).collect();
    if reported != selection.indices {
        return Err(Error::TpmPcrSelectionMismatch(
            "the reported PCR indices are not the quoted ones",
        ));
    }
    if quote.pcr_digest.as_slice() != pcr_digest(pcrs).as_slice() {
        return Err(Error::TpmPcrDigestMismatch);
    }
    for (&index, required) in &policy.pcrs {
        let value = pcrs.iter().find(|p| p.index == index).map(|p| p.sha256.0);
        if value.as_ref() != Some(required) {
            return Err(Error::TpmPcrNotAllowed { index });
        }
    }
    Ok(())
}
