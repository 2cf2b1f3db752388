//! Protocol test vectors (`tests/vectors/`): canonical encodings, ids, Ed25519 commitments,
//! `ed25519-batch` commitments (Merkle root, signed payload, proofs), addresses, hashpaths and
//! assignment hash chains. Any change to the encoding fails here.
//!
//! `FERROBEAM_WRITE_VECTORS=1 cargo test --test vectors` rewrites the files (only for a deliberate
//! protocol version change, documented in docs/protocol.md).

use std::path::PathBuf;

use ferrobeam::message::{
    Hashpath, Id, Message, Value, VerifiedMessage, Wallet, b64, batch_signed_payload, json, merkle,
    wire,
};
use ferrobeam::schedule::Scheduler;
use serde_json::{Value as Json, json as j};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

/// A fixed Ed25519 key: seed bytes 0x01..=0x20.
fn fixed_wallet() -> Wallet {
    let seed: Vec<u8> = (1..=32).collect();
    Wallet::from_jwk(&j!({"kty": "OKP", "crv": "Ed25519", "d": b64(&seed)})).unwrap()
}

fn cases() -> Vec<(&'static str, Message)> {
    vec![
        ("empty", Message::new()),
        (
            "text-and-int",
            Message::new().with("data", "hello").with("n", 42),
        ),
        ("negative-int", Message::new().with("n", i64::MIN)),
        ("binary", Message::new().with("raw", vec![0u8, 0xff, 0x10])),
        (
            "list",
            Message::new().with(
                "items",
                Value::List(vec![1.into(), "two".into(), Value::List(vec![])]),
            ),
        ),
        (
            "nested",
            Message::new()
                .with("inner", Message::new().with("x", 1))
                .with("type", "Process")
                .with("module", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
    ]
}

fn generate() -> Json {
    let wallet = fixed_wallet();
    let mut rng = rand::rngs::OsRng; // unused by Ed25519 (deterministic)
    let messages: Vec<Json> = cases()
        .into_iter()
        .map(|(name, message)| {
            let signed = wallet.sign(message.clone(), &mut rng);
            j!({
                "name": name,
                "json": json::to_json(&message),
                "canonical-hex": hex::encode(message.canonical()),
                "unsigned-id": message.unsigned_id(),
                "signed": {
                    "signature": b64(signed.commitments()[0].signature()),
                    "id": signed.id(),
                    "address": wallet.address(),
                    "public-key": b64(&wallet.public_key()),
                },
            })
        })
        .collect();
    let process = Id([7; 32]);
    let ids: Vec<Id> = (0u8..4)
        .map(|n| if n == 0 { process } else { Id([n; 32]) })
        .collect();
    let mut path = Hashpath::base(&process);
    let hashpaths: Vec<String> = ids
        .iter()
        .map(|id| {
            path = path.then(id);
            path.to_string()
        })
        .collect();
    let mut scheduler = Scheduler::new();
    let mut chain = vec![scheduler.spawn(process, 1_000).unwrap()];
    for (i, id) in ids.iter().enumerate().skip(1) {
        chain.push(scheduler.assign(&process, *id, 1_000 + i as u64).unwrap());
    }
    let assignments: Vec<Json> = chain
        .iter()
        .map(|a| {
            j!({
                "slot": a.slot,
                "message": a.message,
                "timestamp": a.timestamp_ms,
                "hash-chain": b64(&a.hash_chain),
                "hashpath": a.hashpath,
            })
        })
        .collect();
    j!({
        "key-seed-hex": hex::encode((1..=32).collect::<Vec<u8>>()),
        "messages": messages,
        "batch": batch(&wallet),
        "chain": { "process": process, "messages": ids, "hashpaths": hashpaths, "assignments": assignments },
    })
}

/// The case messages signed together: one `ed25519-batch` signature over their Merkle root.
fn batch(wallet: &Wallet) -> Json {
    let unsigned: Vec<Message> = cases().into_iter().map(|(_, m)| m).collect();
    let tree = merkle::Tree::new(
        unsigned
            .iter()
            .map(|m| merkle::leaf_hash(&m.unsigned_id()))
            .collect(),
    );
    let count = u32::try_from(tree.size()).unwrap();
    let signed = wallet.sign_batch(unsigned, &mut rand::rngs::OsRng);
    let members: Vec<Json> = cases()
        .iter()
        .zip(&signed)
        .enumerate()
        .map(|(index, ((name, _), signed))| {
            j!({
                "name": name,
                "leaf-hex": hex::encode(merkle::leaf_hash(&signed.unsigned_id())),
                "proof-hex": tree.proof(index).iter().map(hex::encode).collect::<Vec<_>>(),
                "signature": b64(signed.commitments()[0].signature()),
                "id": signed.id(),
            })
        })
        .collect();
    j!({
        "count": count,
        "root-hex": hex::encode(tree.root()),
        "signed-payload-hex": hex::encode(batch_signed_payload(count, &tree.root())),
        "members": members,
    })
}

#[test]
fn vectors_are_unchanged() {
    let path = vectors_dir().join("protocol-v1.json");
    let generated = generate();
    if std::env::var_os("FERROBEAM_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(vectors_dir()).unwrap();
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&generated).unwrap() + "\n",
        )
        .unwrap();
    }
    let committed: Json = serde_json::from_slice(
        &std::fs::read(&path).expect("tests/vectors/protocol-v1.json is committed"),
    )
    .unwrap();
    assert_eq!(generated, committed, "the protocol's encoding changed");
}

