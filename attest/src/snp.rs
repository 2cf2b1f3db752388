//! AMD SEV-SNP: the attestation report, the AMD certificate chain, and their checks.
//!
//! ```text
//! ARK (pinned, self-signed) --RSA-PSS--> ASK (pinned) --RSA-PSS--> VCEK --ECDSA P-384--> report
//!                                                     VCEK extensions == reported_tcb, chip_id
//! ```
//!
//! The ARK and ASK of Milan, Genoa and Turin are compiled in (they ship inside the `sev` crate).
//! The VCEK comes with the evidence, or from a [`CertificateCache`] directory keyed by chip id and
//! TCB; when neither has it, [`Error::VcekMissing`] carries the AMD KDS URL to fetch it from.

use std::path::{Path, PathBuf};

use p384::ecdsa::signature::Verifier as _;
use sev::certs::snp::Verifiable as _;
use x509_cert::der::Decode as _;

use crate::Error;
use crate::evidence::ReportData;
use crate::policy::SnpPolicy;

/// Size of an attestation report (versions 2 to 5).
pub const REPORT_BYTES: usize = 1184;
/// The signature covers bytes `[0, SIGNED_BYTES)`.
pub const SIGNED_BYTES: usize = 0x2A0;
/// Guest policy bit 19: the guest may be debugged (its memory read by the host).
pub const POLICY_DEBUG_BIT: u64 = 1 << 19;
/// The AMD key distribution service.
pub const KDS_BASE_URL: &str = "https://kdsintf.amd.com";
/// Largest certificate file read from a cache directory.
pub const CACHE_FILE_BYTES_MAX: u64 = 16 * 1024;

const _: () = assert!(SIGNED_BYTES + 512 == REPORT_BYTES);

const OFFSET_VERSION: usize = 0x00;
const OFFSET_GUEST_SVN: usize = 0x04;
const OFFSET_POLICY: usize = 0x08;
const OFFSET_VMPL: usize = 0x30;
const OFFSET_SIGNATURE_ALGORITHM: usize = 0x34;
const OFFSET_REPORT_DATA: usize = 0x50;
const OFFSET_MEASUREMENT: usize = 0x90;
const OFFSET_HOST_DATA: usize = 0xC0;
const OFFSET_REPORTED_TCB: usize = 0x180;
const OFFSET_CPUID_FAMILY: usize = 0x188;
const OFFSET_CPUID_MODEL: usize = 0x189;
const OFFSET_CHIP_ID: usize = 0x1A0;
const OFFSET_SIGNATURE_R: usize = 0x2A0;
const OFFSET_SIGNATURE_S: usize = 0x2A0 + 72;
/// ECDSA P-384 with SHA-384.
const SIGNATURE_ALGORITHM_ECDSA_P384_SHA384: u32 = 1;

const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// An AMD EPYC generation with SEV-SNP, each with its own ARK and ASK.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Product {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004/8004 (Zen 4).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl Product {
    /// Every product with pinned roots.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name AMD uses in KDS URLs and certificate names.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    fn from_name(name: &str) -> Option<Product> {
        Product::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The product of a CPUID family and model (reports of version 3 and later carry them).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A component of the TCB version.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcbField {
    /// Firmware (FMC) SPL, Turin only.
    Fmc,
    /// Boot loader SPL.
    Bootloader,
    /// PSP OS (TEE) SPL.
    Tee,
    /// SNP firmware SPL.
    Snp,
    /// CPU microcode SPL.
    Microcode,
}

impl std::fmt::Display for TcbField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TcbField::Fmc => "fmc",
            TcbField::Bootloader => "bootloader",
            TcbField::Tee => "tee",
            TcbField::Snp => "snp",
            TcbField::Microcode => "microcode",
        })
    }
}

/// A decoded TCB version (security patch levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tcb {
    /// FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// Decodes the 8-byte TCB_VERSION. Milan and Genoa: bl, tee, 4 reserved, snp, ucode.
    /// Turin: fmc, bl, tee, snp, 3 reserved, ucode.
    pub fn decode(raw: [u8; 8], product: Product) -> Tcb {
        match product {
            Product::Milan | Product::Genoa => Tcb {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
            },
            Product::Turin => Tcb {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
            },
        }
    }

    /// The components as (field, value) pairs, FMC only when present.
    pub fn fields(&self) -> impl Iterator<Item = (TcbField, u8)> {
        let fmc = self.fmc.map(|fmc| (TcbField::Fmc, fmc));
        fmc.into_iter().chain([
            (TcbField::Bootloader, self.bootloader),
            (TcbField::Tee, self.tee),
            (TcbField::Snp, self.snp),
            (TcbField::Microcode, self.microcode),
        ])
    }
}

