//! The message model: keys → values plus commitments, the canonical encoding that names a
//! message, and its ids.
//!
//! Sans-IO: nothing here touches the network, the disk, the clock or OS randomness (signing takes
//! the caller's RNG). Every limit below is checked when a message is built, so a `Message` value
//! always satisfies them; the decoders (`json`, `wire`) build messages only through those checks.
//!
//! The canonical encoding is specified byte for byte in `docs/protocol.md`; the vectors under
//! `tests/vectors/` pin it.

mod commitment;
mod ed25519;
mod hashpath;
pub mod json;
pub mod merkle;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

pub use commitment::{
    Commitment, RSA_MODULUS_BYTES_MAX, RSA_MODULUS_BYTES_MIN, Scheme, VerifiedMessage, Wallet,
    batch_signed_payload, signed_payload, verify_batch,
};
pub use hashpath::{Hashpath, verify_chain};

/// Longest key, in bytes. Keys are short names (`compute-limit`, `meta@1.0`); 128 leaves room for
/// namespaced keys while keeping the per-field overhead bounded.
pub const KEY_BYTES_MAX: usize = 128;
/// Most fields in one message (at any nesting level). Worst case 1024 × 128 B of keys; more is
/// rejected with [`MessageError::TooManyKeys`].
pub const KEYS_MAX: usize = 1024;
/// Most items in one list value; more is rejected with [`MessageError::TooManyItems`].
pub const LIST_ITEMS_MAX: usize = 65_536;
/// Deepest nesting of messages and lists. Decoders recurse to this depth and no further, so a
/// hostile input cannot exhaust the stack; deeper input is rejected with [`MessageError::TooDeep`].
pub const DEPTH_MAX: usize = 16;
/// Largest canonical encoding of one message (16 MiB), the same as the HTTP body limit; larger
/// messages are rejected with [`MessageError::TooLarge`].
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most commitments on one message; more is rejected with [`MessageError::TooManyCommitments`].
pub const COMMITMENTS_MAX: usize = 8;

/// Magic prefix of the canonical encoding (and its version).
pub const CANONICAL_MAGIC: &[u8; 4] = b"fbm1";

/// The key under which the JSON form carries commitments; never a field name.
pub const COMMITMENTS_KEY: &str = "commitments";

const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(MESSAGE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(LIST_ITEMS_MAX <= u32::MAX as usize);

/// Why a message was rejected. Every variant is caused by the message's bytes (the sender's
/// fault), never by the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A key is empty, too long, or has a character outside `a-z 0-9 - _ . @`.
    #[error("invalid key {0:?}: keys are 1..=128 bytes of a-z 0-9 - _ . @")]
    KeyInvalid(String),
    /// The key is reserved (`commitments`).
    #[error("key {0:?} is reserved")]
    KeyReserved(String),
    /// The same key twice (after lowercasing, in JSON).
    #[error("duplicate key {0:?}")]
    KeyDuplicate(String),
    /// More than [`KEYS_MAX`] fields.
    #[error("more than {KEYS_MAX} keys")]
    TooManyKeys,
    /// A list of more than [`LIST_ITEMS_MAX`] items.
    #[error("a list has more than {LIST_ITEMS_MAX} items")]
    TooManyItems,
    /// Nesting deeper than [`DEPTH_MAX`].
    #[error("nesting deeper than {DEPTH_MAX}")]
    TooDeep,
    /// Canonical encoding over [`MESSAGE_BYTES_MAX`].
    #[error("message larger than {MESSAGE_BYTES_MAX} bytes")]
    TooLarge,
    /// More than [`COMMITMENTS_MAX`] commitments.
    #[error("more than {COMMITMENTS_MAX} commitments")]
    TooManyCommitments,
    /// The JSON form is malformed; the text says where.
    #[error("malformed JSON message: {0}")]
    JsonInvalid(String),
    /// The rkyv wire form failed validation; the text says why.
    #[error("malformed wire message: {0}")]
    WireInvalid(String),
    /// A commitment's key or signature bytes are malformed, or its scheme is unknown.
    #[error("malformed commitment: {0}")]
    CommitmentInvalid(String),
    /// The message carries no commitment where one is required.
    #[error("message is not signed")]
    Unsigned,
    /// A commitment's signature does not verify against the message.
    #[error("signature does not verify")]
    SignatureInvalid,
    /// An id, address or hashpath string is not 43 characters of unpadded base64url.
    #[error("invalid id {0:?}: expected 43 characters of unpadded base64url")]
    IdInvalid(String),
}

