//! Writes the seed corpus under `fuzz/corpus/<target>/` from the project's real data: the
//! protocol vectors (tests/vectors/protocol-v1.json), the Milan SEV-SNP report and VCEK (attest's
//! fixtures), TPM evidence produced by swtpm (committed as `fuzz/corpus/evidence/tpm-*.json`),
//! real frames and replies, and the request shapes of docs/http-api.md.
//!
//! `cargo run -p ferrobeam-fuzz-targets --example seeds` (idempotent: same files, same bytes).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use ferrobeam::ingress::frame::{self, Kind};
use ferrobeam::ingress::{Refusal, Reply};
use ferrobeam::message::{Hashpath, Id, Message, json, wire};
use ferrobeam::node::Ack;
use ferrobeam_attest::{
    Blob, Certificates, EVIDENCE_VERSION, Evidence, EvidenceKind, Id32, NodeKeyScheme,
    NodePublicKey, NodeSignature, StateParts,
};
use serde_json::Value as Json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("the corpus directory can be made");
    std::fs::write(dir.join(name), bytes).expect("the corpus file can be written");
}

/// The vector messages: (name, unsigned JSON, signed JSON).
fn vectors() -> Vec<(String, Json, Json)> {
    let text = std::fs::read_to_string(root().join("tests/vectors/protocol-v1.json"))
        .expect("tests/vectors/protocol-v1.json");
    let vectors: Json = serde_json::from_str(&text).expect("the vectors are JSON");
    let messages = vectors["messages"].as_array().expect("a messages list");
    messages
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("a name").to_owned();
            let mut signed = m["json"].clone();
            signed["commitments"] = serde_json::json!([{
                "scheme": "ed25519",
                "key": m["signed"]["public-key"],
                "signature": m["signed"]["signature"],
            }]);
            (name, m["json"].clone(), signed)
        })
        .collect()
}

/// The vector messages again, each with its `ed25519-batch` commitment from the vectors' batch.
fn batch_signed() -> Vec<(String, Json)> {
    let text = std::fs::read_to_string(root().join("tests/vectors/protocol-v1.json"))
        .expect("tests/vectors/protocol-v1.json");
    let file: Json = serde_json::from_str(&text).expect("the vectors are JSON");
    let members = file["batch"]["members"].as_array().expect("a batch");
    vectors()
        .into_iter()
        .zip(members)
        .map(|((name, unsigned, signed), member)| {
            let mut batch = unsigned;
            batch["commitments"] = serde_json::json!([{
                "scheme": "ed25519-batch",
                "key": signed["commitments"][0]["key"],
                "signature": member["signature"],
            }]);
            (format!("{name}-batch-signed"), batch)
        })
        .collect()
}

fn messages() -> Vec<(String, Message)> {
    let mut out = Vec::new();
    for (name, batch) in batch_signed() {
        out.push((name, json::from_json(&batch).expect("a vector parses")));
    }
    for (name, unsigned, signed) in vectors() {
        out.push((
            name.clone(),
            json::from_json(&unsigned).expect("a vector parses"),
        ));
        out.push((
            format!("{name}-signed"),
            json::from_json(&signed).expect("a vector parses"),
        ));
    }
    out
}

fn message_seeds() {
    for (name, unsigned, signed) in vectors() {
        write(
            "message_json",
            &format!("{name}.json"),
            unsigned.to_string().as_bytes(),
        );
        write(
            "message_json",
            &format!("{name}-signed.json"),
            signed.to_string().as_bytes(),
        );
    }
    for (name, batch) in batch_signed() {
        write(
            "message_json",
            &format!("{name}.json"),
            batch.to_string().as_bytes(),
        );
    }
    write(
        "message_json",
        "mixed-case-keys.json",
        br#"{"Type":"Message","Data":"x","N":1}"#,
    );
    for (name, message) in messages() {
        write(
            "wire_frame",
            &format!("{name}.rkyv"),
            &wire::encode(&message),
        );
        write(
            "message_roundtrip",
            &format!("{name}.bin"),
            &message.canonical(),
        );
    }
}

