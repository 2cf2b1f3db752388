//! Unit tests of the sans-IO registry: ids, decisions, replay, restore through the record codec.

use ferrobeam_hwdetect::Inventory;

use super::record::{self, Op, Record};
use super::request::Signed;
use super::*;
use crate::message::{Message, VerifiedMessage, Wallet};

fn wallet(seed: u8) -> Wallet {
    Wallet::from_jwk(&serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "d": crate::message::b64(&[seed; 32])
    }))
    .unwrap()
}

/// A node with two logical CPUs, memory, a disk, a NIC of unknown speed and a GPU.
fn registry(node: &Wallet, operators: &[Address]) -> Registry {
    let json = include_str!("test-inventory.json");
    let inventory = Inventory::from_json(json).unwrap();
    Registry::new(
        node.address(),
        operators.iter().copied(),
        &inventory.resources(),
    )
}

fn signed(wallet: &Wallet, message: Message) -> Signed {
    let message = wallet.sign(message, &mut rand::rngs::OsRng);
    Signed::parse(&VerifiedMessage::verify(message).unwrap()).unwrap()
}

fn allocate(wallet: &Wallet, asset: AssetId, amount: i64) -> Signed {
    let message = Message::new()
        .with("action", "Allocate")
        .with("asset", asset.to_string())
        .with("amount", amount);
    signed(wallet, message)
}

fn release(wallet: &Wallet, allocation: AllocationId) -> Signed {
    let message = Message::new()
        .with("action", "Release")
        .with("allocation", allocation.to_string());
    signed(wallet, message)
}

fn kind_asset(registry: &Registry, kind: &str) -> AssetId {
    registry.assets().find(|a| a.kind == kind).unwrap().id
}

/// Decides and applies, as the driver does after the store write.
fn run(
    registry: &mut Registry,
    request: &Signed,
    path: Option<AssetId>,
) -> Result<Answer, AssetError> {
    let decision = registry.decide(request, path, 1_000)?;
    registry.apply(&decision.changes);
    Ok(decision.answer)
}

#[test]
fn asset_ids_hash_address_kind_and_identity_with_length_prefixes() {
    let address = Address([7; 32]);
    let mut bytes = b"ferrobeam-asset-v1".to_vec();
    bytes.extend_from_slice(&[7; 32]);
    bytes.extend_from_slice(&[0, 0, 0, 3]);
    bytes.extend_from_slice(b"gpu");
    bytes.extend_from_slice(&[0, 0, 0, 4]);
    bytes.extend_from_slice(b"GPU-");
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    assert_eq!(AssetId::derive(&address, "gpu", "GPU-").0.0, expected);
    // The split between kind and identity matters; so does the node.
    assert_ne!(
        AssetId::derive(&address, "ab", "c"),
        AssetId::derive(&address, "a", "bc")
    );
    assert_ne!(
        AssetId::derive(&address, "gpu", "GPU-"),
        AssetId::derive(&Address([8; 32]), "gpu", "GPU-")
    );
    let id = AssetId::derive(&address, "gpu", "GPU-");
    assert_eq!(id.to_string().len(), 43);
    assert_eq!(id.to_string().parse::<AssetId>().unwrap(), id);
}

#[test]
fn detected_resources_become_assets_with_units() {
    let node = wallet(1);
    let r = registry(&node, &[]);
    let kinds: Vec<&str> = r.assets().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "cpu-core").count(), 2);
    assert!(kinds.contains(&"memory") && kinds.contains(&"nic") && kinds.contains(&"disk"));
    let core = r.asset(&r.cpu_core(1).unwrap()).unwrap();
    assert_eq!(core.identity, "cpu-core:1:Test CPU");
    assert_eq!(
        (core.capacity, core.unit.as_str()),
        (Some(1), "logical-cpus")
    );
    assert!(r.cpu_core(2).is_none());
    assert!(r.assets().all(|a| a.origin == Origin::Detected));
    // A GPU (from a fixture inventory: no real GPU has been seen by these tests).
    let gpu = r.asset(&kind_asset(&r, "gpu")).unwrap();
    assert_eq!(gpu.identity, "GPU-00000000-1111-2222-3333-444444444444");
    assert_eq!(
        (gpu.capacity, gpu.unit.as_str()),
        (Some(85_899_345_920), "bytes")
    );
    assert_eq!(
        gpu.id,
        AssetId::derive(
            &node.address(),
            "gpu",
            "GPU-00000000-1111-2222-3333-444444444444"
        )
    );
}

