//! TPM 2.0 evidence through `tss-esapi`: an AK under the endorsement hierarchy, kept across
//! restarts in a file the node owns, quoting the sha256 PCR bank with the binding as qualifying
//! data.
//!
//! `tss-esapi` calls block and its context stays on one thread, so [`TpmProvider`] runs a worker
//! thread that owns the context and answers requests over a channel. swtpm holds only about
//! three transient objects: the EK and AK are loaded for each quote and flushed after it.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::mpsc;

use ferrobeam_attest::{Blob, Certificates, EvidenceKind, PcrDigest, PcrValue};
use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, ak, ek};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    Data, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, SignatureScheme,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall as _, UnMarshall as _};

use crate::{EnclaveError, EvidenceProvider, RawEvidence};

/// The PCRs quoted by default: 0 to 7, the firmware and boot loader measurements.
pub const DEFAULT_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// A quote is retried when a PCR changed between reading the values and quoting them.
pub const QUOTE_ATTEMPTS_MAX: u32 = 3;
/// Largest AK file read back (a TPMT_PUBLIC and a TPM2B_PRIVATE are well under 2 KiB).
pub const AK_FILE_BYTES_MAX: u64 = 16 * 1024;
const AK_FILE_MAGIC: &[u8] = b"ferrobeam-ak-v1\n";

/// The EK template (the TCG default templates; swtpm_setup certifies RSA-2048 and P-384).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EkAlgorithm {
    /// ECC NIST P-384 (high-range template).
    #[default]
    EccP384,
    /// RSA 2048.
    Rsa2048,
}

impl EkAlgorithm {
    fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            EkAlgorithm::EccP384 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
            EkAlgorithm::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        }
    }
}

/// The AK's key and signature scheme (all with SHA-256).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AkAlgorithm {
    /// ECDSA on NIST P-256.
    #[default]
    EcdsaP256,
    /// RSA 2048, RSASSA-PKCS1-v1_5.
    RsaSsa2048,
    /// RSA 2048, RSASSA-PSS.
    RsaPss2048,
}

impl AkAlgorithm {
    fn selection(self) -> (AsymmetricAlgorithmSelection, SignatureSchemeAlgorithm) {
        match self {
            AkAlgorithm::EcdsaP256 => (
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
            ),
            AkAlgorithm::RsaSsa2048 => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaSsa,
            ),
            AkAlgorithm::RsaPss2048 => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaPss,
            ),
        }
    }
}

/// How to reach the TPM and where the AK lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmConfig {
    /// TCTI: `device:/dev/tpmrm0`, or `swtpm:host=127.0.0.1,port=P` for swtpm.
    pub tcti: String,
    /// The AK file (public and private blobs). Created on first start, reused after.
    pub ak_path: PathBuf,
    /// sha256-bank PCRs to quote, ascending, each below 24.
    pub pcrs: Vec<u8>,
    /// EK template.
    pub ek_algorithm: EkAlgorithm,
    /// AK key type, used when the AK is created.
    pub ak_algorithm: AkAlgorithm,
}

impl TpmConfig {
    /// Defaults: PCRs 0 to 7, a P-384 EK, an ECDSA P-256 AK.
    pub fn new(tcti: impl Into<String>, ak_path: impl Into<PathBuf>) -> Self {
        TpmConfig {
            tcti: tcti.into(),
            ak_path: ak_path.into(),
            pcrs: DEFAULT_PCRS.to_vec(),
            ek_algorithm: EkAlgorithm::default(),
            ak_algorithm: AkAlgorithm::default(),
        }
    }
}

fn tpm_error(what: &str) -> impl Fn(tss_esapi::Error) -> EnclaveError + '_ {
    move |e| EnclaveError::Tpm(format!("{what}: {e}"))
}

type Reply = mpsc::Sender<Result<RawEvidence, EnclaveError>>;

/// The TPM provider: a handle to the worker thread that owns the TPM context.
#[derive(Debug)]
pub struct TpmProvider {
    requests: Option<mpsc::Sender<([u8; 64], Reply)>>,
    worker: Option<std::thread::JoinHandle<()>>,
    ak_public: Vec<u8>,
}

