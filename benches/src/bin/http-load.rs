//! `ferrobeam-http-load`: how many signed messages per second a node schedules durably over HTTP.
//!
//! Before the clock starts it uploads a trivial WAT module, spawns one process on it, signs
//! `--messages` Ed25519 messages (a `target` naming the process, `--size` bytes of `data`, signed
//! round-robin by four wallets) and serializes them to the JSON form, then opens `--concurrency`
//! keep-alive HTTP/1.1 connections. With the clock running, each connection posts one message at
//! a time to `POST /<pid>/schedule` and waits for its ack. A message counts as acknowledged only
//! on `201 Created`, which the node sends after the message and its signed assignment are fsynced.
//!
//! Reported: acknowledged messages per second, errors (by status), ack latency percentiles
//! (p50/p90/p99/p99.9, from request sent to response body read) and the duration. `--json` prints
//! one JSON object instead of text. At the end the process's slot is read back to check that every
//! ack has its slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use ferrobeam::message::{Id, Message, Wallet, json};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;

/// The module every load run spawns: `handle` returns 0 (compute is not what is measured).
const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "handle") (result i32) i32.const 0))"#;
/// Wallets that sign the load, round-robin (several senders, as on a real node).
const WALLETS: usize = 4;
/// Largest `--concurrency`: each connection is one socket and one task.
const CONCURRENCY_MAX: usize = 4096;
/// Largest `--messages`: all are signed and held in memory before the run.
const MESSAGES_MAX: usize = 10_000_000;
/// A request that takes longer than this counts as an error (and its connection is replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "ferrobeam-http-load", version, about)]
struct Args {
    /// Base URL of the node (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8734")]
    node: String,
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes of `data` in each message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Client runtime threads (the node and the client share the machine: keep this small).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1..={CONCURRENCY_MAX}"
    );
    ensure!(
        (1..=MESSAGES_MAX).contains(&args.messages),
        "--messages must be 1..={MESSAGES_MAX}"
    );
    ensure!(args.threads >= 1, "--threads must be at least 1");
    let authority = args
        .node
        .strip_prefix("http://")
        .context("--node must be an http:// URL")?
        .trim_end_matches('/')
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let report = runtime.block_on(run(&args, &authority))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

/// One connection's sender and its host header.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Connection {
    async fn open(authority: &str) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The driver ends with the connection; its error shows up on the next request.
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Self {
            sender,
            authority: authority.to_owned(),
        })
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        media: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, media)
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn json(&mut self, method: Method, path: &str, media: &str, body: Bytes) -> Result<Json> {
        let (status, body) = self.request(method, path, media, body).await?;
        let json: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(json)
    }
}

fn message_body(message: &Message) -> Bytes {
    Bytes::from(serde_json::to_vec(&json::to_json(message)).expect("a JSON value serializes"))
}

/// Uploads the no-op module and spawns a fresh process on it (a new anchor each run, so the
/// process id is new and every slot this run gets is counted).
async fn spawn_process(authority: &str, wallet: &Wallet) -> Result<Id> {
    let mut connection = Connection::open(authority).await?;
    let wasm = wat::parse_str(NOOP_WAT)?;
    let module = connection
        .json(
            Method::POST,
            "/~wasm@1.0/module",
            "application/wasm",
            wasm.into(),
        )
        .await?;
    let module = module["module"]
        .as_str()
        .context("upload ack has no module")?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let process = Message::new()
        .with("type", "Process")
        .with("module", module)
        .with("anchor", format!("http-load-{nanos}"));
    let signed = wallet.sign(process, &mut rand::rngs::OsRng);
    let ack = connection
        .json(
            Method::POST,
            "/~scheduler@1.0/schedule",
            "application/json",
            message_body(&signed),
        )
        .await?;
    let process = ack["process"]
        .as_str()
        .context("spawn ack has no process")?;
    Ok(process.parse()?)
}

/// `count` signed JSON bodies of `size` data bytes for `process`.
fn sign_all(process: &Id, wallets: &[Wallet], count: usize, size: usize) -> Vec<Bytes> {
    let target = process.to_string();
    let data: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    (0..count)
        .map(|n| {
            let message = Message::new()
                .with("target", target.as_str())
                .with("type", "Message")
                .with("action", "Eval")
                .with("anchor", format!("{n:032}"))
                .with("data", data.clone());
            let signed = wallets[n % wallets.len()].sign(message, &mut rand::rngs::OsRng);
            message_body(&signed)
        })
        .collect()
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    acked: usize,
    errors: BTreeMap<String, usize>,
}