#[test]
fn allocate_over_allocate_release_and_replay() {
    let (node, alice, bob) = (wallet(1), wallet(2), wallet(3));
    let mut r = registry(&node, &[]);
    let memory = kind_asset(&r, "memory");
    let capacity = r.asset(&memory).unwrap().capacity.unwrap();

    let first = allocate(&alice, memory, 1024);
    let Answer::Allocated {
        allocation,
        duplicate: false,
        ..
    } = run(&mut r, &first, Some(memory)).unwrap()
    else {
        panic!("allocated");
    };
    assert_eq!(
        (allocation.owner, allocation.amount),
        (alice.address(), 1024)
    );
    assert_eq!(allocation.id, AllocationId(first.id));
    // Replay: same answer, no change.
    let again = r.decide(&first, Some(memory), 2_000).unwrap();
    assert!(again.changes.is_empty());
    assert!(matches!(
        again.answer,
        Answer::Allocated {
            duplicate: true,
            released: false,
            ..
        }
    ));
    assert_eq!(r.asset(&memory).unwrap().allocated(), 1024);

    // Over-allocation: one byte too many.
    let too_much = allocate(&bob, memory, i64::try_from(capacity - 1023).unwrap());
    assert!(matches!(
        r.decide(&too_much, Some(memory), 3_000),
        Err(AssetError::OverAllocated { available, requested, .. })
            if available == capacity - 1024 && requested == capacity - 1023
    ));
    let exact = allocate(&bob, memory, i64::try_from(capacity - 1024).unwrap());
    run(&mut r, &exact, Some(memory)).unwrap();
    assert_eq!(r.asset(&memory).unwrap().available(), Some(0));

    // Bob may not release Alice's; Alice may; a replay after the release does not re-allocate.
    let by_bob = release(&bob, allocation.id);
    assert!(matches!(
        r.decide(&by_bob, Some(memory), 4_000),
        Err(AssetError::NotOwner { .. })
    ));
    let by_alice = release(&alice, allocation.id);
    assert!(matches!(
        run(&mut r, &by_alice, Some(memory)).unwrap(),
        Answer::Released {
            duplicate: false,
            ..
        }
    ));
    assert!(matches!(
        run(&mut r, &by_alice, Some(memory)).unwrap(),
        Answer::Released {
            duplicate: true,
            ..
        }
    ));
    let replay = r.decide(&first, Some(memory), 5_000).unwrap();
    assert!(replay.changes.is_empty());
    assert!(matches!(
        replay.answer,
        Answer::Allocated {
            duplicate: true,
            released: true,
            ..
        }
    ));
    assert_eq!(r.asset(&memory).unwrap().available(), Some(1024));
    // An operator (the node) may release anyone's.
    let by_node = release(&node, AllocationId(exact.id));
    run(&mut r, &by_node, Some(memory)).unwrap();
    assert_eq!(r.asset(&memory).unwrap().allocated(), 0);
}