/// A validated key: 1..=[`KEY_BYTES_MAX`] bytes of `a-z 0-9 - _ . @`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Checks `text` and wraps it.
    ///
    /// # Errors
    /// [`MessageError::KeyInvalid`] or [`MessageError::KeyReserved`].
    pub fn new(text: &str) -> Result<Self, MessageError> {
        let valid_char =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.@".contains(&b);
        if text.is_empty() || text.len() > KEY_BYTES_MAX || !text.bytes().all(valid_char) {
            return Err(MessageError::KeyInvalid(truncate(text)));
        }
        if text == COMMITMENTS_KEY {
            return Err(MessageError::KeyReserved(text.to_owned()));
        }
        Ok(Self(text.to_owned()))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(KEY_BYTES_MAX).collect()
}

/// One value of a message field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Raw bytes (text is UTF-8 bytes).
    Bytes(Vec<u8>),
    /// A signed 64-bit integer.
    Int(i64),
    /// A nested message; the canonical encoding of its parent names it by its id.
    Message(Box<Message>),
    /// An ordered list of values.
    List(Vec<Value>),
}

impl Value {
    /// The bytes of a `Bytes` value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The text of a `Bytes` value that is valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An `Int`, or a `Bytes` value holding a decimal integer (tags arrive as text).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(_) => self.as_text()?.trim().parse().ok(),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Bytes(text.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Bytes(text.into_bytes())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Bytes(bytes)
    }
}

impl From<Message> for Value {
    fn from(message: Message) -> Self {
        Value::Message(Box::new(message))
    }
}

/// A message: fields in key order plus zero or more commitments.
///
/// Invariants (held by every constructor): keys valid and unique, at most [`KEYS_MAX`] fields,
/// lists at most [`LIST_ITEMS_MAX`] items, nesting at most [`DEPTH_MAX`], at most
/// [`COMMITMENTS_MAX`] commitments. The size limit is checked by [`Message::check`], which every
/// decoder calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    fields: BTreeMap<Key, Value>,
    commitments: Vec<Commitment>,
}

