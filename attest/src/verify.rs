//! The front door: [`Verifier::verify`] runs every check on [`Evidence`] and returns a
//! [`Verified`] proof, which nothing outside this module can construct.

use crate::Error;
use crate::evidence::{
    Evidence, EvidenceKind, NodeKeyScheme, NodePublicKey, ReportData, StateDigest, StateParts,
};
use crate::policy::Policy;
use crate::snp::{self, AmdChain, CertificateCache, Product, SnpReport, Vcek, VcekKey};
use crate::tpm::{self, QuoteParts};

/// Checks the node-key signature over [`Evidence::signing_bytes`]. Pluggable so a node key
/// scheme other than Ed25519 can be added without touching the hardware checks.
pub trait NodeKeyVerifier {
    /// Verifies `signature` over `message` by `public_key` of `scheme`.
    ///
    /// # Errors
    /// [`Error::NodeSignatureInvalid`], or [`Error::NodeKeySchemeUnsupported`].
    fn verify(
        &self,
        scheme: NodeKeyScheme,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Error>;
}

/// Ed25519 with `verify_strict` (rejects small-order keys and non-canonical signatures).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519Verifier;

impl NodeKeyVerifier for Ed25519Verifier {
    fn verify(
        &self,
        scheme: NodeKeyScheme,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Error> {
        match scheme {
            NodeKeyScheme::Ed25519 => {}
        }
        let public_key: &[u8; 32] = public_key
            .try_into()
            .map_err(|_| Error::NodeSignatureInvalid)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(public_key)
            .map_err(|_| Error::NodeSignatureInvalid)?;
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| Error::NodeSignatureInvalid)?;
        key.verify_strict(message, &signature)
            .map_err(|_| Error::NodeSignatureInvalid)
    }
}

/// What the hardware vouched for, per kind.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum HardwareClaims {
    /// A verified SEV-SNP report.
    Snp(snp::VerifiedReport),
    /// A verified TPM quote.
    Tpm(tpm::VerifiedQuote),
    /// Nothing: kind `none`, accepted only because insecure evidence was allowed.
    InsecureNone,
}

/// Evidence that passed every check. Only [`Verifier::verify`] constructs one.
#[derive(Clone, Debug)]
pub struct Verified {
    kind: EvidenceKind,
    node_public_key: NodePublicKey,
    state: StateParts,
    state_digest: StateDigest,
    report_data: ReportData,
    claims: HardwareClaims,
}

impl Verified {
    /// What produced the evidence.
    pub fn kind(&self) -> EvidenceKind {
        self.kind
    }
    /// The node key the hardware vouched for.
    pub fn node_public_key(&self) -> &NodePublicKey {
        &self.node_public_key
    }
    /// The state parts bound into the report.
    pub fn state(&self) -> &StateParts {
        &self.state
    }
    /// Their digest.
    pub fn state_digest(&self) -> &StateDigest {
        &self.state_digest
    }
    /// The 64 bytes the hardware signed.
    pub fn report_data(&self) -> &ReportData {
        &self.report_data
    }
    /// The hardware's claims (measurement and TCB, or AK and PCRs).
    pub fn claims(&self) -> &HardwareClaims {
        &self.claims
    }
    /// Whether this proves nothing (kind `none`).
    pub fn is_insecure(&self) -> bool {
        matches!(self.claims, HardwareClaims::InsecureNone)
    }
}

/// Verifies evidence against a policy. Cheap to build; holds borrowed configuration.
pub struct Verifier<'a> {
    policy: &'a Policy,
    cache: Option<&'a CertificateCache>,
    node_key: &'a dyn NodeKeyVerifier,
    allow_insecure: bool,
}

impl std::fmt::Debug for Verifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", self.policy)
            .field("cache", &self.cache)
            .field("allow_insecure", &self.allow_insecure)
            .finish_non_exhaustive()
    }
}