/// A parsed SEV-SNP attestation report (the bytes, with typed accessors at fixed offsets).
#[derive(Clone, PartialEq, Eq)]
pub struct SnpReport {
    bytes: Box<[u8; REPORT_BYTES]>,
}

impl std::fmt::Debug for SnpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpReport")
            .field("version", &self.version())
            .field("policy", &format_args!("{:#x}", self.policy()))
            .field("vmpl", &self.vmpl())
            .field("measurement", &hex::encode(self.measurement()))
            .finish_non_exhaustive()
    }
}

fn read_u32(bytes: &[u8; REPORT_BYTES], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn read_array<const N: usize>(bytes: &[u8; REPORT_BYTES], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

impl SnpReport {
    /// Parses a raw report: 1184 bytes, version 2 to 5, signed with ECDSA P-384/SHA-384.
    ///
    /// # Errors
    /// [`Error::SnpReportLength`], [`Error::SnpReportVersion`], [`Error::SnpSignatureAlgorithm`].
    pub fn parse(raw: &[u8]) -> Result<SnpReport, Error> {
        let bytes: [u8; REPORT_BYTES] = raw.try_into().map_err(|_| Error::SnpReportLength {
            found: raw.len(),
            expected: REPORT_BYTES,
        })?;
        let report = SnpReport {
            bytes: Box::new(bytes),
        };
        if !(2..=5).contains(&report.version()) {
            return Err(Error::SnpReportVersion(report.version()));
        }
        let algorithm = read_u32(&report.bytes, OFFSET_SIGNATURE_ALGORITHM);
        if algorithm != SIGNATURE_ALGORITHM_ECDSA_P384_SHA384 {
            return Err(Error::SnpSignatureAlgorithm(algorithm));
        }
        Ok(report)
    }

    /// The raw report.
    pub fn as_bytes(&self) -> &[u8; REPORT_BYTES] {
        &self.bytes
    }
    /// Report format version.
    pub fn version(&self) -> u32 {
        read_u32(&self.bytes, OFFSET_VERSION)
    }
    /// Guest security version number.
    pub fn guest_svn(&self) -> u32 {
        read_u32(&self.bytes, OFFSET_GUEST_SVN)
    }
    /// The guest policy (bit 19: debug allowed).
    pub fn policy(&self) -> u64 {
        u64::from_le_bytes(read_array(&self.bytes, OFFSET_POLICY))
    }
    /// Whether the guest policy allows debugging.
    pub fn debug_allowed(&self) -> bool {
        self.policy() & POLICY_DEBUG_BIT != 0
    }
    /// The VMPL the report was requested from.
    pub fn vmpl(&self) -> u32 {
        read_u32(&self.bytes, OFFSET_VMPL)
    }
    /// The 64 bytes the guest asked to be signed.
    pub fn report_data(&self) -> ReportData {
        ReportData(read_array(&self.bytes, OFFSET_REPORT_DATA))
    }
    /// The launch measurement.
    pub fn measurement(&self) -> [u8; 48] {
        read_array(&self.bytes, OFFSET_MEASUREMENT)
    }
    /// Data the host supplied at launch.
    pub fn host_data(&self) -> [u8; 32] {
        read_array(&self.bytes, OFFSET_HOST_DATA)
    }
    /// The raw reported TCB (the TCB the VCEK is derived for).
    pub fn reported_tcb_raw(&self) -> [u8; 8] {
        read_array(&self.bytes, OFFSET_REPORTED_TCB)
    }
    /// The chip id (zero when the host masks it).
    pub fn chip_id(&self) -> [u8; 64] {
        read_array(&self.bytes, OFFSET_CHIP_ID)
    }
    /// The product from the CPUID fields (report version 3 and later), if recognized.
    pub fn product_from_cpuid(&self) -> Option<Product> {
        if self.version() < 3 {
            return None;
        }
        let family = self.bytes[OFFSET_CPUID_FAMILY];
        let model = self.bytes[OFFSET_CPUID_MODEL];
        Product::from_cpuid(family, model)
    }
    /// The signed part of the report.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..SIGNED_BYTES]
    }

    fn signature(&self) -> Result<p384::ecdsa::Signature, Error> {
        let r_le: [u8; 72] = read_array(&self.bytes, OFFSET_SIGNATURE_R);
        let s_le: [u8; 72] = read_array(&self.bytes, OFFSET_SIGNATURE_S);
        // P-384 scalars are 48 bytes; the upper 24 of each 72-byte field must be zero.
        if r_le[48..].iter().chain(&s_le[48..]).any(|&b| b != 0) {
            return Err(Error::SnpReportSignatureInvalid);
        }
        let mut r_be = [0u8; 48];
        let mut s_be = [0u8; 48];
        for i in 0..48 {
            r_be[i] = r_le[47 - i];
            s_be[i] = s_le[47 - i];
        }
        p384::ecdsa::Signature::from_scalars(r_be, s_be)
            .map_err(|_| Error::SnpReportSignatureInvalid)
    }
}

/// A parsed VCEK with what the checks need from it.
#[derive(Clone, Debug)]
pub struct Vcek {
    der: Vec<u8>,
    certificate: sev::certs::snp::Certificate,
    product: Product,
    tcb: Tcb,
    hw_id: Vec<u8>,
    not_before_unix_s: u64,
    not_after_unix_s: u64,
    key: p384::ecdsa::VerifyingKey,
}

fn extension<'a>(cert: &'a x509_cert::Certificate, oid: &str) -> Option<&'a [u8]> {
    let extensions = cert.tbs_certificate.extensions.as_ref()?;
    extensions
        .iter()
        .find(|ext| ext.extn_id.to_string() == oid)
        .map(|ext| ext.extn_value.as_bytes())
}

