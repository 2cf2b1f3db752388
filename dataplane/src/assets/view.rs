//! Privacy levels and what each caller sees: the JSON of the asset routes and the asset part of
//! `/~meta@1.0/info`, and the `/metrics` gauges.
//!
//! | level | an unauthenticated caller sees |
//! |---|---|
//! | `private` | the node's address only; asset routes answer 403 |
//! | `private-network` | from loopback or a private range: everything; from elsewhere: as `private` |
//! | `p2p` | info without configuration; assets as kinds and counts (no ids); `GET /assets/{id}` 403 |
//! | `public-network` | info; every asset without its hardware identity |
//! | `full-public` | everything, identities and allocation owners included |
//!
//! An operator (a request signed by the node key or a configured operator) sees everything at
//! every level. Which caller is local is the driver's business (it knows sockets).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::{Allocation, Asset, Holder, Origin, Registry, Released};

/// HyperMesh's five privacy levels: how much of the node unauthenticated callers see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privacy {
    /// Only the node's address.
    Private,
    /// Everything to callers on loopback or a private network; the address to others.
    #[default]
    PrivateNetwork,
    /// Kinds and counts of assets.
    P2p,
    /// Assets without hardware identities.
    PublicNetwork,
    /// Everything.
    FullPublic,
}

impl Privacy {
    /// The level's name as configured (`private-network`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Privacy::Private => "private",
            Privacy::PrivateNetwork => "private-network",
            Privacy::P2p => "p2p",
            Privacy::PublicNetwork => "public-network",
            Privacy::FullPublic => "full-public",
        }
    }

    /// What `caller` sees at this level.
    pub fn view(self, caller: Caller) -> View {
        match (self, caller) {
            (_, Caller::Operator) | (Privacy::FullPublic, _) => View::Full,
            (Privacy::PrivateNetwork, Caller::Local) => View::Full,
            (Privacy::PublicNetwork, _) => View::NoIdentities,
            (Privacy::P2p, _) => View::KindsAndCounts,
            (Privacy::Private | Privacy::PrivateNetwork, _) => View::AddressOnly,
        }
    }
}

/// Who is asking, as far as privacy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A request signed by an operator.
    Operator,
    /// Unauthenticated, from loopback or a private address range.
    Local,
    /// Unauthenticated, from anywhere else.
    Remote,
}

/// How much a caller sees, from most to least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum View {
    /// Everything.
    Full,
    /// Assets without hardware identities.
    NoIdentities,
    /// Kinds and counts, no asset ids.
    KindsAndCounts,
    /// The node's address.
    AddressOnly,
}

impl View {
    /// True when asset ids may be shown (`GET /assets/{id}` answers).
    pub fn shows_assets(self) -> bool {
        self <= View::NoIdentities
    }
}

/// One allocation's JSON: `{id, asset, owner, amount, timestamp, holder}`.
pub fn allocation_json(allocation: &Allocation) -> Json {
    let holder = match allocation.holder {
        Holder::Signer => "signer",
        Holder::Executor => "executor",
    };
    json!({
        "id": allocation.id,
        "asset": allocation.asset,
        "owner": allocation.owner,
        "amount": allocation.amount,
        "timestamp": allocation.timestamp_ms,
        "holder": holder,
    })
}

/// A tombstone's JSON: `{allocation, by, request, timestamp}`.
pub fn released_json(released: &Released) -> Json {
    json!({
        "allocation": allocation_json(&released.allocation),
        "by": released.by,
        "request": released.request,
        "timestamp": released.timestamp_ms,
    })
}

/// One asset's JSON at `view` (which must show assets).
pub fn asset_json(asset: &Asset, view: View) -> Json {
    assert!(view.shows_assets(), "callers that see no assets get 403");
    let allocations: Vec<Json> = asset.allocations.values().map(allocation_json).collect();
    let origin = match &asset.origin {
        Origin::Detected => json!({"source": "detected"}),
        Origin::Registered {
            by,
            request,
            timestamp_ms,
        } => {
            json!({"source": "registered", "by": by, "request": request, "timestamp": timestamp_ms})
        }
    };
    let mut out = json!({
        "id": asset.id,
        "kind": asset.kind,
        "capacity": asset.capacity,
        "unit": asset.unit,
        "allocated": asset.allocated(),
        "available": asset.available(),
        "origin": origin,
        "allocations": allocations,
    });
    if view == View::Full {
        out["identity"] = json!(asset.identity);
    }
    out
}

/// The sums of one kind and unit.
#[derive(Debug, Default, Clone, Copy)]
struct KindSums {
    assets: u64,
    /// Of the assets whose capacity is known.
    capacity: u64,
    allocated: u64,
    allocations: u64,
}

/// Sums per kind and unit.
fn kinds(registry: &Registry) -> BTreeMap<(&str, &str), KindSums> {
    let mut kinds: BTreeMap<(&str, &str), KindSums> = BTreeMap::new();
    for asset in registry.assets() {
        let sums = kinds
            .entry((asset.kind.as_str(), asset.unit.as_str()))
            .or_default();
        sums.assets += 1;
        sums.capacity = sums.capacity.saturating_add(asset.capacity.unwrap_or(0));
        sums.allocated = sums.allocated.saturating_add(asset.allocated());
        sums.allocations += asset.allocations.len() as u64;
    }
    kinds
}

/// The kinds-and-counts summary: `[{kind, unit, assets, capacity, allocated, allocations}]`.
pub fn kinds_json(registry: &Registry) -> Json {
    let list: Vec<Json> = kinds(registry)
        .into_iter()
        .map(|((kind, unit), sums)| {
            json!({
                "kind": kind,
                "unit": unit,
                "assets": sums.assets,
                "capacity": sums.capacity,
                "allocated": sums.allocated,
                "allocations": sums.allocations,
            })
        })
        .collect();
    Json::Array(list)
}

/// `GET /~assets@1.0/list` at `view`; `None` when the caller may not see assets at all (403).
pub fn list_json(registry: &Registry, privacy: Privacy, view: View) -> Option<Json> {
    let mut out = json!({
        "node": registry.node(),
        "privacy": privacy.as_str(),
        "kinds": kinds_json(registry),
    });
    match view {
        View::AddressOnly => return None,
        View::KindsAndCounts => {}
        View::Full | View::NoIdentities => {
            let assets: Vec<Json> = registry.assets().map(|a| asset_json(a, view)).collect();
            out["assets"] = Json::Array(assets);
        }
    }
    Some(out)
}

/// The asset gauges for `/metrics` (text exposition format 0.0.4), by kind and unit. Capacity
/// counts only assets whose capacity is known.
pub fn prometheus(registry: &Registry) -> String {
    let kinds = kinds(registry);
    type Family = (&'static str, &'static str, fn(&KindSums) -> u64);
    let families: [Family; 4] = [
        ("ferrobeam_assets", "Assets in the registry.", |k| k.assets),
        (
            "ferrobeam_asset_capacity",
            "Known capacity of the assets, in their unit.",
            |k| k.capacity,
        ),
        (
            "ferrobeam_asset_allocated",
            "Allocated amount of the assets, in their unit.",
            |k| k.allocated,
        ),
        (
            "ferrobeam_asset_allocations",
            "Live allocations of the assets.",
            |k| k.allocations,
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in families {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for ((kind, unit), sums) in &kinds {
            // Kinds and units are [a-z0-9-] (checked at registration, fixed for detected ones).
            let _ = writeln!(
                out,
                "{name}{{kind=\"{kind}\",unit=\"{unit}\"}} {}",
                value(sums)
            );
        }
    }
    out
}
