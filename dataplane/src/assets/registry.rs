//! The registry's state and its decisions: [`Registry::decide`] checks a request against the
//! state without changing it and returns the [`Change`]s to make durable; [`Registry::apply`]
//! makes them in memory once they are.
//!
//! Invariants (asserted in `apply`): every live allocation belongs to an asset of the registry and
//! is indexed once; an allocation id is live or released, never both; the allocations a signer
//! made never take an asset past its capacity (the executor's may, see
//! [`Registry::decide_executor`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferrobeam_hwdetect::{CapacityUnit, Resource, ResourceKind};

use crate::message::Address;

use super::request::{AllocateRequest, RegisterRequest, ReleaseRequest, Request, Signed};
use super::{
    ALLOCATIONS_PER_ASSET_MAX, ASSETS_MAX, Allocation, AllocationId, Asset, AssetError, AssetId,
    Holder, Origin, Released,
};

/// What a durable change does; produced by `decide*`, consumed by the store codec and `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Adds a registered asset (without allocations).
    PutAsset(Asset),
    /// Adds a live allocation.
    PutAllocation(Allocation),
    /// Removes an executor allocation whose core is no longer pinned (no tombstone: the same
    /// core pinned again later gets the same allocation id back).
    DropAllocation(Allocation),
    /// Releases a live allocation, keeping a tombstone.
    Release(Released),
}

/// What the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The asset is registered.
    Registered {
        /// Its id.
        asset: AssetId,
        /// True when it already was, with the same attributes.
        duplicate: bool,
    },
    /// The allocation exists (or existed: `released`).
    Allocated {
        /// The allocation.
        allocation: Allocation,
        /// True when this request had been seen before.
        duplicate: bool,
        /// True when the allocation has since been released (a replay after the release).
        released: bool,
    },
    /// The allocation is released.
    Released {
        /// The tombstone.
        released: Released,
        /// True when it already was.
        duplicate: bool,
    },
    /// The executor's cores are allocated.
    Executor {
        /// Allocations the executor holds after the change.
        held: Vec<AllocationId>,
        /// Logical CPUs without a `cpu-core` asset (the inventory's CPU part failed).
        unknown_cpus: Vec<u32>,
        /// Assets a signer had already filled: the executor's allocation goes past capacity.
        overcommitted: Vec<AssetId>,
    },
}

/// An answer and the changes it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to answer once the changes are durable.
    pub answer: Answer,
    /// What to write (in order) and then apply.
    pub changes: Vec<Change>,
}

/// Records read back from the store at start, and what could not be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Registered assets whose id is now a detected asset's (kept in the store, not loaded).
    pub shadowed_assets: Vec<AssetId>,
    /// Allocations of assets that no longer exist (hardware removed; kept in the store).
    pub orphaned_allocations: Vec<AllocationId>,
}

/// The asset registry of one node.
#[derive(Debug, Clone)]
pub struct Registry {
    node: Address,
    operators: BTreeSet<Address>,
    assets: BTreeMap<AssetId, Asset>,
    /// Logical CPU id → its `cpu-core` asset.
    cpu_cores: BTreeMap<u32, AssetId>,
    live: HashMap<AllocationId, AssetId>,
    released: HashMap<AllocationId, Released>,
}

/// The unit names of the inventory's capacities.
fn unit_name(unit: CapacityUnit) -> &'static str {
    match unit {
        CapacityUnit::LogicalCpus => "logical-cpus",
        CapacityUnit::Bytes => "bytes",
        CapacityUnit::MbitPerSecond => "mbit-per-second",
        // A unit added to hwdetect later; the registry shows it, nothing depends on its name.
        _ => "unknown",
    }
}