fn extension_spl(cert: &x509_cert::Certificate, oid: &'static str) -> Result<u8, Error> {
    let bytes = extension(cert, oid).ok_or(Error::VcekExtension { oid })?;
    <u8 as x509_cert::der::Decode>::from_der(bytes).map_err(|_| Error::VcekExtension { oid })
}

fn validity_unix_s(cert: &x509_cert::Certificate) -> (u64, u64) {
    let validity = &cert.tbs_certificate.validity;
    (
        validity.not_before.to_unix_duration().as_secs(),
        validity.not_after.to_unix_duration().as_secs(),
    )
}

fn check_validity(
    cert: &x509_cert::Certificate,
    which: &'static str,
    now_unix_s: u64,
) -> Result<(), Error> {
    let (not_before, not_after) = validity_unix_s(cert);
    if now_unix_s < not_before || now_unix_s > not_after {
        return Err(Error::CertificateNotValidAtTime { which, now_unix_s });
    }
    Ok(())
}

/// The product named by an AMD certificate's issuer common name, "SEV-Milan" and so on.
fn issuer_product(cert: &x509_cert::Certificate) -> Option<Product> {
    let issuer = cert.tbs_certificate.issuer.to_string();
    issuer
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN=SEV-"))
        .and_then(Product::from_name)
}

