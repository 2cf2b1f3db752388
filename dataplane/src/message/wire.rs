//! The rkyv wire form of a message: what frames on QUIC streams and the store carry.
//!
//! The archive is flat, not recursive: every message and value of the tree sits in one of two
//! arrays and refers to its children by index. Validation (`rkyv::access` with bytecheck) is then
//! iterative, so a hostile archive cannot exhaust the stack, and the conversion back to a
//! [`Message`] walks the tree with an explicit depth bound and checks that every node is used
//! exactly once (no sharing, no orphans) and that keys are in canonical order.
//!
//! Never `access_unchecked`: this is network input.

use std::collections::BTreeMap;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::{
    Commitment, DEPTH_MAX, KEYS_MAX, Key, LIST_ITEMS_MAX, MESSAGE_BYTES_MAX, Message, MessageError,
    Scheme, Value,
};

/// Largest wire frame: a maximal message plus the archive's own overhead.
pub const WIRE_BYTES_MAX: usize = MESSAGE_BYTES_MAX + 1024 * 1024;
/// Alignment the archive root needs; frames keep 16-byte alignment so views are read in place.
pub const WIRE_ALIGN: usize = 16;

/// The archived root: `messages[0]` is the message itself.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Default)]
pub struct WireFrame {
    /// Every message of the tree, root first.
    pub messages: Vec<WireMessage>,
    /// Every value of the tree.
    pub values: Vec<WireValue>,
}

/// One message: its fields (in canonical key order) and commitments.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Default)]
pub struct WireMessage {
    /// Fields in strictly increasing key order.
    pub fields: Vec<WireField>,
    /// Commitments.
    pub commitments: Vec<WireCommitment>,
}

/// One field: a key and the index of its value.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct WireField {
    /// The key.
    pub key: String,
    /// Index into [`WireFrame::values`].
    pub value: u32,
}

/// One value; children are indices.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub enum WireValue {
    /// Bytes.
    Bytes(Vec<u8>),
    /// An integer.
    Int(i64),
    /// Index into [`WireFrame::messages`].
    Message(u32),
    /// Indices into [`WireFrame::values`].
    List(Vec<u32>),
}

/// One commitment.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct WireCommitment {
    /// [`Scheme::code`].
    pub scheme: u8,
    /// Public key.
    pub key: Vec<u8>,
    /// Signature.
    pub signature: Vec<u8>,
}

/// Encodes a message into its wire form (16-byte aligned).
pub fn encode(message: &Message) -> AlignedVec<WIRE_ALIGN> {
    let mut frame = WireFrame::default();
    flatten_message(message, &mut frame);
    // Serializing plain owned data into a growable buffer cannot fail.
    rkyv::api::high::to_bytes_in::<_, rancor::Panic>(&frame, AlignedVec::<WIRE_ALIGN>::new())
        .unwrap_or_else(|never| match never {})
}

fn flatten_message(message: &Message, frame: &mut WireFrame) -> u32 {
    let index = frame.messages.len();
    frame.messages.push(WireMessage::default());
    let fields = message
        .fields()
        .map(|(key, value)| WireField {
            key: key.as_str().to_owned(),
            value: flatten_value(value, frame),
        })
        .collect();
    let commitments = message
        .commitments()
        .iter()
        .map(|c| WireCommitment {
            scheme: c.scheme().code(),
            key: c.public_key().to_vec(),
            signature: c.signature().to_vec(),
        })
        .collect();
    frame.messages[index] = WireMessage {
        fields,
        commitments,
    };
    index as u32
}

fn flatten_value(value: &Value, frame: &mut WireFrame) -> u32 {
    let wire = match value {
        Value::Bytes(b) => WireValue::Bytes(b.clone()),
        Value::Int(i) => WireValue::Int(*i),
        Value::Message(m) => WireValue::Message(flatten_message(m, frame)),
        Value::List(items) => {
            WireValue::List(items.iter().map(|v| flatten_value(v, frame)).collect())
        }
    };
    frame.values.push(wire);
    (frame.values.len() - 1) as u32
}

