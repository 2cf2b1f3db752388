//! `ferrobeam verify`: checks a node's attestation evidence with `ferrobeam-attest`, online
//! (`--node URL`: fetch with a fresh nonce, then check the key the node advertises) or offline
//! (`--evidence FILE`). Prints what the hardware vouches for, or exactly why not.
//!
//! Exit status: 0 verified, 1 rejected (the reason is printed), 2 usage or I/O error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{Value as Json, json};
use sha2::{Digest as _, Sha256};

use ferrobeam::message::{Id, b64};
use ferrobeam_attest::evidence::{NONCE_BYTES_MAX, NONCE_BYTES_MIN};
use ferrobeam_attest::snp::CertificateCache;
use ferrobeam_attest::{Error, Evidence, HardwareClaims, Policy, Verified, Verifier};

use super::client::Client;
use super::print;

/// Bytes of the nonce drawn when `--nonce` is not given.
pub const NONCE_BYTES_DEFAULT: usize = 32;

const _: () = assert!(NONCE_BYTES_MIN <= NONCE_BYTES_DEFAULT);
const _: () = assert!(NONCE_BYTES_DEFAULT <= NONCE_BYTES_MAX);

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["node", "evidence"])))]
pub struct VerifyArgs {
    /// Fetch fresh evidence from this node (e.g. http://127.0.0.1:8734).
    #[arg(long)]
    node: Option<String>,
    /// Verify an evidence JSON file offline.
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// The nonce, 16 to 64 bytes in hex. With --node: sent to the node (default: 32 random
    /// bytes). With --evidence: the nonce you sent (default: the one in the evidence, which
    /// proves no freshness).
    #[arg(long)]
    nonce: Option<String>,
    /// Ask the node to attest to this process's current hashpath too (with --node).
    #[arg(long, requires = "node")]
    process: Option<Id>,
    /// The verifier policy (TOML; see docs/verifiers.md). Without one, only `none` evidence
    /// can pass, and only with --allow-insecure.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// VCEK cache directory (default: ~/.cache/ferrobeam/vcek). A missing VCEK is reported with
    /// the AMD KDS URL and the file name to save it under here.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Accept evidence of kind `none` (it proves nothing; development only).
    #[arg(long)]
    allow_insecure: bool,
    /// Write the evidence fetched from --node to this file (for offline checks later).
    #[arg(long, requires = "node")]
    save_evidence: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Why `verify` did not reach a verdict: exit status 2.
struct UsageError(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for UsageError {
    fn from(e: E) -> Self {
        UsageError(e.into())
    }
}

/// A verdict of rejection: exit status 1.
struct Rejection {
    code: String,
    reason: String,
    hint: Option<String>,
}

impl Rejection {
    fn from_error(e: &Error, certs: &Path, policy_given: bool) -> Self {
        let hint = match e {
            Error::VcekMissing {
                url,
                cache_file_name,
            } => Some(format!(
                "fetch the VCEK and run again:\n  curl -fsS -o {} '{url}'",
                certs.join(cache_file_name).display()
            )),
            Error::KindNotAllowedByPolicy(_) if !policy_given => {
                Some("pass --policy FILE with a section for this kind (docs/verifiers.md)".into())
            }
            Error::InsecureEvidenceRejected => {
                Some("pass --allow-insecure to accept it (development only)".into())
            }
            _ => None,
        };
        Rejection {
            code: error_code(e),
            reason: e.to_string(),
            hint,
        }
    }
}

/// The variant name of an attest error: its stable code (docs/verifiers.md lists them).
fn error_code(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("Error")
        .to_owned()
}

/// Where the evidence came from.
struct Fetched {
    evidence: Evidence,
    expected_nonce: Vec<u8>,
    nonce_source: &'static str,
    /// The node's advertised `public-key` and `address` (online only).
    advertised: Option<(String, String)>,
}

/// Runs `ferrobeam verify`.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let json_mode = args.json;
    match verify(&args) {
        Ok(Ok(out)) => {
            print(json_mode, &out, || human_verified(&out));
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(rejection)) => {
            let out = json!({
                "ok": false,
                "error": rejection.code,
                "reason": rejection.reason,
                "hint": rejection.hint,
            });
            print(json_mode, &out, || {
                let mut text = format!("REJECTED ({}): {}", rejection.code, rejection.reason);
                if let Some(hint) = &rejection.hint {
                    text.push_str(&format!("\n{hint}"));
                }
                text
            });
            Ok(ExitCode::from(1))
        }
        Err(UsageError(e)) if json_mode => {
            println!(
                "{}",
                json!({ "ok": false, "error": "Usage", "reason": format!("{e:#}") })
            );
            Ok(ExitCode::from(2))
        }
        Err(UsageError(e)) => Err(e),
    }
}

fn verify(args: &VerifyArgs) -> Result<Result<Json, Rejection>, UsageError> {
    let policy = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading policy {}: {e}", path.display()))?;
            Policy::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("policy {}: {e}", path.display()))?
        }
        None => Policy::default(),
    };
    let certs = args.certs.clone().unwrap_or_else(default_certs_dir);
    let cache = CertificateCache::new(&certs);
    let nonce = args.nonce.as_deref().map(parse_nonce).transpose()?;
    let fetched = match (&args.node, &args.evidence) {
        (Some(node), _) => fetch(
            node,
            nonce,
            args.process.as_ref(),
            args.save_evidence.as_deref(),
        )?,
        (None, Some(path)) => read_evidence(path, nonce)?,
        (None, None) => return Err(anyhow::anyhow!("give --node URL or --evidence FILE").into()),
    };
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(e) => {
            return Ok(Err(Rejection::from_error(
                &e,
                &certs,
                args.policy.is_some(),
            )));
        }
    };
    let verifier = Verifier::new(&policy)
        .with_certificate_cache(&cache)
        .allow_insecure(args.allow_insecure);
    let verified = match verifier.verify(&fetched.evidence, &fetched.expected_nonce, now_unix_s()) {
        Ok(verified) => verified,
        Err(e) => {
            return Ok(Err(Rejection::from_error(
                &e,
                &certs,
                args.policy.is_some(),
            )));
        }
    };
    let public_key = b64(&verified.node_public_key().0);
    if let Some((advertised_key, advertised_address)) = &fetched.advertised
        && *advertised_key != public_key
    {
        return Ok(Err(Rejection {
            code: "NodeKeyMismatch".into(),
            reason: format!(
                "the evidence vouches for node key {public_key}, but the node advertises key \
                 {advertised_key} (address {advertised_address})"
            ),
            hint: None,
        }));
    }
    Ok(Ok(verified_json(&verified, &fetched)))
}