impl Message {
    /// An empty, unsigned message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing any previous value and dropping commitments (they would
    /// no longer verify).
    ///
    /// # Errors
    /// An invalid key, or a limit the message would exceed.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> Result<(), MessageError> {
        let key = Key::new(key)?;
        let value = value.into();
        check_value(&value, 1)?;
        if !self.fields.contains_key(&key) && self.fields.len() >= KEYS_MAX {
            return Err(MessageError::TooManyKeys);
        }
        self.fields.insert(key, value);
        self.commitments.clear();
        Ok(())
    }

    /// Builder form of [`Message::set`] for keys and values known to be valid.
    ///
    /// # Panics
    /// If the key is invalid or a limit is exceeded: a programming error, never input-driven.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Err(e) = self.set(key, value) {
            panic!("Message::with({key:?}): {e}");
        }
        self
    }

    /// The value at `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(&Key(key.to_owned()))
    }

    /// The text at `key`, if it is UTF-8 bytes.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_text)
    }

    /// Fields in canonical (key) order.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&Key, &Value)> {
        self.fields.iter()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when the message has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The commitments, in the order they were made.
    pub fn commitments(&self) -> &[Commitment] {
        &self.commitments
    }

    /// The canonical byte encoding of the fields (not the commitments): what ids hash and
    /// signatures cover. Specified in `docs/protocol.md`.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.fields.len() * 32);
        out.extend_from_slice(CANONICAL_MAGIC);
        encode_fields(&self.fields, &mut out);
        out
    }

    /// SHA-256 of the canonical encoding: the id of the message without its commitments.
    pub fn unsigned_id(&self) -> Id {
        Id(Sha256::digest(self.canonical()).into())
    }

    /// The message's id: the unsigned id when it has no commitments, otherwise SHA-256 of its
    /// signature (of all signatures, sorted and length-prefixed, when there are several).
    pub fn id(&self) -> Id {
        match self.commitments.as_slice() {
            [] => self.unsigned_id(),
            [one] => Id(Sha256::digest(one.signature()).into()),
            many => {
                let mut signatures: Vec<&[u8]> = many.iter().map(Commitment::signature).collect();
                signatures.sort_unstable();
                let mut hasher = Sha256::new();
                hasher.update(b"fbm1-multi");
                for signature in signatures {
                    hasher.update((signature.len() as u32).to_be_bytes());
                    hasher.update(signature);
                }
                Id(hasher.finalize().into())
            }
        }
    }

    /// Checks the limits that are not enforced structurally (the total encoded size).
    ///
    /// # Errors
    /// [`MessageError::TooLarge`].
    pub fn check(&self) -> Result<(), MessageError> {
        if self.encoded_len() > MESSAGE_BYTES_MAX {
            return Err(MessageError::TooLarge);
        }
        Ok(())
    }

    /// Length of the canonical encoding plus commitments, without building it.
    pub fn encoded_len(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| 2 + k.0.len() + value_len(v))
            .sum();
        let commitments: usize = self
            .commitments
            .iter()
            .map(|c| c.public_key().len() + c.signature().len() + 8)
            .sum();
        CANONICAL_MAGIC.len() + 4 + fields + commitments
    }

    /// Appends a commitment made elsewhere (decoders); does not verify it.
    pub(crate) fn push_commitment(&mut self, commitment: Commitment) -> Result<(), MessageError> {
        if self.commitments.len() >= COMMITMENTS_MAX {
            return Err(MessageError::TooManyCommitments);
        }
        self.commitments.push(commitment);
        Ok(())
    }

    /// Builds a message from already-validated parts (decoders).
    pub(crate) fn from_parts(
        fields: BTreeMap<Key, Value>,
        commitments: Vec<Commitment>,
    ) -> Result<Self, MessageError> {
        if fields.len() > KEYS_MAX {
            return Err(MessageError::TooManyKeys);
        }
        if commitments.len() > COMMITMENTS_MAX {
            return Err(MessageError::TooManyCommitments);
        }
        let message = Self {
            fields,
            commitments,
        };
        message.check()?;
        Ok(message)
    }

    /// The message without its commitments.
    #[must_use]
    pub fn unsigned(&self) -> Self {
        Self {
            fields: self.fields.clone(),
            commitments: Vec::new(),
        }
    }
}

fn check_value(value: &Value, depth: usize) -> Result<(), MessageError> {
    if depth > DEPTH_MAX {
        return Err(MessageError::TooDeep);
    }
    match value {
        Value::Bytes(_) | Value::Int(_) => Ok(()),
        Value::Message(m) => m
            .fields
            .values()
            .try_for_each(|v| check_value(v, depth + 1)),
        Value::List(items) => {
            if items.len() > LIST_ITEMS_MAX {
                return Err(MessageError::TooManyItems);
            }
            items.iter().try_for_each(|v| check_value(v, depth + 1))
        }
    }
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::Bytes(b) => 5 + b.len(),
        Value::Int(_) => 9,
        Value::Message(_) => 33,
        Value::List(items) => 5 + items.iter().map(value_len).sum::<usize>(),
    }
}

/// Value tags of the canonical encoding.
mod tag {
    pub const BYTES: u8 = 0x01;
    pub const INT: u8 = 0x02;
    pub const MESSAGE: u8 = 0x03;
    pub const LIST: u8 = 0x04;
}

