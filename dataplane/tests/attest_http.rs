//! Attestation end to end, for real: a swtpm on free localhost ports, the `ferrobeam` binary as a
//! node with `--attestation tpm` over it, evidence fetched over HTTP, and the `ferrobeam verify`
//! binary judging it (exit 0 verified, 1 rejected with the reason, 2 usage or I/O error).
//!
//! swtpm is required: CI installs it (scripts/test.sh). Without it these tests fail, loudly.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

/// How long a node gets to answer `info` (TPM start-up creates an EK and an AK).
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
const NONCE_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A swtpm with its own state directory, both gone on drop.
struct Swtpm {
    tpm: ferrobeam_enclave::swtpm::Swtpm,
    _state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        let state = tempdir();
        let tpm =
            ferrobeam_enclave::swtpm::Swtpm::start(state.path()).unwrap_or_else(|e| panic!("{e}"));
        Swtpm { tpm, _state: state }
    }

    fn tcti(&self) -> String {
        self.tpm.tcti()
    }
}

/// The `ferrobeam` binary running a node with extra arguments; killed on drop.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    fn start(data: &Path, extra: &[&str]) -> Node {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
            .args(["node", "--data"])
            .arg(data)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferrobeam node");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok((200, _)) = get(&url, "/~meta@1.0/info") {
                return Node { child, url };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("node exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("node on port {port} did not come up");
    }

    fn info(&self) -> Json {
        let (status, info) = get(&self.url, "/~meta@1.0/info").unwrap();
        assert_eq!(status, 200, "{info}");
        info
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ferrobeam verify ARGS --json`; returns the exit code and the one JSON object printed.
fn verify(args: &[&str]) -> (i32, Json) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .arg("verify")
        .args(args)
        .arg("--json")
        .output()
        .expect("run ferrobeam verify");
    let text = String::from_utf8_lossy(&stdout);
    let json = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "verify printed no single JSON object ({e}): {text:?}, stderr {:?}",
            String::from_utf8_lossy(&stderr)
        )
    });
    (status.code().expect("verify exited"), json)
}

fn assert_rejected(answer: (i32, Json), code: &str) {
    assert_eq!(answer.0, 1, "{}", answer.1);
    assert_eq!(answer.1["ok"], false, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    assert!(answer.1["reason"].as_str().is_some_and(|r| !r.is_empty()));
}

/// The AK's TPM name read from the node's AK file, as an operator enrolling the node would:
/// `0x000B ‖ SHA-256(TPMT_PUBLIC)`; the file is `"ferrobeam-ak-v1\n" ‖ u32 len ‖ TPMT_PUBLIC ‖ …`.
fn ak_name_from_file(data: &Path) -> String {
    let bytes = std::fs::read(data.join("tpm-ak.bin")).expect("the node wrote its AK file");
    let rest = bytes
        .strip_prefix(b"ferrobeam-ak-v1\n")
        .expect("AK file magic");
    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
    let public = &rest[4..4 + len];
    format!("000b{}", hex::encode(Sha256::digest(public)))
}

fn write_policy(dir: &Path, name: &str, ak_name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("[tpm]\ntrusted_aks = [\"{ak_name}\"]\n")).unwrap();
    path.display().to_string()
}

/// `GET /<pid>/slot`, retried for a moment: the node acknowledges a spawn before its head is
/// published to the HTTP handlers (the sequencer updates heads after replying), so a read right
/// after the ack may still say `UnknownProcess`.
fn slot_when_known(base: &str, process: &ferrobeam::message::Id) -> Json {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, slot) = get(base, &format!("/{process}/slot")).unwrap();
        if status == 200 {
            return slot;
        }
        assert!(Instant::now() < deadline, "{slot}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn raw_get(url: &str, accept: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).header("accept", accept).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_vec().unwrap())
}

#[test]
fn tpm_node_evidence_verifies_and_every_tampering_is_rejected() {
    let swtpm = Swtpm::start();
    let data = tempdir();
    let work = tempdir();
    let tcti = swtpm.tcti();
    let node = Node::start(data.path(), &["--attestation", "tpm", "--tpm-tcti", &tcti]);
    let info = node.info();
    assert_eq!(info["attestation"]["kind"], "tpm", "{info}");
    assert!(
        info["devices"]
            .as_array()
            .unwrap()
            .contains(&"attest@1.0".into())
    );
    let ak_name = ak_name_from_file(data.path());
    assert_eq!(info["attestation"]["ak-name"], ak_name.as_str());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.path().join("tpm-ak.bin"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the AK file is private");
    let policy = write_policy(work.path(), "policy.toml", &ak_name);

    // Online, with a fresh random nonce: verified, and it vouches for the node's advertised
    // key and state.
    let (code, out) = verify(&["--node", &node.url, "--policy", &policy]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["ok"], true);
    assert_eq!(out["kind"], "tpm");
    assert_eq!(out["node"]["public-key"], info["public-key"]);
    assert_eq!(out["node"]["address"], info["address"]);
    assert_eq!(out["node"]["matches-advertised"], true);
    assert_eq!(out["state"]["config-id"], info["config-id"]);
    assert_eq!(out["state"]["inventory-digest"], info["inventory-digest"]);
    assert_eq!(out["state"]["process"], Json::Null);
    assert_eq!(out["hardware"]["ak-name"], ak_name.as_str());
    assert_eq!(out["hardware"]["pcrs"].as_array().unwrap().len(), 8);
    assert_eq!(out["nonce"].as_str().unwrap().len(), 64, "32 random bytes");

    // With a process: the evidence speaks for its current hashpath.
    let process = spawn_wat(&node.url, &wallet(7), NOOP_WAT, &[]);
    let slot = slot_when_known(&node.url, &process);
    let process_text = process.to_string();
    let (code, out) = verify(&[
        "--node",
        &node.url,
        "--policy",
        &policy,
        "--process",
        &process_text,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["state"]["process"]["process"], process_text.as_str());
    assert_eq!(out["state"]["process"]["hashpath"], slot["hashpath"]);

    // Saved, then offline: the right nonce verifies, another nonce is rejected.
    let saved = work.path().join("evidence.json");
    let saved_text = saved.display().to_string();
    let (code, out) = verify(&[
        "--node",
        &node.url,
        "--policy",
        &policy,
        "--nonce",
        NONCE_HEX,
        "--save-evidence",
        &saved_text,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["nonce"], NONCE_HEX);
    let (code, out) = verify(&[
        "--evidence",
        &saved_text,
        "--policy",
        &policy,
        "--nonce",
        NONCE_HEX,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["nonce-source"], "given with --nonce");
    let (code, out) = verify(&["--evidence", &saved_text, "--policy", &policy]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["nonce-source"], "taken from the evidence: no freshness");
    let other_nonce = "ff".repeat(32);
    assert_rejected(
        verify(&[
            "--evidence",
            &saved_text,
            "--policy",
            &policy,
            "--nonce",
            &other_nonce,
        ]),
        "NonceMismatch",
    );

    // An AK the policy does not pin.
    let other_ak = format!("000b{}", "ab".repeat(32));
    let unpinned = write_policy(work.path(), "unpinned.toml", &other_ak);
    assert_rejected(
        verify(&["--node", &node.url, "--policy", &unpinned]),
        "TpmAkNotTrusted",
    );
    assert_rejected(
        verify(&["--evidence", &saved_text, "--policy", &unpinned]),
        "TpmAkNotTrusted",
    );
    // No policy at all accepts no TPM evidence.
    assert_rejected(verify(&["--node", &node.url]), "KindNotAllowedByPolicy");

    tampered_files_are_rejected(&saved, work.path(), &policy);
}

/// Flips the last bit of an unpadded base64url byte string.
fn flip_b64(text: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = engine.decode(text).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    engine.encode(bytes)
}

/// One edit of evidence JSON and the rejection it must cause.
type Tamper = (&'static str, fn(&mut Json));

const TAMPERS: [Tamper; 4] = [
    ("NodeSignatureInvalid", |e| {
        e["report"] = flip_b64(e["report"].as_str().unwrap()).into();
    }),
    ("NodeSignatureInvalid", |e| {
        e["pcrs"][0]["sha256"] = flip_b64(e["pcrs"][0]["sha256"].as_str().unwrap()).into();
    }),
    ("StateDigestMismatch", |e| {
        e["state"]["config_id"] = flip_b64(e["state"]["config_id"].as_str().unwrap()).into();
    }),
    ("EvidenceJson", |e| {
        e["extra"] = "unsigned field".into();
    }),
];

/// Offline tampering: each edit of the saved evidence is caught, with its own reason.
fn tampered_files_are_rejected(saved: &Path, dir: &Path, policy: &str) {
    let original: Json = serde_json::from_slice(&std::fs::read(saved).unwrap()).unwrap();
    for (i, (code, edit)) in TAMPERS.iter().enumerate() {
        let mut evidence = original.clone();
        edit(&mut evidence);
        let path = dir.join(format!("tampered-{i}.json"));
        std::fs::write(&path, serde_json::to_vec(&evidence).unwrap()).unwrap();
        let path_text = path.display().to_string();
        assert_rejected(
            verify(&[
                "--evidence",
                &path_text,
                "--policy",
                policy,
                "--nonce",
                NONCE_HEX,
            ]),
            code,
        );
    }
}

#[test]
fn report_route_answers_json_raw_and_json_errors() {
    let swtpm = Swtpm::start();
    let data = tempdir();
    let tcti = swtpm.tcti();
    let node = Node::start(data.path(), &["--attestation", "tpm", "--tpm-tcti", &tcti]);
    let url = &node.url;

    let (status, evidence) = get(url, &format!("/~attest@1.0/report?nonce={NONCE_HEX}")).unwrap();
    assert_eq!(status, 200, "{evidence}");
    assert_eq!(evidence["version"], 1);
    assert_eq!(evidence["kind"], "tpm");

    // The raw TPMS_ATTEST: TPM_GENERATED magic, then TPM_ST_ATTEST_QUOTE.
    let (status, raw) = raw_get(
        &format!("{url}/~attest@1.0/report?nonce={NONCE_HEX}"),
        "application/octet-stream",
    );
    assert_eq!(status, 200);
    assert_eq!(raw[..6], [0xff, 0x54, 0x43, 0x47, 0x80, 0x18]);

    // HyperBEAM's route: the nonce is optional, and then the node draws 32 bytes.
    let (status, generated) = get(url, "/~snp@1.0/generate").unwrap();
    assert_eq!(status, 200, "{generated}");
    assert_eq!(generated["kind"], "tpm");
    assert_eq!(
        generated["nonce"].as_str().unwrap().len(),
        43,
        "32 bytes, base64url"
    );

    let expect_error = |path: &str, status: u16, code: &str| {
        let (got, body) = get(url, path).unwrap();
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    expect_error("/~attest@1.0/report", 400, "NonceMissing");
    expect_error("/~attest@1.0/report?nonce=xyz", 400, "NonceInvalid");
    expect_error("/~attest@1.0/report?nonce=abcd", 400, "NonceInvalid");
    expect_error(
        &format!("/~attest@1.0/report?nonce={}", "ab".repeat(65)),
        400,
        "NonceInvalid",
    );
    expect_error("/~snp@1.0/generate?nonce=00", 400, "NonceInvalid");
    let unknown = "A".repeat(43);
    expect_error(
        &format!("/~attest@1.0/report?nonce={NONCE_HEX}&process={unknown}"),
        404,
        "UnknownProcess",
    );
    expect_error(
        &format!("/~attest@1.0/report?nonce={NONCE_HEX}&process=short"),
        400,
        "IdInvalid",
    );
}

#[test]
fn none_evidence_needs_allow_insecure_and_usage_errors_exit_2() {
    let data = tempdir();
    let node = Node::start(data.path(), &["--attestation", "none"]);
    let info = node.info();
    assert_eq!(info["attestation"]["kind"], "none");
    assert_rejected(verify(&["--node", &node.url]), "InsecureEvidenceRejected");
    let (code, out) = verify(&["--node", &node.url, "--allow-insecure"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["kind"], "none");
    assert_eq!(out["insecure"], true);
    assert_eq!(out["node"]["public-key"], info["public-key"]);

    // Usage and I/O errors: exit 2, still one JSON object.
    let (code, out) = verify(&["--evidence", "/nonexistent/evidence.json"]);
    assert_eq!((code, &out["error"]), (2, &Json::from("Usage")), "{out}");
    let (code, out) = verify(&["--node", &node.url, "--nonce", "abc"]);
    assert_eq!((code, &out["error"]), (2, &Json::from("Usage")), "{out}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, out) = verify(&["--node", &dead]);
    assert_eq!((code, &out["error"]), (2, &Json::from("Usage")), "{out}");
    let status = Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .arg("verify")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "neither --node nor --evidence");
}
