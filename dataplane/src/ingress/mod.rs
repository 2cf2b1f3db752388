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
//! [`tls`] the node's certificate and the client's pin, [`tokio`] the quinn-on-tokio backend and
//! [`client`] the client the bench and tests use. docs/dataplane.md has the whole picture.

pub mod client;
pub mod frame;
pub mod tls;
pub mod tokio;

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
use frame::{ACK_BYTES, AlignedFrame, BULK_ACK_BYTES, FrameError, Kind, REFUSED_BYTES_MAX};

/// Default idle timeout of connections and of streams stuck inside a frame (10 s).
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Most ingress threads a node starts (one QUIC endpoint each).
pub const INGRESS_CORES_MAX: usize = 64;
/// Most open connections per endpoint. Beyond it new handshakes are refused (counted in
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

const _: () = assert!(READ_CHUNK_BYTES_MAX <= STREAM_RECEIVE_WINDOW_BYTES as usize);
const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= CONNECTION_RECEIVE_WINDOW_BYTES);
const _: () = assert!(VERIFY_BATCH_MAX <= FRAMES_IN_FLIGHT_PER_STREAM_MAX);
const _: () = assert!(frame::FRAME_BYTES_MAX <= LARGE_FRAME_BUDGET_BYTES);
const _: () = assert!(LARGE_FRAME_BUDGET_BYTES <= u32::MAX as usize);

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
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TransportKind {
    /// quinn on a tokio runtime of its own: the portable backend and the baseline.
    #[default]
    Tokio,
}

impl TransportKind {
    /// The name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tokio => "tokio",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tokio" => Ok(TransportKind::Tokio),
            "uring" | "s2n" => Err(format!("transport {text:?} is not built yet; use tokio")),
            other => Err(format!("unknown transport {other:?} (tokio)")),
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
    /// Open connections per endpoint, at most [`CONNECTIONS_MAX`].
    pub connections_max: usize,
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
    match ingest.shared.config.transport {
        TransportKind::Tokio => Ok(Box::new(tokio::TokioTransport::start(
            ingest, &settings, tls,
        )?)),
    }
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
                let json = serde_json::json!({"error": refusal.code, "message": refusal.message});
                let mut bytes = serde_json::to_vec(&json).unwrap_or_default();
                if bytes.len() > REFUSED_BYTES_MAX {
                    // Cut the text, keep valid JSON.
                    let text: String = refusal.message.chars().take(1024).collect();
                    bytes = serde_json::to_vec(&serde_json::json!({
                        "error": refusal.code, "message": text
                    }))
                    .unwrap_or_default();
                }
                bytes.truncate(REFUSED_BYTES_MAX);
                frame::encode_into(Kind::Refused, &bytes, out);
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

/// A stream's reservation from the large-frame budget: the frame it is for and the permit.
#[derive(Debug, Default)]
pub struct LargeFrame(Option<(u64, ::tokio::sync::OwnedSemaphorePermit)>);

impl LargeFrame {
    /// A full [`LARGE_FRAME_BUDGET_BYTES`] budget, one per ingress.
    pub fn budget() -> Arc<::tokio::sync::Semaphore> {
        Arc::new(::tokio::sync::Semaphore::new(LARGE_FRAME_BUDGET_BYTES))
    }

    /// Reserves from `budget` what the large message frame whose header `reader` has just
    /// read needs, if it needs a reservation and does not hold it yet; waits while the budget
    /// is spent (backpressure). Gives back the reservation of a completed frame.
    pub async fn reserve(
        &mut self,
        budget: &Arc<::tokio::sync::Semaphore>,
        reader: &frame::FrameReader,
    ) {
        let wanted = match reader.pending() {
            Some((index, header))
                if header.kind == Kind::Message && header.len > frame::BUFFER_KEPT_BYTES =>
            {
                Some((index, frame::pad16(header.len)))
            }
            _ => None,
        };
        if self.0.as_ref().map(|(index, _)| *index) == wanted.map(|(index, _)| index) {
            return;
        }
        self.0 = None; // The frame it was for is complete.
        if let Some((index, bytes)) = wanted {
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
    fn cpu_seconds_parse() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.0));
        assert!(process_cpu_seconds().is_some());
    }
}
