//! Command-line interface: `ferrobeam node` (the default) and the clients that talk to a node.
//! Every client command takes `--json` and then prints exactly one JSON object.

mod assets;
mod bench;
mod client;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value as Json, json};

use ferrobeam::message::{Id, Message, Wallet, b64};
use ferrobeam::node::{Node, NodeConfig};

use client::Client;

/// ferrobeam: a node for AO-Core style decentralized compute.
#[derive(Parser, Debug)]
#[command(name = "ferrobeam", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (the default when no command is given).
    Node(NodeArgs),
    /// Create a wallet (a JWK file readable only by you).
    Keygen(KeygenArgs),
    /// Upload a WebAssembly module and spawn a process running it.
    Spawn(SpawnArgs),
    /// Send a signed message to a process.
    Send(SendArgs),
    /// Show the result of one slot of a process.
    Result(ResultArgs),
    /// Recompute a process locally from its schedule and compare with the node's results.
    Audit(AuditArgs),
    /// Show this machine's hardware inventory.
    Hw(HwArgs),
    /// Verify a node's attestation evidence (online with --node, offline with --evidence).
    Verify(verify::VerifyArgs),
    /// Load a node's QUIC ingress: goodput, messages/s, ack latency, CPU per GB.
    Bench(bench::BenchArgs),
}

#[derive(Args, Debug)]
struct HwArgs {
    /// Print the inventory as JSON (the versioned schema of docs/hwdetect.md); with --node,
    /// `{"inventory": ..., "assets": <the node's /~assets@1.0/list>}`.
    #[arg(long)]
    json: bool,
    /// Also show this node's assets and allocations (executor cores included), e.g.
    /// http://127.0.0.1:8734.
    #[arg(long)]
    node: Option<String>,
    /// Sign the read with this wallet JWK (the node key or an operator's), for privacy levels
    /// that hide assets from unauthenticated callers.
    #[arg(long, requires = "node")]
    wallet: Option<PathBuf>,
}

#[derive(Args, Debug, Default)]
struct NodeArgs {
    /// Data directory (store, node key, AOT cache).
    #[arg(long, env = "FERROBEAM_DATA")]
    data: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "FERROBEAM_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// TOML configuration file (embedded defaults otherwise).
    #[arg(long, env = "FERROBEAM_CONFIG")]
    config: Option<PathBuf>,
    /// Attestation evidence: auto, snp, tpm or none (docs/operators.md).
    #[arg(long, env = "FERROBEAM_ATTESTATION")]
    attestation: Option<ferrobeam::node::attest::AttestationMode>,
    /// TPM TCTI: device:/dev/tpmrm0 (default) or swtpm:host=127.0.0.1,port=P.
    #[arg(long, env = "FERROBEAM_TPM_TCTI")]
    tpm_tcti: Option<String>,
    /// QUIC ingress listen address (UDP), e.g. 127.0.0.1:8735 (docs/dataplane.md).
    #[arg(long, env = "FERROBEAM_QUIC")]
    quic: Option<std::net::SocketAddr>,
    /// QUIC backend: uring (default on Linux; tokio where io_uring is unavailable), tokio or s2n.
    #[arg(long, env = "FERROBEAM_TRANSPORT")]
    transport: Option<ferrobeam::ingress::TransportKind>,
    /// Ingress threads, pinned (0: a quarter of the physical cores, at least 1).
    #[arg(long, env = "FERROBEAM_INGRESS_CORES")]
    ingress_cores: Option<usize>,
    /// Executor threads, pinned (0: the physical cores the ingress leaves, at least 1).
    #[arg(long, env = "FERROBEAM_EXEC_CORES")]
    exec_cores: Option<usize>,
    /// Largest QUIC packet, in UDP payload bytes (1452; up to 8952 for jumbo frames).
    #[arg(long, env = "FERROBEAM_QUIC_MAX_UDP_PAYLOAD")]
    quic_max_udp_payload: Option<u16>,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Where to write the wallet JWK (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Signature scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::Ed25519)]
    scheme: SchemeArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SchemeArg {
    /// Ed25519 (fast; ferrobeam's native scheme).
    Ed25519,
    /// RSA-PSS-SHA512 with a 4096-bit key (Arweave wallets).
    Rsa,
}

