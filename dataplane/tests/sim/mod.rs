//! `Sim`: a deterministic simulation of several ferrobeam nodes, after TigerBeetle's VOPR and
//! quinn's test `Pair` (docs/RELIABILITY.md).
//!
//! One `u64` seed draws the fault mix (`Options::swarm`) and then every random choice of the run:
//! client load, network latency, loss, duplication, reordering and partitions, fsync and executor
//! times, crashes and how much of the unsynced journal a crash keeps. Time is a `SimClock` that
//! jumps to the next event. Nothing reads the OS clock or OS randomness, and every map the run
//! iterates is ordered, so a seed replays exactly (`FERROBEAM_SEED=N`).
//!
//! What is real: the sequencer core (`schedule::sequencer`, with its fail-stop after a failed
//! commit), the `Scheduler`, signing (Ed25519 is deterministic), wasmtime `Instance`s with
//! snapshots and restore, the push plan and the per-peer push queue (`push::PeerQueue`), result
//! records. What is simulated: the store (`SimStore`, with crash semantics and injected fsync
//! failures), the network (`send`), the clock, the executors' speed, the clients. The drivers in
//! `node` mirror `ferrobeam::node` (group commit, ack after commit, local pushes before the
//! result, pushes to other nodes queued in the result's batch, restore from the newest snapshot).
//!
//! A run has a safety phase (faults on) and a liveness phase: at `safety_ms` faults stop, every
//! node is up and the network heals; everything pending (client requests, pushes, compute) must
//! finish within [`LIVENESS_MS_MAX`] of simulated time. The event loop is bounded by
//! [`EVENTS_MAX`], so a livelock fails instead of hanging.

pub mod check;
pub mod node;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use ferrobeam::execute::{Engine, EngineConfig, Module};
use ferrobeam::message::{Address, Hashpath, Id, Message, Wallet};
use ferrobeam::node::module_message;
use ferrobeam::schedule::sequencer::{BatchId, Target};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use node::SimNode;

/// Events one run may process. A healthy run of the largest swarm takes well under a tenth of
/// it; reaching it means the system livelocked (or a fault plan never lets it settle).
pub const EVENTS_MAX: u64 = 2_000_000;
/// Simulated time the liveness phase may take: after faults stop, every pending client request,
/// push and slot completes within it. The worst healthy case is a ping-pong chain of
/// `PUSH_DEPTH_MAX` (32) hops, each a network round trip (≤ 2 × 205 ms), a commit (≤ 10 ms) and
/// a slot (≤ 5 ms), ~14 s, started after a client retry (≤ 500 ms), a full executor backlog,
/// and a queued push whose attempt was lost just before the heal (its timeout, 5 s, then at most
/// the longest backoff, 10 s); 60 s leaves room and still catches a stuck push.
pub const LIVENESS_MS_MAX: u64 = 60_000;
/// Largest rate error of a node's clock, in parts per million (0.1 %: far worse than NTP).
pub const CLOCK_SKEW_PPM_MAX: i64 = 1_000;
/// A client re-sends an unanswered request after this long.
pub const CLIENT_RETRY_MS: u64 = 500;
/// A node offers a local push again after this long when its core's queue was full.
pub const PUSH_RETRY_MS: u64 = 300;
/// An attempt at a queued push fails after this long without an answer (the node's HTTP
/// client timeout, `node::pusher::PEER_TIMEOUT`).
pub const PEER_TIMEOUT_MS: u64 = ferrobeam::node::pusher::PEER_TIMEOUT.as_millis() as u64;

const _: () = assert!(CLIENT_RETRY_MS < LIVENESS_MS_MAX / 10);
const _: () = assert!(PUSH_RETRY_MS < LIVENESS_MS_MAX / 10);
// A push lost just before the heal is retried within a timeout and the longest backoff.
const _: () = assert!(PEER_TIMEOUT_MS + ferrobeam::push::PUSH_BACKOFF_MS_MAX < LIVENESS_MS_MAX / 3);

pub const COUNTER_WAT: &str = include_str!("../../../examples/counter.wat");
pub const TOKEN_WAT: &str = include_str!("../../../examples/token.wat");
/// Replies to `from-process` when the message was pushed, else sends to `peer` when given (the
/// ping-pong of tests/push.rs): one user message with a `peer` makes a chain of 32 pushes.
pub const PING_WAT: &str = include_str!("../../../tests/wasm/ping.wat");