impl Vcek {
    /// Parses a VCEK (DER): its P-384 key, issuer product, TCB extensions and hwID.
    ///
    /// # Errors
    /// [`Error::CertificateParse`], [`Error::VcekPublicKey`], [`Error::VcekExtension`],
    /// [`Error::SnpProduct`] when the issuer is not an AMD SEV product.
    pub fn from_der(der: &[u8]) -> Result<Vcek, Error> {
        let parse = |reason: String| Error::CertificateParse {
            which: "VCEK",
            reason,
        };
        let x509 = x509_cert::Certificate::from_der(der).map_err(|e| parse(e.to_string()))?;
        let certificate = sev::certs::snp::Certificate::from(x509.clone());
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(certificate.public_key_sec1())
            .map_err(|_| Error::VcekPublicKey)?;
        let product = issuer_product(&x509).ok_or_else(|| {
            Error::SnpProduct("the VCEK issuer is not SEV-Milan, SEV-Genoa or SEV-Turin".into())
        })?;
        let fmc = match product {
            Product::Turin => Some(extension_spl(&x509, OID_FMC_SPL)?),
            Product::Milan | Product::Genoa => None,
        };
        let tcb = Tcb {
            fmc,
            bootloader: extension_spl(&x509, OID_BL_SPL)?,
            tee: extension_spl(&x509, OID_TEE_SPL)?,
            snp: extension_spl(&x509, OID_SNP_SPL)?,
            microcode: extension_spl(&x509, OID_UCODE_SPL)?,
        };
        let hw_id = extension(&x509, OID_HW_ID)
            .ok_or(Error::VcekExtension { oid: OID_HW_ID })?
            .to_vec();
        let (not_before_unix_s, not_after_unix_s) = validity_unix_s(&x509);
        Ok(Vcek {
            der: der.to_vec(),
            certificate,
            product,
            tcb,
            hw_id,
            not_before_unix_s,
            not_after_unix_s,
            key,
        })
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// The product named by the issuer.
    pub fn product(&self) -> Product {
        self.product
    }
    /// The TCB the VCEK certifies.
    pub fn tcb(&self) -> Tcb {
        self.tcb
    }
    /// The hwID extension (the chip id; 64 bytes, or 8 on Turin).
    pub fn hw_id(&self) -> &[u8] {
        &self.hw_id
    }
    /// Validity period, unix seconds.
    pub fn validity_unix_s(&self) -> (u64, u64) {
        (self.not_before_unix_s, self.not_after_unix_s)
    }

    fn check_chip_id(&self, chip_id: &[u8; 64]) -> Result<(), Error> {
        let expected: &[u8] = match (self.product, self.hw_id.len()) {
            (Product::Turin, 8) => &chip_id[..8],
            _ => chip_id,
        };
        if self.hw_id != expected {
            return Err(Error::VcekChipIdMismatch);
        }
        Ok(())
    }
}

/// The AMD root (ARK) and signing key (ASK) of one product.
#[derive(Clone, Debug)]
pub struct AmdChain {
    product: Product,
    ark: sev::certs::snp::Certificate,
    ask: sev::certs::snp::Certificate,
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
}

impl AmdChain {
    /// The chain pinned in this binary for `product`.
    ///
    /// # Errors
    /// [`Error::Unreachable`] if a compiled-in certificate does not parse (tests rule it out).
    pub fn pinned(product: Product) -> Result<AmdChain, Error> {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let (ark, ask) = match product {
            Product::Milan => (milan::ark(), milan::ask()),
            Product::Genoa => (genoa::ark(), genoa::ask()),
            Product::Turin => (turin::ark(), turin::ask()),
        };
        let unreachable = |_| Error::Unreachable("a pinned AMD certificate does not parse");
        let (ark, ask) = (ark.map_err(unreachable)?, ask.map_err(unreachable)?);
        let ark_der = ark.to_der().map_err(unreachable)?;
        let ask_der = ask.to_der().map_err(unreachable)?;
        Ok(AmdChain {
            product,
            ark,
            ask,
            ark_der,
            ask_der,
        })
    }

    /// A chain from certificates the caller trusts instead of the pinned ones (tests, or AMD
    /// rotating a key before this binary is updated). Nothing here checks they are AMD's.
    ///
    /// # Errors
    /// [`Error::CertificateParse`].
    pub fn danger_from_der(
        product: Product,
        ark_der: &[u8],
        ask_der: &[u8],
    ) -> Result<AmdChain, Error> {
        let parse = |which| {
            move |e: std::io::Error| Error::CertificateParse {
                which,
                reason: e.to_string(),
            }
        };
        Ok(AmdChain {
            product,
            ark: sev::certs::snp::Certificate::from_der(ark_der).map_err(parse("ARK"))?,
            ask: sev::certs::snp::Certificate::from_der(ask_der).map_err(parse("ASK"))?,
            ark_der: ark_der.to_vec(),
            ask_der: ask_der.to_vec(),
        })
    }

    /// The product of this chain.
    pub fn product(&self) -> Product {
        self.product
    }
    /// The ARK (DER).
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }
    /// The ASK (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// ARK self-signed, ARK signs ASK, both valid at `now_unix_s`.
    ///
    /// # Errors
    /// [`Error::ArkNotSelfSigned`], [`Error::AskNotSignedByArk`],
    /// [`Error::CertificateNotValidAtTime`].
    pub fn verify_roots(&self, now_unix_s: u64) -> Result<(), Error> {
        (&self.ark, &self.ark)
            .verify()
            .map_err(|_| Error::ArkNotSelfSigned)?;
        (&self.ark, &self.ask)
            .verify()
            .map_err(|_| Error::AskNotSignedByArk)?;
        let ark = x509_cert::Certificate::from(self.ark.clone());
        let ask = x509_cert::Certificate::from(self.ask.clone());
        check_validity(&ark, "ARK", now_unix_s)?;
        check_validity(&ask, "ASK", now_unix_s)
    }