/// Options every client command shares.
#[derive(Args, Debug)]
struct ClientArgs {
    /// The node's URL.
    #[arg(long, default_value = "http://127.0.0.1:8734", env = "FERROBEAM_NODE")]
    node: String,
    /// Wallet JWK to sign with (default: created under your config directory).
    #[arg(long, env = "FERROBEAM_WALLET")]
    wallet: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SpawnArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The WebAssembly module (.wasm, or .wat text).
    #[arg(long)]
    module: PathBuf,
    /// Extra process tags, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

#[derive(Args, Debug)]
struct SendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The target process id.
    #[arg(long)]
    process: Id,
    /// The message's data.
    #[arg(long)]
    data: Option<String>,
    /// Message tags, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

#[derive(Args, Debug)]
struct ResultArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The process id.
    #[arg(long)]
    process: Id,
    /// The slot.
    #[arg(long)]
    slot: u64,
}

#[derive(Args, Debug)]
struct AuditArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The process id.
    #[arg(long)]
    process: Id,
    /// Audit slots 0..=N (default: every assigned slot).
    #[arg(long)]
    to_slot: Option<u64>,
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((k.to_ascii_lowercase(), v.to_owned()))
}

/// Entry point: exit 0 on success, 1 when a check fails (audit), 2 on usage or I/O errors.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command.unwrap_or(Command::Node(NodeArgs::default())) {
        Command::Node(args) => run_node(args),
        Command::Keygen(args) => keygen(args),
        Command::Spawn(args) => spawn(args),
        Command::Send(args) => send(args),
        Command::Result(args) => result(args),
        Command::Audit(args) => audit(args),
        Command::Hw(args) => hw(args),
        Command::Verify(args) => verify::run(args),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
    }
}