/// The fault mix and load of one run, drawn from its seed (TigerBeetle's `options_swarm`).
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub clients: usize,
    pub messages_per_client: u64,
    pub window: usize,
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    pub loss_pct: u32,
    pub duplicate_pct: u32,
    pub partitions: u32,
    pub crashes: u32,
    pub downtime_ms_max: u64,
    pub slow_exec_pct: u32,
    pub snapshot_interval: u64,
    pub batch_max: usize,
    pub safety_ms: u64,
    pub ping_pct: u32,
    /// Group commits whose fsync fails (each on a random node at a random moment).
    pub commit_failures: u32,
    /// Bound of the nodes' wall-clock error: each node's clock is off by up to this much (drawn
    /// again at every restart: a clock step, possibly backwards) and runs fast or slow by up to
    /// `CLOCK_SKEW_PPM_MAX`.
    pub clock_error_ms_max: u64,
}

impl Options {
    pub fn swarm(rng: &mut StdRng) -> Self {
        let latency_ms_min = rng.gen_range(1..=5);
        Self {
            nodes: rng.gen_range(2..=3),
            clients: rng.gen_range(2..=4),
            messages_per_client: rng.gen_range(10..=60),
            window: rng.gen_range(1..=4),
            latency_ms_min,
            latency_ms_max: latency_ms_min + rng.gen_range(0..=200),
            loss_pct: *[0, 1, 5, 20].choose(rng).expect("nonempty"),
            duplicate_pct: *[0, 2, 10].choose(rng).expect("nonempty"),
            partitions: rng.gen_range(0..=4),
            crashes: rng.gen_range(0..=5),
            downtime_ms_max: rng.gen_range(10..=3_000),
            slow_exec_pct: *[0, 5, 30].choose(rng).expect("nonempty"),
            snapshot_interval: rng.gen_range(1..=8),
            batch_max: rng.gen_range(1..=16),
            safety_ms: rng.gen_range(2_000..=10_000),
            ping_pct: rng.gen_range(0..=15),
            // Drawn last: the rest of a seed's mix is what it was before this fault existed.
            commit_failures: *[0, 0, 1, 2].choose(rng).expect("nonempty"),
            clock_error_ms_max: *[0, 0, 100, 5_000].choose(rng).expect("nonempty"),
        }
    }
}

/// Faults injected and work done in one run (summed by campaigns).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub packets: u64,
    pub packets_lost: u64,
    pub packets_duplicated: u64,
    pub packets_cut: u64,
    pub packets_to_down_nodes: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub commit_failures: u64,
    pub journal_entries_lost: u64,
    pub slow_jobs: u64,
    pub restores: u64,
    pub pushes_sent: u64,
    pub push_retries: u64,
    pub client_retries: u64,
}

impl Faults {
    pub fn add(&mut self, o: &Faults) {
        self.packets += o.packets;
        self.packets_lost += o.packets_lost;
        self.packets_duplicated += o.packets_duplicated;
        self.packets_cut += o.packets_cut;
        self.packets_to_down_nodes += o.packets_to_down_nodes;
        self.partitions += o.partitions;
        self.crashes += o.crashes;
        self.commit_failures += o.commit_failures;
        self.journal_entries_lost += o.journal_entries_lost;
        self.slow_jobs += o.slow_jobs;
        self.restores += o.restores;
        self.pushes_sent += o.pushes_sent;
        self.push_retries += o.push_retries;
        self.client_retries += o.client_retries;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Node(usize),
    Client(usize),
}

/// One outbox message: (source process, slot, outbox index). Its message id is a function of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PushKey {
    pub source: Id,
    pub slot: u64,
    pub index: u32,
}

/// Who asked, carried in a request and echoed in its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Client {
        client: usize,
        request: u64,
    },
    /// An attempt at a queued push (epoch: of the sending node; stale answers are ignored).
    Queued {
        seq: u64,
        epoch: u64,
        attempt: u64,
    },
    Bootstrap,
}

/// What an acknowledgement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInfo {
    pub id: Id,
    pub process: Id,
    pub slot: u64,
    pub hashpath: Hashpath,
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub enum Body {
    Schedule {
        target: Target,
        message: Message,
        tag: Tag,
    },
    Ack {
        tag: Tag,
        answer: Result<AckInfo, String>,
    },
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub from: Endpoint,
    pub to: Endpoint,
    pub body: Body,
}

