//! `ferrobeam-soak-load`: the mixed load of `scripts/soak.sh` (docs/RELIABILITY.md, "Soak").
//!
//! Setup: uploads three modules (a no-op, `examples/counter.wat`, `tests/wasm/ping.wat`) and
//! spawns six processes (two of each). Then `--connections` keep-alive connections each loop over
//! a weighted mix of requests, paced together at `--rate` requests per second (`--rate 0`: as
//! fast as they are answered, which is how the soak calibrates its maximum):
//!
//! - 70 % signed message posts (fresh Ed25519 signatures, ~256 bytes of data) spread over the
//!   processes; 1 in 100 of the posts to a ping process starts a 32-hop chain of local pushes;
//! - 15 % result reads of counter slots acknowledged at least `READ_DELAY` earlier;
//! - 5 % slot reads, 5 % `/metrics` scrapes;
//! - 5 % bad requests that must be refused with their status: an unsigned message (401), a
//!   forged signature (401), malformed JSON (400), an unknown process (404).
//!
//! A valid request fails when it is not answered with its success status within
//! `REQUEST_TIMEOUT`; a bad request fails when it is not refused with its own status. The report
//! counts both, with the first few failures. Exit status 0 whatever the counts: the soak script
//! judges.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use ferrobeam::message::{Id, Message, Wallet, json};
use hyper::Method;
use rand::Rng;
use rand::rngs::StdRng;
use rand::{SeedableRng, seq::SliceRandom};
use serde_json::Value as Json;

#[path = "../../load/connection.rs"]
mod connection;
use connection::{Connection, message_body};

const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "handle") (result i32) i32.const 0))"#;
const COUNTER_WAT: &str = include_str!("../../../examples/counter.wat");
const PING_WAT: &str = include_str!("../../../tests/wasm/ping.wat");
/// A request not answered within this long fails (and its connection is replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Result reads ask for slots acknowledged at least this long ago (computed by then).
const READ_DELAY: Duration = Duration::from_secs(2);
/// Acknowledged counter slots remembered for result reads.
const RECENT_MAX: usize = 4096;
/// Failures kept verbatim in the report.
const FAILURE_EXAMPLES_MAX: usize = 10;
/// Largest `--connections`.
const CONNECTIONS_MAX: usize = 1024;

#[derive(Debug, Parser)]
#[command(name = "ferrobeam-soak-load", version, about)]
struct Args {
    /// Base URL of the node (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8734")]
    node: String,
    /// Requests per second, all connections together (0: unpaced).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=CONNECTIONS_MAX).contains(&args.connections),
        "--connections must be 1..={CONNECTIONS_MAX}"
    );
    ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be ≥ 0"
    );
    ensure!(args.duration >= 1, "--duration must be at least 1 s");
    let authority = args
        .node
        .strip_prefix("http://")
        .context("--node must be an http:// URL")?
        .trim_end_matches('/')
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let report = runtime.block_on(run(&args, &authority))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Noop,
    Counter,
    Ping,
}

/// What every connection shares.
struct Shared {
    processes: Vec<(Id, Kind)>,
    wallet: Wallet,
    /// Counter slots acknowledged, with when.
    recent: Mutex<VecDeque<(Id, u64, Instant)>>,
    nonce: AtomicU64,
    run: String,
}

async fn setup(authority: &str) -> Result<Shared> {
    let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
    let mut connection = Connection::open(authority).await?;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_nanos()
        .to_string();
    let mut processes = Vec::new();
    for (kind, wat) in [
        (Kind::Noop, NOOP_WAT),
        (Kind::Counter, COUNTER_WAT),
        (Kind::Ping, PING_WAT),
    ] {
        let wasm = wat::parse_str(wat)?;
        let answer = connection
            .json(
                Method::POST,
                "/~wasm@1.0/module",
                "application/wasm",
                wasm.into(),
            )
            .await?;
        let module = answer["module"]
            .as_str()
            .context("no module id")?
            .to_owned();
        for n in 0..2 {
            let process = Message::new()
                .with("type", "Process")
                .with("module", module.as_str())
                .with("anchor", format!("soak-{run}-{n}"));
            let signed = wallet.sign(process, &mut rand::rngs::OsRng);
            let answer = connection
                .json(
                    Method::POST,
                    "/~scheduler@1.0/schedule",
                    "application/json",
                    message_body(&signed),
                )
                .await?;
            let id: Id = answer["process"].as_str().context("no process")?.parse()?;
            processes.push((id, kind));
        }
    }
    Ok(Shared {
        processes,
        wallet,
        recent: Mutex::new(VecDeque::new()),
        nonce: AtomicU64::new(0),
        run,
    })
}

