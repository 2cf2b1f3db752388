//! The asset registry (HyperMesh's hardware-as-assets, ferrobeam's `assets@1.0` device): every
//! resource of the hardware inventory, plus whatever an operator registers, is an asset with a
//! stable id; buyers allocate and release amounts of them with signed messages; the executor's
//! pinned cores are allocations held by the node itself.
//!
//! Sans-IO: no files, sockets or clocks. Time (`now_ms`) is passed in, and a decision is a value:
//! [`Registry::decide`] answers a request with the [`Change`]s it needs, the driver
//! (`node::assets`) makes them durable ([`record`]), and only then [`Registry::apply`]s them, so
//! the registry in memory never runs ahead of the store.
//!
//! ```text
//! signed message --> request::parse --> Registry::decide (checks, no mutation)
//!     --> Decision { answer, changes } --> record::encode --> fsynced store batch
//!     --> Registry::apply(changes) --> answer to the caller
//! ```
//!
//! Ids, request messages and privacy levels are specified in `docs/assets.md`.

pub mod record;
pub mod registry;
pub mod request;
pub mod view;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::message::{Address, Id, MessageError};

pub use registry::{Answer, Change, Decision, Registry, RestoreReport};
pub use request::{AllocateRequest, RegisterRequest, ReleaseRequest, Request};
pub use view::{Caller, Privacy, View};

/// Domain separator of asset ids (see [`AssetId::derive`]).
pub const ASSET_ID_DOMAIN: &[u8] = b"ferrobeam-asset-v1";
/// Domain separator of the ids of the executor's own allocations.
pub const EXECUTOR_ALLOCATION_DOMAIN: &[u8] = b"ferrobeam-asset-executor-v1";

/// Most assets one registry holds (detected plus registered). A large host has a few hundred
/// logical CPUs, disks and NICs; 65 536 leaves room for registered assets. An asset costs about
/// 300 bytes plus its allocations, so the worst case is about 20 MiB. Registering past it is
/// refused ([`AssetError::TooMany`], HTTP 409).
pub const ASSETS_MAX: usize = 65_536;
/// Most live allocations of one asset: bounds the work of one allocation check and the size of
/// one asset's JSON. Allocating past it is refused ([`AssetError::TooMany`], HTTP 409).
pub const ALLOCATIONS_PER_ASSET_MAX: usize = 4096;
/// Longest asset kind, in bytes (`cpu-core`, `gpu`, or an operator's own kind).
pub const KIND_BYTES_MAX: usize = 32;
/// Longest unit name, in bytes.
pub const UNIT_BYTES_MAX: usize = 32;
/// Longest hardware identity, in bytes (disk identities carry model and serial).
pub const IDENTITY_BYTES_MAX: usize = 256;

const _: () = assert!(ALLOCATIONS_PER_ASSET_MAX <= u32::MAX as usize);
const _: () = assert!(KIND_BYTES_MAX <= IDENTITY_BYTES_MAX);

/// An asset id: 32 bytes, printed as 43 characters of unpadded base64url like every id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AssetId(pub Id);

impl AssetId {
    /// The id of the asset of `kind` and `identity` on the node with `address`:
    ///
    /// ```text
    /// SHA-256( "ferrobeam-asset-v1"
    ///          || address                     (32 raw bytes)
    ///          || u32be(len(kind))     || kind      (UTF-8)
    ///          || u32be(len(identity)) || identity  (UTF-8) )
    /// ```
    ///
    /// The length prefixes keep (`ab`, `c`) and (`a`, `bc`) apart; the address makes the same
    /// hardware model on two nodes two assets.
    pub fn derive(address: &Address, kind: &str, identity: &str) -> Self {
        assert!(!kind.is_empty(), "every asset has a kind");
        assert!(!identity.is_empty(), "every asset has an identity");
        let mut hasher = Sha256::new();
        hasher.update(ASSET_ID_DOMAIN);
        hasher.update(address.as_bytes());
        for part in [kind, identity] {
            // Registered parts are bounded by KIND_BYTES_MAX/IDENTITY_BYTES_MAX, detected ones by
            // hwdetect's 64 KiB sysfs read limit: far below u32::MAX.
            let len = u32::try_from(part.len()).expect("asset id parts are small");
            hasher.update(len.to_be_bytes());
            hasher.update(part.as_bytes());
        }
        AssetId(Id(hasher.finalize().into()))
    }
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetId({self})")
    }
}

impl FromStr for AssetId {
    type Err = MessageError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(AssetId)
    }
}

/// An allocation id: the id of the signed `Allocate` message that made it (so a replayed request
/// names the allocation it already made), or, for the executor's own cores,
/// `SHA-256("ferrobeam-asset-executor-v1" || asset id)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AllocationId(pub Id);