#[test]
fn requests_are_checked() {
    let (node, alice) = (wallet(1), wallet(2));
    let r = registry(&node, &[]);
    let memory = kind_asset(&r, "memory");
    let nic = kind_asset(&r, "nic");
    let core = r.cpu_core(0).unwrap();
    // Path and message disagree.
    assert!(matches!(
        r.decide(&allocate(&alice, memory, 1), Some(core), 0),
        Err(AssetError::AssetMismatch { .. })
    ));
    // Unknown asset.
    let ghost = AssetId::derive(&node.address(), "gpu", "GPU-none");
    assert_eq!(
        r.decide(&allocate(&alice, ghost, 1), Some(ghost), 0),
        Err(AssetError::UnknownAsset(ghost))
    );
    // A NIC of unknown speed cannot be allocated.
    assert_eq!(
        r.decide(&allocate(&alice, nic, 1), Some(nic), 0),
        Err(AssetError::CapacityUnknown(nic))
    );
    // Malformed messages.
    for message in [
        Message::new().with("action", "Steal"),
        Message::new().with("action", "Allocate").with("asset", "x"),
        Message::new()
            .with("action", "Allocate")
            .with("asset", "x")
            .with("amount", 0),
        Message::new()
            .with("action", "Release")
            .with("allocation", "nope"),
        Message::new()
            .with("action", "Register")
            .with("kind", "Bad Kind")
            .with("identity", "i")
            .with("unit", "u"),
        Message::new()
            .with("action", "Register")
            .with("kind", "fpga")
            .with("identity", "")
            .with("unit", "u"),
    ] {
        let verified =
            VerifiedMessage::verify(alice.sign(message, &mut rand::rngs::OsRng)).unwrap();
        assert!(matches!(
            Signed::parse(&verified),
            Err(AssetError::RequestInvalid(_))
        ));
    }
    // Unknown allocation.
    let unknown = AllocationId(crate::message::Id([9; 32]));
    assert_eq!(
        r.decide(&release(&alice, unknown), Some(memory), 0),
        Err(AssetError::UnknownAllocation(unknown))
    );
}

fn register(wallet: &Wallet, identity: &str, capacity: i64) -> Signed {
    let message = Message::new()
        .with("action", "Register")
        .with("kind", "fpga")
        .with("identity", identity)
        .with("capacity", capacity)
        .with("unit", "boards");
    signed(wallet, message)
}

#[test]
fn only_operators_register_and_registration_is_idempotent() {
    let (node, operator, stranger) = (wallet(1), wallet(2), wallet(3));
    let mut r = registry(&node, &[operator.address()]);
    assert_eq!(
        r.decide(&register(&stranger, "fpga-0", 2), None, 0),
        Err(AssetError::NotOperator(stranger.address()))
    );
    let Answer::Registered {
        asset,
        duplicate: false,
    } = run(&mut r, &register(&operator, "fpga-0", 2), None).unwrap()
    else {
        panic!("registered");
    };
    assert_eq!(asset, AssetId::derive(&node.address(), "fpga", "fpga-0"));
    // The node key is an operator too; the same attributes again are a duplicate.
    assert!(matches!(
        run(&mut r, &register(&node, "fpga-0", 2), None).unwrap(),
        Answer::Registered {
            duplicate: true,
            ..
        }
    ));
    assert_eq!(
        r.decide(&register(&node, "fpga-0", 3), None, 0),
        Err(AssetError::AlreadyExists(asset))
    );
    // Detected hardware cannot be registered over.
    let core = r.cpu_core(0).unwrap();
    let message = Message::new()
        .with("action", "Register")
        .with("kind", "cpu-core")
        .with("identity", "cpu-core:0:Test CPU")
        .with("capacity", 1)
        .with("unit", "logical-cpus");
    assert_eq!(
        r.decide(&signed(&node, message), None, 0),
        Err(AssetError::AlreadyExists(core))
    );
}

#[test]
fn executor_cores_follow_the_pinned_cpus() {
    let (node, alice) = (wallet(1), wallet(2));
    let mut r = registry(&node, &[]);
    let (core0, core1) = (r.cpu_core(0).unwrap(), r.cpu_core(1).unwrap());
    let decision = r.decide_executor(&[0, 0, 7], 10);
    let Answer::Executor {
        held,
        unknown_cpus,
        overcommitted,
    } = &decision.answer
    else {
        panic!("executor");
    };
    assert_eq!(held, &[AllocationId::executor(&core0)]);
    assert_eq!(
        (unknown_cpus.as_slice(), overcommitted.is_empty()),
        (&[7][..], true)
    );
    r.apply(&decision.changes);
    let allocation = r.allocation(&AllocationId::executor(&core0)).unwrap();
    assert_eq!(
        (allocation.owner, allocation.holder),
        (node.address(), Holder::Executor)
    );
    // The executor's allocation cannot be released over HTTP, not even by the node.
    assert_eq!(
        r.decide(&release(&node, allocation.id), Some(core0), 0),
        Err(AssetError::HeldByExecutor(allocation.id))
    );
    // Buyers cannot take the pinned core; they can take the other.
    assert!(matches!(
        r.decide(&allocate(&alice, core0, 1), Some(core0), 0),
        Err(AssetError::OverAllocated { .. })
    ));
    run(&mut r, &allocate(&alice, core1, 1), Some(core1)).unwrap();
    // Same CPUs again: nothing to do. Moving to CPU 1: core 0 dropped, core 1 overcommitted.
    assert!(r.decide_executor(&[0], 20).changes.is_empty());
    let moved = r.decide_executor(&[1], 30);
    assert!(
        matches!(&moved.answer, Answer::Executor { overcommitted, .. } if overcommitted == &[core1])
    );
    r.apply(&moved.changes);
    assert!(r.allocation(&AllocationId::executor(&core0)).is_none());
    assert_eq!(r.asset(&core1).unwrap().allocated(), 2);
    assert_eq!(r.asset(&core0).unwrap().allocated(), 0);
}

