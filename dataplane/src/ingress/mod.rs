//! QUIC ingress: clients open bidirectional streams and send frames of rkyv messages (or bulk
//! bytes); each message is validated in place, its signature verified (in batches), its target
//! checked as HTTP does, and it is scheduled; the ack goes back on the same stream once durable.
//!
//! ```text
//!  UDP socket(s) ──> QUIC endpoint (backend) ──> stream task ──> FrameReader (16-byte aligned)
//!     counted:            connections ≤ CONNECTIONS_MAX         │ wire::access (validated view)
//!     garbage datagrams   streams ≤ STREAMS_PER_CONNECTION_MAX  │ target check, verify_batch
//!                                                               ▼
//!  client <── ack frames in stream order <── PendingAck ≤ FRAMES_IN_FLIGHT_PER_STREAM_MAX
//!                                              ▲  (no more reads while full: stream credit)
//!                                    Sequencer (queue REQUEST_QUEUE_MAX, group commit, fsync)
//! ```
//!
//! This module holds what every backend shares: the limits, the [`Transport`] trait, the ingest
//! steps ([`Ingest`]), the ack encoding and the metrics. [`frame`] is the sans-IO framing,
//! [`tls`] the node's certificate and the client's pin, [`uring`] the io_uring backend (the
//! default on Linux), [`tokio`] the quinn-on-tokio backend, [`s2n`] the s2n-quic backend and
//! [`client`] the client the bench and tests use. docs/dataplane.md has the whole picture.

pub mod client;
pub mod frame;
pub mod s2n;
pub mod tls;
pub mod tokio;
#[cfg(target_os = "linux")]
pub mod uring;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::message::{Id, Message, VerifiedMessage, Wallet, verify_batch, wire::from_archived};
use crate::node::{Ack, NodeError, PendingAck, Shared};
use crate::schedule::PROCESS_TYPE;
use frame::{
    ACK_BYTES, AlignedFrame, BULK_ACK_BYTES, Event, FrameError, FrameReader, Kind,
    REFUSED_BYTES_MAX,
};

/// Default idle timeout of connections and of streams stuck inside a frame (10 s).
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Most ingress threads a node starts (one QUIC endpoint each).
pub const INGRESS_CORES_MAX: usize = 64;
/// Default largest UDP payload of a QUIC packet: 1500-byte Ethernet less IPv6 and UDP headers,
/// the size quinn's MTU discovery stops at. Jumbo-frame links take up to `UDP_PAYLOAD_BYTES_MAX`.
pub const UDP_PAYLOAD_BYTES_DEFAULT: u16 = 1452;
/// UDP socket send and receive buffers asked for (the kernel caps them at `net.core.rmem_max` /
/// `wmem_max`). The 208 KiB default overflows on loopback while a receiver is descheduled, and
/// the losses make MTU discovery fall back to 1200-byte packets (black-hole detection).
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes one GSO send may carry: the IPv4/IPv6 payload limit (65,535) less the IP and UDP
/// headers, rounded down. Every backend bounds its batches by it.
pub const GSO_BYTES_MAX: usize = 65_000;
/// Smallest UDP payload QUIC allows (RFC 9000 §14: every path carries 1200-byte datagrams).
pub const UDP_PAYLOAD_BYTES_MIN: u16 = 1200;
/// Largest configurable UDP payload: a 9000-byte jumbo frame less IPv6 and UDP headers.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 8952;
/// Most open connections per endpoint (handshaking ones included), and the default of the
/// node's `quic-connections-max`. Beyond it new handshakes are refused (counted in
/// `ferrobeam_quic_connections_refused_total{reason="connections-max"}`). With the receive window
/// below, QUIC buffers at most 256 × 8 MiB = 2 GiB for a full house of flooding peers.
pub const CONNECTIONS_MAX: usize = 256;
/// Most concurrent bidirectional streams a client may open on one connection: QUIC stream
/// credit, so a client that wants more waits (backpressure, nothing to count).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 32;
/// Most frames of one stream read but not yet answered. When full the stream task stops
/// reading, the stream's receive window fills and the client's writes block: a slow sequencer
/// shrinks stream credit end to end. One read chunk may overshoot it by
/// `READ_CHUNK_BYTES_MAX / 16` frames.
pub const FRAMES_IN_FLIGHT_PER_STREAM_MAX: usize = 256;
/// Largest chunk read from a stream at once (bounds the frames one read can add).
pub const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Most messages verified in one batch (Ed25519 batch verification amortizes well up to ~64).
pub const VERIFY_BATCH_MAX: usize = 64;
/// QUIC receive window of one stream: 2 MiB keeps a loopback or datacenter link busy.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// QUIC receive window of one connection (all its streams together).
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// QUIC send window of one connection (acks are small; bulk replies are 32 bytes).
pub const SEND_WINDOW_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes all streams together may hold in partly received large message frames (over
/// `frame::BUFFER_KEPT_BYTES`). A stream reserves its frame's whole padded length from this
/// budget when the header arrives and stops reading while it cannot (backpressure); the frame's
/// end, or the stream's end or idle timeout, gives it back. Small frames need no reservation:
/// their buffer is one `BUFFER_KEPT_BYTES` per stream at most.
pub const LARGE_FRAME_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// Shorter datagrams cannot be QUIC: RFC 9000 §10.3 makes 21 bytes the shortest packet an
/// endpoint sends (a stateless reset), and every real packet carries a 16-byte AEAD tag too.
const DATAGRAM_BYTES_MIN: usize = 21;

const _: () = assert!(READ_CHUNK_BYTES_MAX <= STREAM_RECEIVE_WINDOW_BYTES as usize);
const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= CONNECTION_RECEIVE_WINDOW_BYTES);
const _: () = assert!(VERIFY_BATCH_MAX <= FRAMES_IN_FLIGHT_PER_STREAM_MAX);
const _: () = assert!(frame::FRAME_BYTES_MAX <= LARGE_FRAME_BUDGET_BYTES);
const _: () = assert!(LARGE_FRAME_BUDGET_BYTES <= u32::MAX as usize);
const _: () = assert!(UDP_PAYLOAD_BYTES_MIN <= UDP_PAYLOAD_BYTES_DEFAULT);
const _: () = assert!(UDP_PAYLOAD_BYTES_DEFAULT <= UDP_PAYLOAD_BYTES_MAX);