/// A `quic_*` input: no cuts, then the stream.
fn stream_input(stream: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(stream);
    out
}

fn quic_seeds() {
    let messages = messages();
    let mut stream = Vec::new();
    for (name, message) in &messages {
        let one = frame::encode(Kind::Message, &wire::encode(message));
        write("quic_frames", &format!("{name}.frame"), &stream_input(&one));
        stream.extend_from_slice(&one);
    }
    frame::encode_into(Kind::Bulk, &[7u8; 37], &mut stream);
    frame::encode_into(Kind::Bulk, &[], &mut stream);
    frame::encode_into(Kind::Message, &[], &mut stream);
    write(
        "quic_frames",
        "all-vectors-and-bulk.stream",
        &stream_input(&stream),
    );
    // The same stream cut at three points.
    let mut cut = vec![3u8, 0, 17, 0, 200, 1, 0];
    cut.extend_from_slice(&stream);
    write("quic_frames", "all-vectors-cut.stream", &cut);

    let ack = Ack {
        id: Id([1; 32]),
        process: Id([2; 32]),
        slot: 7,
        assignment: Id([3; 32]),
        timestamp: 1_750_000_000_000,
        hashpath: Hashpath([4; 32]),
        duplicate: true,
    };
    let mut replies = Vec::new();
    Reply::Ack(ack).encode_into(&mut replies);
    Reply::Bulk(37).encode_into(&mut replies);
    Reply::Refused(Refusal {
        code: "SignatureInvalid".into(),
        message: "signature does not verify".into(),
    })
    .encode_into(&mut replies);
    write(
        "quic_replies",
        "ack-bulk-refused.stream",
        &stream_input(&replies),
    );
    write(
        "quic_replies",
        "refusal-text",
        b"\x00TargetMismatch\nthe message targets \"x\" but was sent to \x01\x02",
    );
}

fn http_seeds() {
    let id = Id([0x2a; 32]).to_string();
    for (name, path) in [
        ("slot", format!("/{id}/slot")),
        ("compute", format!("/{id}/compute&slot=3")),
        ("compute-query", format!("/{id}/compute?slot=12")),
        ("now", format!("/{id}/now")),
        ("schedule", format!("/{id}/schedule&from=0&to=99")),
        ("schedule-query", format!("/{id}/schedule?from=5&To=9")),
        ("process", format!("/{id}/process")),
        ("unknown", format!("/{id}/results&limit=1")),
        ("bad-number", format!("/{id}/compute&slot=-1")),
        ("meta", "/~meta@1.0/info".to_owned()),
    ] {
        write("http_path", name, path.as_bytes());
    }
}

fn aojson_seeds() {
    let target = Id([0x11; 32]).to_string();
    let seeds = [
        (
            "eval",
            serde_json::json!({"ok": true, "response": {
                "Output": {"data": "2", "prompt": "aos> ", "print": true},
                "Messages": [], "Spawns": [], "Assignments": []}}),
        ),
        (
            "send",
            serde_json::json!({"ok": true, "response": {
                "Output": "",
                "Messages": [{"Target": target, "Anchor": "00000000000000000000000000000001",
                    "Tags": [{"name": "Action", "value": "Credit-Notice"},
                             {"name": "Quantity", "value": "10"},
                             {"name": "Data-Protocol", "value": "ao"}],
                    "Data": "hello"}],
                "Spawns": [{"Tags": [{"name": "Type", "value": "Process"},
                                     {"name": "Module", "value": target}], "Data": ""}]}}),
        ),
        (
            "error",
            serde_json::json!({"ok": true, "response": {
                "Error": "[string \"aos\"]:1: boom", "Output": "x"}}),
        ),
        (
            "not-ok",
            serde_json::json!({"ok": false, "error": "handle failed"}),
        ),
    ];
    for (name, value) in seeds {
        write("aojson_response", name, value.to_string().as_bytes());
    }
    write("aojson_response", "tag-name", b"Module-Format");
}