/// Applies the record codec's writes to a map, as the store does.
fn write(store: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>, changes: &[Change]) {
    for op in record::ops(changes) {
        match op {
            Op::Put(k, v) => {
                store.insert(k, v);
            }
            Op::Remove(k) => {
                store.remove(&k);
            }
        }
    }
}

#[test]
fn records_restore_the_same_registry() {
    let (node, alice) = (wallet(1), wallet(2));
    let mut store = std::collections::BTreeMap::new();
    let mut r = registry(&node, &[]);
    let memory = kind_asset(&r, "memory");
    let mut decisions = vec![r.decide_executor(&[1], 5)];
    r.apply(&decisions[0].changes);
    for request in [register(&node, "fpga-9", 4), allocate(&alice, memory, 4096)] {
        let path = matches!(request.request, Request::Allocate(_)).then_some(memory);
        let d = r.decide(&request, path, 6).unwrap();
        r.apply(&d.changes);
        decisions.push(d);
    }
    let to_release = allocate(&alice, memory, 1);
    let d = r.decide(&to_release, Some(memory), 7).unwrap();
    r.apply(&d.changes);
    decisions.push(d);
    let d = r
        .decide(
            &release(&alice, AllocationId(to_release.id)),
            Some(memory),
            8,
        )
        .unwrap();
    r.apply(&d.changes);
    decisions.push(d);
    for d in &decisions {
        write(&mut store, &d.changes);
    }
    assert_eq!(store.len(), 4, "asset, two live allocations, one tombstone");

    let records: Vec<Record> = store
        .iter()
        .map(|(k, v)| record::decode(k, v).unwrap())
        .collect();
    let mut again = registry(&node, &[]);
    let report = again.restore(records);
    assert_eq!(report, RestoreReport::default());
    let left: Vec<&Asset> = r.assets().collect();
    let right: Vec<&Asset> = again.assets().collect();
    assert_eq!(left, right);
    assert_eq!(again.released_count(), 1);
    // The replay of the released request is still recognised after the restart.
    assert!(
        again
            .decide(&to_release, Some(memory), 9)
            .unwrap()
            .changes
            .is_empty()
    );

    // Corrupted records are reported, not trusted.
    let (key, value) = store.iter().next().unwrap();
    assert!(record::decode(key, b"{").is_err());
    assert!(record::decode(b"other/x", value).is_err());
    let mut wrong = key.clone();
    *wrong.last_mut().unwrap() ^= 1;
    assert!(record::decode(&wrong, value).is_err());
}

#[test]
fn restore_reports_allocations_of_vanished_hardware() {
    let node = wallet(1);
    let ghost = AssetId::derive(&node.address(), "gpu", "GPU-gone");
    let allocation = Allocation {
        id: AllocationId(crate::message::Id([4; 32])),
        asset: ghost,
        owner: node.address(),
        amount: 1,
        timestamp_ms: 0,
        holder: Holder::Signer,
    };
    let mut r = registry(&node, &[]);
    let report = r.restore(vec![Record::Allocation(allocation.clone())]);
    assert_eq!(report.orphaned_allocations, vec![allocation.id]);
    assert!(r.allocation(&allocation.id).is_none());
}