impl<'a> Verifier<'a> {
    /// A verifier with Ed25519 node keys and no certificate cache.
    pub fn new(policy: &'a Policy) -> Verifier<'a> {
        Verifier {
            policy,
            cache: None,
            node_key: &Ed25519Verifier,
            allow_insecure: policy.allow_insecure_none,
        }
    }

    /// Looks up VCEKs missing from evidence in `cache`.
    pub fn with_certificate_cache(mut self, cache: &'a CertificateCache) -> Verifier<'a> {
        self.cache = Some(cache);
        self
    }

    /// Uses another node-key signature scheme.
    pub fn with_node_key_verifier(mut self, node_key: &'a dyn NodeKeyVerifier) -> Verifier<'a> {
        self.node_key = node_key;
        self
    }

    /// Accepts kind `none` even if the policy does not (the CLI's `--allow-insecure`).
    pub fn allow_insecure(mut self, allow: bool) -> Verifier<'a> {
        self.allow_insecure = allow || self.policy.allow_insecure_none;
        self
    }

    /// Runs every check, in order: shape and version, nonce, state digest, node-key signature,
    /// then the hardware (SNP chain, signature, VCEK match, policy; or TPM AK, signature, trust,
    /// PCRs), and last the report data against the binding. Certificates are checked for
    /// validity at `now_unix_s`.
    ///
    /// # Errors
    /// The [`Error`] variant of the first failed check.
    pub fn verify(
        &self,
        evidence: &Evidence,
        expected_nonce: &[u8],
        now_unix_s: u64,
    ) -> Result<Verified, Error> {
        evidence.check_shape()?;
        if evidence.nonce.0 != expected_nonce {
            return Err(Error::NonceMismatch);
        }
        if evidence.state.digest() != evidence.state_digest {
            return Err(Error::StateDigestMismatch);
        }
        self.node_key.verify(
            evidence.node_key_scheme,
            &evidence.node_public_key.0,
            &evidence.signing_bytes(),
            &evidence.signature.0,
        )?;
        let report_data = evidence.report_data();
        let claims = match evidence.kind {
            EvidenceKind::Snp => {
                HardwareClaims::Snp(self.verify_snp(evidence, &report_data, now_unix_s)?)
            }
            EvidenceKind::Tpm => HardwareClaims::Tpm(self.verify_tpm(evidence, &report_data)?),
            EvidenceKind::None if self.allow_insecure => HardwareClaims::InsecureNone,
            EvidenceKind::None => return Err(Error::InsecureEvidenceRejected),
        };
        Ok(Verified {
            kind: evidence.kind,
            node_public_key: evidence.node_public_key,
            state: evidence.state,
            state_digest: evidence.state_digest,
            report_data,
            claims,
        })
    }

    fn verify_snp(
        &self,
        evidence: &Evidence,
        report_data: &ReportData,
        now_unix_s: u64,
    ) -> Result<snp::VerifiedReport, Error> {
        let policy = self
            .policy
            .snp
            .as_ref()
            .ok_or(Error::KindNotAllowedByPolicy(EvidenceKind::Snp))?;
        let report = SnpReport::parse(&evidence.report.0)?;
        let vcek = self.vcek(evidence, &report, policy.product)?;
        let chain = AmdChain::pinned(vcek.product())?;
        check_carried_roots(evidence, &chain)?;
        let verified = snp::verify_parsed(report, &vcek, &chain, policy, now_unix_s)?;
        if verified.report().report_data() != *report_data {
            return Err(Error::ReportDataMismatch);
        }
        Ok(verified)
    }

    /// The VCEK from the evidence, else from the cache, else an error with the KDS URL.
    fn vcek(
        &self,
        evidence: &Evidence,
        report: &SnpReport,
        policy_product: Option<Product>,
    ) -> Result<Vcek, Error> {
        if let Some(der) = &evidence.certificates.vcek {
            return Vcek::from_der(&der.0);
        }
        let product = report
            .product_from_cpuid()
            .or(policy_product)
            .ok_or_else(|| {
                Error::SnpProduct(
                "no VCEK, and neither the report (version 2) nor the policy names the product; \
                 set snp.product in the policy"
                    .into(),
            )
            })?;
        let key = VcekKey::for_report(report, product);
        if let Some(cache) = self.cache
            && let Some(der) = cache.vcek(&key)?
        {
            return Vcek::from_der(&der);
        }
        Err(Error::VcekMissing {
            url: key.kds_url(),
            cache_file_name: key.cache_file_name(),
        })
    }

    fn verify_tpm(
        &self,
        evidence: &Evidence,
        report_data: &ReportData,
    ) -> Result<tpm::VerifiedQuote, Error> {
        let policy = self
            .policy
            .tpm
            .as_ref()
            .ok_or(Error::KindNotAllowedByPolicy(EvidenceKind::Tpm))?;
        // check_shape guarantees both are present for kind tpm.
        let (Some(signature), Some(ak_public)) =
            (&evidence.report_signature, &evidence.certificates.ak_public)
        else {
            return Err(Error::Unreachable(
                "check_shape let TPM evidence through without its parts",
            ));
        };
        let parts = QuoteParts {
            attest: &evidence.report.0,
            signature: &signature.0,
            ak_public: &ak_public.0,
            pcrs: &evidence.pcrs,
        };
        tpm::verify_quote(parts, report_data, policy)
    }
}

/// An ASK or ARK carried in the evidence must be the pinned one.
fn check_carried_roots(evidence: &Evidence, chain: &AmdChain) -> Result<(), Error> {
    let certificates = &evidence.certificates;
    if let Some(ask) = &certificates.ask
        && ask.0 != chain.ask_der()
    {
        return Err(Error::AmdCertificateNotPinned {
            which: "ASK",
            product: chain.product(),
        });
    }
    if let Some(ark) = &certificates.ark
        && ark.0 != chain.ark_der()
    {
        return Err(Error::AmdCertificateNotPinned {
            which: "ARK",
            product: chain.product(),
        });
    }
    Ok(())
}