fn default_certs_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("ferrobeam")
        .join("vcek")
}

fn parse_nonce(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = hex::decode(text).map_err(|e| anyhow::anyhow!("--nonce is not hex: {e}"))?;
    if !(NONCE_BYTES_MIN..=NONCE_BYTES_MAX).contains(&bytes.len()) {
        anyhow::bail!(
            "--nonce is {} bytes; it must be {NONCE_BYTES_MIN} to {NONCE_BYTES_MAX}",
            bytes.len()
        );
    }
    Ok(bytes)
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Online: a nonce (yours or fresh), the evidence for it, and the key the node advertises.
/// A node that cannot be reached or answers an HTTP error is an I/O error (exit 2); an answer
/// that is not evidence is a rejection (exit 1): the node failed to prove anything.
fn fetch(
    node: &str,
    nonce: Option<Vec<u8>>,
    process: Option<&Id>,
    save: Option<&Path>,
) -> Result<Result<Fetched, Error>, UsageError> {
    let (nonce, nonce_source) = match nonce {
        Some(nonce) => (nonce, "given with --nonce"),
        None => {
            let mut nonce = vec![0u8; NONCE_BYTES_DEFAULT];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            (nonce, "drawn at random")
        }
    };
    let client = Client::new(node);
    let mut path = format!("/~attest@1.0/report?nonce={}", hex::encode(&nonce));
    if let Some(process) = process {
        path.push_str(&format!("&process={process}"));
    }
    let bytes = client.get_bytes(&path)?;
    if let Some(save) = save {
        std::fs::write(save, &bytes)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", save.display()))?;
    }
    let info = client.get_json("/~meta@1.0/info")?;
    let advertised_key = info["public-key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the node's info has no public-key"))?;
    let advertised_address = info["address"].as_str().unwrap_or("?");
    let evidence = match Evidence::from_json(&bytes) {
        Ok(evidence) => evidence,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Fetched {
        evidence,
        expected_nonce: nonce,
        nonce_source,
        advertised: Some((advertised_key.to_owned(), advertised_address.to_owned())),
    }))
}

/// Offline: the file's evidence, and the nonce to expect (yours, or the evidence's own).
/// A file that does not parse as evidence is a rejection (exit 1), not an I/O error.
fn read_evidence(
    path: &Path,
    nonce: Option<Vec<u8>>,
) -> Result<Result<Fetched, Error>, UsageError> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let evidence = match Evidence::from_json(&bytes) {
        Ok(evidence) => evidence,
        Err(e) => return Ok(Err(e)),
    };
    let (expected_nonce, nonce_source) = match nonce {
        Some(nonce) => (nonce, "given with --nonce"),
        None => (
            evidence.nonce.0.clone(),
            "taken from the evidence: no freshness",
        ),
    };
    Ok(Ok(Fetched {
        evidence,
        expected_nonce,
        nonce_source,
        advertised: None,
    }))
}