fn encode_fields(fields: &BTreeMap<Key, Value>, out: &mut Vec<u8>) {
    // Lengths fit: the limits above are far below u16/u32 (asserted at compile time).
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for (key, value) in fields {
        out.extend_from_slice(&(key.0.len() as u16).to_be_bytes());
        out.extend_from_slice(key.0.as_bytes());
        encode_value(value, out);
    }
}

fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Bytes(bytes) => {
            out.push(tag::BYTES);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        Value::Int(i) => {
            out.push(tag::INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Message(message) => {
            out.push(tag::MESSAGE);
            out.extend_from_slice(&message.id().0);
        }
        Value::List(items) => {
            out.push(tag::LIST);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                encode_value(item, out);
            }
        }
    }
}

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = MessageError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                decode_digest(text).map(Self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_newtype!(
    /// A message id (processes are messages, so also a process id): 32 bytes, printed as 43
    /// characters of unpadded base64url.
    Id
);
digest_newtype!(
    /// An address: SHA-256 of a public key (of the RSA modulus for RSA keys).
    Address
);

fn decode_digest(text: &str) -> Result<[u8; 32], MessageError> {
    if text.len() != 43 {
        return Err(MessageError::IdInvalid(truncate(text)));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| MessageError::IdInvalid(truncate(text)))?;
    bytes
        .try_into()
        .map_err(|_| MessageError::IdInvalid(truncate(text)))
}

/// Unpadded base64url, the text form of every id, key and signature.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url.
///
/// # Errors
/// [`MessageError::JsonInvalid`] naming `what`.
pub fn unb64(text: &str, what: &str) -> Result<Vec<u8>, MessageError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| MessageError::JsonInvalid(format!("{what}: not unpadded base64url")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(Key::new("compute-limit").is_ok());
        assert!(Key::new("meta@1.0").is_ok());
        assert!(matches!(Key::new(""), Err(MessageError::KeyInvalid(_))));
        assert!(matches!(Key::new("Type"), Err(MessageError::KeyInvalid(_))));
        assert!(matches!(Key::new("a b"), Err(MessageError::KeyInvalid(_))));
        assert!(matches!(
            Key::new(&"k".repeat(KEY_BYTES_MAX + 1)),
            Err(MessageError::KeyInvalid(_))
        ));
        assert!(Key::new(&"k".repeat(KEY_BYTES_MAX)).is_ok());
        assert!(matches!(
            Key::new("commitments"),
            Err(MessageError::KeyReserved(_))
        ));
    }

    #[test]
    fn canonical_is_order_independent_and_value_sensitive() {
        let a = Message::new().with("b", 1).with("a", "x");
        let b = Message::new().with("a", "x").with("b", 1);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.id(), b.id());
        let c = Message::new().with("a", "x").with("b", 2);
        assert_ne!(a.id(), c.id());
        // Bytes "1" and Int 1 are different values.
        let d = Message::new().with("a", "x").with("b", "1");
        assert_ne!(a.id(), d.id());
    }

    #[test]
    fn depth_and_count_limits() {
        let mut value = Value::Int(0);
        for _ in 0..DEPTH_MAX {
            value = Value::List(vec![value]);
        }
        assert_eq!(
            Message::new().set("x", value.clone()),
            Err(MessageError::TooDeep)
        );
        let mut m = Message::new();
        for i in 0..KEYS_MAX {
            m.set(&format!("k{i}"), 1).unwrap();
        }
        assert_eq!(m.set("one-more", 1), Err(MessageError::TooManyKeys));
        m.set("k0", 2).unwrap();
    }

    #[test]
    fn ids_round_trip_as_text() {
        let id = Message::new().with("a", 1).id();
        let text = id.to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<Id>().unwrap(), id);
        assert!(matches!(
            "short".parse::<Id>(),
            Err(MessageError::IdInvalid(_))
        ));
        assert!(matches!(
            "!".repeat(43).parse::<Id>(),
            Err(MessageError::IdInvalid(_))
        ));
    }
}