/// Application error codes on QUIC streams and connections.
pub mod code {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The stream's bytes are not valid frames (the node stops reading it).
    pub const FRAME_INVALID: u32 = 1;
    /// The stream sat inside a frame for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u32 = 2;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 3;
}

/// Which QUIC stack serves the ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TransportKind {
    /// quinn on a tokio runtime of its own: the portable backend and the baseline.
    Tokio,
    /// quinn-proto on an io_uring per ingress core (Linux; falls back to tokio, with a
    /// warning, where io_uring cannot be set up).
    Uring,
    /// s2n-quic on a tokio runtime of its own, for side-by-side comparison.
    S2n,
}

impl Default for TransportKind {
    /// `uring` on Linux, `tokio` elsewhere.
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            TransportKind::Uring
        } else {
            TransportKind::Tokio
        }
    }
}

impl TransportKind {
    /// Every backend this build has, in the order benchmarks and tests list them.
    pub const ALL: &'static [TransportKind] = &[
        TransportKind::Uring,
        TransportKind::Tokio,
        TransportKind::S2n,
    ];

    /// The name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tokio => "tokio",
            TransportKind::Uring => "uring",
            TransportKind::S2n => "s2n",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tokio" => Ok(TransportKind::Tokio),
            "uring" => Ok(TransportKind::Uring),
            "s2n" => Ok(TransportKind::S2n),
            other => Err(format!("unknown transport {other:?} (uring, tokio, s2n)")),
        }
    }
}

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngressError {
    /// The TLS identity could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding the UDP address or starting the threads failed.
    #[error("QUIC ingress on {addr}: {source}")]
    Io {
        /// The listen address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running QUIC backend.
pub trait Transport: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> TransportKind;
    /// The bound UDP address (useful with port 0).
    fn local_addr(&self) -> SocketAddr;
    /// Closes every connection and stops the backend's threads; blocks until they are gone,
    /// so the node's shared state (and its sequencer handle) is released when it returns.
    fn shutdown(self: Box<Self>);
}

/// What a backend needs besides the shared ingest state.
#[derive(Debug, Clone)]
pub struct Settings {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Ingress threads (one endpoint each).
    pub threads: usize,
    /// Idle timeout of connections and of streams stuck inside a frame.
    pub idle_timeout: Duration,
    /// Largest UDP payload of a QUIC packet (MTU discovery's upper bound), in
    /// `UDP_PAYLOAD_BYTES_MIN..=UDP_PAYLOAD_BYTES_MAX`.
    pub max_udp_payload: u16,
    /// Most connections per endpoint, handshaking ones included (1..=[`CONNECTIONS_MAX`]).
    pub connections_max: usize,
    /// Logical CPUs the ingress threads are pinned to (thread i to `cores[i % len]`); empty:
    /// unpinned.
    pub cores: Vec<usize>,
}

/// The tokio runtime of a backend: `settings.threads` workers named `ferrobeam-ingress`, each
/// pinned to its ingress core when `settings.cores` names some.
///
/// # Errors
/// When the runtime cannot start.
pub fn ingress_runtime(settings: &Settings) -> std::io::Result<::tokio::runtime::Runtime> {
    let cores = settings.cores.clone();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    ::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .thread_name("ferrobeam-ingress")
        .on_thread_start(move || {
            // Workers start one by one; blocking-pool threads (if any) take the next slots.
            let index = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(id) = cores.get(index % cores.len().max(1)) {
                crate::node::cores::pin_current_thread(*id);
            }
        })
        .enable_all()
        .build()
}

/// Starts the configured backend over `shared`, with the certificate of `wallet`.
///
/// # Errors
/// [`IngressError`].
pub fn start(
    shared: Arc<Shared>,
    wallet: &Wallet,
    settings: Settings,
) -> Result<Box<dyn Transport>, IngressError> {
    let tls = tls::server_config(wallet)?;
    let ingest = Arc::new(Ingest {
        metrics: shared.ingress.clone(),
        shared,
        idle_timeout: settings.idle_timeout,
        large_frames: LargeFrame::budget(),
    });
    let metrics = ingest.metrics.clone();
    let transport = match ingest.shared.config.transport {
        TransportKind::Tokio => Box::new(tokio::TokioTransport::start(ingest, &settings, tls)?),
        TransportKind::Uring => start_uring(ingest, &settings, tls)?,
        TransportKind::S2n => Box::new(s2n::S2nTransport::start(ingest, &settings, tls)?),
    };
    metrics
        .transport
        .get_or_create(&TransportLabel {
            transport: transport.kind().name().to_owned(),
        })
        .set(1);
    Ok(transport)
}

/// The io_uring backend, or the tokio one (with a warning) where io_uring cannot be set up.
fn start_uring(
    ingest: Arc<Ingest>,
    settings: &Settings,
    tls: rustls::ServerConfig,
) -> Result<Box<dyn Transport>, IngressError> {
    #[cfg(target_os = "linux")]
    {
        let started = uring::probe()
            .map_err(|source| IngressError::Io {
                addr: settings.listen,
                source,
            })
            .and_then(|()| uring::UringTransport::start(ingest.clone(), settings, tls.clone()));
        match started {
            Ok(transport) => return Ok(Box::new(transport)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; QUIC ingress runs on tokio")
            }
        }
    }
    Ok(Box::new(tokio::TokioTransport::start(
        ingest, settings, tls,
    )?))
}

/// A refusal sent back in a [`Kind::Refused`] frame: the code is a `NodeError` code, or one of
/// the frame codes (`FrameInvalid`, `FrameTooLarge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: String,
    /// A human-readable reason.
    pub message: String,
}