/// Validates `bytes` as a wire frame and returns the archived view, read in place.
///
/// # Errors
/// [`MessageError::WireInvalid`] when the archive fails validation or is misaligned,
/// [`MessageError::TooLarge`] over [`WIRE_BYTES_MAX`].
pub fn access(bytes: &[u8]) -> Result<&ArchivedWireFrame, MessageError> {
    if bytes.len() > WIRE_BYTES_MAX {
        return Err(MessageError::TooLarge);
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(WIRE_ALIGN) {
        return Err(MessageError::WireInvalid(
            "frame is not 16-byte aligned".into(),
        ));
    }
    rkyv::access::<ArchivedWireFrame, rancor::Error>(bytes)
        .map_err(|e| MessageError::WireInvalid(addresses_to_offsets(&e.to_string(), bytes)))
}

/// bytecheck's errors name memory addresses (`ptr 0x5651…`). The reason goes back to the peer,
/// so each address is rewritten as its offset into the frame (`+16`), or `0x?` outside it:
/// a heap address would give a remote client a hint at the node's memory layout.
fn addresses_to_offsets(reason: &str, bytes: &[u8]) -> String {
    let base = bytes.as_ptr() as usize;
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        let token = &rest[at..at + 2 + digits];
        match usize::from_str_radix(&token[2..], 16) {
            Ok(address) if digits > 0 && (base..=base + bytes.len()).contains(&address) => {
                out.push_str(&format!("+{}", address - base));
            }
            _ if digits == 0 => out.push_str("0x"),
            _ => out.push_str("0x?"),
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

/// Decodes a wire frame into a message, copying it to an aligned buffer first if needed.
///
/// # Errors
/// As [`access`], plus every message rule (keys, order, limits, tree shape).
pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
    if bytes.len() > WIRE_BYTES_MAX {
        return Err(MessageError::TooLarge);
    }
    if (bytes.as_ptr() as usize).is_multiple_of(WIRE_ALIGN) {
        return from_archived(access(bytes)?);
    }
    // At least one byte: an empty AlignedVec has a dangling, unaligned pointer, and the copy
    // would then be refused as misaligned instead of validated.
    let mut aligned = AlignedVec::<WIRE_ALIGN>::with_capacity(bytes.len().max(1));
    aligned.extend_from_slice(bytes);
    from_archived(access(&aligned)?)
}

/// Converts a validated archive into a message.
///
/// # Errors
/// [`MessageError::WireInvalid`] for a malformed tree, or the message rule it breaks.
pub fn from_archived(frame: &ArchivedWireFrame) -> Result<Message, MessageError> {
    if frame.messages.is_empty() {
        return Err(MessageError::WireInvalid("no root message".into()));
    }
    let mut walk = Walk {
        frame,
        messages_used: vec![false; frame.messages.len()],
        values_used: vec![false; frame.values.len()],
    };
    let message = walk.message(0, 0)?;
    if walk.messages_used.contains(&false) || walk.values_used.contains(&false) {
        return Err(MessageError::WireInvalid("unreferenced nodes".into()));
    }
    message.check()?;
    Ok(message)
}

struct Walk<'a> {
    frame: &'a ArchivedWireFrame,
    messages_used: Vec<bool>,
    values_used: Vec<bool>,
}

fn claim(used: &mut [bool], index: u32, what: &str) -> Result<usize, MessageError> {
    let index = index as usize;
    match used.get_mut(index) {
        None => Err(MessageError::WireInvalid(format!(
            "{what} index out of range"
        ))),
        Some(true) => Err(MessageError::WireInvalid(format!(
            "{what} referenced twice"
        ))),
        Some(slot) => {
            *slot = true;
            Ok(index)
        }
    }
}

impl Walk<'_> {
    fn message(&mut self, index: u32, depth: usize) -> Result<Message, MessageError> {
        if depth > DEPTH_MAX {
            return Err(MessageError::TooDeep);
        }
        let index = claim(&mut self.messages_used, index, "message")?;
        let wire = &self.frame.messages[index];
        if wire.fields.len() > KEYS_MAX {
            return Err(MessageError::TooManyKeys);
        }
        let mut fields = BTreeMap::new();
        let mut previous: Option<&str> = None;
        for field in wire.fields.iter() {
            let key = field.key.as_str();
            if previous.is_some_and(|p| p >= key) {
                return Err(MessageError::WireInvalid(
                    "keys out of canonical order or repeated".into(),
                ));
            }
            previous = Some(key);
            let value = self.value(field.value.to_native(), depth + 1)?;
            fields.insert(Key::new(key)?, value);
        }
        let commitments = wire
            .commitments
            .iter()
            .map(|c| {
                Commitment::new(
                    Scheme::from_code(c.scheme)?,
                    c.key.to_vec(),
                    c.signature.to_vec(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Message::from_parts(fields, commitments)
    }

    fn value(&mut self, index: u32, depth: usize) -> Result<Value, MessageError> {
        if depth > DEPTH_MAX {
            return Err(MessageError::TooDeep);
        }
        let index = claim(&mut self.values_used, index, "value")?;
        Ok(match &self.frame.values[index] {
            ArchivedWireValue::Bytes(b) => Value::Bytes(b.to_vec()),
            ArchivedWireValue::Int(i) => Value::Int(i.to_native()),
            ArchivedWireValue::Message(m) => {
                Value::Message(Box::new(self.message(m.to_native(), depth)?))
            }
            ArchivedWireValue::List(items) => {
                if items.len() > LIST_ITEMS_MAX {
                    return Err(MessageError::TooManyItems);
                }
                let mut list = Vec::with_capacity(items.len());
                for item in items.iter() {
                    list.push(self.value(item.to_native(), depth + 1)?);
                }
                Value::List(list)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::new().with("a", "text").with("b", 7).with(
            "c",
            Value::List(vec![1.into(), Message::new().with("x", 1).into()]),
        )
    }

    #[test]
    fn round_trip_keeps_the_id() {
        let m = sample();
        let bytes = encode(&m);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), m.id());
    }

    #[test]
    fn misaligned_input_is_copied_not_rejected() {
        let bytes = encode(&sample());
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        assert_eq!(decode(&shifted[1..]).unwrap(), sample());
    }

    #[test]
    fn empty_input_is_invalid_not_misaligned() {
        // Found by the quic_frames fuzz target: the copy of an empty, unaligned input was
        // refused as misaligned, so an empty HTTP body got the wrong reason.
        let whole = [0u8; 16];
        for empty in [&whole[..0], &whole[1..1], &[][..]] {
            match decode(empty) {
                Err(MessageError::WireInvalid(reason)) => {
                    assert!(!reason.contains("aligned"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reasons_name_offsets_not_addresses() {
        // Found by the quic_frames fuzz target: bytecheck's reasons carried heap addresses,
        // which the node sends back to the peer in its refusal.
        let bytes = encode(&sample());
        let mut truncated = AlignedVec::<WIRE_ALIGN>::new();
        truncated.extend_from_slice(&bytes[..bytes.len() - 16]);
        let Err(MessageError::WireInvalid(reason)) = access(&truncated) else {
            panic!("a truncated frame is invalid");
        };
        assert!(reason.contains('+'), "{reason}");
        let hex_run = reason
            .split("0x")
            .skip(1)
            .map(|s| s.bytes().take_while(u8::is_ascii_hexdigit).count())
            .max()
            .unwrap_or(0);
        assert_eq!(hex_run, 0, "{reason}");
        assert_eq!(
            addresses_to_offsets("ptr 0x10 in 0x0..0xffffffffffffffff, 0x", &[]),
            "ptr 0x? in 0x?..0x?, 0x"
        );
    }

    #[test]
    fn garbage_and_every_truncation_are_rejected() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        assert!(decode(&[0xAA; 64]).is_err());
    }

    #[test]
    fn shared_and_out_of_order_nodes_are_rejected() {
        let frame = WireFrame {
            messages: vec![WireMessage {
                fields: vec![
                    WireField {
                        key: "a".into(),
                        value: 0,
                    },
                    WireField {
                        key: "b".into(),
                        value: 0,
                    },
                ],
                commitments: vec![],
            }],
            values: vec![WireValue::Int(1)],
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&frame).unwrap();
        assert!(matches!(decode(&bytes), Err(MessageError::WireInvalid(_))));
        let frame = WireFrame {
            messages: vec![WireMessage {
                fields: vec![
                    WireField {
                        key: "b".into(),
                        value: 0,
                    },
                    WireField {
                        key: "a".into(),
                        value: 1,
                    },
                ],
                commitments: vec![],
            }],
            values: vec![WireValue::Int(1), WireValue::Int(2)],
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&frame).unwrap();
        assert!(matches!(decode(&bytes), Err(MessageError::WireInvalid(_))));
    }

    #[test]
    fn cycles_cannot_recurse_forever() {
        // A message whose value points back at itself.
        let frame = WireFrame {
            messages: vec![WireMessage {
                fields: vec![WireField {
                    key: "a".into(),
                    value: 0,
                }],
                commitments: vec![],
            }],
            values: vec![WireValue::Message(0)],
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&frame).unwrap();
        assert!(matches!(decode(&bytes), Err(MessageError::WireInvalid(_))));
    }
}