fn verified_json(verified: &Verified, fetched: &Fetched) -> Json {
    let key = verified.node_public_key().0;
    let state = verified.state();
    let process = state.process.map(|p| {
        json!({
            "process": Id(p.process_id.0),
            "hashpath": b64(&p.hashpath.0),
        })
    });
    json!({
        "ok": true,
        "kind": verified.kind(),
        "insecure": verified.is_insecure(),
        "node": {
            "address": b64(&Sha256::digest(key)),
            "public-key": b64(&key),
            "matches-advertised": fetched.advertised.as_ref().map(|_| true),
        },
        "state": {
            "digest": hex::encode(verified.state_digest().0),
            "config-id": Id(state.config_id.0),
            "inventory-digest": state.inventory_digest.map(|d| hex::encode(d.0)),
            "process": process,
        },
        "nonce": hex::encode(&fetched.expected_nonce),
        "nonce-source": fetched.nonce_source,
        "report-data": hex::encode(verified.report_data().0),
        "hardware": hardware_json(verified.claims()),
    })
}

fn hardware_json(claims: &HardwareClaims) -> Json {
    match claims {
        HardwareClaims::Snp(report) => {
            let tcb = report.tcb();
            let raw = report.report();
            json!({
                "product": report.product().to_string(),
                "measurement": hex::encode(raw.measurement()),
                "host-data": hex::encode(raw.host_data()),
                "vmpl": raw.vmpl(),
                "debug": raw.debug_allowed(),
                "guest-svn": raw.guest_svn(),
                "tcb": {
                    "fmc": tcb.fmc,
                    "bootloader": tcb.bootloader,
                    "tee": tcb.tee,
                    "snp": tcb.snp,
                    "microcode": tcb.microcode,
                },
                "chip-id": hex::encode(raw.chip_id()),
            })
        }
        HardwareClaims::Tpm(quote) => json!({
            "ak-name": hex::encode(quote.ak_name()),
            "pcrs": quote.pcrs().iter().map(|p| json!({
                "index": p.index,
                "sha256": hex::encode(p.sha256.0),
            })).collect::<Vec<_>>(),
            "firmware-version": format!("{:#018x}", quote.quote().firmware_version),
            "clock-ms": quote.quote().clock_ms,
            "reset-count": quote.quote().reset_count,
            "restart-count": quote.quote().restart_count,
        }),
        _ => json!(null),
    }
}

fn human_verified(out: &Json) -> String {
    let text = |v: &Json| v.as_str().unwrap_or("-").to_owned();
    let mut lines = vec![format!(
        "VERIFIED: {} evidence{}",
        text(&out["kind"]),
        if out["insecure"] == true {
            " (INSECURE: no hardware vouches for anything; accepted because of --allow-insecure)"
        } else {
            ""
        }
    )];
    let node = &out["node"];
    lines.push(format!("node address     {}", text(&node["address"])));
    lines.push(format!(
        "node public key  {}{}",
        text(&node["public-key"]),
        if node["matches-advertised"] == true {
            " (the key the node advertises)"
        } else {
            ""
        }
    ));
    let state = &out["state"];
    lines.push(format!("state digest     {}", text(&state["digest"])));
    lines.push(format!("  config id      {}", text(&state["config-id"])));
    lines.push(format!(
        "  inventory      {}",
        text(&state["inventory-digest"])
    ));
    match &state["process"] {
        Json::Null => lines.push("  process        -".into()),
        process => lines.push(format!(
            "  process        {} at hashpath {}",
            text(&process["process"]),
            text(&process["hashpath"])
        )),
    }
    lines.push(format!(
        "nonce            {} ({})",
        text(&out["nonce"]),
        text(&out["nonce-source"])
    ));
    let hardware = &out["hardware"];
    if let Some(product) = hardware["product"].as_str() {
        lines.push(format!(
            "SEV-SNP {product}: measurement {}, VMPL {}, debug {}, TCB {}",
            text(&hardware["measurement"]),
            hardware["vmpl"],
            hardware["debug"],
            hardware["tcb"]
        ));
    } else if let Some(ak) = hardware["ak-name"].as_str() {
        let pcrs: Vec<String> = hardware["pcrs"]
            .as_array()
            .map(|pcrs| pcrs.iter().map(|p| p["index"].to_string()).collect())
            .unwrap_or_default();
        lines.push(format!("TPM quote by AK {ak}, PCRs {}", pcrs.join(",")));
    }
    lines.join("\n")
}