impl From<NodeError> for Refusal {
    fn from(e: NodeError) -> Self {
        Self {
            code: e.code().to_owned(),
            message: e.to_string(),
        }
    }
}

impl From<&FrameError> for Refusal {
    fn from(e: &FrameError) -> Self {
        let code = match e {
            FrameError::TooLarge { .. } => "FrameTooLarge",
            _ => "FrameInvalid",
        };
        Self {
            code: code.to_owned(),
            message: e.to_string(),
        }
    }
}

/// A reply on a stream, in the order of the frames it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The message is durable.
    Ack(Ack),
    /// The message was refused (or the stream's bytes were invalid: then it is the last reply).
    Refused(Refusal),
    /// A bulk frame of this many payload bytes was received.
    Bulk(u64),
}

impl Reply {
    /// Appends the reply's frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ack(ack) => frame::encode_into(Kind::Ack, &encode_ack(ack), out),
            Reply::Refused(refusal) => {
                frame::encode_into(Kind::Refused, &refusal_json(refusal), out);
            }
            Reply::Bulk(bytes) => {
                let mut payload = [0u8; BULK_ACK_BYTES];
                payload[..8].copy_from_slice(&bytes.to_le_bytes());
                frame::encode_into(Kind::BulkAck, &payload, out);
            }
        }
    }

    /// Parses a reply frame's payload.
    ///
    /// # Errors
    /// [`FrameError::Unexpected`] for a kind that is not a reply, [`FrameError::Truncated`]
    /// for a payload of the wrong length or malformed JSON.
    pub fn decode(kind: Kind, payload: &[u8]) -> Result<Self, FrameError> {
        match kind {
            Kind::Ack => decode_ack(payload).map(Reply::Ack),
            Kind::BulkAck => {
                let count: [u8; 8] = payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(FrameError::Truncated)?;
                Ok(Reply::Bulk(u64::from_le_bytes(count)))
            }
            Kind::Refused => {
                let json: serde_json::Value =
                    serde_json::from_slice(payload).map_err(|_| FrameError::Truncated)?;
                Ok(Reply::Refused(Refusal {
                    code: json["error"].as_str().unwrap_or("?").to_owned(),
                    message: json["message"].as_str().unwrap_or("").to_owned(),
                }))
            }
            other => Err(FrameError::Unexpected(other)),
        }
    }
}