#[test]
fn privacy_levels_decide_views() {
    use Caller::*;
    let cases = [
        (
            Privacy::Private,
            [View::Full, View::AddressOnly, View::AddressOnly],
        ),
        (
            Privacy::PrivateNetwork,
            [View::Full, View::Full, View::AddressOnly],
        ),
        (
            Privacy::P2p,
            [View::Full, View::KindsAndCounts, View::KindsAndCounts],
        ),
        (
            Privacy::PublicNetwork,
            [View::Full, View::NoIdentities, View::NoIdentities],
        ),
        (Privacy::FullPublic, [View::Full, View::Full, View::Full]),
    ];
    for (privacy, views) in cases {
        assert_eq!(
            [
                privacy.view(Operator),
                privacy.view(Local),
                privacy.view(Remote)
            ],
            views,
            "{privacy:?}"
        );
        let parsed: Privacy = serde_json::from_value(serde_json::json!(privacy.as_str())).unwrap();
        assert_eq!(parsed, privacy);
    }
    let node = wallet(1);
    let r = registry(&node, &[]);
    assert!(view::list_json(&r, Privacy::Private, View::AddressOnly).is_none());
    let counts = view::list_json(&r, Privacy::P2p, View::KindsAndCounts).unwrap();
    assert!(counts.get("assets").is_none());
    assert_eq!(counts["kinds"].as_array().unwrap().len(), 5);
    let public = view::list_json(&r, Privacy::PublicNetwork, View::NoIdentities).unwrap();
    assert!(
        public["assets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a.get("identity").is_none())
    );
    let full = view::list_json(&r, Privacy::FullPublic, View::Full).unwrap();
    assert!(
        full["assets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["identity"].is_string())
    );
}

#[test]
fn prometheus_sums_by_kind() {
    let node = wallet(1);
    let mut r = registry(&node, &[]);
    let d = r.decide_executor(&[0], 0);
    r.apply(&d.changes);
    let text = view::prometheus(&r);
    assert!(
        text.contains("ferrobeam_assets{kind=\"cpu-core\",unit=\"logical-cpus\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("ferrobeam_asset_capacity{kind=\"cpu-core\",unit=\"logical-cpus\"} 2\n"));
    assert!(
        text.contains("ferrobeam_asset_allocated{kind=\"cpu-core\",unit=\"logical-cpus\"} 1\n")
    );
    assert!(text.contains("ferrobeam_asset_allocations{kind=\"memory\",unit=\"bytes\"} 0\n"));
    assert!(text.contains("# TYPE ferrobeam_asset_allocated gauge\n"));
}

/// A request as the parser would hand it over, without a signature: the limits below need
/// thousands, and signing is not what they test.
fn unsigned(signer: Address, n: u64, request: request::Request) -> Signed {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    Signed {
        signer,
        id: crate::message::Id(id),
        request,
    }
}

#[test]
fn allocations_per_asset_and_assets_are_bounded() {
    let (node, alice) = (wallet(1), wallet(2));
    let mut r = registry(&node, &[]);
    let memory = kind_asset(&r, "memory");
    let allocate = |n: u64| {
        let request = request::Request::Allocate(request::AllocateRequest {
            asset: memory.to_string(),
            amount: 1,
        });
        unsigned(alice.address(), n, request)
    };
    for n in 0..ALLOCATIONS_PER_ASSET_MAX as u64 {
        run(&mut r, &allocate(n), Some(memory)).unwrap();
    }
    let over = r.decide(&allocate(u64::MAX), Some(memory), 1_000);
    assert!(matches!(over, Err(AssetError::TooMany(_))), "{over:?}");
    assert_eq!(
        r.asset(&memory).unwrap().allocated(),
        ALLOCATIONS_PER_ASSET_MAX as u64
    );

    let register = |n: u64| {
        let request = request::Request::Register(request::RegisterRequest {
            kind: "fpga".into(),
            identity: format!("slot-{n}"),
            capacity: Some(1),
            unit: "boards".into(),
        });
        unsigned(node.address(), n, request)
    };
    let room = ASSETS_MAX - r.assets().count();
    for n in 0..room as u64 {
        run(&mut r, &register(n), None).unwrap();
    }
    assert_eq!(r.assets().count(), ASSETS_MAX);
    let over = r.decide(&register(u64::MAX), None, 1_000);
    assert!(matches!(over, Err(AssetError::TooMany(_))), "{over:?}");
}