#[derive(Debug)]
pub enum Event {
    Deliver(Packet),
    CommitDone {
        node: usize,
        epoch: u64,
        batch: BatchId,
    },
    ComputeDone {
        node: usize,
        epoch: u64,
        process: Id,
    },
    PushRetry {
        node: usize,
        epoch: u64,
        key: PushKey,
    },
    PushTimeout {
        node: usize,
        epoch: u64,
        seq: u64,
        attempt: u64,
    },
    PushWake {
        node: usize,
        epoch: u64,
    },
    ClientTick {
        client: usize,
    },
    Crash {
        node: usize,
    },
    /// The node's next group commit fails its fsync.
    FailCommit {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Partition {
        a: usize,
        b: Option<usize>,
        on: bool,
    },
    Heal,
}

/// What every node may read: the engine and modules, where each process lives (the route
/// table), and the nodes' addresses (trusted pushers).
pub struct World {
    pub modules: BTreeMap<Id, Module>,
    pub homes: BTreeMap<Id, usize>,
    pub pushers: Vec<Address>,
}

impl World {
    pub fn module_of(&self, definition: &Message) -> Module {
        let id = ferrobeam::node::process_module(definition).expect("sim processes are valid");
        self.modules[&id].clone()
    }
}

/// What a node's handler may do besides changing itself: set timers, send packets, draw
/// random numbers, count faults, report failures.
pub struct Ctx<'a> {
    pub now: u64,
    pub rng: &'a mut StdRng,
    pub world: &'a World,
    pub faults: &'a mut Faults,
    pub failures: &'a mut Vec<String>,
    pub timers: Vec<(u64, Event)>,
    pub sends: Vec<Packet>,
    slow_exec_pct: u32,
}

impl Ctx<'_> {
    pub fn timer(&mut self, delay_ms: u64, event: Event) {
        self.timers.push((delay_ms, event));
    }

    pub fn send(&mut self, packet: Packet) {
        self.sends.push(packet);
    }

    pub fn fsync_ms(&mut self) -> u64 {
        self.rng.gen_range(1..=10)
    }

    pub fn exec_ms(&mut self) -> u64 {
        if self.rng.gen_range(0..100) < self.slow_exec_pct {
            self.faults.slow_jobs += 1;
            return self.rng.gen_range(100..=2_000);
        }
        self.rng.gen_range(1..=5)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Token,
    Ping,
}

#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub id: Id,
    pub kind: Kind,
    pub owner: usize,
    pub home: usize,
}

struct Outstanding {
    message: Message,
    process: Id,
    home: usize,
    sent_ms: u64,
}

struct Client {
    wallet: Wallet,
    sent: u64,
    outstanding: BTreeMap<u64, Outstanding>,
}

/// One simulated cluster.
pub struct Sim {
    pub seed: u64,
    pub options: Options,
    now: u64,
    rng: StdRng,
    events: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    pub nodes: Vec<SimNode>,
    clients: Vec<Client>,
    pub processes: Vec<ProcInfo>,
    pub world: World,
    pub faults: Faults,
    pub failures: Vec<String>,
    /// Every acknowledgement a client received, by message id.
    pub acked: BTreeMap<Id, AckInfo>,
    faults_on: bool,
    cut: BTreeSet<(usize, Option<usize>)>,
    pub events_run: u64,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub faults: Faults,
    pub events: u64,
    pub sim_ms: u64,
    pub liveness_ms: u64,
    pub acked: usize,
    pub slots: u64,
    pub digest: String,
}

fn wallet(tag: &str, seed: u64, n: usize) -> Wallet {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{tag}/{seed}/{n}"));
    Wallet::from_jwk(&serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "d": ferrobeam::message::b64(&d)
    }))
    .expect("valid key")
}