/// Characters of a refusal's code kept when its JSON must be cut (codes are variant names).
const REFUSED_CODE_CHARS_MAX: usize = 64;
/// Characters of a refusal's text tried first when its JSON must be cut.
const REFUSED_TEXT_CHARS_CUT: usize = 1024;

// A character takes at most 6 bytes in JSON (`\u001f`): a cut code with no text always fits.
const _: () = assert!(REFUSED_CODE_CHARS_MAX * 6 + 32 <= REFUSED_BYTES_MAX);

/// A refusal as JSON `{"error", "message"}` of at most [`REFUSED_BYTES_MAX`] bytes, always
/// valid: when it does not fit, the code is cut and the text halved until it does (at most 11
/// tries). Cutting the bytes instead would break the JSON for texts that escape to 6 bytes a
/// character.
fn refusal_json(refusal: &Refusal) -> Vec<u8> {
    let encode = |code: &str, message: &str| {
        // Serializing two strings cannot fail.
        serde_json::to_vec(&serde_json::json!({"error": code, "message": message}))
            .unwrap_or_default()
    };
    let bytes = encode(&refusal.code, &refusal.message);
    if bytes.len() <= REFUSED_BYTES_MAX {
        return bytes;
    }
    let code: String = refusal.code.chars().take(REFUSED_CODE_CHARS_MAX).collect();
    let mut chars = REFUSED_TEXT_CHARS_CUT;
    loop {
        let text: String = refusal.message.chars().take(chars).collect();
        let bytes = encode(&code, &text);
        if bytes.len() <= REFUSED_BYTES_MAX || chars == 0 {
            assert!(bytes.len() <= REFUSED_BYTES_MAX, "a cut refusal fits");
            return bytes;
        }
        chars /= 2;
    }
}

/// The fixed binary form of an ack (see [`frame::ACK_BYTES`]).
pub fn encode_ack(ack: &Ack) -> [u8; ACK_BYTES] {
    let mut out = [0u8; ACK_BYTES];
    out[0..32].copy_from_slice(&ack.id.0);
    out[32..64].copy_from_slice(&ack.process.0);
    out[64..96].copy_from_slice(&ack.assignment.0);
    out[96..128].copy_from_slice(&ack.hashpath.0);
    out[128..136].copy_from_slice(&ack.slot.to_le_bytes());
    out[136..144].copy_from_slice(&ack.timestamp.to_le_bytes());
    out[144..148].copy_from_slice(&u32::from(ack.duplicate).to_le_bytes());
    out
}

/// Inverse of [`encode_ack`].
///
/// # Errors
/// [`FrameError::Truncated`] for a payload of another length.
pub fn decode_ack(payload: &[u8]) -> Result<Ack, FrameError> {
    let bytes: &[u8; ACK_BYTES] = payload.try_into().map_err(|_| FrameError::Truncated)?;
    let digest = |at: usize| -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes[at..at + 32]);
        out
    };
    let word = |at: usize| -> u64 {
        let mut out = [0u8; 8];
        out.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(out)
    };
    Ok(Ack {
        id: Id(digest(0)),
        process: Id(digest(32)),
        assignment: Id(digest(64)),
        hashpath: crate::message::Hashpath(digest(96)),
        slot: word(128),
        timestamp: word(136),
        duplicate: bytes[144] & 1 == 1,
    })
}

/// The large frame a reader is inside (its index and padded length), if it needs the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargeFrameWanted(Option<(u64, usize)>);

impl LargeFrameWanted {
    /// What `reader`'s partly received frame needs from [`LARGE_FRAME_BUDGET_BYTES`].
    pub fn of(reader: &frame::FrameReader) -> Self {
        Self(match reader.pending() {
            Some((index, header))
                if header.kind == Kind::Message && header.len > frame::BUFFER_KEPT_BYTES =>
            {
                Some((index, frame::pad16(header.len)))
            }
            _ => None,
        })
    }
}

