//! Targets over the message forms: rkyv wire frames, JSON, structure-aware canonical
//! encodings and ids, and ao-json process responses (which build outbox messages).

use arbitrary::Unstructured;
use ferrobeam::execute::aojson;
use ferrobeam::execute::{OUTBOX_MESSAGES_MAX, OUTPUT_BYTES_MAX, SEND_TAGS_MAX, tag_key, tag_name};
use ferrobeam::message::{
    CANONICAL_MAGIC, COMMITMENTS_KEY, DEPTH_MAX, Hashpath, Id, KEY_BYTES_MAX, Message,
    MessageError, Value, b64, json, wire,
};
use rkyv::util::AlignedVec;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// rkyv frame access: arbitrary bytes through the validated view, then (when valid) the
/// conversion, canonical encoding, id and a re-encode round trip.
pub fn wire_frame(data: &[u8]) {
    let mut aligned = AlignedVec::<{ wire::WIRE_ALIGN }>::with_capacity(data.len().max(1));
    aligned.extend_from_slice(data);
    let in_place = wire::access(&aligned).and_then(wire::from_archived);
    // The copying decoder (any alignment) must agree with the in-place view.
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(data);
    assert_eq!(wire::decode(&shifted[1..]), in_place);
    if let Ok(message) = in_place {
        check_message(&message);
    }
}

/// JSON message parsing: whatever parses must survive the JSON, wire and canonical forms.
pub fn message_json(data: &[u8]) {
    let parsed = json::from_slice(data);
    assert_eq!(json::from_slice(data), parsed, "parsing is deterministic");
    if let Ok(message) = parsed {
        check_message(&message);
    }
}

/// Canonical encoding and id round trips, structure-aware: the input drives a message builder
/// (valid keys, every value type, nesting to just past `DEPTH_MAX`, commitments through the
/// JSON form), then every form must give the same message and id.
pub fn message_roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(fields) = arbitrary_fields(&mut u, 0) else {
        return;
    };
    let mut forward = Message::new();
    for (key, value) in &fields {
        let result = forward.set(key, value.clone());
        // `set` refuses exactly the values nested deeper than DEPTH_MAX.
        assert_eq!(
            result.is_err(),
            nesting(value) > DEPTH_MAX,
            "{key}: {result:?}"
        );
        if let Err(e) = result {
            assert_eq!(e, MessageError::TooDeep);
        }
    }
    // Field order does not matter: the canonical form sorts keys (the last write wins).
    let mut seen = std::collections::BTreeSet::new();
    let mut backward = Message::new();
    for (key, value) in fields.iter().rev() {
        if seen.insert(key.clone()) && nesting(value) <= DEPTH_MAX {
            backward.set(key, value.clone()).expect("checked above");
        }
    }
    // `backward` may keep an earlier value of a key whose last value was too deep; compare
    // only when every write was accepted.
    if fields.iter().all(|(_, v)| nesting(v) <= DEPTH_MAX) {
        assert_eq!(forward.canonical(), backward.canonical());
        assert_eq!(forward, backward);
    }
    check_message(&forward);
    if let Ok(signed) = with_commitments(&mut u, &forward) {
        check_message(&signed);
        assert_eq!(signed.unsigned(), forward);
        assert_eq!(signed.unsigned_id(), forward.unsigned_id());
    }
    let id = forward.id();
    let hashpath = Hashpath::base(&id).then(&forward.unsigned_id());
    assert_eq!(
        hashpath.to_string().parse::<Hashpath>().ok(),
        Some(hashpath)
    );
}

/// ao-json results: the parser of `handle`'s JSON answer, with the result limits and the
/// messages it builds.
pub fn aojson_response(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(key) = tag_key(text)
    {
        assert!(key.as_str().len() <= KEY_BYTES_MAX);
        assert_eq!(
            tag_key(key.as_str()).as_ref(),
            Some(&key),
            "tag_key is idempotent"
        );
    }
    let Ok(response) = aojson::response(data) else {
        return;
    };
    assert!(response.output.len() <= OUTPUT_BYTES_MAX);
    assert!(response.outbox.len() + response.spawns.len() <= OUTBOX_MESSAGES_MAX);
    if response.error.is_some() {
        assert!(response.error.as_deref() != Some(""));
    }
    for (message, targeted) in response
        .outbox
        .iter()
        .map(|m| (m, true))
        .chain(response.spawns.iter().map(|m| (m, false)))
    {
        assert!(
            !targeted || message.text("target").is_some(),
            "outbox without target"
        );
        // Tags plus target, anchor and data.
        assert!(message.len() <= SEND_TAGS_MAX + 3);
        assert!(message.commitments().is_empty());
        for (key, _) in message.fields() {
            assert_eq!(tag_key(&tag_name(key.as_str())).as_ref(), Some(key));
        }
        check_message(message);
    }
    assert_eq!(aojson::response(data).ok(), Some(response), "deterministic");
}