/// One request of the mix: method, path, body, the status that counts as success, and for a
/// post to a counter the process (its ack's slot is remembered for later reads).
struct Planned {
    op: &'static str,
    method: Method,
    path: String,
    body: Bytes,
    expect: u16,
    counter: Option<Id>,
}

fn plan(shared: &Shared, rng: &mut StdRng) -> Planned {
    let roll = rng.gen_range(0..100);
    let get = |op, path: String, expect| Planned {
        op,
        method: Method::GET,
        path,
        body: Bytes::new(),
        expect,
        counter: None,
    };
    if roll < 70 {
        return post(shared, rng);
    }
    if roll < 85
        && let Some((process, slot)) = readable(shared, rng)
    {
        return get("result", format!("/{process}/compute?slot={slot}"), 200);
    }
    if roll < 90 {
        let (process, _) = shared.processes.choose(rng).expect("processes");
        return get("slot", format!("/{process}/slot"), 200);
    }
    if roll < 95 {
        return get("metrics", "/metrics".to_owned(), 200);
    }
    bad(shared, rng)
}

fn post(shared: &Shared, rng: &mut StdRng) -> Planned {
    let &(process, kind) = shared.processes.choose(rng).expect("processes");
    let nonce = shared.nonce.fetch_add(1, Ordering::Relaxed);
    let mut message = Message::new()
        .with("target", process.to_string())
        .with("anchor", format!("{}-{nonce}", shared.run))
        .with("data", vec![b'x'; 256]);
    if kind == Kind::Counter {
        message = message.with("amount", rng.gen_range(1..=9i64));
    }
    if kind == Kind::Ping && rng.gen_range(0..100) == 0 {
        let peer = shared
            .processes
            .iter()
            .find(|(id, k)| *k == Kind::Ping && *id != process)
            .expect("two ping processes")
            .0;
        message = message.with("peer", peer.to_string());
    }
    let signed = shared.wallet.sign(message, &mut rand::rngs::OsRng);
    Planned {
        op: "post",
        method: Method::POST,
        path: format!("/{process}/schedule"),
        body: message_body(&signed),
        expect: 201,
        counter: (kind == Kind::Counter).then_some(process),
    }
}

/// A counter slot acknowledged at least [`READ_DELAY`] ago.
fn readable(shared: &Shared, rng: &mut StdRng) -> Option<(Id, u64)> {
    let recent = shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
    let ready = recent
        .iter()
        .take_while(|(_, _, at)| at.elapsed() >= READ_DELAY)
        .count();
    (ready > 0).then(|| {
        let (process, slot, _) = recent[rng.gen_range(0..ready)];
        (process, slot)
    })
}

fn bad(shared: &Shared, rng: &mut StdRng) -> Planned {
    let (process, _) = *shared.processes.choose(rng).expect("processes");
    let message = Message::new()
        .with("target", process.to_string())
        .with("data", "bad");
    let (op, path, body, expect) = match rng.gen_range(0..4) {
        0 => (
            "bad-unsigned",
            format!("/{process}/schedule"),
            message_body(&message),
            401,
        ),
        1 => {
            // Signed, then changed: the signature no longer covers the message.
            let signed = shared.wallet.sign(message, &mut rand::rngs::OsRng);
            let mut forged = json::to_json(&signed);
            forged["data"] = "forged".into();
            let bytes = Bytes::from(serde_json::to_vec(&forged).expect("serializes"));
            ("bad-forged", format!("/{process}/schedule"), bytes, 401)
        }
        2 => (
            "bad-json",
            format!("/{process}/schedule"),
            Bytes::from_static(b"{\"target\": "),
            400,
        ),
        _ => {
            let unknown = Id([7; 32]);
            let signed = shared.wallet.sign(
                Message::new().with("target", unknown.to_string()),
                &mut rand::rngs::OsRng,
            );
            (
                "bad-unknown-process",
                format!("/{unknown}/schedule"),
                message_body(&signed),
                404,
            )
        }
    };
    Planned {
        op,
        method: Method::POST,
        path,
        body,
        expect,
        counter: None,
    }
}

#[derive(Default)]
struct Tally {
    ok: BTreeMap<&'static str, u64>,
    failed: BTreeMap<&'static str, u64>,
    examples: Vec<String>,
    post_latencies_us: Vec<u64>,
}