/// A stream's reservation from the large-frame budget: the frame it is for and the permit.
#[derive(Debug, Default)]
pub struct LargeFrame(Option<(u64, ::tokio::sync::OwnedSemaphorePermit)>);

impl LargeFrame {
    /// A full [`LARGE_FRAME_BUDGET_BYTES`] budget, one per ingress.
    pub fn budget() -> Arc<::tokio::sync::Semaphore> {
        Arc::new(::tokio::sync::Semaphore::new(LARGE_FRAME_BUDGET_BYTES))
    }

    /// Whether this reservation is already the one `wanted` (then reserving does nothing).
    pub fn is_for(&self, wanted: LargeFrameWanted) -> bool {
        self.0.as_ref().map(|(index, _)| *index) == wanted.0.map(|(index, _)| index)
    }

    /// Reserves from `budget` what the large message frame whose header `reader` has just
    /// read needs, if it needs a reservation and does not hold it yet; waits while the budget
    /// is spent (backpressure). Gives back the reservation of a completed frame.
    pub async fn reserve(
        &mut self,
        budget: &Arc<::tokio::sync::Semaphore>,
        reader: &frame::FrameReader,
    ) {
        self.reserve_wanted(budget, LargeFrameWanted::of(reader))
            .await;
    }

    /// [`LargeFrame::reserve`] for a caller that cannot lend its reader to the future (the
    /// io_uring backend polls the future from its ring loop).
    pub async fn reserve_wanted(
        &mut self,
        budget: &Arc<::tokio::sync::Semaphore>,
        wanted: LargeFrameWanted,
    ) {
        if self.is_for(wanted) {
            return;
        }
        self.0 = None; // The frame it was for is complete.
        if let Some((index, bytes)) = wanted.0 {
            // `bytes` ≤ FRAME_BYTES_MAX ≤ the budget ≤ u32::MAX (asserted at compile time).
            if let Ok(permit) = budget.clone().acquire_many_owned(bytes as u32).await {
                self.0 = Some((index, permit));
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |(_, permit)| permit.num_permits())
    }
}

/// One frame's place in a stream's reply queue.
#[derive(Debug)]
pub enum Outcome {
    /// Queued at the sequencer; the reply comes when it is durable.
    Pending(PendingAck),
    /// Answered already.
    Ready(Reply),
}

/// A decoded frame waiting for the batch step.
#[derive(Debug)]
pub enum Item {
    /// A message, decoded from its validated view.
    Message(Message),
    /// Answered without the sequencer (invalid message, bulk count).
    Ready(Reply),
}

/// Where a message goes.
enum Route {
    Spawn,
    Schedule(Id),
}

/// The ingest steps every backend shares: validated view → message → target check → batch
/// verification → sequencer.
pub struct Ingest {
    /// The node's shared state (store, sequencer, metrics).
    pub shared: Arc<Shared>,
    /// Ingress counters.
    pub metrics: Arc<IngressMetrics>,
    /// Idle timeout of streams stuck inside a frame.
    pub idle_timeout: Duration,
    /// The [`LARGE_FRAME_BUDGET_BYTES`] budget, in bytes.
    pub large_frames: Arc<::tokio::sync::Semaphore>,
}

impl Ingest {
    /// Validates a message frame in place and converts it. Never `access_unchecked`.
    pub fn decode_message(&self, payload: AlignedFrame<'_>) -> Item {
        self.metrics.frames(Kind::Message).inc();
        match payload.access().and_then(from_archived) {
            Ok(message) => Item::Message(message),
            Err(e) => Item::Ready(self.refuse(NodeError::Message(e))),
        }
    }

    /// A refusal, counted by code.
    pub fn refuse(&self, e: NodeError) -> Reply {
        let refusal = Refusal::from(e);
        self.metrics
            .messages_refused
            .get_or_create(&CodeLabel {
                code: refusal.code.clone(),
            })
            .inc();
        Reply::Refused(refusal)
    }