impl TpmProvider {
    /// Starts the worker: opens the TCTI, loads the AK from `config.ak_path` or creates and
    /// saves one, and reads the EK certificate if the TPM has one.
    ///
    /// # Errors
    /// [`EnclaveError::Tpm`], [`EnclaveError::AkFile`].
    pub fn start(config: TpmConfig) -> Result<TpmProvider, EnclaveError> {
        if config.pcrs.is_empty()
            || config.pcrs.iter().any(|&i| i >= 24)
            || !config.pcrs.windows(2).all(|w| w[0] < w[1])
        {
            return Err(EnclaveError::Tpm(
                "PCRs must be ascending indices below 24".into(),
            ));
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (requests, inbox) = mpsc::channel::<([u8; 64], Reply)>();
        let worker = std::thread::Builder::new()
            .name("ferrobeam-tpm".into())
            .spawn(move || {
                let mut session = match TpmSession::open(&config) {
                    Ok(session) => {
                        let _ = ready_tx.send(Ok(session.ak_public_bytes.clone()));
                        session
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when the provider drops its sender.
                for (report_data, reply) in inbox {
                    let _ = reply.send(session.quote(report_data));
                }
            })
            .map_err(|e| EnclaveError::Tpm(format!("spawn worker: {e}")))?;
        let ak_public = ready_rx
            .recv()
            .map_err(|_| EnclaveError::TpmWorkerStopped)??;
        Ok(TpmProvider {
            requests: Some(requests),
            worker: Some(worker),
            ak_public,
        })
    }

    /// The AK public area (marshalled TPMT_PUBLIC), as carried in the evidence.
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// The AK's TPM name (0x000B ‖ SHA-256 of its TPMT_PUBLIC), what a verifier pins.
    pub fn ak_name(&self) -> Vec<u8> {
        use sha2::Digest as _;
        let mut name = vec![0x00, 0x0B];
        name.extend_from_slice(&sha2::Sha256::digest(&self.ak_public));
        name
    }
}

impl Drop for TpmProvider {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl EvidenceProvider for TpmProvider {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::Tpm
    }

    fn evidence(&mut self, report_data: [u8; 64]) -> Result<RawEvidence, EnclaveError> {
        let (reply, answer) = mpsc::channel();
        let requests = self
            .requests
            .as_ref()
            .ok_or(EnclaveError::TpmWorkerStopped)?;
        requests
            .send((report_data, reply))
            .map_err(|_| EnclaveError::TpmWorkerStopped)?;
        answer.recv().map_err(|_| EnclaveError::TpmWorkerStopped)?
    }
}

/// Lives on the worker thread.
struct TpmSession {
    context: Context,
    config: TpmConfig,
    ak_public: Public,
    ak_private: Private,
    ak_public_bytes: Vec<u8>,
    ek_certificate: Option<Vec<u8>>,
}

impl TpmSession {
    fn open(config: &TpmConfig) -> Result<TpmSession, EnclaveError> {
        let tcti = TctiNameConf::from_str(&config.tcti).map_err(tpm_error("TCTI"))?;
        let mut context = Context::new(tcti).map_err(tpm_error("open TPM context"))?;
        let (ak_public, ak_private) = match read_ak_file(&config.ak_path)? {
            Some(blobs) => blobs,
            None => {
                let blobs = create_ak(&mut context, config)?;
                write_ak_file(&config.ak_path, &blobs.0, &blobs.1)?;
                blobs
            }
        };
        let ak_public_bytes = ak_public
            .marshall()
            .map_err(tpm_error("marshal AK public"))?;
        let ek_certificate = read_ek_certificate(&mut context, config.ek_algorithm);
        Ok(TpmSession {
            context,
            config: config.clone(),
            ak_public,
            ak_private,
            ak_public_bytes,
            ek_certificate,
        })
    }

    fn load_ak(&mut self) -> Result<KeyHandle, EnclaveError> {
        let ek = ek::create_ek_object_2(
            &mut self.context,
            self.config.ek_algorithm.selection(),
            None,
        )
        .map_err(tpm_error("create EK"))?;
        let ak = ak::load_ak(
            &mut self.context,
            ek,
            None,
            self.ak_private.clone(),
            self.ak_public.clone(),
        );
        self.context
            .flush_context(ek.into())
            .map_err(tpm_error("flush EK"))?;
        ak.map_err(tpm_error("load AK"))
    }

    fn quote(&mut self, report_data: [u8; 64]) -> Result<RawEvidence, EnclaveError> {
        let ak = self.load_ak()?;
        let result = self.quote_with(ak, report_data);
        let flushed = self
            .context
            .flush_context(ak.into())
            .map_err(tpm_error("flush AK"));
        let evidence = result?;
        flushed?;
        Ok(evidence)
    }

    fn quote_with(
        &mut self,
        ak: KeyHandle,
        report_data: [u8; 64],
    ) -> Result<RawEvidence, EnclaveError> {
        let selection = selection(&self.config.pcrs)?;
        for _attempt in 0..QUOTE_ATTEMPTS_MAX {
            let pcrs = self.read_pcrs()?;
            let data =
                Data::try_from(report_data.to_vec()).map_err(tpm_error("qualifying data"))?;
            let selection = selection.clone();
            let (attest, signature) = self
                .context
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(ak, data, SignatureScheme::Null, selection)
                })
                .map_err(tpm_error("quote"))?;
            let attest = attest.marshall().map_err(tpm_error("marshal quote"))?;
            let signature = signature
                .marshall()
                .map_err(tpm_error("marshal signature"))?;
            let quoted = ferrobeam_attest::tpm::Quote::parse(&attest).map_err(|e| {
                EnclaveError::Tpm(format!("the TPM returned a quote we cannot parse: {e}"))
            })?;
            // A PCR extended between the read and the quote: read and quote again.
            if quoted.pcr_digest != ferrobeam_attest::tpm::pcr_digest(&pcrs) {
                continue;
            }
            return Ok(RawEvidence {
                kind: EvidenceKind::Tpm,
                report: attest,
                report_signature: Some(signature),
                pcrs,
                certificates: Certificates {
                    ak_public: Some(Blob(self.ak_public_bytes.clone())),
                    ek_certificate: self.ek_certificate.clone().map(Blob),
                    ..Certificates::default()
                },
            });
        }
        Err(EnclaveError::Tpm("PCRs kept changing while quoting".into()))
    }

    fn read_pcrs(&mut self) -> Result<Vec<PcrValue>, EnclaveError> {
        let mut values = Vec::with_capacity(self.config.pcrs.len());
        // One PCR per read: TPM2_PCR_Read returns at most 8 digests, so this stays exact.
        for &index in &self.config.pcrs {
            let (_, _, digests) = self
                .context
                .pcr_read(selection(&[index])?)
                .map_err(tpm_error("PCR read"))?;
            let [digest] = digests.value() else {
                return Err(EnclaveError::Tpm(format!(
                    "PCR {index} read returned no single value"
                )));
            };
            let sha256 = PcrDigest::from_slice("pcr", digest.value())
                .map_err(|e| EnclaveError::Tpm(e.to_string()))?;
            values.push(PcrValue { index, sha256 });
        }
        Ok(values)
    }
}

/// The EK certificate from its TCG NV index, if the TPM was provisioned with one (real TPMs
/// are; swtpm only with `swtpm_setup --create-ek-cert`). The index is looked up first, so an
/// unprovisioned TPM does not make the TSS log errors.
fn read_ek_certificate(context: &mut Context, algorithm: EkAlgorithm) -> Option<Vec<u8>> {
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::handles::TpmHandle;
    use tss_esapi::structures::CapabilityData;
    let index = match algorithm {
        EkAlgorithm::EccP384 => 0x01c0_0016,
        EkAlgorithm::Rsa2048 => 0x01c0_0002,
    };
    let (data, _) = context
        .get_capability(CapabilityType::Handles, index, 1)
        .ok()?;
    let CapabilityData::Handles(handles) = data else {
        return None;
    };
    let wanted = TpmHandle::try_from(index).ok()?;
    let present = handles.first() == Some(&wanted);
    if !present {
        return None;
    }
    ek::retrieve_ek_pubcert(context, algorithm.selection()).ok()
}

fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, EnclaveError> {
    let slots = pcrs
        .iter()
        .map(|&i| PcrSlot::try_from(1u32 << i).map_err(tpm_error("PCR slot")))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_error("PCR selection"))
}

