//! The driver of the asset registry: one mutex around the sans-IO [`Registry`], and the store.
//!
//! Each request is decided, its records written in one fsynced batch, and only then applied and
//! answered, all under the lock: the registry in memory is always what the store holds, and two
//! requests for the last unit of an asset cannot both succeed. Asset requests are rare next to
//! messages, so one lock (held across one fsync) is enough.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::assets::request::Signed;
use crate::assets::{Answer, AssetError, AssetId, Privacy, Registry, record, view};
use crate::message::Address;
use crate::store::Store;

use super::NodeError;

impl From<AssetError> for NodeError {
    fn from(e: AssetError) -> Self {
        match e {
            AssetError::UnknownAsset(_) | AssetError::UnknownAllocation(_) => {
                NodeError::NotFound(e.to_string())
            }
            AssetError::RequestInvalid(_) | AssetError::AssetMismatch { .. } => {
                NodeError::BadRequest(e.to_string())
            }
            AssetError::NotOperator(_) | AssetError::NotOwner { .. } => {
                NodeError::Forbidden(e.to_string())
            }
            // OverAllocated, CapacityUnknown, AlreadyExists, HeldByExecutor, TooMany, and any
            // later variant: the request conflicts with the registry's state.
            _ => NodeError::Conflict(e.to_string()),
        }
    }
}

/// The node's asset registry, durable.
pub struct Assets {
    registry: Mutex<Registry>,
    store: Arc<Store>,
    privacy: Privacy,
}

impl Assets {
    /// Builds the registry from the detected `resources`, restores the store's records, and
    /// allocates the logical CPUs in `pinned_cpus` to the node (releasing executor allocations
    /// of CPUs no longer pinned), durably.
    ///
    /// # Errors
    /// [`NodeError::Store`] when the records cannot be read or written.
    pub fn open(
        store: Arc<Store>,
        resources: &[ferrobeam_hwdetect::Resource],
        node: Address,
        operators: &[Address],
        privacy: Privacy,
        pinned_cpus: &[u32],
    ) -> Result<Self, NodeError> {
        let mut registry = Registry::new(node, operators.iter().copied(), resources);
        let report = registry.restore(store.asset_records()?);
        if !report.shadowed_assets.is_empty() || !report.orphaned_allocations.is_empty() {
            tracing::warn!(
                shadowed = ?report.shadowed_assets,
                orphaned = ?report.orphaned_allocations,
                "asset records that match no asset of this machine are kept in the store, not loaded"
            );
        }
        let decision = registry.decide_executor(pinned_cpus, super::now_ms());
        store.commit_assets(&record::ops(&decision.changes))?;
        registry.apply(&decision.changes);
        let Answer::Executor {
            held,
            unknown_cpus,
            overcommitted,
        } = decision.answer
        else {
            unreachable!("decide_executor answers Executor");
        };
        if !unknown_cpus.is_empty() {
            tracing::warn!(?unknown_cpus, "executor CPUs without a cpu-core asset");
        }
        if !overcommitted.is_empty() {
            tracing::warn!(
                ?overcommitted,
                "executor cores were already allocated to a signer; they are now overcommitted"
            );
        }
        tracing::info!(cpus = ?pinned_cpus, held = held.len(), "executor cores allocated to the node");
        let assets = Self {
            registry: Mutex::new(registry),
            store,
            privacy,
        };
        Ok(assets)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // `apply` asserts before it changes anything; a panic elsewhere leaves the map sound.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides a signed request, makes it durable, applies it. Blocking (one fsync): call it
    /// from a blocking thread.
    ///
    /// # Errors
    /// The registry's refusal as a [`NodeError`], or [`NodeError::Store`] (nothing applied).
    pub fn handle(&self, signed: &Signed, path: Option<AssetId>) -> Result<Answer, NodeError> {
        let mut registry = self.lock();
        let decision = registry.decide(signed, path, super::now_ms())?;
        self.store.commit_assets(&record::ops(&decision.changes))?;
        registry.apply(&decision.changes);
        Ok(decision.answer)
    }

    /// Reads the registry.
    pub fn read<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.lock())
    }

    /// The configured privacy level.
    pub fn privacy(&self) -> Privacy {
        self.privacy
    }

    /// True for the node's address and the configured operators.
    pub fn is_operator(&self, address: &Address) -> bool {
        self.lock().is_operator(address)
    }

    /// The asset gauges for `/metrics`.
    pub fn prometheus(&self) -> String {
        view::prometheus(&self.lock())
    }
}