    /// Checks targets, verifies the messages' signatures in one batch and queues them at the
    /// sequencer, appending one outcome per item, in order, to `out`. Waits while the
    /// sequencer's queue is full (backpressure).
    pub async fn admit(&self, items: Vec<Item>, out: &mut VecDeque<Outcome>) {
        debug_assert!(items.len() <= FRAMES_IN_FLIGHT_PER_STREAM_MAX + READ_CHUNK_BYTES_MAX / 16);
        let mut routes = Vec::new();
        let mut messages = Vec::new();
        let mut slots: Vec<Option<Reply>> = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Ready(reply) => slots.push(Some(reply)),
                Item::Message(message) => match self.route(&message) {
                    Ok(route) => {
                        routes.push(route);
                        messages.push(message);
                        slots.push(None);
                    }
                    Err(e) => slots.push(Some(self.refuse(e))),
                },
            }
        }
        let verified = if messages.len() > 1 {
            verify_batch(messages)
        } else {
            messages.into_iter().map(VerifiedMessage::verify).collect()
        };
        let mut admitted = routes.into_iter().zip(verified);
        for slot in slots {
            let outcome = match slot {
                Some(reply) => Outcome::Ready(reply),
                None => match admitted.next() {
                    Some((route, Ok(message))) => self.enqueue(route, message).await,
                    Some((_, Err(e))) => Outcome::Ready(self.refuse(NodeError::Message(e))),
                    // One verified result per routed message, by construction.
                    None => Outcome::Ready(
                        self.refuse(NodeError::Unavailable("ingress lost a message".into())),
                    ),
                },
            };
            out.push_back(outcome);
        }
    }

    async fn enqueue(&self, route: Route, message: VerifiedMessage) -> Outcome {
        let sequencer = &self.shared.sequencer;
        let queued = match route {
            Route::Spawn => sequencer.enqueue_spawn(message).await,
            Route::Schedule(process) => sequencer.enqueue_schedule(process, message).await,
        };
        match queued {
            Ok(pending) => Outcome::Pending(pending),
            Err(e) => Outcome::Ready(self.refuse(e)),
        }
    }

    /// The target check of HTTP's `/~scheduler@1.0/schedule`: `type: Process` spawns (its
    /// module must be on the node), anything else names its process in `target`.
    fn route(&self, message: &Message) -> Result<Route, NodeError> {
        if message.text("type") == Some(PROCESS_TYPE) {
            let module = crate::node::process_module(message)?;
            if self.shared.store.module(&module)?.is_none() {
                return Err(NodeError::UnknownModule(module));
            }
            return Ok(Route::Spawn);
        }
        let target = message.text("target").ok_or_else(|| {
            NodeError::BadRequest("the message must name its process in a signed `target`".into())
        })?;
        let process: Id = target.parse().map_err(NodeError::Message)?;
        Ok(Route::Schedule(process))
    }

    /// Reserves the budget of a large message frame whose header `reader` has just read, if it
    /// needs one and does not hold it yet; waits while the budget is spent (backpressure).
    pub async fn reserve_large_frame(&self, reader: &frame::FrameReader, held: &mut LargeFrame) {
        held.reserve(&self.large_frames, reader).await;
    }

    /// [`Ingest::reserve_large_frame`] for a caller that cannot lend its reader to the future
    /// (the io_uring backend polls the future from its ring loop).
    pub async fn reserve_large(&self, wanted: LargeFrameWanted, held: &mut LargeFrame) {
        held.reserve_wanted(&self.large_frames, wanted).await;
    }

    /// Decodes the frames of one chunk into items (messages in batches of `VERIFY_BATCH_MAX` are
    /// admitted by the caller). On an invalid frame, returns the items before it and the error.
    ///
    /// # Errors
    /// The items before the invalid frame, and its error.
    #[allow(clippy::type_complexity, reason = "the items decoded before the error")]
    pub fn decode_chunk(
        &self,
        reader: &mut FrameReader,
        mut input: &[u8],
        bulk: &mut u64,
    ) -> Result<Vec<Item>, (Vec<Item>, FrameError)> {
        let mut items = Vec::new();
        // Each pass consumes input or returns: bounded by the chunk's length.
        loop {
            let (used, event) = match reader.decode(input) {
                Ok(decoded) => decoded,
                Err(e) => return Err((items, e)),
            };
            input = &input[used..];
            match event {
                Some(Event::Frame {
                    kind: Kind::Message,
                    payload,
                }) => items.push(self.decode_message(payload)),
                Some(Event::Frame { kind, .. }) => {
                    return Err((items, FrameError::Unexpected(kind)));
                }
                Some(Event::Bulk { bytes, end }) => {
                    *bulk += bytes as u64;
                    self.metrics.bulk_bytes.inc_by(bytes as u64);
                    if end {
                        self.metrics.frames(Kind::Bulk).inc();
                        items.push(Item::Ready(Reply::Bulk(std::mem::take(bulk))));
                    }
                }
                None if input.is_empty() => return Ok(items),
                None => {}
            }
            debug_assert!(items.len() <= READ_CHUNK_BYTES_MAX / 16 + VERIFY_BATCH_MAX);
        }
    }

    /// The reply to a durable (or failed) request, counted.
    pub fn answered(&self, answer: Result<Ack, NodeError>) -> Reply {
        match answer {
            Ok(ack) => {
                self.shared.metrics.messages_scheduled.inc();
                self.metrics.messages_acked.inc();
                Reply::Ack(ack)
            }
            Err(e) => self.refuse(e),
        }
    }
}