    /// ARK self-signed, ARK signs ASK, ASK signs VCEK, all three valid at `now_unix_s`.
    ///
    /// # Errors
    /// [`Error::ArkNotSelfSigned`], [`Error::AskNotSignedByArk`], [`Error::VcekNotSignedByAsk`],
    /// [`Error::CertificateNotValidAtTime`].
    pub fn verify_vcek(&self, vcek: &Vcek, now_unix_s: u64) -> Result<(), Error> {
        self.verify_roots(now_unix_s)?;
        (&self.ask, &vcek.certificate)
            .verify()
            .map_err(|_| Error::VcekNotSignedByAsk {
                product: self.product,
            })?;
        let (not_before, not_after) = vcek.validity_unix_s();
        if now_unix_s < not_before || now_unix_s > not_after {
            return Err(Error::CertificateNotValidAtTime {
                which: "VCEK",
                now_unix_s,
            });
        }
        Ok(())
    }
}

/// Checks the report's ECDSA P-384 signature over bytes `[0, 0x2A0)` with the VCEK's key.
///
/// # Errors
/// [`Error::SnpReportSignatureInvalid`].
pub fn verify_report_signature(report: &SnpReport, vcek: &Vcek) -> Result<(), Error> {
    let signature = report.signature()?;
    vcek.key
        .verify(report.signed_bytes(), &signature)
        .map_err(|_| Error::SnpReportSignatureInvalid)
}

/// Checks that the VCEK was issued for this report's chip and reported TCB.
///
/// # Errors
/// [`Error::VcekTcbMismatch`], [`Error::VcekChipIdMismatch`].
pub fn check_vcek_matches_report(vcek: &Vcek, report: &SnpReport) -> Result<(), Error> {
    let reported = Tcb::decode(report.reported_tcb_raw(), vcek.product);
    for ((field, certified), (_, reported)) in vcek.tcb.fields().zip(reported.fields()) {
        if certified != reported {
            return Err(Error::VcekTcbMismatch {
                field,
                vcek: certified,
                report: reported,
            });
        }
    }
    vcek.check_chip_id(&report.chip_id())
}

/// A report whose chain, signature, VCEK match and policy checked out. Only
/// [`verify_report`] makes one. The report data is *not* checked here: compare
/// [`VerifiedReport::report`]`.report_data()` with your binding, or use [`crate::Verifier`].
#[derive(Clone, Debug)]
pub struct VerifiedReport {
    report: SnpReport,
    product: Product,
    tcb: Tcb,
}

impl VerifiedReport {
    /// The verified report.
    pub fn report(&self) -> &SnpReport {
        &self.report
    }
    /// The product whose chain signed it.
    pub fn product(&self) -> Product {
        self.product
    }
    /// The reported TCB, decoded for the product.
    pub fn tcb(&self) -> Tcb {
        self.tcb
    }
}

/// Verifies the hardware side of a report: the chain (`chain` is usually
/// [`AmdChain::pinned`]), the report signature, the VCEK's TCB and hwID against the report, the
/// product, and `policy`. It does not look at report_data.
///
/// # Errors
/// Any SNP variant of [`Error`], naming the first check that failed.
pub fn verify_report(
    report: &[u8],
    vcek_der: &[u8],
    chain: &AmdChain,
    policy: &SnpPolicy,
    now_unix_s: u64,
) -> Result<VerifiedReport, Error> {
    let report = SnpReport::parse(report)?;
    let vcek = Vcek::from_der(vcek_der)?;
    verify_parsed(report, &vcek, chain, policy, now_unix_s)
}