/// The engine and the sim's modules by name.
type Compiled = (Engine, BTreeMap<&'static str, (Id, Module)>);

/// One engine for every run of a test binary (compiling the modules once).
fn engine_and_modules() -> &'static Compiled {
    static ENGINE: OnceLock<Compiled> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferrobeam-sim-cwasm-{}", std::process::id()));
        let mut config = EngineConfig::new(dir);
        config.instances_max = 256;
        let engine = Engine::new(config).expect("engine");
        let mut modules = BTreeMap::new();
        for (name, wat) in [
            ("counter", COUNTER_WAT),
            ("token", TOKEN_WAT),
            ("ping", PING_WAT),
        ] {
            let wasm = wat::parse_str(wat).expect("wat");
            let id = module_message(&wasm).unsigned_id();
            modules.insert(name, (id, engine.load(id, &wasm).expect("module")));
        }
        (engine, modules)
    })
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let options = Options::swarm(&mut rng);
        let (_, modules) = engine_and_modules();
        let nodes: Vec<SimNode> = (0..options.nodes)
            .map(|i| {
                SimNode::new(
                    i,
                    wallet("node", seed, i),
                    options.snapshot_interval,
                    options.batch_max,
                    options.clock_error_ms_max,
                )
            })
            .collect();
        let world = World {
            modules: modules.values().map(|(id, m)| (*id, m.clone())).collect(),
            homes: BTreeMap::new(),
            pushers: nodes.iter().map(|n| n.wallet.address()).collect(),
        };
        let clients = (0..options.clients)
            .map(|i| Client {
                wallet: wallet("client", seed, i),
                sent: 0,
                outstanding: BTreeMap::new(),
            })
            .collect();
        let mut sim = Self {
            seed,
            options,
            now: 0,
            rng,
            events: BTreeMap::new(),
            sequence: 0,
            nodes,
            clients,
            processes: Vec::new(),
            world,
            faults: Faults::default(),
            failures: Vec::new(),
            acked: BTreeMap::new(),
            faults_on: true,
            cut: BTreeSet::new(),
            events_run: 0,
        };
        for node in 0..sim.nodes.len() {
            sim.nodes[node].set_clock(&mut sim.rng);
        }
        sim.spawn_processes();
        sim.plan_faults();
        for client in 0..sim.clients.len() {
            let at = sim.rng.gen_range(0..50);
            sim.at(at, Event::ClientTick { client });
        }
        sim
    }

    /// A counter, a token and a ping process on every node, spawned through the node's core.
    fn spawn_processes(&mut self) {
        let (_, modules) = engine_and_modules();
        for home in 0..self.nodes.len() {
            for (kind, name) in [
                (Kind::Counter, "counter"),
                (Kind::Token, "token"),
                (Kind::Ping, "ping"),
            ] {
                let owner = self.rng.gen_range(0..self.clients.len());
                let mut definition = Message::new()
                    .with("type", "Process")
                    .with("module", modules[name].0.to_string())
                    .with("home", home as i64);
                if kind == Kind::Token {
                    definition.set("supply", "1000000").expect("valid key");
                }
                let signed = self.clients[owner].wallet.sign(definition, &mut self.rng);
                let id = signed.id();
                self.world.homes.insert(id, home);
                self.processes.push(ProcInfo {
                    id,
                    kind,
                    owner,
                    home,
                });
                self.with_node(home, |node, ctx| node.bootstrap(ctx, signed));
            }
        }
    }

    /// Crashes and partitions at random moments of the safety phase, then the heal.
    fn plan_faults(&mut self) {
        let safety = self.options.safety_ms;
        for _ in 0..self.options.crashes {
            let at = self.rng.gen_range(1..safety);
            let node = self.rng.gen_range(0..self.nodes.len());
            self.at(at, Event::Crash { node });
        }
        for _ in 0..self.options.commit_failures {
            let at = self.rng.gen_range(1..safety);
            let node = self.rng.gen_range(0..self.nodes.len());
            self.at(at, Event::FailCommit { node });
        }
        for _ in 0..self.options.partitions {
            let at = self.rng.gen_range(1..safety);
            let a = self.rng.gen_range(0..self.nodes.len());
            let b = self.rng.gen_bool(0.5).then(|| (a + 1) % self.nodes.len());
            let lasts = self.rng.gen_range(10..=3_000);
            self.at(at, Event::Partition { a, b, on: true });
            self.at(at + lasts, Event::Partition { a, b, on: false });
        }
        self.at(safety, Event::Heal);
    }

    fn at(&mut self, time: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((time, self.sequence), event);
    }

    /// Runs `f` on node `i` with a context, then carries out its timers and sends.
    fn with_node(&mut self, i: usize, f: impl FnOnce(&mut SimNode, &mut Ctx)) {
        let mut ctx = Ctx {
            now: self.now,
            rng: &mut self.rng,
            world: &self.world,
            faults: &mut self.faults,
            failures: &mut self.failures,
            timers: Vec::new(),
            sends: Vec::new(),
            slow_exec_pct: if self.faults_on {
                self.options.slow_exec_pct
            } else {
                0
            },
        };
        f(&mut self.nodes[i], &mut ctx);
        let (timers, sends) = (ctx.timers, ctx.sends);
        for (delay, event) in timers {
            self.at(self.now + delay, event);
        }
        for packet in sends {
            self.send(packet);
        }
    }

    /// The network: latency (which reorders), loss, duplication and partitions while faults
    /// are on; latency only after the heal.
    fn send(&mut self, packet: Packet) {
        self.faults.packets += 1;
        if self.faults_on {
            if self.is_cut(&packet) {
                self.faults.packets_cut += 1;
                return;
            }
            if self.rng.gen_range(0..100) < self.options.loss_pct {
                self.faults.packets_lost += 1;
                return;
            }
            if self.rng.gen_range(0..100) < self.options.duplicate_pct {
                self.faults.packets_duplicated += 1;
                let delay = self.latency();
                self.at(self.now + delay, Event::Deliver(packet.clone()));
            }
        }
        let delay = self.latency();
        self.at(self.now + delay, Event::Deliver(packet));
    }

    fn latency(&mut self) -> u64 {
        self.rng
            .gen_range(self.options.latency_ms_min..=self.options.latency_ms_max)
    }

    fn is_cut(&self, packet: &Packet) -> bool {
        let nodes = |e: Endpoint| match e {
            Endpoint::Node(n) => Some(n),
            Endpoint::Client(_) => None,
        };
        let (a, b) = (nodes(packet.from), nodes(packet.to));
        self.cut.iter().any(|&(x, y)| match (a, b, y) {
            // A node cut from the clients.
            (Some(n), None, None) | (None, Some(n), None) => n == x,
            // Two nodes cut from each other.
            (Some(n), Some(m), Some(y)) => (n, m) == (x, y) || (m, n) == (x, y),
            _ => false,
        })
    }

    /// Runs to quiescence after the heal, or fails. Bounded by [`EVENTS_MAX`].
    pub fn run(&mut self) -> Result<Report, String> {
        let mut heal_at = None;
        while self.events_run < EVENTS_MAX {
            let Some(((time, _), event)) = self.events.pop_first() else {
                break;
            };
            assert!(time >= self.now, "the clock never runs backwards");
            self.now = time;
            self.events_run += 1;
            if matches!(event, Event::Heal) {
                heal_at = Some(time);
            }
            self.dispatch(event);
            if let Some(failure) = self.failures.first() {
                return Err(failure.clone());
            }
            if let Some(heal) = heal_at {
                if self.quiescent() {
                    return check::all(self).map(|()| self.report(heal));
                }
                if self.now > heal + LIVENESS_MS_MAX {
                    let what = format!(
                        "liveness: not quiescent {LIVENESS_MS_MAX} ms after the heal ({})",
                        self.pending()
                    );
                    return Err(what);
                }
            }
        }
        let what = format!(
            "livelock: {} events without quiescence ({})",
            self.events_run,
            self.pending()
        );
        Err(what)
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver(packet) => self.deliver(packet),
            Event::CommitDone { node, epoch, batch } => {
                if self.live(node, epoch) {
                    let mut stopped = false;
                    self.with_node(node, |n, ctx| stopped = n.commit_done(ctx, batch));
                    if stopped {
                        self.fail_stop(node);
                    }
                }
            }
            Event::ComputeDone {
                node,
                epoch,
                process,
            } => {
                if self.live(node, epoch) {
                    self.with_node(node, |n, ctx| n.compute_done(ctx, process));
                }
            }
            Event::PushRetry { node, epoch, key } => {
                if self.live(node, epoch) {
                    self.with_node(node, |n, ctx| n.push_retry(ctx, key));
                }
            }
            Event::PushTimeout {
                node,
                epoch,
                seq,
                attempt,
            } => {
                if self.live(node, epoch) {
                    self.with_node(node, |n, ctx| n.push_timeout(ctx, seq, attempt));
                }
            }
            Event::PushWake { node, epoch } => {
                if self.live(node, epoch) {
                    self.with_node(node, |n, ctx| n.pump(ctx));
                }
            }
            Event::ClientTick { client } => self.client_tick(client),
            Event::Crash { node } => self.crash(node),
            Event::FailCommit { node } => {
                if self.faults_on && self.nodes[node].up {
                    self.nodes[node].fail_next_commit = true;
                }
            }
            Event::Restart { node } => self.restart(node),
            Event::Partition { a, b, on } => {
                if on && self.faults_on {
                    self.faults.partitions += 1;
                    self.cut.insert((a, b));
                } else {
                    self.cut.remove(&(a, b));
                }
            }
            Event::Heal => {
                self.faults_on = false;
                self.cut.clear();
                for node in 0..self.nodes.len() {
                    if !self.nodes[node].up {
                        self.restart(node);
                    }
                }
            }
        }
    }

    fn live(&self, node: usize, epoch: u64) -> bool {
        self.nodes[node].up && self.nodes[node].epoch == epoch
    }

    fn crash(&mut self, node: usize) {
        if !self.faults_on || !self.nodes[node].up {
            return;
        }
        self.faults.crashes += 1;
        let mut lost = 0;
        self.with_node(node, |n, ctx| lost = n.crash(ctx));
        self.faults.journal_entries_lost += lost as u64;
        let downtime = self.rng.gen_range(1..=self.options.downtime_ms_max);
        self.at(self.now + downtime, Event::Restart { node });
    }

    /// The node's core fail-stopped after a failed commit: the node goes down (what the store
    /// keeps is what a crash keeps: the failed batch may or may not be on disk) and is restarted
    /// after a downtime, recovering from what the store holds.
    fn fail_stop(&mut self, node: usize) {
        self.faults.commit_failures += 1;
        let mut lost = 0;
        self.with_node(node, |n, ctx| lost = n.crash(ctx));
        self.faults.journal_entries_lost += lost as u64;
        let downtime = self.rng.gen_range(1..=self.options.downtime_ms_max);
        self.at(self.now + downtime, Event::Restart { node });
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        if let Err(e) = check::acked_durable(self, node) {
            self.failures
                .push(format!("after the crash of node {node}: {e}"));
        }
        self.with_node(node, |n, ctx| n.restart(ctx));
    }

    fn deliver(&mut self, packet: Packet) {
        match packet.to {
            Endpoint::Node(n) if !self.nodes[n].up => self.faults.packets_to_down_nodes += 1,
            Endpoint::Node(n) => self.with_node(n, |node, ctx| node.handle_packet(ctx, packet)),
            Endpoint::Client(c) => self.client_answer(c, packet.body),
        }
    }

    fn client_tick(&mut self, client: usize) {
        let now = self.now;
        let due: Vec<u64> = self.clients[client]
            .outstanding
            .iter()
            .filter(|(_, o)| now >= o.sent_ms + CLIENT_RETRY_MS)
            .map(|(r, _)| *r)
            .collect();
        for request in due {
            self.faults.client_retries += 1;
            self.client_send(client, request);
        }
        // New messages only in the safety phase: the liveness phase measures convergence.
        while self.faults_on
            && self.clients[client].outstanding.len() < self.options.window
            && self.clients[client].sent < self.options.messages_per_client
        {
            let (process, message) = self.client_message(client);
            let c = &mut self.clients[client];
            let request = c.sent;
            c.sent += 1;
            let home = self.world.homes[&process];
            c.outstanding.insert(
                request,
                Outstanding {
                    message,
                    process,
                    home,
                    sent_ms: now,
                },
            );
            self.client_send(client, request);
        }
        let c = &self.clients[client];
        if !c.outstanding.is_empty()
            || (self.faults_on && c.sent < self.options.messages_per_client)
        {
            let think = self.rng.gen_range(5..=300);
            self.at(now + think, Event::ClientTick { client });
        }
    }

    fn client_send(&mut self, client: usize, request: u64) {
        let o = self.clients[client]
            .outstanding
            .get_mut(&request)
            .expect("outstanding");
        o.sent_ms = self.now;
        let packet = Packet {
            from: Endpoint::Client(client),
            to: Endpoint::Node(o.home),
            body: Body::Schedule {
                target: Target::Process(o.process),
                message: o.message.clone(),
                tag: Tag::Client { client, request },
            },
        };
        self.send(packet);
    }

    /// A random message for a random process: counter amounts, token transfers (from the
    /// owner: pushed Credit-Notices to other processes) and balances, ping-pong starts.
    fn client_message(&mut self, client: usize) -> (Id, Message) {
        let p = self
            .processes
            .choose(&mut self.rng)
            .expect("processes")
            .clone();
        let mut m = Message::new().with("target", p.id.to_string()).with(
            "nonce",
            format!("{}/{client}/{}", self.seed, self.clients[client].sent),
        );
        match p.kind {
            Kind::Counter => m.set("amount", self.rng.gen_range(-5..=50i64).to_string()),
            Kind::Token if p.owner == client => {
                let to = self.processes.choose(&mut self.rng).expect("processes").id;
                m.set("action", "Transfer")
                    .and_then(|()| m.set("recipient", to.to_string()))
                    .and_then(|()| m.set("quantity", self.rng.gen_range(1..=5i64).to_string()))
            }
            Kind::Token => m.set("action", "Balance"),
            Kind::Ping if self.rng.gen_range(0..100) < self.options.ping_pct => {
                let pings: Vec<Id> = self
                    .processes
                    .iter()
                    .filter(|q| q.kind == Kind::Ping && q.id != p.id)
                    .map(|q| q.id)
                    .collect();
                let peer = pings.choose(&mut self.rng).copied().unwrap_or(p.id);
                m.set("peer", peer.to_string())
            }
            Kind::Ping => Ok(()),
        }
        .expect("valid keys");
        let signed = self.clients[client].wallet.sign(m, &mut self.rng);
        (p.id, signed)
    }

    fn client_answer(&mut self, client: usize, body: Body) {
        let Body::Ack {
            tag: Tag::Client { request, .. },
            answer,
        } = body
        else {
            return;
        };
        let ack = match answer {
            Ok(ack) => ack,
            Err(e) if unavailable(&e) => return,
            Err(e) => {
                self.failures
                    .push(format!("client {client} request {request} refused: {e}"));
                return;
            }
        };
        // A late duplicate answer finds the request gone; the slot check below still applies.
        if let Some(sent) = self.clients[client].outstanding.get(&request)
            && (sent.message.id() != ack.id || sent.process != ack.process)
        {
            self.failures.push(format!(
                "client {client} request {request}: the ack names {} on {}, not the message sent",
                ack.id, ack.process
            ));
        }
        if let Some(first) = self.acked.get(&ack.id)
            && (first.process, first.slot, first.hashpath) != (ack.process, ack.slot, ack.hashpath)
        {
            self.failures.push(format!(
                "message {} acked at slot {} and again at slot {}",
                ack.id, first.slot, ack.slot
            ));
        }
        self.acked.entry(ack.id).or_insert(ack);
        self.clients[client].outstanding.remove(&request);
    }

    fn quiescent(&self) -> bool {
        self.clients.iter().all(|c| c.outstanding.is_empty())
            && self.nodes.iter().all(|n| n.up && n.idle())
    }

    fn pending(&self) -> String {
        let requests: usize = self.clients.iter().map(|c| c.outstanding.len()).sum();
        let busy: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.idle())
            .map(|n| n.busy())
            .collect();
        format!("{requests} client requests outstanding, nodes not idle: {busy:?}")
    }

    fn report(&self, heal: u64) -> Report {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        let mut slots = 0;
        for node in &self.nodes {
            for (process, head) in &node.store.live().heads {
                digest.update(process.as_bytes());
                digest.update(head.hashpath.0);
                slots += head.next_slot;
            }
        }
        digest.update(self.events_run.to_be_bytes());
        Report {
            faults: self.faults.clone(),
            events: self.events_run,
            sim_ms: self.now,
            liveness_ms: self.now - heal,
            acked: self.acked.len(),
            slots,
            digest: hex::encode(&digest.finalize()[..8]),
        }
    }
}

/// A refusal that means "the node cannot take writes now" (a 503 on the node): a failed commit,
/// or a core stopped after one. The sender retries.
pub fn unavailable(refusal: &str) -> bool {
    refusal.starts_with("CommitFailed") || refusal == "Stopped"
}

/// Runs one seed; on failure the error names the seed and how to replay it.
pub fn run_seed(seed: u64) -> Result<Report, String> {
    let mut sim = Sim::new(seed);
    sim.run().map_err(|what| {
        format!(
            "seed {seed} failed at {} ms after {} events: {what}\n  options: {:?}\n  faults: {:?}\n  replay: FERROBEAM_SEED={seed} cargo test -p ferrobeam --test sim -- --nocapture",
            sim.now, sim.events_run, sim.options, sim.faults
        )
    })
}