/// What holds for every message, however it was decoded.
pub(crate) fn check_message(message: &Message) {
    message
        .check()
        .expect("decoders only return messages within the limits");
    let canonical = message.canonical();
    assert!(canonical.starts_with(CANONICAL_MAGIC));
    let commitment_bytes: usize = message
        .commitments()
        .iter()
        .map(|c| c.public_key().len() + c.signature().len() + 8)
        .sum();
    assert_eq!(canonical.len() + commitment_bytes, message.encoded_len());
    let unsigned_id = Id(Sha256::digest(&canonical).into());
    assert_eq!(message.unsigned_id(), unsigned_id);
    if message.commitments().is_empty() {
        assert_eq!(message.id(), unsigned_id);
    }
    let id = message.id();
    assert_eq!(id.to_string().parse::<Id>().ok(), Some(id));

    // The wire form: decode(encode(m)) == m, and encoding is deterministic.
    let frame = wire::encode(message);
    let back = wire::decode(&frame).expect("an encoded message decodes");
    assert_eq!(&back, message);
    assert_eq!(back.id(), id);
    assert_eq!(wire::encode(&back).as_slice(), frame.as_slice());

    // The JSON form, as a value and as text.
    let value = json::to_json(message);
    assert_eq!(json::from_json(&value).as_ref(), Ok(message));
    let text = serde_json::to_vec(&value).expect("a JSON value serializes");
    let back = json::from_slice(&text).expect("the JSON form parses");
    assert_eq!(&back, message);
    assert_eq!(back.id(), id);
    assert_eq!(json::to_json(&back), value);
}

const KEY_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.@";

fn arbitrary_key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let len = if u.ratio(1, 16)? {
        u.int_in_range(1..=KEY_BYTES_MAX)?
    } else {
        u.int_in_range(1..=8)?
    };
    let mut key = String::with_capacity(len);
    for _ in 0..len {
        key.push(char::from(*u.choose(KEY_ALPHABET)?));
    }
    // `commitments` is reserved; the builder only makes valid keys.
    if key == COMMITMENTS_KEY {
        key.push('x');
    }
    Ok(key)
}

/// Fields of a message at `depth` (nesting may go just past `DEPTH_MAX`).
fn arbitrary_fields(
    u: &mut Unstructured<'_>,
    depth: usize,
) -> arbitrary::Result<Vec<(String, Value)>> {
    let count = u.int_in_range(0..=6)?;
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        fields.push((arbitrary_key(u)?, arbitrary_value(u, depth + 1)?));
    }
    Ok(fields)
}

fn arbitrary_value(u: &mut Unstructured<'_>, depth: usize) -> arbitrary::Result<Value> {
    let nested = depth <= DEPTH_MAX + 1;
    Ok(match u.int_in_range(0..=if nested { 3 } else { 1 })? {
        0 => Value::Bytes(u.arbitrary::<&[u8]>()?.to_vec()),
        1 => Value::Int(u.arbitrary()?),
        2 => {
            let count = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(arbitrary_value(u, depth + 1)?);
            }
            Value::List(items)
        }
        _ => {
            // A nested message is built with `set` too, so it holds the limits on its own.
            let mut message = Message::new();
            for (key, value) in arbitrary_fields(u, depth)? {
                let _ = message.set(&key, value);
            }
            Value::Message(Box::new(message))
        }
    })
}

/// How deep `set` sees a value: 1 for a scalar, one more per list or message level.
fn nesting(value: &Value) -> usize {
    match value {
        Value::Bytes(_) | Value::Int(_) => 1,
        Value::List(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Message(message) => 1 + message.fields().map(|(_, v)| nesting(v)).max().unwrap_or(0),
    }
}

/// The message with 1..=3 commitments (well-formed or not) attached through its JSON form; the
/// ids of the signed message do not depend on the commitments' order.
fn with_commitments(u: &mut Unstructured<'_>, message: &Message) -> arbitrary::Result<Message> {
    let count = u.int_in_range(1..=3)?;
    let mut commitments = Vec::with_capacity(count);
    for _ in 0..count {
        let ed25519 = u.arbitrary::<bool>()?;
        let (scheme, key_len) = if ed25519 {
            ("ed25519", 32)
        } else {
            (
                "rsa-pss-sha512",
                256 + 256 * usize::from(u.arbitrary::<bool>()?),
            )
        };
        let mut key = u.bytes(key_len)?.to_vec();
        if u.ratio(1, 8)? {
            key.pop();
        }
        let signature = u.bytes(if ed25519 { 64 } else { key_len })?;
        commitments.push(serde_json::json!({
            "scheme": scheme, "key": b64(&key), "signature": b64(signature),
        }));
    }
    let mut value = json::to_json(message);
    value[COMMITMENTS_KEY] = Json::Array(commitments.clone());
    let signed = json::from_json(&value);
    commitments.reverse();
    value[COMMITMENTS_KEY] = Json::Array(commitments);
    let reversed = json::from_json(&value);
    match (&signed, &reversed) {
        (Ok(a), Ok(b)) => assert_eq!(a.id(), b.id(), "the id ignores commitment order"),
        (Err(_), Err(_)) => {}
        _ => panic!("commitment order changed validity: {signed:?} {reversed:?}"),
    }
    signed.map_err(|_| arbitrary::Error::IncorrectFormat)
}
