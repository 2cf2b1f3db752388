//! Snapshots: a process's whole state after a slot, and its byte encoding.
//!
//! Encoding (all integers big-endian), version [`SNAPSHOT_VERSION`]:
//!
//! ```text
//! "fbsn" | version u8 | slot u64 | global count u32
//!   | per global, in name order: name length u16 | name (UTF-8) | kind u8 | value (4, 8 or 16 B)
//!   | memory length u64 | memory bytes | SHA-256 of everything before it (32 B)
//! ```
//!
//! The digest catches torn or corrupted files; `decode` checks every length and bound before it
//! allocates, so a hostile or damaged snapshot is an error, never a panic.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{ExecError, MEMORY_BYTES_MAX, WASM_PAGE_BYTES};

/// Most mutable globals a module may have (and a snapshot may hold). Worst case ~300 KiB of
/// names and values per snapshot. A module with more fails validation.
pub const GLOBALS_MAX: usize = 1024;
/// Longest mutable global export name (validation rejects longer ones, so snapshots fit).
pub(crate) const GLOBAL_NAME_BYTES_MAX: usize = 256;
/// The snapshot encoding's version byte.
pub const SNAPSHOT_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"fbsn";
const DIGEST_BYTES: usize = 32;

const _: () = assert!(GLOBAL_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(GLOBALS_MAX <= u32::MAX as usize);

/// One saved mutable global. Floats are kept as bits so NaN payloads survive exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalValue {
    /// An `i32`.
    I32(i32),
    /// An `i64`.
    I64(i64),
    /// An `f32`, as its bits.
    F32(u32),
    /// An `f64`, as its bits.
    F64(u64),
    /// A `v128`.
    V128(u128),
}

impl GlobalValue {
    fn kind(self) -> u8 {
        match self {
            GlobalValue::I32(_) => 1,
            GlobalValue::I64(_) => 2,
            GlobalValue::F32(_) => 3,
            GlobalValue::F64(_) => 4,
            GlobalValue::V128(_) => 5,
        }
    }
}

/// A process's state after slot `slot`: its linear memory and its exported mutable globals
/// (the native ABI's rules make those the whole state). Restoring it into a fresh instance of
/// the same module and running slots `slot + 1..` gives the same results as never stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The last slot whose effects the state includes.
    pub slot: u64,
    /// The whole linear memory, a multiple of 64 KiB.
    pub memory: Vec<u8>,
    /// Exported mutable globals by export name.
    pub globals: BTreeMap<String, GlobalValue>,
}

impl Snapshot {
    /// The byte encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.globals.len() <= GLOBALS_MAX,
            "instances hold at most GLOBALS_MAX"
        );
        let mut out = Vec::with_capacity(64 + self.memory.len() + self.globals.len() * 32);
        out.extend_from_slice(MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.extend_from_slice(&(self.globals.len() as u32).to_be_bytes());
        for (name, value) in &self.globals {
            // Names come from a validated module's exports, which check_module bounds.
            assert!(
                name.len() <= GLOBAL_NAME_BYTES_MAX,
                "validated global name length"
            );
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(value.kind());
            match *value {
                GlobalValue::I32(v) => out.extend_from_slice(&v.to_be_bytes()),
                GlobalValue::I64(v) => out.extend_from_slice(&v.to_be_bytes()),
                GlobalValue::F32(v) => out.extend_from_slice(&v.to_be_bytes()),
                GlobalValue::F64(v) => out.extend_from_slice(&v.to_be_bytes()),
                GlobalValue::V128(v) => out.extend_from_slice(&v.to_be_bytes()),
            }
        }
        out.extend_from_slice(&(self.memory.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.memory);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Parses and checks an encoding: magic, version, digest, every length, bound and kind.
    ///
    /// # Errors
    /// [`ExecError::SnapshotInvalid`] saying what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, ExecError> {
        let invalid = |what: &str| ExecError::SnapshotInvalid(what.to_owned());
        let Some((body, digest)) = bytes.split_at_checked(bytes.len().saturating_sub(DIGEST_BYTES))
        else {
            return Err(invalid("truncated"));
        };
        if digest.len() != DIGEST_BYTES || Sha256::digest(body).as_slice() != digest {
            return Err(invalid("digest mismatch (truncated or corrupted)"));
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return Err(invalid("not a snapshot (bad magic)"));
        }
        let version = r.take(1)?[0];
        if version != SNAPSHOT_VERSION {
            return Err(ExecError::SnapshotInvalid(format!(
                "version {version}, expected {SNAPSHOT_VERSION}"
            )));
        }
        let slot = r.u64()?;
        let count = r.u32()? as usize;
        if count > GLOBALS_MAX {
            return Err(invalid("too many globals"));
        }
        let mut globals = BTreeMap::new();
        for _ in 0..count {
            let (name, value) = r.global()?;
            if globals.insert(name, value).is_some() {
                return Err(invalid("duplicate global"));
            }
        }
        let memory_len = r.u64()?;
        if memory_len > MEMORY_BYTES_MAX || !memory_len.is_multiple_of(WASM_PAGE_BYTES) {
            return Err(invalid("memory length out of range or not whole pages"));
        }
        // memory_len <= MEMORY_BYTES_MAX, which fits usize (asserted in execute).
        let memory = r.take(memory_len as usize)?.to_vec();
        if !r.0.is_empty() {
            return Err(invalid("trailing bytes"));
        }
        Ok(Self {
            slot,
            memory,
            globals,
        })
    }
}