async fn drive(
    mut connection: Connection,
    shared: Arc<Shared>,
    interval: Option<Duration>,
    offset: Duration,
    until: Instant,
    seed: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = Instant::now() + offset;
    while Instant::now() < until {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
            // Behind by more than a second (the node stalled): do not burst to catch up.
            if next + Duration::from_secs(1) < Instant::now() {
                next = Instant::now();
            }
        }
        let planned = plan(&shared, &mut rng);
        let start = Instant::now();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            connection.request(
                planned.method.clone(),
                &planned.path,
                "application/json",
                planned.body.clone(),
            ),
        )
        .await;
        let (outcome, reconnect) = match answer {
            Ok(Ok((status, body))) if status.as_u16() == planned.expect => (Ok(body), false),
            Ok(Ok((status, body))) => (
                Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))),
                false,
            ),
            Ok(Err(e)) => (Err(format!("transport: {e}")), true),
            Err(_) => (Err("timeout".to_owned()), true),
        };
        match outcome {
            Ok(body) => {
                *tally.ok.entry(planned.op).or_default() += 1;
                if planned.op == "post" {
                    tally
                        .post_latencies_us
                        .push(start.elapsed().as_micros() as u64);
                }
                if let Some(process) = planned.counter
                    && let Ok(ack) = serde_json::from_slice::<Json>(&body)
                    && let Some(slot) = ack["slot"].as_u64()
                {
                    let mut recent = shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
                    recent.push_back((process, slot, Instant::now()));
                    if recent.len() > RECENT_MAX {
                        recent.pop_front();
                    }
                }
            }
            Err(what) => {
                *tally.failed.entry(planned.op).or_default() += 1;
                if tally.examples.len() < FAILURE_EXAMPLES_MAX {
                    let mut what = what;
                    what.truncate(300);
                    tally
                        .examples
                        .push(format!("{} {}: {what}", planned.op, planned.path));
                }
            }
        }
        if reconnect || connection.is_closed() {
            match Connection::open(&connection.authority).await {
                Ok(fresh) => connection = fresh,
                Err(e) => {
                    *tally.failed.entry("connect").or_default() += 1;
                    tally.examples.push(format!("reconnect: {e}"));
                    return tally;
                }
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn run(args: &Args, authority: &str) -> Result<Json> {
    let shared = Arc::new(setup(authority).await?);
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let mut connections = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        connections.push(Connection::open(authority).await?);
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(args.duration);
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            // Spread the connections' first requests over one interval.
            let offset =
                interval.map_or(Duration::ZERO, |d| d * i as u32 / args.connections as u32);
            tokio::spawn(drive(c, shared.clone(), interval, offset, until, i as u64))
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.context("a connection task panicked")?;
        for (op, n) in tally.ok {
            *total.ok.entry(op).or_default() += n;
        }
        for (op, n) in tally.failed {
            *total.failed.entry(op).or_default() += n;
        }
        total.examples.extend(tally.examples);
        total.post_latencies_us.extend(tally.post_latencies_us);
    }
    let duration_s = start.elapsed().as_secs_f64();
    total.post_latencies_us.sort_unstable();
    total.examples.truncate(FAILURE_EXAMPLES_MAX);
    let requests: u64 = total.ok.values().sum::<u64>() + total.failed.values().sum::<u64>();
    let valid_failed: u64 = total
        .failed
        .iter()
        .filter(|(op, _)| !op.starts_with("bad-"))
        .map(|(_, n)| n)
        .sum();
    let bad_failed: u64 = total
        .failed
        .iter()
        .filter(|(op, _)| op.starts_with("bad-"))
        .map(|(_, n)| n)
        .sum();
    if requests == 0 {
        bail!("no request was made");
    }
    Ok(serde_json::json!({
        "rate_target": args.rate,
        "connections": args.connections,
        "duration_s": duration_s,
        "requests": requests,
        "requests_per_s": requests as f64 / duration_s,
        "ok": total.ok,
        "failed": total.failed,
        "valid_failed": valid_failed,
        "bad_not_refused": bad_failed,
        "failure_examples": total.examples,
        "post_latency_ms": {
            "p50": percentile(&total.post_latencies_us, 50.0),
            "p99": percentile(&total.post_latencies_us, 99.0),
            "max": percentile(&total.post_latencies_us, 100.0),
        },
    }))
}
