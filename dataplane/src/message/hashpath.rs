//! Hashpaths: the name of a process's state after a slot, recomputable by anyone holding the
//! schedule.
//!
//! `hashpath(base, req) = SHA-256(raw(hashpath(base)) ‖ raw(id(req)))` (HyperBEAM's
//! `sha-256-chain`). A process's chain starts from its own id; slot 0 is the process message
//! itself, so the hashpath after slot n covers messages 0..=n in slot order.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{Id, MessageError, b64, decode_digest};

/// The hashpath of a process after some slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hashpath(pub [u8; 32]);

impl Hashpath {
    /// The base of a process's chain: its id, before any slot.
    pub fn base(process: &Id) -> Self {
        Self(process.0)
    }

    /// The hashpath after applying the message `request` to this state.
    #[must_use]
    pub fn then(&self, request: &Id) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update(request.0);
        Self(hasher.finalize().into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Hashpath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64(&self.0))
    }
}

impl fmt::Debug for Hashpath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hashpath({self})")
    }
}

impl FromStr for Hashpath {
    type Err = MessageError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        decode_digest(text).map(Self)
    }
}

impl serde::Serialize for Hashpath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hashpath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Recomputes the chain of `process` over `messages` (slot order, slot 0 first) and checks each
/// claimed hashpath. Returns the first slot whose claim differs, or `Ok(final)`.
///
/// # Errors
/// The index of the first mismatching slot.
pub fn verify_chain(
    process: &Id,
    messages: &[Id],
    claimed: &[Hashpath],
) -> Result<Hashpath, usize> {
    let mut path = Hashpath::base(process);
    for (slot, message) in messages.iter().enumerate() {
        path = path.then(message);
        match claimed.get(slot) {
            Some(claim) if *claim == path => {}
            _ => return Err(slot),
        }
    }
    if claimed.len() != messages.len() {
        return Err(messages.len());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verifies_and_pinpoints_a_break() {
        let process = Id([1; 32]);
        let messages = [process, Id([2; 32]), Id([3; 32])];
        let mut claimed = Vec::new();
        let mut path = Hashpath::base(&process);
        for m in &messages {
            path = path.then(m);
            claimed.push(path);
        }
        assert_eq!(verify_chain(&process, &messages, &claimed), Ok(path));
        claimed[1].0[0] ^= 1;
        assert_eq!(verify_chain(&process, &messages, &claimed), Err(1));
        assert_eq!(verify_chain(&process, &messages, &claimed[..1]), Err(1));
    }
}