pub(crate) fn verify_parsed(
    report: SnpReport,
    vcek: &Vcek,
    chain: &AmdChain,
    policy: &SnpPolicy,
    now_unix_s: u64,
) -> Result<VerifiedReport, Error> {
    chain.verify_vcek(vcek, now_unix_s)?;
    verify_report_signature(&report, vcek)?;
    if vcek.product != chain.product {
        return Err(Error::SnpProduct(format!(
            "the VCEK names {} and the chain is {}'s",
            vcek.product, chain.product
        )));
    }
    if let Some(cpuid) = report.product_from_cpuid()
        && cpuid != chain.product
    {
        return Err(Error::SnpProduct(format!(
            "the report's CPUID says {cpuid}, the chain is {}'s",
            chain.product
        )));
    }
    check_vcek_matches_report(vcek, &report)?;
    policy.check(&report, chain.product)?;
    let tcb = Tcb::decode(report.reported_tcb_raw(), chain.product);
    Ok(VerifiedReport {
        report,
        product: chain.product,
        tcb,
    })
}

/// What identifies a VCEK: the chip and the TCB it was derived for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VcekKey {
    /// The product.
    pub product: Product,
    /// The chip id from the report.
    pub chip_id: [u8; 64],
    /// The reported TCB.
    pub tcb: Tcb,
}

impl VcekKey {
    /// The key of the VCEK that signs `report` on `product`.
    pub fn for_report(report: &SnpReport, product: Product) -> VcekKey {
        VcekKey {
            product,
            chip_id: report.chip_id(),
            tcb: Tcb::decode(report.reported_tcb_raw(), product),
        }
    }

    /// The hwID in KDS URLs: the whole chip id, or its first 8 bytes on Turin.
    fn hw_id_hex(&self) -> String {
        match self.product {
            Product::Turin => hex::encode(&self.chip_id[..8]),
            Product::Milan | Product::Genoa => hex::encode(self.chip_id),
        }
    }

    fn spl_query(&self) -> String {
        let tcb = &self.tcb;
        let fmc = tcb
            .fmc
            .map(|fmc| format!("fmcSPL={fmc:02}&"))
            .unwrap_or_default();
        format!(
            "{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
        )
    }

    /// The AMD KDS URL serving this VCEK (DER), e.g.
    /// `https://kdsintf.amd.com/vcek/v1/Milan/<chip id hex>?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`.
    pub fn kds_url(&self) -> String {
        format!(
            "{KDS_BASE_URL}/vcek/v1/{}/{}?{}",
            self.product,
            self.hw_id_hex(),
            self.spl_query()
        )
    }

    /// The file name a [`CertificateCache`] stores this VCEK under:
    /// `vcek-<Product>-<chip id hex>-<query with & and = replaced>.der`.
    pub fn cache_file_name(&self) -> String {
        let query = self.spl_query().replace('&', "-").replace('=', "");
        format!("vcek-{}-{}-{query}.der", self.product, self.hw_id_hex())
    }
}

/// A directory of VCEKs (DER files named by [`VcekKey::cache_file_name`]), filled by an operator
/// or the CLI from AMD's KDS. This is the only file access in the crate.
#[derive(Clone, Debug)]
pub struct CertificateCache {
    dir: PathBuf,
}

impl CertificateCache {
    /// A cache rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> CertificateCache {
        CertificateCache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached VCEK for `key`, if any.
    ///
    /// # Errors
    /// [`Error::CertificateCache`] when the file exists but cannot be read or is too large.
    pub fn vcek(&self, key: &VcekKey) -> Result<Option<Vec<u8>>, Error> {
        let path = self.dir.join(key.cache_file_name());
        let failed =
            |e: std::io::Error| Error::CertificateCache(format!("{}: {e}", path.display()));
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        // Read at most one byte past the bound from the open file: a size checked before the
        // read could change before it.
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, CACHE_FILE_BYTES_MAX + 1),
            &mut bytes,
        )
        .map_err(failed)?;
        if bytes.len() as u64 > CACHE_FILE_BYTES_MAX {
            return Err(Error::CertificateCache(format!(
                "{} is larger than {CACHE_FILE_BYTES_MAX} bytes",
                path.display()
            )));
        }
        Ok(Some(bytes))
    }

    /// Stores a VCEK under its key's file name.
    ///
    /// # Errors
    /// [`Error::CertificateCache`] on an I/O error.
    pub fn store_vcek(&self, key: &VcekKey, der: &[u8]) -> Result<PathBuf, Error> {
        let path = self.dir.join(key.cache_file_name());
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, der))
            .map_err(|e| Error::CertificateCache(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}