const SNP_REPORT_HEX: &str = include_str!("../../attest/tests/fixtures/report_milan.hex");
const VCEK_DER: &[u8] = include_bytes!("../../attest/tests/fixtures/vcek_milan.der");

fn state() -> StateParts {
    StateParts {
        config_id: Id32([9; 32]),
        inventory_digest: Some(Id32([8; 32])),
        process: None,
    }
}

/// Evidence of `kind` with `report` and `certificates`, signed by a node key.
fn signed_evidence(kind: EvidenceKind, report: Vec<u8>, certificates: Certificates) -> Evidence {
    let key = SigningKey::from_bytes(&[5; 32]);
    let state = state();
    let mut evidence = Evidence {
        version: EVIDENCE_VERSION,
        kind,
        report: Blob(report),
        report_signature: None,
        pcrs: Vec::new(),
        certificates,
        node_key_scheme: NodeKeyScheme::default(),
        node_public_key: NodePublicKey(key.verifying_key().to_bytes()),
        state,
        state_digest: state.digest(),
        nonce: Blob(b"verifier nonce, 32 bytes long...".to_vec()),
        signature: NodeSignature([0; 64]),
    };
    evidence.signature = NodeSignature(key.sign(&evidence.signing_bytes()).to_bytes());
    evidence
}

fn attest_seeds() {
    let report = hex::decode(SNP_REPORT_HEX.trim()).expect("the fixture is hex");
    let mut snp = report.clone();
    snp.extend_from_slice(VCEK_DER);
    write("snp_report", "milan-report-and-vcek", &snp);
    write("snp_report", "milan-report", &report);

    let with_vcek = Certificates {
        vcek: Some(Blob(VCEK_DER.to_vec())),
        ..Certificates::default()
    };
    let evidence = signed_evidence(EvidenceKind::Snp, report.clone(), with_vcek);
    write("evidence", "snp-milan.json", evidence.to_json().as_bytes());
    let evidence = signed_evidence(EvidenceKind::Snp, report, Certificates::default());
    write(
        "evidence",
        "snp-milan-no-vcek.json",
        evidence.to_json().as_bytes(),
    );
    let evidence = signed_evidence(EvidenceKind::None, Vec::new(), Certificates::default());
    write("evidence", "none.json", evidence.to_json().as_bytes());

    // TPM: quotes made by swtpm (committed evidence), split into the quote target's parts.
    let dir = root().join("fuzz/corpus/evidence");
    let mut tpm: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus/evidence")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tpm-"))
        })
        .collect();
    tpm.sort();
    assert!(!tpm.is_empty(), "no swtpm evidence under {}", dir.display());
    for path in tpm {
        let text = std::fs::read(&path).expect("readable evidence");
        let evidence = Evidence::from_json(&text).expect("swtpm evidence parses");
        let signature = evidence.report_signature.as_ref().expect("a TPM signature");
        let ak = evidence.certificates.ak_public.as_ref().expect("a TPM AK");
        let name = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let input = ferrobeam_fuzz_targets::tpm_input(&evidence.report.0, &signature.0, &ak.0);
        write("tpm_quote", &format!("{name}.bin"), &input);
    }
}

fn main() {
    message_seeds();
    quic_seeds();
    http_seeds();
    aojson_seeds();
    attest_seeds();
    for target in ferrobeam_fuzz_targets::TARGETS {
        let (name, target) = (target.name, target.run);
        let dir = root().join("fuzz/corpus").join(name);
        let count = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        // Every seed must pass its own target.
        for entry in std::fs::read_dir(&dir).expect("a corpus directory") {
            let bytes = std::fs::read(entry.expect("an entry").path()).expect("a file");
            target(&bytes);
        }
        println!("{name}: {count} seeds");
    }
}
