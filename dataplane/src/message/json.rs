//! The JSON form of a message, used by HTTP and the CLI.
//!
//! A message is a JSON object: strings are bytes (UTF-8), integers are integers, arrays are lists,
//! objects are nested messages, and `{"+b64": "..."}` is bytes that are not UTF-8. Keys are
//! lowercased on the way in. The reserved key `commitments` holds
//! `[{"scheme", "key", "signature"}]` (base64url). Floats, booleans and null are rejected: they
//! have no canonical form.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use super::{
    COMMITMENTS_KEY, Commitment, DEPTH_MAX, KEYS_MAX, Key, LIST_ITEMS_MAX, Message, MessageError,
    Scheme, Value, b64, unb64,
};

/// The key of a bytes value that is not UTF-8.
pub const BYTES_KEY: &str = "+b64";

/// Parses a message from JSON text.
///
/// # Errors
/// [`MessageError::JsonInvalid`] for malformed JSON, or the limit the message breaks.
pub fn from_slice(bytes: &[u8]) -> Result<Message, MessageError> {
    // serde_json recurses on nesting; it stops at 128 levels, and we stop at DEPTH_MAX below.
    let json: Json =
        serde_json::from_slice(bytes).map_err(|e| MessageError::JsonInvalid(e.to_string()))?;
    from_json(&json)
}

/// Converts a parsed JSON value into a message.
///
/// # Errors
/// As [`from_slice`].
pub fn from_json(json: &Json) -> Result<Message, MessageError> {
    let object = json
        .as_object()
        .ok_or_else(|| MessageError::JsonInvalid("a message must be a JSON object".into()))?;
    message_from_object(object, 0)
}

fn message_from_object(object: &Map<String, Json>, depth: usize) -> Result<Message, MessageError> {
    if depth > DEPTH_MAX {
        return Err(MessageError::TooDeep);
    }
    if object.len() > KEYS_MAX + 1 {
        return Err(MessageError::TooManyKeys);
    }
    let mut fields = BTreeMap::new();
    let mut commitments = Vec::new();
    for (raw_key, value) in object {
        let lower = raw_key.to_ascii_lowercase();
        if lower == super::COMMITMENTS_KEY {
            commitments = commitments_from_json(value)?;
            continue;
        }
        let key = Key::new(&lower)?;
        let value = value_from_json(value, depth + 1)?;
        if fields.insert(key, value).is_some() {
            return Err(MessageError::KeyDuplicate(lower));
        }
    }
    Message::from_parts(fields, commitments)
}

fn value_from_json(json: &Json, depth: usize) -> Result<Value, MessageError> {
    if depth > DEPTH_MAX {
        return Err(MessageError::TooDeep);
    }
    match json {
        Json::String(text) => Ok(Value::Bytes(text.as_bytes().to_vec())),
        Json::Number(n) => n.as_i64().map(Value::Int).ok_or_else(|| {
            MessageError::JsonInvalid(format!("{n}: numbers must be 64-bit signed integers"))
        }),
        Json::Array(items) => {
            if items.len() > LIST_ITEMS_MAX {
                return Err(MessageError::TooManyItems);
            }
            items
                .iter()
                .map(|item| value_from_json(item, depth + 1))
                .collect::<Result<_, _>>()
                .map(Value::List)
        }
        Json::Object(object) => {
            if let (1, Some(Json::String(text))) = (object.len(), object.get(BYTES_KEY)) {
                return unb64(text, BYTES_KEY).map(Value::Bytes);
            }
            message_from_object(object, depth).map(|m| Value::Message(Box::new(m)))
        }
        Json::Bool(_) | Json::Null => Err(MessageError::JsonInvalid(
            "booleans and null have no canonical form; use text or integers".into(),
        )),
    }
}

fn commitments_from_json(json: &Json) -> Result<Vec<Commitment>, MessageError> {
    let items = json
        .as_array()
        .ok_or_else(|| MessageError::JsonInvalid("commitments must be a list".into()))?;
    if items.len() > super::COMMITMENTS_MAX {
        return Err(MessageError::TooManyCommitments);
    }
    items
        .iter()
        .map(|item| {
            let text = |name: &str| {
                item.get(name).and_then(Json::as_str).ok_or_else(|| {
                    MessageError::JsonInvalid(format!("commitment without {name:?}"))
                })
            };
            Commitment::new(
                Scheme::from_name(text("scheme")?)?,
                unb64(text("key")?, "commitment key")?,
                unb64(text("signature")?, "commitment signature")?,
            )
        })
        .collect()
}

/// The JSON form of a message.
pub fn to_json(message: &Message) -> Json {
    let mut object = Map::new();
    for (key, value) in message.fields() {
        object.insert(key.as_str().to_owned(), value_to_json(value));
    }
    if !message.commitments().is_empty() {
        let list = message
            .commitments()
            .iter()
            .map(|c| {
                serde_json::json!({
                    "scheme": c.scheme().name(),
                    "key": b64(c.public_key()),
                    "signature": b64(c.signature()),
                })
            })
            .collect();
        object.insert(COMMITMENTS_KEY.to_owned(), Json::Array(list));
    }
    Json::Object(object)
}

/// The JSON form of one value.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Json::String(text.to_owned()),
            Err(_) => serde_json::json!({ BYTES_KEY: b64(bytes) }),
        },
        Value::Int(i) => Json::from(*i),
        Value::Message(m) => to_json(m),
        Value::List(items) => Json::Array(items.iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_id() {
        let inner = Message::new().with("x", 1);
        let m = Message::new()
            .with("text", "hello")
            .with("int", -5)
            .with("raw", vec![0xff, 0x00])
            .with("list", Value::List(vec![Value::Int(1), "a".into()]))
            .with("inner", inner);
        let json = to_json(&m);
        let back = from_json(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), m.id());
    }

    #[test]
    fn keys_are_lowercased_and_duplicates_rejected() {
        let m = from_slice(br#"{"Type":"Process"}"#).unwrap();
        assert_eq!(m.text("type"), Some("Process"));
        assert_eq!(
            from_slice(br#"{"Type":"a","type":"b"}"#),
            Err(MessageError::KeyDuplicate("type".into()))
        );
    }

    #[test]
    fn bad_json_is_rejected_with_a_reason() {
        for bad in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"a": 1.5}"#,
            br#"{"a": true}"#,
            br#"{"a": null}"#,
            br#"{"a b": 1}"#,
            br#"{"a": 18446744073709551615}"#,
            br#"{"commitments": [{"scheme": "ed25519"}]}"#,
            br#"{"commitments": [{"scheme": "dsa", "key": "", "signature": ""}]}"#,
        ] {
            assert!(from_slice(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut deep = String::new();
        for _ in 0..=DEPTH_MAX {
            deep.push_str("{\"a\":");
        }
        deep.push('1');
        deep.push_str(&"}".repeat(DEPTH_MAX + 1));
        assert_eq!(from_slice(deep.as_bytes()), Err(MessageError::TooDeep));
    }
}
