//! Shared helpers of the integration tests: real nodes on ephemeral ports, a blocking client.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrobeam::message::{Id, Message, Wallet, json};
use ferrobeam::node::{Node, NodeConfig};
use serde_json::Value as Json;

/// A node running in this process on its own runtime thread; stopped on drop.
pub struct InProcessNode {
    pub addr: SocketAddr,
    /// The QUIC ingress address, when the config asked for one.
    pub quic: Option<SocketAddr>,
    /// The node's address (what QUIC clients pin).
    pub address: ferrobeam::message::Address,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessNode {
    pub fn start(config: NodeConfig) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let node = Node::start(config).await.expect("node starts");
                ready_tx
                    .send((node.local_addr().unwrap(), node.quic_addr(), node.address()))
                    .unwrap();
                node.serve(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let (addr, quic, address) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node ready");
        Self {
            addr,
            quic,
            address,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value of the first `/metrics` line starting with `prefix` (0 when absent).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = get(&self.url(), "/metrics").unwrap();
        text.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A config on port 0 with its data under `dir`.
pub fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_owned(),
        http: "127.0.0.1:0".parse().unwrap(),
        exec_cores: 1,
        compute_wait_ms: 20_000,
        ..NodeConfig::default()
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `ferrobeam` binary as a child process; killed on drop.
pub struct ChildNode {
    pub child: Child,
    pub url: String,
}

impl ChildNode {
    pub fn start(data: &Path, port: u16) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
            .args(["node", "--data"])
            .arg(data)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferrobeam node");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = get(&url, "/~meta@1.0/info") {
                return Self { child, url };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("node on port {port} did not come up");
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> (u16, Json) {
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Json::String(text)),
    )
}

pub fn get(base: &str, path: &str) -> Result<(u16, Json), ureq::Error> {
    Ok(answer(agent().get(format!("{base}{path}")).call()?))
}

pub fn post(base: &str, path: &str, media: &str, body: &[u8]) -> (u16, Json) {
    try_post(base, path, media, body).unwrap()
}

/// `post`, with transport errors (connection refused) returned instead of panicking.
pub fn try_post(
    base: &str,
    path: &str,
    media: &str,
    body: &[u8],
) -> Result<(u16, Json), ureq::Error> {
    Ok(answer(
        agent()
            .post(format!("{base}{path}"))
            .header("content-type", media)
            .send(body)?,
    ))
}

pub fn post_message(base: &str, path: &str, message: &Message) -> (u16, Json) {
    let body = serde_json::to_vec(&json::to_json(message)).unwrap();
    post(base, path, "application/json", &body)
}

pub fn wallet(seed: u8) -> Wallet {
    let d: Vec<u8> = vec![seed; 32];
    Wallet::from_jwk(&serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "d": ferrobeam::message::b64(&d)
    }))
    .unwrap()
}

/// Uploads `wat` as a module and spawns a process running it; returns the process id.
pub fn spawn_wat(base: &str, wallet: &Wallet, wat: &str, tags: &[(&str, &str)]) -> Id {
    let wasm = wat::parse_str(wat).unwrap();
    let (status, body) = post(base, "/~wasm@1.0/module", "application/wasm", &wasm);
    assert_eq!(status, 201, "{body}");
    let mut process = Message::new()
        .with("type", "Process")
        .with("module", body["module"].as_str().unwrap());
    for (k, v) in tags {
        process.set(k, *v).unwrap();
    }
    let signed = wallet.sign(process, &mut rand::rngs::OsRng);
    let (status, ack) = post_message(base, "/~scheduler@1.0/schedule", &signed);
    assert_eq!(status, 201, "{ack}");
    ack["process"].as_str().unwrap().parse().unwrap()
}

/// Sends a signed message with `fields` to `process`; returns the ack.
pub fn send(base: &str, wallet: &Wallet, process: &Id, fields: &[(&str, &str)]) -> Json {
    let mut message = Message::new().with("target", process.to_string());
    for (k, v) in fields {
        message.set(k, *v).unwrap();
    }
    let signed = wallet.sign(message, &mut rand::rngs::OsRng);
    let (status, ack) = post_message(base, &format!("/{process}/schedule"), &signed);
    assert_eq!(status, 201, "{ack}");
    ack
}

/// A module every test can spawn: returns 0 from `handle`.
pub const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "handle") (result i32) i32.const 0))"#;

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_owned()
}