/// Label: an error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code.
    pub code: String,
}

/// Label: why something was dropped or closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: String,
}

/// Label: a QUIC backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// [`TransportKind::name`].
    pub transport: String,
}

/// Label: a frame kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind, lowercase.
    pub kind: String,
}

/// The ingress counters, exported under `ferrobeam_quic_*` at `/metrics`.
pub struct IngressMetrics {
    registry: Registry,
    /// Handshakes completed.
    pub connections_accepted: Counter,
    /// Connections refused or failed before serving, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Connections open now.
    pub connections_open: Gauge<i64, AtomicI64>,
    /// Streams accepted.
    pub streams_opened: Counter,
    /// Streams the node closed early, by reason (`frame-invalid`, `idle-timeout`).
    pub streams_closed: Family<ReasonLabel, Counter>,
    /// Frames received, by kind.
    pub frames_received: Family<KindLabel, Counter>,
    /// Invalid frames (the stream is closed), by reason.
    pub frames_invalid: Family<ReasonLabel, Counter>,
    /// Messages acknowledged as durable.
    pub messages_acked: Counter,
    /// Messages refused, by error code.
    pub messages_refused: Family<CodeLabel, Counter>,
    /// Bulk payload bytes received.
    pub bulk_bytes: Counter,
    /// UDP datagrams received (GRO batches counted per segment).
    pub datagrams_received: Counter,
    /// UDP payload bytes received.
    pub datagram_bytes_received: Counter,
    /// Datagrams that cannot be QUIC (too short, fixed bit clear), dropped by the endpoint.
    pub datagrams_dropped: Family<ReasonLabel, Counter>,
    /// 1 for the backend serving the ingress (after any fallback).
    pub transport: Family<TransportLabel, Gauge>,
}

impl std::fmt::Debug for IngressMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressMetrics").finish_non_exhaustive()
    }
}