/// A cursor over the snapshot body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ExecError> {
        let Some((head, rest)) = self.0.split_at_checked(n) else {
            return Err(ExecError::SnapshotInvalid("truncated".into()));
        };
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ExecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, ExecError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, ExecError> {
        self.array().map(u64::from_be_bytes)
    }

    fn global(&mut self) -> Result<(String, GlobalValue), ExecError> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        if len > GLOBAL_NAME_BYTES_MAX {
            return Err(ExecError::SnapshotInvalid("global name too long".into()));
        }
        let name = std::str::from_utf8(self.take(len)?)
            .map_err(|_| ExecError::SnapshotInvalid("global name is not UTF-8".into()))?
            .to_owned();
        let value = match self.take(1)?[0] {
            1 => GlobalValue::I32(i32::from_be_bytes(self.array()?)),
            2 => GlobalValue::I64(i64::from_be_bytes(self.array()?)),
            3 => GlobalValue::F32(u32::from_be_bytes(self.array()?)),
            4 => GlobalValue::F64(u64::from_be_bytes(self.array()?)),
            5 => GlobalValue::V128(u128::from_be_bytes(self.array()?)),
            kind => {
                return Err(ExecError::SnapshotInvalid(format!(
                    "unknown global kind {kind}"
                )));
            }
        };
        Ok((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut globals = BTreeMap::new();
        globals.insert("a".to_owned(), GlobalValue::I32(-7));
        globals.insert("b".to_owned(), GlobalValue::F64(f64::NAN.to_bits() | 1));
        globals.insert("c".to_owned(), GlobalValue::V128(u128::MAX - 3));
        let mut memory = vec![0; 2 * WASM_PAGE_BYTES as usize];
        memory[12345] = 9;
        Snapshot {
            slot: 41,
            memory,
            globals,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let snapshot = sample();
        assert_eq!(Snapshot::decode(&snapshot.encode()).unwrap(), snapshot);
        let empty = Snapshot {
            slot: 0,
            memory: vec![],
            globals: BTreeMap::new(),
        };
        assert_eq!(Snapshot::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn damage_is_rejected() {
        let bytes = sample().encode();
        for cut in [0, 1, 4, 20, bytes.len() - 1] {
            assert!(matches!(
                Snapshot::decode(&bytes[..cut]),
                Err(ExecError::SnapshotInvalid(_))
            ));
        }
        let mut flipped = bytes.clone();
        flipped[200] ^= 1;
        assert!(Snapshot::decode(&flipped).is_err());
    }

    /// Re-seals a body with a fresh digest, to reach the structural checks behind it.
    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let digest = Sha256::digest(&body);
        body.extend_from_slice(&digest);
        body
    }

    #[test]
    fn structure_is_checked_behind_the_digest() {
        let bytes = sample().encode();
        let body = bytes[..bytes.len() - DIGEST_BYTES].to_vec();
        let mut version = body.clone();
        version[4] = 9;
        assert!(Snapshot::decode(&sealed(version)).is_err());
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(Snapshot::decode(&sealed(trailing)).is_err());
        let mut count = body.clone();
        count[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Snapshot::decode(&sealed(count)).is_err());
        let mut magic = body;
        magic[0] = b'x';
        assert!(Snapshot::decode(&sealed(magic)).is_err());
    }
}