/// Posts messages taken from the shared cursor until none is left.
async fn drive(
    mut connection: Connection,
    path: Arc<str>,
    bodies: Arc<Vec<Bytes>>,
    cursor: Arc<AtomicUsize>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let index = cursor.fetch_add(1, Ordering::Relaxed);
        let Some(body) = bodies.get(index) else {
            return tally;
        };
        let start = Instant::now();
        let sent = tokio::time::timeout(
            REQUEST_TIMEOUT,
            connection.request(Method::POST, &path, "application/json", body.clone()),
        )
        .await;
        let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (failure, reconnect) = match sent {
            Ok(Ok((StatusCode::CREATED, _))) => {
                tally.acked += 1;
                tally.latencies_us.push(latency_us);
                continue;
            }
            Ok(Ok((status, _))) => (status.as_u16().to_string(), false),
            Ok(Err(_)) => ("transport".to_owned(), true),
            Err(_) => ("timeout".to_owned(), true),
        };
        *tally.errors.entry(failure).or_default() += 1;
        // After a transport error or a timeout the connection's state is unknown: replace it.
        if reconnect || connection.sender.is_closed() {
            match Connection::open(&connection.authority).await {
                Ok(fresh) => connection = fresh,
                Err(_) => return tally,
            }
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(args: &Args, authority: &str) -> Result<Json> {
    let wallets: Vec<Wallet> = (0..WALLETS)
        .map(|_| Wallet::generate_ed25519(&mut rand::rngs::OsRng))
        .collect();
    let process = spawn_process(authority, &wallets[0]).await?;
    let sign_start = Instant::now();
    let bodies = Arc::new(sign_all(&process, &wallets, args.messages, args.size));
    let sign_s = sign_start.elapsed().as_secs_f64();
    let body_bytes = bodies.first().map_or(0, Bytes::len);
    let mut connections = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        connections.push(Connection::open(authority).await?);
    }

    let path: Arc<str> = format!("/{process}/schedule").into();
    let cursor = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|c| tokio::spawn(drive(c, path.clone(), bodies.clone(), cursor.clone())))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.context("a sender task panicked")?;
        total.acked += tally.acked;
        total.latencies_us.extend(tally.latencies_us);
        for (code, count) in tally.errors {
            *total.errors.entry(code).or_default() += count;
        }
    }
    let duration_s = start.elapsed().as_secs_f64();

    let mut check = Connection::open(authority).await?;
    let slot = check
        .json(
            Method::GET,
            &format!("/{process}/slot"),
            "application/json",
            Bytes::new(),
        )
        .await?;
    // Slot 0 is the process itself; every acknowledged message holds one slot after it.
    let slots_durable = slot["current"].as_u64().unwrap_or(0);

    total.latencies_us.sort_unstable();
    let lat = |p| percentile(&total.latencies_us, p) as f64 / 1000.0;
    let errors: usize = total.errors.values().sum();
    Ok(serde_json::json!({
        "node": args.node,
        "process": process,
        "messages": args.messages,
        "concurrency": args.concurrency,
        "size_bytes": args.size,
        "body_bytes": body_bytes,
        "client_threads": args.threads,
        "acked": total.acked,
        "errors": errors,
        "errors_by_kind": total.errors,
        // Left unsent when a connection could not be reopened after an error.
        "unsent": args.messages - total.acked - errors,
        "slots_durable": slots_durable,
        "duration_s": duration_s,
        "messages_per_s": total.acked as f64 / duration_s,
        "latency_ms": {
            "p50": lat(50.0),
            "p90": lat(90.0),
            "p99": lat(99.0),
            "p99.9": lat(99.9),
            "max": total.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        },
        "sign_s": sign_s,
    }))
}

fn print_human(report: &Json) {
    let lat = &report["latency_ms"];
    println!(
        "{} messages ({} B data, {} B JSON) to {} over {} connections",
        report["messages"],
        report["size_bytes"],
        report["body_bytes"],
        report["node"],
        report["concurrency"]
    );
    println!(
        "acked {} (201) in {:.3} s: {:.0} messages/s; errors {} {}; unsent {}",
        report["acked"],
        report["duration_s"].as_f64().unwrap_or(0.0),
        report["messages_per_s"].as_f64().unwrap_or(0.0),
        report["errors"],
        report["errors_by_kind"],
        report["unsent"]
    );
    println!(
        "ack latency ms: p50 {} p90 {} p99 {} p99.9 {} max {}",
        lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"]
    );
    println!(
        "process {}: last durable slot {} (signing took {:.2} s, before the clock)",
        report["process"],
        report["slots_durable"],
        report["sign_s"].as_f64().unwrap_or(0.0)
    );
}