fn create_ak(context: &mut Context, config: &TpmConfig) -> Result<(Public, Private), EnclaveError> {
    let ek = ek::create_ek_object_2(context, config.ek_algorithm.selection(), None)
        .map_err(tpm_error("create EK"))?;
    let (key, scheme) = config.ak_algorithm.selection();
    let created = ak::create_ak_2(
        context,
        ek,
        HashingAlgorithm::Sha256,
        key,
        scheme,
        None,
        None,
    );
    context
        .flush_context(ek.into())
        .map_err(tpm_error("flush EK"))?;
    let created = created.map_err(tpm_error("create AK"))?;
    Ok((created.out_public, created.out_private))
}

fn ak_file_error(path: &Path, reason: impl ToString) -> EnclaveError {
    EnclaveError::AkFile {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// `"ferrobeam-ak-v1\n" ‖ u32 len ‖ TPMT_PUBLIC ‖ u32 len ‖ private blob` (big-endian lengths).
fn write_ak_file(path: &Path, public: &Public, private: &Private) -> Result<(), EnclaveError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let public = public.marshall().map_err(|e| ak_file_error(path, e))?;
    let mut bytes = AK_FILE_MAGIC.to_vec();
    for blob in [public.as_slice(), private.value()] {
        let len = u32::try_from(blob.len()).map_err(|e| ak_file_error(path, e))?;
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(blob);
    }
    // Write then rename, so a crash never leaves half a key file.
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| ak_file_error(&temporary, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ak_file_error(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| ak_file_error(path, e))
}

fn read_ak_file(path: &Path) -> Result<Option<(Public, Private)>, EnclaveError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ak_file_error(path, e)),
    };
    // Bounded read of the open file: a size checked before the read could change before it.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, AK_FILE_BYTES_MAX + 1),
        &mut bytes,
    )
    .map_err(|e| ak_file_error(path, e))?;
    if bytes.len() as u64 > AK_FILE_BYTES_MAX {
        return Err(ak_file_error(path, "larger than 16 KiB"));
    }
    let rest = bytes
        .strip_prefix(AK_FILE_MAGIC)
        .ok_or_else(|| ak_file_error(path, "not a ferrobeam AK file"))?;
    let (public, rest) = split_blob(rest).ok_or_else(|| ak_file_error(path, "truncated"))?;
    let (private, rest) = split_blob(rest).ok_or_else(|| ak_file_error(path, "truncated"))?;
    if !rest.is_empty() {
        return Err(ak_file_error(path, "trailing bytes"));
    }
    let public = Public::unmarshall(public).map_err(|e| ak_file_error(path, e))?;
    let private = Private::try_from(private.to_vec()).map_err(|e| ak_file_error(path, e))?;
    Ok(Some((public, private)))
}

fn split_blob(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    Some((bytes.get(4..end)?, bytes.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ak_file_over_ak_file_bytes_max_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ak");
        let file = |bytes: u64| {
            let mut content = AK_FILE_MAGIC.to_vec();
            content.resize(bytes as usize, 0xff);
            std::fs::write(&path, content).unwrap();
            match read_ak_file(&path) {
                Err(EnclaveError::AkFile { reason, .. }) => reason,
                other => panic!("{other:?}"),
            }
        };
        // At the maximum the file is read (and found malformed); one byte more is refused, and
        // no more than that byte is read.
        assert_eq!(file(AK_FILE_BYTES_MAX), "truncated");
        assert_eq!(file(AK_FILE_BYTES_MAX + 1), "larger than 16 KiB");
    }
}