impl AllocationId {
    /// The id of the executor's allocation of `asset` (stable across restarts).
    pub fn executor(asset: &AssetId) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(EXECUTOR_ALLOCATION_DOMAIN);
        hasher.update(asset.0.as_bytes());
        AllocationId(Id(hasher.finalize().into()))
    }
}

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllocationId({self})")
    }
}

impl FromStr for AllocationId {
    type Err = MessageError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(AllocationId)
    }
}

/// Where an asset came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "source")]
pub enum Origin {
    /// A resource of the hardware inventory, re-derived at every start.
    Detected,
    /// Registered by an operator with a signed `Register` message.
    Registered {
        /// The operator who signed it.
        by: Address,
        /// The id of the `Register` message.
        request: Id,
        /// When it was registered (ms since the Unix epoch).
        timestamp_ms: u64,
    },
}

/// Who holds an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holder {
    /// A signer of an `Allocate` message (a buyer, or an operator for itself).
    Signer,
    /// The node's executor thread pinned to this core: made at start, never released over HTTP.
    Executor,
}

/// An amount of one asset held by one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Its id.
    pub id: AllocationId,
    /// The asset.
    pub asset: AssetId,
    /// Who holds it: the signer of the request, or the node's address for executor cores.
    pub owner: Address,
    /// How much, in the asset's unit (at least 1).
    pub amount: u64,
    /// When it was made (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// A signer's, or the executor's.
    pub holder: Holder,
}

/// A released allocation, kept so that a replayed `Allocate` does not allocate again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The allocation as it was.
    pub allocation: Allocation,
    /// Who released it (the owner or an operator).
    pub by: Address,
    /// The id of the `Release` message.
    pub request: Id,
    /// When (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

/// One asset and its live allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// Its id ([`AssetId::derive`] of the node address, kind and identity).
    pub id: AssetId,
    /// `cpu-core`, `memory`, `disk`, `nic`, `gpu`, or an operator's kind.
    pub kind: String,
    /// Stable hardware identity (see `docs/hwdetect.md`), or the operator's.
    pub identity: String,
    /// How much there is, in `unit`; `None` when unknown (then it cannot be allocated).
    pub capacity: Option<u64>,
    /// The unit of `capacity` and of allocation amounts.
    pub unit: String,
    /// Detected or registered.
    pub origin: Origin,
    /// Live allocations by id.
    pub allocations: std::collections::BTreeMap<AllocationId, Allocation>,
}

impl Asset {
    /// The sum of the live allocations' amounts (saturating; capacity checks keep it ≤ capacity
    /// for signers' allocations).
    pub fn allocated(&self) -> u64 {
        self.allocations
            .values()
            .fold(0u64, |sum, a| sum.saturating_add(a.amount))
    }

    /// Capacity left, when the capacity is known.
    pub fn available(&self) -> Option<u64> {
        self.capacity.map(|c| c.saturating_sub(self.allocated()))
    }
}

/// Why the registry refused a request. Every variant is the caller's doing (the request or its
/// signer); the driver maps them to HTTP statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssetError {
    /// No asset with this id.
    #[error("unknown asset {0}")]
    UnknownAsset(AssetId),
    /// No live or released allocation with this id on this asset.
    #[error("unknown allocation {0}")]
    UnknownAllocation(AllocationId),
    /// The request message is malformed (missing or bad fields, wrong action).
    #[error("invalid request: {0}")]
    RequestInvalid(String),
    /// The request names another asset than the path.
    #[error("the request names asset {named}, the path {path}")]
    AssetMismatch {
        /// The asset in the signed message.
        named: String,
        /// The asset in the path.
        path: AssetId,
    },
    /// The amount exceeds what is left.
    #[error("asset {asset} has {available} {unit} left; {requested} requested")]
    OverAllocated {
        /// The asset.
        asset: AssetId,
        /// What is left.
        available: u64,
        /// What was asked for.
        requested: u64,
        /// The unit.
        unit: String,
    },
    /// The asset's capacity is unknown (a NIC whose speed the kernel does not report).
    #[error("asset {0} has no known capacity and cannot be allocated")]
    CapacityUnknown(AssetId),
    /// An asset with this id exists and differs (or is detected hardware).
    #[error("asset {0} already exists with other attributes")]
    AlreadyExists(AssetId),
    /// The executor holds this allocation; it goes away with the executor, not over HTTP.
    #[error("allocation {0} is held by the node's executor")]
    HeldByExecutor(AllocationId),
    /// The signer is not an operator of this node.
    #[error("{0} is not an operator of this node")]
    NotOperator(Address),
    /// The signer neither owns the allocation nor is an operator.
    #[error("{signer} may not release allocation {allocation}")]
    NotOwner {
        /// Who signed.
        signer: Address,
        /// The allocation.
        allocation: AllocationId,
    },
    /// A limit ([`ASSETS_MAX`], [`ALLOCATIONS_PER_ASSET_MAX`]) would be exceeded.
    #[error("too many {0}")]
    TooMany(&'static str),
}
