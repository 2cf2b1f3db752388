//! `ferrobeam bench`: load a node's QUIC ingress and report goodput, messages/s, ack latency
//! percentiles and CPU cost per GB for the client and the node.
//!
//! Bulk mode sends bulk frames of `--size` bytes; messages mode spawns a trivial process (module
//! uploaded over HTTP, process message over QUIC), pre-signs `--messages` messages of `--size`
//! data bytes before the clock starts, then sends them. Every stream keeps `--window` frames in
//! flight; latency is from the frame's write to its reply.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value as Json, json};

use ferrobeam::ingress::client::{QuicClient, bulk_frame, message_frame};
use ferrobeam::ingress::{Reply, cpu_seconds_from_stat, process_cpu_seconds};
use ferrobeam::message::{Address, Id, Message, Wallet, b64};

/// Most messages `--messages` may pre-sign (memory: about size + 300 bytes each).
const PRESIGNED_MAX: usize = 4_000_000;
/// Most frames one stream keeps in flight.
const WINDOW_MAX: usize = 4096;
/// How late a paced frame may be sent before the lateness counts in its latency: the timer's
/// granularity.
const PACING_SLACK: Duration = Duration::from_millis(1);

/// What to send.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Opaque bulk frames, acknowledged by byte count.
    Bulk,
    /// Signed messages, acknowledged once durable.
    Messages,
}

/// `ferrobeam bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The node's QUIC address.
    #[arg(long, default_value = "quic://127.0.0.1:8735")]
    node: String,
    /// The node address to pin (default: asked over HTTP, which trusts that answer).
    #[arg(long)]
    address: Option<Address>,
    /// The node's HTTP URL, for the module upload, the address and /metrics (default: the QUIC
    /// host on port 8734).
    #[arg(long)]
    http: Option<String>,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Mode::Bulk)]
    mode: Mode,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Streams per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Bytes per frame: bulk payload (default 1 MiB) or message data (default 1024).
    #[arg(long)]
    size: Option<usize>,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Frames in flight per stream.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Frames per second over all streams, paced (open loop) instead of as fast as the window
    /// allows: for ack latency at a given load. A frame that waits for window credit past its
    /// send time is timed from its send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Messages to pre-sign (messages mode); the run ends early when they are all sent.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// The node's process id, to read its CPU time from /proc when it runs on this machine
    /// (default: the node's /metrics).
    #[arg(long)]
    node_pid: Option<u32>,
    /// Largest QUIC packet the client allows, in UDP payload bytes (MTU discovery's upper
    /// bound; the node's `--quic-max-udp-payload` bounds it too): 1452, or 8952 for jumbo.
    #[arg(long, default_value_t = ferrobeam::ingress::UDP_PAYLOAD_BYTES_DEFAULT)]
    max_udp_payload: u16,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Counters every stream task updates.
#[derive(Default)]
struct Totals {
    bytes: AtomicU64,
    replies: AtomicU64,
    refused: AtomicU64,
}

/// Runs the bench.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.connections == 0 || args.streams == 0 || !(1..=WINDOW_MAX).contains(&args.window) {
        bail!("--connections and --streams must be ≥ 1, --window 1..={WINDOW_MAX}");
    }
    if args.messages > PRESIGNED_MAX {
        bail!("--messages is at most {PRESIGNED_MAX}");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of frames per second");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(bench(&args))?;
    if args.json {
        println!("{report}");
    } else {
        println!("{}", human(&report));
    }
    Ok(())
}

fn quic_addr(node: &str) -> Result<SocketAddr> {
    let hostport = node.strip_prefix("quic://").unwrap_or(node);
    hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} has no address"))
}

