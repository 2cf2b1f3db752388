//! The registry's records in the store's `assets` keyspace: what [`Change`]s write and what a
//! restart reads back. Values are JSON (small, rare writes; readable with any fjall tool).
//!
//! | key | value |
//! |---|---|
//! | `asset/` ‖ asset id (32 bytes) | a registered asset (detected ones are re-derived at start) |
//! | `alloc/` ‖ allocation id (32 bytes) | a live allocation |
//! | `released/` ‖ allocation id (32 bytes) | a released allocation (the tombstone) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Allocation, Asset, AssetId, Change, Origin, Released};

/// Key prefix of registered assets.
pub const ASSET_PREFIX: &[u8] = b"asset/";
/// Key prefix of live allocations.
pub const ALLOCATION_PREFIX: &[u8] = b"alloc/";
/// Key prefix of tombstones.
pub const RELEASED_PREFIX: &[u8] = b"released/";

/// One write to the `assets` keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Vec<u8>, Vec<u8>),
    /// Remove.
    Remove(Vec<u8>),
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A registered asset (no allocations).
    Asset(Asset),
    /// A live allocation.
    Allocation(Allocation),
    /// A tombstone.
    Released(Released),
}

/// A record that does not decode: the store is corrupted or from another version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("asset record {key}: {reason}")]
pub struct RecordError {
    /// The key, printable.
    pub key: String,
    /// What failed.
    pub reason: String,
}

/// The stored form of a registered asset.
#[derive(Serialize, Deserialize)]
struct AssetRecord {
    id: AssetId,
    kind: String,
    identity: String,
    capacity: Option<u64>,
    unit: String,
    origin: Origin,
}

fn key(prefix: &[u8], id: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 32);
    key.extend_from_slice(prefix);
    key.extend_from_slice(id);
    key
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and integers: serialization cannot fail.
    serde_json::to_vec(value).expect("asset records serialize")
}

/// The store writes of `changes`, in order.
pub fn ops(changes: &[Change]) -> Vec<Op> {
    let mut ops = Vec::with_capacity(changes.len() * 2);
    for change in changes {
        match change {
            Change::PutAsset(asset) => {
                let record = AssetRecord {
                    id: asset.id,
                    kind: asset.kind.clone(),
                    identity: asset.identity.clone(),
                    capacity: asset.capacity,
                    unit: asset.unit.clone(),
                    origin: asset.origin.clone(),
                };
                ops.push(Op::Put(
                    key(ASSET_PREFIX, asset.id.0.as_bytes()),
                    json(&record),
                ));
            }
            Change::PutAllocation(allocation) => ops.push(Op::Put(
                key(ALLOCATION_PREFIX, allocation.id.0.as_bytes()),
                json(allocation),
            )),
            Change::DropAllocation(allocation) => ops.push(Op::Remove(key(
                ALLOCATION_PREFIX,
                allocation.id.0.as_bytes(),
            ))),
            Change::Release(released) => {
                let id = released.allocation.id.0.as_bytes();
                ops.push(Op::Remove(key(ALLOCATION_PREFIX, id)));
                ops.push(Op::Put(key(RELEASED_PREFIX, id), json(released)));
            }
        }
    }
    ops
}

/// Decodes one stored record.
///
/// # Errors
/// [`RecordError`] for an unknown prefix, a short key, JSON that does not decode, or a key that
/// differs from the id inside the value.
pub fn decode(key: &[u8], value: &[u8]) -> Result<Record, RecordError> {
    let fail = |reason: String| RecordError {
        key: String::from_utf8_lossy(key).chars().take(64).collect(),
        reason,
    };
    let (prefix, id) = [ASSET_PREFIX, ALLOCATION_PREFIX, RELEASED_PREFIX]
        .into_iter()
        .find_map(|prefix| Some((prefix, key.strip_prefix(prefix)?)))
        .ok_or_else(|| fail("unknown prefix".into()))?;
    let id: [u8; 32] = id
        .try_into()
        .map_err(|_| fail("id is not 32 bytes".into()))?;
    let bad_json = |e: serde_json::Error| fail(e.to_string());
    let (record, inner) = match prefix {
        ASSET_PREFIX => {
            let r: AssetRecord = serde_json::from_slice(value).map_err(bad_json)?;
            let inner = r.id.0.0;
            let asset = Asset {
                id: r.id,
                kind: r.kind,
                identity: r.identity,
                capacity: r.capacity,
                unit: r.unit,
                origin: r.origin,
                allocations: BTreeMap::new(),
            };
            (Record::Asset(asset), inner)
        }
        ALLOCATION_PREFIX => {
            let a: Allocation = serde_json::from_slice(value).map_err(bad_json)?;
            let inner = a.id.0.0;
            (Record::Allocation(a), inner)
        }
        _ => {
            let r: Released = serde_json::from_slice(value).map_err(bad_json)?;
            let inner = r.allocation.id.0.0;
            (Record::Released(r), inner)
        }
    };
    if inner != id {
        return Err(fail("the key names another id than the value".into()));
    }
    Ok(record)
}