#[test]
fn every_batch_vector_verifies_alone_and_no_other_message_does() {
    let committed: Json =
        serde_json::from_slice(&std::fs::read(vectors_dir().join("protocol-v1.json")).unwrap())
            .unwrap();
    let batch = &committed["batch"];
    let members = batch["members"].as_array().unwrap();
    let cases = cases();
    assert_eq!(members.len(), cases.len());
    for (member, (name, message)) in members.iter().zip(cases) {
        assert_eq!(member["name"], name);
        let mut signed = json::to_json(&message);
        signed["commitments"] = j!([{
            "scheme": "ed25519-batch",
            "key": b64(&fixed_wallet().public_key()),
            "signature": member["signature"],
        }]);
        let signed = json::from_json(&signed).unwrap();
        assert_eq!(signed.id().to_string(), member["id"].as_str().unwrap());
        let verified = VerifiedMessage::verify(signed.clone()).unwrap();
        assert_eq!(verified.from(), fixed_wallet().address());
        // The same commitment on any other message fails.
        let mut moved = json::to_json(&message.with("moved", 1));
        moved["commitments"] = json::to_json(&signed)["commitments"].clone();
        let moved = json::from_json(&moved).unwrap();
        assert!(VerifiedMessage::verify(moved).is_err(), "{name}");
    }
}

#[test]
fn every_form_of_a_vector_has_the_same_id() {
    let committed: Json =
        serde_json::from_slice(&std::fs::read(vectors_dir().join("protocol-v1.json")).unwrap())
            .unwrap();
    for case in committed["messages"].as_array().unwrap() {
        let message = json::from_json(&case["json"]).unwrap();
        let expected: Id = case["unsigned-id"].as_str().unwrap().parse().unwrap();
        assert_eq!(message.unsigned_id(), expected, "{}", case["name"]);
        assert_eq!(
            hex::encode(message.canonical()),
            case["canonical-hex"].as_str().unwrap()
        );
        let via_wire = wire::decode(&wire::encode(&message)).unwrap();
        assert_eq!(via_wire.id(), expected);
        let signed = fixed_wallet().sign(message, &mut rand::rngs::OsRng);
        let signed_id: Id = case["signed"]["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(signed.id(), signed_id);
        assert_eq!(
            wire::decode(&wire::encode(&signed)).unwrap().id(),
            signed_id
        );
        assert_eq!(
            json::from_json(&json::to_json(&signed)).unwrap().id(),
            signed_id
        );
    }
}