/// The logical CPU of a `cpu-core` identity (`cpu-core:<id>:<brand>`).
fn logical_cpu(identity: &str) -> Option<u32> {
    identity
        .strip_prefix("cpu-core:")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

impl Registry {
    /// A registry of the node `node` holding the detected `resources`. The node is an operator;
    /// so is every address in `operators`.
    pub fn new(
        node: Address,
        operators: impl IntoIterator<Item = Address>,
        resources: &[Resource],
    ) -> Self {
        let mut operators: BTreeSet<Address> = operators.into_iter().collect();
        operators.insert(node);
        let mut registry = Self {
            node,
            operators,
            assets: BTreeMap::new(),
            cpu_cores: BTreeMap::new(),
            live: HashMap::new(),
            released: HashMap::new(),
        };
        for resource in resources.iter().take(ASSETS_MAX) {
            registry.add_detected(resource);
        }
        assert!(registry.assets.len() <= ASSETS_MAX);
        registry
    }

    fn add_detected(&mut self, resource: &Resource) {
        let kind = resource.kind.as_str();
        let id = AssetId::derive(&self.node, kind, &resource.identity);
        // hwdetect promises distinct identities; a repeat would be the same asset again.
        if self.assets.contains_key(&id) {
            return;
        }
        if resource.kind == ResourceKind::CpuCore
            && let Some(cpu) = logical_cpu(&resource.identity)
        {
            self.cpu_cores.insert(cpu, id);
        }
        self.assets.insert(
            id,
            Asset {
                id,
                kind: kind.to_owned(),
                identity: resource.identity.clone(),
                capacity: resource.capacity,
                unit: unit_name(resource.unit).to_owned(),
                origin: Origin::Detected,
                allocations: BTreeMap::new(),
            },
        );
    }

    /// Loads what the store holds: registered assets, live allocations, tombstones.
    pub fn restore(&mut self, records: Vec<super::record::Record>) -> RestoreReport {
        use super::record::Record;
        let mut report = RestoreReport::default();
        let mut allocations = Vec::new();
        for record in records {
            match record {
                Record::Asset(asset) if self.assets.contains_key(&asset.id) => {
                    report.shadowed_assets.push(asset.id);
                }
                Record::Asset(asset) if self.assets.len() < ASSETS_MAX => {
                    self.assets.insert(asset.id, asset);
                }
                Record::Asset(asset) => report.shadowed_assets.push(asset.id),
                Record::Allocation(allocation) => allocations.push(allocation),
                Record::Released(released) => {
                    self.released.insert(released.allocation.id, released);
                }
            }
        }
        // Allocations after every asset, whatever order the store returned them in.
        for allocation in allocations {
            match self.assets.get_mut(&allocation.asset) {
                Some(asset) if !self.released.contains_key(&allocation.id) => {
                    self.live.insert(allocation.id, asset.id);
                    asset.allocations.insert(allocation.id, allocation);
                }
                _ => report.orphaned_allocations.push(allocation.id),
            }
        }
        report
    }

    /// The node's address.
    pub fn node(&self) -> Address {
        self.node
    }

    /// True for the node's address and the configured operators.
    pub fn is_operator(&self, address: &Address) -> bool {
        self.operators.contains(address)
    }

    /// Every asset, by id.
    pub fn assets(&self) -> impl Iterator<Item = &Asset> {
        self.assets.values()
    }

    /// One asset.
    pub fn asset(&self, id: &AssetId) -> Option<&Asset> {
        self.assets.get(id)
    }

    /// A live allocation.
    pub fn allocation(&self, id: &AllocationId) -> Option<&Allocation> {
        let asset = self.live.get(id)?;
        self.assets.get(asset)?.allocations.get(id)
    }

    /// A released allocation's tombstone.
    pub fn released(&self, id: &AllocationId) -> Option<&Released> {
        self.released.get(id)
    }

    /// The `cpu-core` asset of logical CPU `cpu`.
    pub fn cpu_core(&self, cpu: u32) -> Option<AssetId> {
        self.cpu_cores.get(&cpu).copied()
    }

    /// Decides a signed request. `path` is the asset the URL names (allocate and release).
    ///
    /// # Errors
    /// [`AssetError`]: the request is refused and nothing changes.
    pub fn decide(
        &self,
        signed: &Signed,
        path: Option<AssetId>,
        now_ms: u64,
    ) -> Result<Decision, AssetError> {
        match (&signed.request, path) {
            (Request::Register(register), _) => self.decide_register(signed, register, now_ms),
            (Request::Allocate(allocate), Some(path)) => {
                self.decide_allocate(signed, allocate, path, now_ms)
            }
            (Request::Release(release), Some(path)) => {
                self.decide_release(signed, release, path, now_ms)
            }
            (request, None) => Err(AssetError::RequestInvalid(format!(
                "{} goes to /assets/<id>/...",
                request.action()
            ))),
        }
    }

    fn decide_register(
        &self,
        signed: &Signed,
        register: &RegisterRequest,
        now_ms: u64,
    ) -> Result<Decision, AssetError> {
        if !self.is_operator(&signed.signer) {
            return Err(AssetError::NotOperator(signed.signer));
        }
        let id = AssetId::derive(&self.node, &register.kind, &register.identity);
        if let Some(existing) = self.assets.get(&id) {
            let same = matches!(existing.origin, Origin::Registered { .. })
                && existing.capacity == register.capacity
                && existing.unit == register.unit;
            if !same {
                return Err(AssetError::AlreadyExists(id));
            }
            return Ok(Decision {
                answer: Answer::Registered {
                    asset: id,
                    duplicate: true,
                },
                changes: Vec::new(),
            });
        }
        if self.assets.len() >= ASSETS_MAX {
            return Err(AssetError::TooMany("assets"));
        }
        let asset = Asset {
            id,
            kind: register.kind.clone(),
            identity: register.identity.clone(),
            capacity: register.capacity,
            unit: register.unit.clone(),
            origin: Origin::Registered {
                by: signed.signer,
                request: signed.id,
                timestamp_ms: now_ms,
            },
            allocations: BTreeMap::new(),
        };
        Ok(Decision {
            answer: Answer::Registered {
                asset: id,
                duplicate: false,
            },
            changes: vec![Change::PutAsset(asset)],
        })
    }

    /// The answer to a request seen before, if it was.
    fn replayed_allocation(&self, id: &AllocationId) -> Option<Answer> {
        if let Some(allocation) = self.allocation(id) {
            return Some(Answer::Allocated {
                allocation: allocation.clone(),
                duplicate: true,
                released: false,
            });
        }
        self.released.get(id).map(|released| Answer::Allocated {
            allocation: released.allocation.clone(),
            duplicate: true,
            released: true,
        })
    }

    fn decide_allocate(
        &self,
        signed: &Signed,
        allocate: &AllocateRequest,
        path: AssetId,
        now_ms: u64,
    ) -> Result<Decision, AssetError> {
        if allocate.asset.parse::<AssetId>().ok() != Some(path) {
            return Err(AssetError::AssetMismatch {
                named: allocate.asset.chars().take(64).collect(),
                path,
            });
        }
        let id = AllocationId(signed.id);
        if let Some(answer) = self.replayed_allocation(&id) {
            return Ok(Decision {
                answer,
                changes: Vec::new(),
            });
        }
        let asset = self
            .assets
            .get(&path)
            .ok_or(AssetError::UnknownAsset(path))?;
        let available = asset.available().ok_or(AssetError::CapacityUnknown(path))?;
        if allocate.amount > available {
            return Err(AssetError::OverAllocated {
                asset: path,
                available,
                requested: allocate.amount,
                unit: asset.unit.clone(),
            });
        }
        if asset.allocations.len() >= ALLOCATIONS_PER_ASSET_MAX {
            return Err(AssetError::TooMany("allocations of this asset"));
        }
        let allocation = Allocation {
            id,
            asset: path,
            owner: signed.signer,
            amount: allocate.amount,
            timestamp_ms: now_ms,
            holder: Holder::Signer,
        };
        Ok(Decision {
            answer: Answer::Allocated {
                allocation: allocation.clone(),
                duplicate: false,
                released: false,
            },
            changes: vec![Change::PutAllocation(allocation)],
        })
    }

    fn decide_release(
        &self,
        signed: &Signed,
        release: &ReleaseRequest,
        path: AssetId,
        now_ms: u64,
    ) -> Result<Decision, AssetError> {
        let id = release.allocation;
        if let Some(released) = self.released.get(&id) {
            if released.allocation.asset != path {
                return Err(AssetError::UnknownAllocation(id));
            }
            return Ok(Decision {
                answer: Answer::Released {
                    released: released.clone(),
                    duplicate: true,
                },
                changes: Vec::new(),
            });
        }
        if !self.assets.contains_key(&path) {
            return Err(AssetError::UnknownAsset(path));
        }
        let allocation = self
            .allocation(&id)
            .filter(|a| a.asset == path)
            .ok_or(AssetError::UnknownAllocation(id))?;
        if allocation.holder == Holder::Executor {
            return Err(AssetError::HeldByExecutor(id));
        }
        if allocation.owner != signed.signer && !self.is_operator(&signed.signer) {
            return Err(AssetError::NotOwner {
                signer: signed.signer,
                allocation: id,
            });
        }
        let released = Released {
            allocation: allocation.clone(),
            by: signed.signer,
            request: signed.id,
            timestamp_ms: now_ms,
        };
        Ok(Decision {
            answer: Answer::Released {
                released: released.clone(),
                duplicate: false,
            },
            changes: vec![Change::Release(released)],
        })
    }

    /// Makes the executor's allocations exactly one per pinned logical CPU in `cpus`: new cores
    /// get one (amount 1, owner the node, id [`AllocationId::executor`]), cores no longer pinned
    /// lose theirs, unchanged ones keep theirs (and their timestamp). Run at every start.
    ///
    /// The executor pins its threads whatever the registry says, so a core a signer already
    /// holds is allocated anyway and reported in `overcommitted` (the node logs it).
    pub fn decide_executor(&self, cpus: &[u32], now_ms: u64) -> Decision {
        let wanted: BTreeSet<u32> = cpus.iter().copied().collect();
        let mut changes = Vec::new();
        let mut held = Vec::new();
        let mut unknown_cpus = Vec::new();
        let mut overcommitted = Vec::new();
        let wanted_assets: BTreeSet<AssetId> = wanted
            .iter()
            .filter_map(|cpu| self.cpu_core(*cpu))
            .collect();
        for asset in self.assets.values() {
            for allocation in asset.allocations.values() {
                if allocation.holder == Holder::Executor && !wanted_assets.contains(&asset.id) {
                    changes.push(Change::DropAllocation(allocation.clone()));
                }
            }
        }
        for cpu in wanted {
            let Some(asset) = self.cpu_core(cpu).and_then(|id| self.assets.get(&id)) else {
                unknown_cpus.push(cpu);
                continue;
            };
            let id = AllocationId::executor(&asset.id);
            held.push(id);
            if asset.allocations.contains_key(&id) {
                continue;
            }
            if asset.available().is_none_or(|left| left < 1) {
                overcommitted.push(asset.id);
            }
            changes.push(Change::PutAllocation(Allocation {
                id,
                asset: asset.id,
                owner: self.node,
                amount: 1,
                timestamp_ms: now_ms,
                holder: Holder::Executor,
            }));
        }
        Decision {
            answer: Answer::Executor {
                held,
                unknown_cpus,
                overcommitted,
            },
            changes,
        }
    }

    /// Applies durable changes.
    ///
    /// # Panics
    /// When a change does not fit the state it was decided on (a driver bug: changes must be
    /// applied in the order they were decided, each once).
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::PutAsset(asset) => {
                    assert!(asset.allocations.is_empty(), "assets arrive empty");
                    let before = self.assets.insert(asset.id, asset.clone());
                    assert!(before.is_none(), "an asset is registered once");
                }
                Change::PutAllocation(allocation) => self.put_allocation(allocation),
                Change::DropAllocation(allocation) => {
                    self.remove_allocation(&allocation.id, &allocation.asset);
                }
                Change::Release(released) => {
                    let allocation = &released.allocation;
                    self.remove_allocation(&allocation.id, &allocation.asset);
                    let before = self.released.insert(allocation.id, released.clone());
                    assert!(before.is_none(), "an allocation is released once");
                }
            }
        }
    }

    fn put_allocation(&mut self, allocation: &Allocation) {
        assert!(!self.released.contains_key(&allocation.id));
        let asset = self
            .assets
            .get_mut(&allocation.asset)
            .expect("allocations are decided on existing assets");
        let before = asset.allocations.insert(allocation.id, allocation.clone());
        assert!(before.is_none(), "an allocation is made once");
        let indexed = self.live.insert(allocation.id, allocation.asset);
        assert!(indexed.is_none(), "an allocation is indexed once");
    }

    fn remove_allocation(&mut self, id: &AllocationId, asset: &AssetId) {
        let indexed = self.live.remove(id);
        assert_eq!(
            indexed.as_ref(),
            Some(asset),
            "a removed allocation was live"
        );
        let removed = self
            .assets
            .get_mut(asset)
            .and_then(|a| a.allocations.remove(id));
        assert!(removed.is_some(), "a removed allocation was on its asset");
    }

    /// The live allocation ids (for checks and tests).
    pub fn live_allocations(&self) -> impl Iterator<Item = (&AllocationId, &AssetId)> {
        self.live.iter()
    }

    /// How many tombstones are kept.
    pub fn released_count(&self) -> usize {
        self.released.len()
    }
}