async fn bench(args: &BenchArgs) -> Result<Json> {
    let addr = quic_addr(&args.node)?;
    let http = args
        .http
        .clone()
        .unwrap_or_else(|| format!("http://{}:8734", addr.ip()));
    let node = match args.address {
        Some(address) => address,
        None => {
            let http = http.clone();
            let text =
                tokio::task::spawn_blocking(move || http_text(&http, "/~meta@1.0/info/address"))
                    .await??;
            eprintln!("pinning node address {text} as read over HTTP (give --address to pin it)");
            text.trim().parse().context("the node's address")?
        }
    };
    let size = args.size.unwrap_or(match args.mode {
        Mode::Bulk => 1024 * 1024,
        Mode::Messages => 1024,
    });
    let lanes = args.connections * args.streams;
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(Arc::new(
            QuicClient::connect_tuned(
                addr,
                node,
                ferrobeam::ingress::client::KEEP_ALIVE_DEFAULT,
                args.max_udp_payload,
            )
            .await?,
        ));
    }
    let mut work: Vec<Lane> = match args.mode {
        Mode::Bulk => {
            let frame = bytes::Bytes::from(bulk_frame(size));
            (0..lanes).map(|_| Lane::Bulk(frame.clone())).collect()
        }
        Mode::Messages => {
            let process = spawn_process(&clients[0], &http).await?;
            eprintln!(
                "pre-signing {} messages of {size} data bytes...",
                args.messages
            );
            presign(process, size, args.messages, lanes)
                .into_iter()
                .map(Lane::Messages)
                .collect()
        }
    };
    let transport = node_transport(&http).await;
    let node_cpu_before = node_cpu(&http, args.node_pid).await;
    let client_cpu_before = process_cpu_seconds();
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Each stream paces its share of --rate.
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(lanes as f64 / rate));
    for (i, lane) in work.drain(..).enumerate() {
        let client = clients[i % args.connections].clone();
        let (totals, stop, window) = (totals.clone(), stop.clone(), args.window);
        tasks.spawn(async move { run_lane(client, lane, window, interval, totals, stop).await });
    }
    let progress = tokio::spawn(progress(totals.clone(), start));
    let deadline =
        tokio::time::sleep_until((start + Duration::from_secs_f64(args.duration)).into());
    tokio::pin!(deadline);
    let mut latencies_us: Vec<u32> = Vec::new();
    // Ends when every lane is done: at the deadline, or earlier when the messages run out.
    loop {
        tokio::select! {
            _ = &mut deadline, if !stop.load(Ordering::Relaxed) => stop.store(true, Ordering::Relaxed),
            done = tasks.join_next() => match done {
                Some(done) => {
                    let lane = done??;
                    lane.check()?;
                    latencies_us.extend(lane.latencies_us);
                }
                None => break,
            },
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.abort();
    let client_cpu = process_cpu_seconds()
        .zip(client_cpu_before)
        .map(|(after, before)| after - before);
    let node_cpu = node_cpu(&http, args.node_pid)
        .await
        .zip(node_cpu_before)
        .map(|(after, before)| after - before);
    // The packet size MTU discovery reached: what the run really used. Probes, losses and
    // black holes say why it is not the configured one.
    let paths: Vec<_> = clients
        .iter()
        .map(|client| client.connection().stats().path)
        .collect();
    let path_mtu = paths.iter().map(|path| path.current_mtu).max();
    let path_stats = json!({
        "sent-packets": paths.iter().map(|p| p.sent_packets).sum::<u64>(),
        "lost-packets": paths.iter().map(|p| p.lost_packets).sum::<u64>(),
        "congestion-events": paths.iter().map(|p| p.congestion_events).sum::<u64>(),
        "sent-mtu-probes": paths.iter().map(|p| p.sent_plpmtud_probes).sum::<u64>(),
        "lost-mtu-probes": paths.iter().map(|p| p.lost_plpmtud_probes).sum::<u64>(),
        "black-holes-detected": paths.iter().map(|p| p.black_holes_detected).sum::<u64>(),
    });
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    let mut report = report(
        args,
        &transport,
        size,
        elapsed,
        &totals,
        latencies_us,
        client_cpu,
        node_cpu,
    );
    report["max-udp-payload"] = json!(args.max_udp_payload);
    report["path-udp-payload"] = json!(path_mtu);
    report["client-paths"] = path_stats;
    Ok(report)
}

/// One stream's work.
enum Lane {
    Bulk(bytes::Bytes),
    Messages(Vec<Vec<u8>>),
}

/// What a stream task measured.
struct LaneResult {
    latencies_us: Vec<u32>,
    error: Option<String>,
}

impl LaneResult {
    fn check(&self) -> Result<()> {
        match &self.error {
            Some(e) => bail!("a stream failed: {e}"),
            None => Ok(()),
        }
    }
}

async fn run_lane(
    client: Arc<QuicClient>,
    lane: Lane,
    window: usize,
    interval: Option<Duration>,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
) -> Result<LaneResult> {
    let (mut sender, mut receiver) = client.open().await?;
    let credit = Arc::new(tokio::sync::Semaphore::new(window));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u64)>();
    let writer = {
        let credit = credit.clone();
        async move {
            // Bytes: QUIC keeps a reference instead of copying each frame into its send buffer.
            let mut frames: Box<dyn Iterator<Item = bytes::Bytes> + Send> = match lane {
                Lane::Bulk(frame) => Box::new(std::iter::repeat(frame)),
                Lane::Messages(frames) => Box::new(frames.into_iter().map(bytes::Bytes::from)),
            };
            let mut due = Instant::now();
            // Bounded by the deadline or the pre-signed messages.
            while !stop.load(Ordering::Relaxed) {
                let Some(frame) = frames.next() else { break };
                if interval.is_some() {
                    tokio::time::sleep_until(due.into()).await;
                }
                credit.acquire().await?.forget();
                let now = Instant::now();
                // Paced: a frame held back by the node (no window credit) is timed from when it
                // was due, so stalls count (no coordinated omission); the timer's own lateness
                // (its granularity is 1 ms) does not.
                let sent_at = match interval {
                    Some(interval) => {
                        let late = now > due + PACING_SLACK;
                        due += interval;
                        if late { due - interval } else { now }
                    }
                    None => now,
                };
                let payload = frame
                    .len()
                    .saturating_sub(ferrobeam::ingress::frame::HEADER_BYTES);
                sent_tx.send((sent_at, payload as u64))?;
                sender.send_bytes(frame).await?;
            }
            sender.finish();
            Ok::<_, anyhow::Error>(())
        }
    };
    let reader = async {
        let mut latencies_us = Vec::new();
        // One reply per frame sent; ends when the node finishes the stream.
        while let Some(reply) = receiver.next().await? {
            let (sent_at, bytes) = sent_rx.recv().await.context("a reply to no frame")?;
            latencies_us.push(u32::try_from(sent_at.elapsed().as_micros()).unwrap_or(u32::MAX));
            credit.add_permits(1);
            match reply {
                Reply::Ack(_) | Reply::Bulk(_) => {
                    totals.bytes.fetch_add(bytes, Ordering::Relaxed);
                    totals.replies.fetch_add(1, Ordering::Relaxed);
                }
                Reply::Refused(refusal) => {
                    totals.refused.fetch_add(1, Ordering::Relaxed);
                    if totals.refused.load(Ordering::Relaxed) == 1 {
                        eprintln!("refused: {} ({})", refusal.code, refusal.message);
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(latencies_us)
    };
    let (written, read) = tokio::join!(writer, reader);
    let error = written
        .err()
        .or_else(|| read.as_ref().err().map(|e| anyhow::anyhow!("{e}")));
    Ok(LaneResult {
        latencies_us: read.unwrap_or_default(),
        error: error.map(|e| e.to_string()),
    })
}

async fn progress(totals: Arc<Totals>, start: Instant) {
    let mut last = (0u64, 0u64, start);
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    // Runs until aborted at the end of the bench.
    loop {
        tick.tick().await;
        let now = Instant::now();
        let bytes = totals.bytes.load(Ordering::Relaxed);
        let replies = totals.replies.load(Ordering::Relaxed);
        let dt = now.duration_since(last.2).as_secs_f64().max(1e-9);
        eprintln!(
            "{:>5.1}s {:>8.3} Gbit/s {:>10.0} frames/s  ({} acked, {} refused)",
            now.duration_since(start).as_secs_f64(),
            (bytes - last.0) as f64 * 8.0 / dt / 1e9,
            (replies - last.1) as f64 / dt,
            replies,
            totals.refused.load(Ordering::Relaxed),
        );
        last = (bytes, replies, now);
    }
}

/// Uploads a trivial module over HTTP and spawns a process running it over QUIC.
async fn spawn_process(client: &QuicClient, http: &str) -> Result<Id> {
    const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "handle") (result i32) i32.const 0))"#;
    let wasm = wat::parse_str(NOOP_WAT).context("the bench module")?;
    let base = http.to_owned();
    let module = tokio::task::spawn_blocking(move || -> Result<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .post(format!("{base}/~wasm@1.0/module"))
            .header("content-type", "application/wasm")
            .send(&wasm[..])
            .with_context(|| format!("uploading the bench module to {base}"))?;
        let body: Json = response.body_mut().read_json()?;
        Ok(body["module"].as_str().context("no module id")?.to_owned())
    })
    .await??;
    let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
    let process = Message::new()
        .with("type", "Process")
        .with("module", module)
        .with("anchor", anchor(u64::MAX));
    let process = wallet.sign(process, &mut rand::rngs::OsRng);
    let (mut sender, mut receiver) = client.open().await?;
    sender.send(&message_frame(&process)).await?;
    sender.finish();
    match receiver.next().await? {
        Some(Reply::Ack(ack)) => Ok(ack.process),
        other => bail!("spawning the bench process over QUIC: {other:?}"),
    }
}