fn run_node(args: NodeArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn")
            }),
        )
        .init();
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let Some(http) = args.http {
        config.http = http;
    }
    if let Some(attestation) = args.attestation {
        config.attestation = attestation;
    }
    if let Some(tcti) = args.tpm_tcti {
        config.tpm_tcti = tcti;
    }
    if args.quic.is_some() {
        config.quic = args.quic;
    }
    if let Some(transport) = args.transport {
        config.transport = transport;
    }
    if let Some(cores) = args.ingress_cores {
        config.ingress_cores = cores;
    }
    if let Some(cores) = args.exec_cores {
        config.exec_cores = cores;
    }
    if let Some(bytes) = args.quic_max_udp_payload {
        config.quic_max_udp_payload = bytes;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let node = Node::start(config).await?;
        let addr = node.local_addr()?;
        tracing::info!(%addr, address = %node.address(), "ferrobeam node serving");
        if let Some(quic) = node.quic_addr() {
            tracing::info!(%quic, "QUIC ingress listening");
        }
        node.serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn keygen(args: KeygenArgs) -> Result<ExitCode> {
    let mut rng = rand::rngs::OsRng;
    let wallet = match args.scheme {
        SchemeArg::Ed25519 => Wallet::generate_ed25519(&mut rng),
        SchemeArg::Rsa => Wallet::generate_rsa(&mut rng, 4096)?,
    };
    ferrobeam::node::write_private(&args.out, &wallet)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let out = json!({
        "address": wallet.address(),
        "scheme": wallet.scheme().name(),
        "wallet": args.out,
    });
    print(args.json, &out, || {
        format!(
            "{} wallet {} written to {}",
            wallet.scheme().name(),
            wallet.address(),
            args.out.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// The wallet to sign with: `--wallet`, or the default one (created on first use).
fn load_wallet(path: Option<&PathBuf>) -> Result<Wallet> {
    let path = match path {
        Some(p) => p.clone(),
        None => dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("ferrobeam")
            .join("wallet.json"),
    };
    if !path.exists() {
        let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
        ferrobeam::node::write_private(&path, &wallet)
            .with_context(|| format!("creating wallet {}", path.display()))?;
        eprintln!("created wallet {} at {}", wallet.address(), path.display());
        return Ok(wallet);
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let jwk: Json =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Wallet::from_jwk(&jwk)?)
}

/// A fresh random anchor, so that two identical sends are two messages.
fn anchor() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    b64(&bytes)
}

fn with_tags(mut message: Message, tags: &[(String, String)]) -> Result<Message> {
    for (k, v) in tags {
        message
            .set(k, v.as_str())
            .with_context(|| format!("tag {k}"))?;
    }
    Ok(message)
}

fn spawn(args: SpawnArgs) -> Result<ExitCode> {
    let wallet = load_wallet(args.client.wallet.as_ref())?;
    let client = Client::new(&args.client.node);
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let wasm = wat::parse_bytes(&bytes)
        .with_context(|| format!("{} is neither wasm nor wat", args.module.display()))?;
    let uploaded = client.post_bytes("/~wasm@1.0/module", "application/wasm", wasm.to_vec())?;
    let module = uploaded["module"]
        .as_str()
        .context("node did not return a module id")?;
    let process = Message::new()
        .with("type", "Process")
        .with("module", module)
        .with("anchor", anchor());
    let process = with_tags(process, &args.tags)?;
    let signed = wallet.sign(process, &mut rand::rngs::OsRng);
    let ack = client.post_message("/~scheduler@1.0/schedule", &signed)?;
    let out = json!({
        "process": ack["process"],
        "module": module,
        "slot": ack["slot"],
        "assignment": ack["assignment"],
        "hashpath": ack["hashpath"],
        "owner": wallet.address(),
    });
    print(args.client.json, &out, || {
        format!("process {}", out["process"].as_str().unwrap_or("?"))
    });
    Ok(ExitCode::SUCCESS)
}

fn send(args: SendArgs) -> Result<ExitCode> {
    let wallet = load_wallet(args.client.wallet.as_ref())?;
    let client = Client::new(&args.client.node);
    let mut message = Message::new()
        .with("target", args.process.to_string())
        .with("anchor", anchor());
    if let Some(data) = &args.data {
        message.set("data", data.as_str())?;
    }
    let message = with_tags(message, &args.tags)?;
    let signed = wallet.sign(message, &mut rand::rngs::OsRng);
    let ack = client.post_message(&format!("/{}/schedule", args.process), &signed)?;
    print(args.client.json, &ack, || {
        format!(
            "message {} at slot {}",
            ack["id"].as_str().unwrap_or("?"),
            ack["slot"]
        )
    });
    Ok(ExitCode::SUCCESS)
}

fn result(args: ResultArgs) -> Result<ExitCode> {
    let client = Client::new(&args.client.node);
    let mut record = client.get_json(&format!("/{}/compute?slot={}", args.process, args.slot))?;
    let mut budget = TREE_NODES_MAX;
    record["tree"] = message_tree(&args.client.node, &record, 0, &mut budget);
    print(args.client.json, &record, || human_result(&record));
    Ok(ExitCode::SUCCESS)
}

/// Most results `ferrobeam result` fetches to draw the tree of pushed messages.
const TREE_NODES_MAX: usize = 256;

/// The results of the messages a slot's outbox became, recursively (bounded by the push depth
/// limit and [`TREE_NODES_MAX`]).
fn message_tree(node: &str, record: &Json, depth: i64, budget: &mut usize) -> Json {
    let mut children = Vec::new();
    let Some(pushed) = record["pushed"].as_array() else {
        return Json::Array(children);
    };
    for entry in pushed {
        let (Some(target), Some(slot)) = (entry["target"].as_str(), entry["slot"].as_u64()) else {
            children.push(entry.clone());
            continue;
        };
        if *budget == 0 || depth >= ferrobeam::push::PUSH_DEPTH_MAX {
            children.push(json!({"target": target, "slot": slot, "truncated": true}));
            continue;
        }
        *budget -= 1;
        let base = entry["node"].as_str().unwrap_or(node);
        let child = match Client::new(base).get_json(&format!("/{target}/compute?slot={slot}")) {
            Ok(child) => {
                let tree = message_tree(base, &child, depth + 1, budget);
                json!({"target": target, "slot": slot, "output": child["output"],
                       "error": child["error"], "tree": tree})
            }
            Err(e) => json!({"target": target, "slot": slot, "unavailable": e.to_string()}),
        };
        children.push(child);
    }
    Json::Array(children)
}

fn human_result(record: &Json) -> String {
    let mut out = format!(
        "slot {} hashpath {}\n",
        record["slot"],
        record["hashpath"].as_str().unwrap_or("?")
    );
    match &record["output"] {
        Json::String(text) => out.push_str(&format!("output: {text}\n")),
        other => out.push_str(&format!("output: {other}\n")),
    }
    if let Some(error) = record["error"].as_str() {
        out.push_str(&format!("error: {error}\n"));
    }
    if let Some(messages) = record["messages"].as_array() {
        for m in messages {
            out.push_str(&format!(
                "outbox → {}: {}\n",
                m["target"].as_str().unwrap_or("?"),
                m
            ));
        }
    }
    draw_tree(&record["tree"], 1, &mut out);
    out.trim_end().to_owned()
}

fn draw_tree(tree: &Json, indent: usize, out: &mut String) {
    for child in tree.as_array().into_iter().flatten() {
        let pad = "  ".repeat(indent);
        let target = child["target"].as_str().unwrap_or("?");
        match (child["slot"].as_u64(), child["skipped"].as_str()) {
            (Some(slot), _) => {
                let shown = match &child["error"] {
                    Json::String(e) => format!("error: {e}"),
                    _ => format!("output: {}", child["output"]),
                };
                out.push_str(&format!("{pad}└ {target} slot {slot}: {shown}\n"));
                draw_tree(&child["tree"], indent + 1, out);
            }
            (None, Some(reason)) => {
                out.push_str(&format!("{pad}└ {target}: not pushed ({reason})\n"))
            }
            (None, None) if child["status"] == "queued" => out.push_str(&format!(
                "{pad}└ {target}: queued for {}\n",
                child["node"].as_str().unwrap_or("this node")
            )),
            (None, None) => out.push_str(&format!("{pad}└ {target}: {child}\n")),
        }
    }
}

fn audit(args: AuditArgs) -> Result<ExitCode> {
    let client = Client::new(&args.client.node);
    let report = client::audit(&client, &args.process, args.to_slot)?;
    let ok = report["ok"].as_bool() == Some(true);
    print(args.client.json, &report, || {
        if ok {
            format!(
                "audit passed: {} slots recomputed, results and hashpaths match (final hashpath {})",
                report["slots"],
                report["hashpath"].as_str().unwrap_or("?")
            )
        } else {
            format!("audit FAILED: {}", report["mismatch"])
        }
    });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn hw(args: HwArgs) -> Result<ExitCode> {
    assets::hw(args.json, args.node.as_deref(), args.wallet.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

fn print(json_mode: bool, value: &Json, human: impl FnOnce() -> String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

/// Fails with the node's JSON error.
fn node_error(status: u16, body: &Json) -> anyhow::Error {
    anyhow::anyhow!(
        "node answered {status}: {} ({})",
        body["message"].as_str().unwrap_or("no message"),
        body["error"].as_str().unwrap_or("no code"),
    )
}