impl Default for IngressMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngressMetrics {
    /// Creates and registers every counter.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrobeam_quic");
        let metrics = Self {
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            connections_open: Gauge::default(),
            streams_opened: Counter::default(),
            streams_closed: Family::default(),
            frames_received: Family::default(),
            frames_invalid: Family::default(),
            messages_acked: Counter::default(),
            messages_refused: Family::default(),
            bulk_bytes: Counter::default(),
            datagrams_received: Counter::default(),
            datagram_bytes_received: Counter::default(),
            datagrams_dropped: Family::default(),
            transport: Family::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "connections_accepted",
            "QUIC handshakes completed",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "QUIC connections refused or failed, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_open",
            "QUIC connections open",
            m.connections_open.clone(),
        );
        registry.register(
            "streams_opened",
            "QUIC streams accepted",
            m.streams_opened.clone(),
        );
        registry.register(
            "streams_closed",
            "QUIC streams closed by the node, by reason",
            m.streams_closed.clone(),
        );
        registry.register(
            "frames_received",
            "Frames received, by kind",
            m.frames_received.clone(),
        );
        registry.register(
            "frames_invalid",
            "Invalid frames (stream closed), by reason",
            m.frames_invalid.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged as durable over QUIC",
            m.messages_acked.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages refused over QUIC, by error code",
            m.messages_refused.clone(),
        );
        registry.register(
            "bulk_bytes",
            "Bulk payload bytes received",
            m.bulk_bytes.clone(),
        );
        registry.register(
            "datagrams_received",
            "UDP datagrams received by the QUIC endpoints",
            m.datagrams_received.clone(),
        );
        registry.register(
            "datagram_bytes_received",
            "UDP payload bytes received by the QUIC endpoints",
            m.datagram_bytes_received.clone(),
        );
        registry.register(
            "datagrams_dropped",
            "Datagrams that cannot be QUIC, by reason",
            m.datagrams_dropped.clone(),
        );
        registry.register(
            "transport",
            "The QUIC backend serving the ingress (1)",
            m.transport.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Frames of `kind` received.
    pub fn frames(&self, kind: Kind) -> Counter {
        let kind = format!("{kind:?}").to_ascii_lowercase();
        self.frames_received
            .get_or_create(&KindLabel { kind })
            .clone()
    }

    /// Counts a closed stream.
    pub fn stream_closed(&self, reason: &str) {
        self.streams_closed
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a received datagram, and drops that cannot be QUIC by reason (quinn drops those
    /// silently; the node wants them in `/metrics`).
    pub fn count_datagram(&self, datagram: &[u8]) {
        self.datagrams_received.inc();
        self.datagram_bytes_received.inc_by(datagram.len() as u64);
        // RFC 9000 §17.2/17.3: every QUIC v1 packet has the fixed bit (0x40) set.
        let reason = if datagram.len() < DATAGRAM_BYTES_MIN {
            "runt"
        } else if datagram[0] & 0x40 == 0 {
            "fixed-bit-clear"
        } else {
            return;
        };
        self.datagrams_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts an invalid frame.
    pub fn frame_invalid(&self, e: &FrameError) {
        let reason = match e {
            FrameError::UnknownKind(_) => "unknown-kind",
            FrameError::ReservedNotZero => "reserved-not-zero",
            FrameError::TooLarge { .. } => "too-large",
            FrameError::Unexpected(_) => "unexpected-kind",
            FrameError::Truncated => "truncated",
            FrameError::Misaligned => "misaligned",
        };
        self.frames_invalid
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition (without the closing `# EOF`), plus the process's CPU time, which
    /// `ferrobeam bench` reads to report the node's CPU seconds per GB.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        if let Some(cpu) = process_cpu_seconds() {
            out.push_str(
                "# HELP ferrobeam_process_cpu_seconds Process CPU time (user + system).\n",
            );
            out.push_str("# TYPE ferrobeam_process_cpu_seconds counter\n");
            out.push_str(&format!("ferrobeam_process_cpu_seconds_total {cpu:.3}\n"));
        }
        out
    }
}

/// User + system CPU seconds of this process, from `/proc/self/stat` (Linux; `None` elsewhere).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds_from_stat(&stat)
}

/// User + system CPU seconds from the text of a `/proc/<pid>/stat` file.
pub fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file: 12 and 13 after the ')'.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI the node supports.
    Some((user + system) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_round_trip() {
        let ack = Ack {
            id: Id([1; 32]),
            process: Id([2; 32]),
            slot: 7,
            assignment: Id([3; 32]),
            timestamp: 1_700_000_000_000,
            hashpath: crate::message::Hashpath([4; 32]),
            duplicate: true,
        };
        let mut out = Vec::new();
        Reply::Ack(ack.clone()).encode_into(&mut out);
        let mut reader = frame::FrameReader::client();
        let (used, event) = reader.decode(&out).unwrap();
        assert_eq!(used, out.len());
        let Some(frame::Event::Frame { kind, payload }) = event else {
            panic!("no frame")
        };
        assert_eq!(
            Reply::decode(kind, payload.bytes()).unwrap(),
            Reply::Ack(ack)
        );
        for reply in [
            Reply::Bulk(1 << 40),
            Reply::Refused(Refusal {
                code: "SignatureInvalid".into(),
                message: "x".repeat(10_000),
            }),
        ] {
            let mut out = Vec::new();
            reply.encode_into(&mut out);
            let mut reader = frame::FrameReader::client();
            let (_, event) = reader.decode(&out).unwrap();
            let Some(frame::Event::Frame { kind, payload }) = event else {
                panic!("no frame")
            };
            let back = Reply::decode(kind, payload.bytes()).unwrap();
            match (&reply, &back) {
                (Reply::Refused(a), Reply::Refused(b)) => assert_eq!(a.code, b.code),
                _ => assert_eq!(reply, back),
            }
        }
    }

    #[test]
    fn refusals_stay_valid_json_whatever_their_text() {
        // Caught by the quic_replies fuzz target: 1024 characters that JSON escapes to 6 bytes each
        // (control characters) were cut at REFUSED_BYTES_MAX bytes, leaving invalid JSON the
        // client could not decode.
        for (code, message) in [
            ("FrameInvalid", "\u{1}".repeat(1100)),
            ("FrameInvalid", "\"".repeat(5000)),
            (&*"C".repeat(10_000), "\u{1f}".repeat(3000)),
            ("MessageInvalid", "é".repeat(4000)),
        ] {
            let refusal = Refusal {
                code: code.to_owned(),
                message: message.clone(),
            };
            let bytes = refusal_json(&refusal);
            assert!(bytes.len() <= REFUSED_BYTES_MAX);
            let Reply::Refused(back) = Reply::decode(Kind::Refused, &bytes).unwrap() else {
                panic!("not a refusal")
            };
            assert!(code.starts_with(&back.code) && !back.code.is_empty());
            assert!(message.starts_with(&back.message) && !back.message.is_empty());
        }
    }

    #[test]
    fn cpu_seconds_parse() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.0));
        assert!(process_cpu_seconds().is_some());
    }
}