fn anchor(n: u64) -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes[..24]);
    bytes[24..].copy_from_slice(&n.to_le_bytes());
    b64(&bytes)
}

/// `count` signed messages to `process`, framed, dealt round-robin into `lanes` lanes.
fn presign(process: Id, size: usize, count: usize, lanes: usize) -> Vec<Vec<Vec<u8>>> {
    let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
    let data = vec![b'x'; size];
    let target = process.to_string();
    let mut out: Vec<Vec<Vec<u8>>> = (0..lanes).map(|_| Vec::new()).collect();
    for n in 0..count {
        let message = Message::new()
            .with("target", target.as_str())
            .with("anchor", anchor(n as u64))
            .with("data", data.clone());
        let signed = wallet.sign(message, &mut rand::rngs::OsRng);
        out[n % lanes].push(message_frame(&signed));
    }
    out
}

/// The node's QUIC backend, from its /metrics (`?` when it cannot be read).
async fn node_transport(http: &str) -> String {
    let http = http.to_owned();
    let text = tokio::task::spawn_blocking(move || http_text(&http, "/metrics")).await;
    let Ok(Ok(text)) = text else {
        return "?".to_owned();
    };
    text.lines()
        .find_map(|line| line.strip_prefix("ferrobeam_quic_transport{transport=\""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
        .to_owned()
}

/// The node's CPU seconds: /proc/PID/stat when given, else its /metrics.
async fn node_cpu(http: &str, pid: Option<u32>) -> Option<f64> {
    if let Some(pid) = pid {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        return cpu_seconds_from_stat(&stat);
    }
    let http = http.to_owned();
    let text = tokio::task::spawn_blocking(move || http_text(&http, "/metrics"))
        .await
        .ok()?
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ferrobeam_process_cpu_seconds_total "))
        .and_then(|value| value.trim().parse().ok())
}

fn http_text(base: &str, path: &str) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(format!("{base}{path}"))
        .call()
        .with_context(|| format!("GET {base}{path}"))?;
    Ok(response.body_mut().read_to_string()?)
}

fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank; the epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[allow(clippy::too_many_arguments, reason = "the report's inputs, named")]
fn report(
    args: &BenchArgs,
    transport: &str,
    size: usize,
    elapsed: f64,
    totals: &Totals,
    mut latencies_us: Vec<u32>,
    client_cpu: Option<f64>,
    node_cpu: Option<f64>,
) -> Json {
    latencies_us.sort_unstable();
    let bytes = totals.bytes.load(Ordering::Relaxed) as f64;
    let replies = totals.replies.load(Ordering::Relaxed);
    let gbits = bytes * 8.0 / elapsed / 1e9;
    let gigabytes = bytes / 1e9;
    let per_gb = |cpu: Option<f64>| cpu.filter(|_| gigabytes > 0.0).map(|c| c / gigabytes);
    let busy_cores = client_cpu.zip(node_cpu).map(|(c, n)| (c + n) / elapsed);
    let latency = |p| percentile(&latencies_us, p).map(|us| f64::from(us) / 1000.0);
    json!({
        "mode": format!("{:?}", args.mode).to_ascii_lowercase(),
        "transport": transport,
        "client": "quinn",
        "connections": args.connections,
        "streams": args.streams,
        "size": size,
        "window": args.window,
        "rate": args.rate,
        "seconds": elapsed,
        "bytes": bytes,
        "frames": replies,
        "refused": totals.refused.load(Ordering::Relaxed),
        "goodput-gbps": gbits,
        "frames-per-second": replies as f64 / elapsed,
        "messages-per-second": (args.mode == Mode::Messages).then(|| replies as f64 / elapsed),
        "ack-latency-ms": {
            "p50": latency(50.0), "p90": latency(90.0), "p99": latency(99.0), "p99.9": latency(99.9),
        },
        "client-cpu-seconds": client_cpu,
        "node-cpu-seconds": node_cpu,
        "client-cpu-seconds-per-gb": per_gb(client_cpu),
        "node-cpu-seconds-per-gb": per_gb(node_cpu),
        "busy-cores": busy_cores,
        "gbps-per-busy-core": busy_cores.filter(|c| *c > 0.0).map(|c| gbits / c),
    })
}

fn human(report: &Json) -> String {
    let num = |v: &Json| v.as_f64().map_or("n/a".to_owned(), |x| format!("{x:.3}"));
    let latency = &report["ack-latency-ms"];
    format!(
        "{} over QUIC ({}), {} conn × {} streams, {} B frames, {:.1} s\n\
         goodput       {} Gbit/s   {} frames/s   ({} acked, {} refused)\n\
         ack latency   p50 {} ms  p90 {} ms  p99 {} ms  p99.9 {} ms\n\
         CPU s/GB      client {}  node {}\n\
         busy cores    {}   → {} Gbit/s per busy core",
        report["mode"].as_str().unwrap_or("?"),
        report["client"].as_str().unwrap_or("?"),
        report["connections"],
        report["streams"],
        report["size"],
        report["seconds"].as_f64().unwrap_or(0.0),
        num(&report["goodput-gbps"]),
        num(&report["frames-per-second"]),
        report["frames"],
        report["refused"],
        num(&latency["p50"]),
        num(&latency["p90"]),
        num(&latency["p99"]),
        num(&latency["p99.9"]),
        num(&report["client-cpu-seconds-per-gb"]),
        num(&report["node-cpu-seconds-per-gb"]),
        num(&report["busy-cores"]),
        num(&report["gbps-per-busy-core"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn bad_rates_windows_and_counts_are_refused_before_connecting() {
        use clap::Parser as _;
        for bad in [
            &["--rate", "0"][..],
            &["--rate=-5"],
            &["--rate", "NaN"],
            &["--rate", "inf"],
            &["--window", "0"],
            &["--connections", "0"],
        ] {
            let args = Cli::parse_from(std::iter::once("bench").chain(bad.iter().copied())).args;
            let error = run(args).expect_err("refused").to_string();
            assert!(error.starts_with("--"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn percentiles_pick_ranks() {
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(500));
        assert_eq!(percentile(&sorted, 99.9), Some(999));
        assert_eq!(percentile(&sorted, 100.0), Some(1000));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn quic_urls_resolve() {
        assert_eq!(
            quic_addr("quic://127.0.0.1:8735").unwrap(),
            "127.0.0.1:8735".parse::<SocketAddr>().unwrap()
        );
    }
}
