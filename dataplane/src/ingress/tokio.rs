//! The portable backend: quinn on a tokio runtime of the ingress's own (`--transport tokio`).
//!
//! `threads` worker threads run `threads` quinn endpoints, each on its own UDP socket bound to
//! the same address with `SO_REUSEPORT` (the kernel keeps a 4-tuple on one socket, so a
//! connection's packets reach one endpoint). One task per connection accepts streams; one task
//! per stream reads frames, hands messages to [`Ingest`] and writes the replies in order.
//! This is the baseline the io_uring backend is measured against; nothing here is tuned past
//! quinn's own knobs (windows, stream limits, idle timeout).

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller, VarInt};

use super::frame::{Event, FrameError, FrameReader, Kind};
use super::{
    CONNECTION_RECEIVE_WINDOW_BYTES, CONNECTIONS_MAX, FRAMES_IN_FLIGHT_PER_STREAM_MAX, Ingest,
    IngressError, IngressMetrics, Item, LargeFrame, Outcome, READ_CHUNK_BYTES_MAX, ReasonLabel,
    Reply, SEND_WINDOW_BYTES, STREAM_RECEIVE_WINDOW_BYTES, STREAMS_PER_CONNECTION_MAX, Settings,
    Transport, TransportKind, VERIFY_BATCH_MAX, code,
};

/// The running quinn-on-tokio backend.
pub struct TokioTransport {
    endpoints: Vec<quinn::Endpoint>,
    runtime: Option<tokio::runtime::Runtime>,
    local: SocketAddr,
}

impl std::fmt::Debug for TokioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioTransport")
            .field("local", &self.local)
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

/// quinn's transport settings for the node (and, mirrored, for clients).
pub fn transport_config(idle_timeout: std::time::Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(SEND_WINDOW_BYTES)
        .datagram_receive_buffer_size(None)
        // The timeout is at most an hour (checked by the config): it fits quinn's VarInt.
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    transport
}

impl TokioTransport {
    /// Binds the sockets and starts the endpoints on a runtime of `settings.threads` workers.
    ///
    /// # Errors
    /// [`IngressError::Io`] when a socket cannot be bound or the runtime cannot start.
    pub fn start(
        ingest: Arc<Ingest>,
        settings: &Settings,
        tls: rustls::ServerConfig,
    ) -> Result<Self, IngressError> {
        let io = |source| IngressError::Io {
            addr: settings.listen,
            source,
        };
        assert!(settings.threads >= 1, "at least one ingress thread");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .thread_name("ferrobeam-ingress")
            .enable_all()
            .build()
            .map_err(io)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(settings.idle_timeout)));
        // Endpoints spawn their drivers on the current runtime: enter ours.
        let _entered = runtime.enter();
        let mut endpoints = Vec::with_capacity(settings.threads);
        let mut local = settings.listen;
        for _ in 0..settings.threads {
            let socket = reuse_port_socket(local).map_err(io)?;
            local = socket.local_addr().map_err(io)?;
            let socket = CountingSocket::wrap(socket, ingest.metrics.clone()).map_err(io)?;
            let endpoint = quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(server.clone()),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(io)?;
            let connections_max = settings.connections_max.clamp(1, CONNECTIONS_MAX);
            runtime.spawn(accept_loop(
                endpoint.clone(),
                ingest.clone(),
                connections_max,
            ));
            endpoints.push(endpoint);
        }
        Ok(Self {
            endpoints,
            runtime: Some(runtime),
            local,
        })
    }
}

impl Transport for TokioTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Tokio
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn shutdown(mut self: Box<Self>) {
        for endpoint in &self.endpoints {
            endpoint.close(VarInt::from_u32(code::SHUTDOWN), b"node shutting down");
        }
        self.endpoints.clear();
        if let Some(runtime) = self.runtime.take() {
            // Dropping the runtime drops every task (and its `Arc<Shared>`); give the close
            // frames a moment to leave first.
            runtime.shutdown_timeout(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for TokioTransport {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not shut down explicitly (a failed start): never block inside an async context.
            runtime.shutdown_background();
        }
    }
}

/// A UDP socket on `addr` with `SO_REUSEPORT`, so several endpoints can share the port.
fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Decrements the open-connection gauge when a connection task ends, however it ends.
struct OpenConnection(Arc<IngressMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, ingest: Arc<Ingest>, connections_max: usize) {
    // Ends when the endpoint is closed (node shutdown).
    while let Some(incoming) = endpoint.accept().await {
        if endpoint.open_connections() >= connections_max {
            refused(&ingest.metrics, "connections-max");
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, ingest.clone()));
    }
}

fn refused(metrics: &IngressMetrics, reason: &str) {
    metrics
        .connections_refused
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

async fn serve_connection(incoming: quinn::Incoming, ingest: Arc<Ingest>) {
    let connection = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!(error = %e, "QUIC handshake failed");
                refused(&ingest.metrics, "handshake");
                return;
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "QUIC connection not accepted");
            refused(&ingest.metrics, "handshake");
            return;
        }
    };
    ingest.metrics.connections_accepted.inc();
    ingest.metrics.connections_open.inc();
    let _open = OpenConnection(ingest.metrics.clone());
    // Ends when the peer closes, the idle timeout fires, or the node shuts down. The stream
    // count is bounded by QUIC stream credit (STREAMS_PER_CONNECTION_MAX).
    while let Ok((send, recv)) = connection.accept_bi().await {
        ingest.metrics.streams_opened.inc();
        tokio::spawn(serve_stream(ingest.clone(), send, recv));
    }
}

/// What a stream's read side is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadSide {
    Open,
    /// Finished cleanly, or closed by the node after an invalid frame or a timeout.
    Done,
}

/// The read side of one stream: the frame parser and the replies owed, in frame order.
struct StreamState {
    reader: FrameReader,
    pending: VecDeque<Outcome>,
    /// Bytes of the bulk frame being received.
    bulk: u64,
    large: LargeFrame,
    read_side: ReadSide,
}

/// What the stream task does after a read.
enum Flow {
    Continue,
    /// Reset the stream with this code and end the task.
    Reset(u32),
    /// The peer reset the stream or the connection is gone: end the task.
    Lost,
}

/// Serves one stream: frames in, replies out in the same order.
async fn serve_stream(
    ingest: Arc<Ingest>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut stream = StreamState {
        reader: FrameReader::node(),
        pending: VecDeque::new(),
        bulk: 0,
        large: LargeFrame::default(),
        read_side: ReadSide::Open,
    };
    let mut out = Vec::new();
    // Each pass reads a chunk, completes an ack, or ends the stream.
    loop {
        take_ready(&ingest, &mut stream.pending, &mut out);
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return; // The peer stopped reading or the connection is gone.
            }
            out.clear();
        }
        if stream.read_side == ReadSide::Done && stream.pending.is_empty() {
            let _ = send.finish();
            return;
        }
        let can_read = stream.read_side == ReadSide::Open
            && stream.pending.len() < FRAMES_IN_FLIGHT_PER_STREAM_MAX;
        let front_pending = matches!(stream.pending.front(), Some(Outcome::Pending(_)));
        tokio::select! {
            biased;
            answer = front(&mut stream.pending), if front_pending => {
                stream.pending[0] = Outcome::Ready(ingest.answered(answer));
            }
            read = tokio::time::timeout(
                ingest.idle_timeout,
                recv.read_chunk(READ_CHUNK_BYTES_MAX, true),
            ), if can_read => {
                let read = read.map_err(|_elapsed| ());
                match stream.on_read(&ingest, &mut recv, read).await {
                    Flow::Continue => {}
                    Flow::Reset(code) => {
                        let _ = send.reset(VarInt::from_u32(code));
                        return;
                    }
                    Flow::Lost => return,
                }
            }
        }
    }
}

impl StreamState {
    /// Handles one read: a chunk, the end of the stream, an error, or the idle timeout (`Err`).
    async fn on_read(
        &mut self,
        ingest: &Ingest,
        recv: &mut quinn::RecvStream,
        read: Result<Result<Option<quinn::Chunk>, quinn::ReadError>, ()>,
    ) -> Flow {
        match read {
            // Idle while the node owes nothing: a stream left open (or stuck inside a frame)
            // holds node memory; close it. While acks are owed, the client is waiting too.
            Err(()) if self.pending.is_empty() => {
                ingest.metrics.stream_closed("idle-timeout");
                let _ = recv.stop(VarInt::from_u32(code::IDLE_TIMEOUT));
                return Flow::Reset(code::IDLE_TIMEOUT);
            }
            Err(()) => {}
            Ok(Ok(Some(chunk))) => {
                match decode_chunk(ingest, &mut self.reader, &chunk.bytes, &mut self.bulk) {
                    Ok(items) => {
                        ingest.admit(items, &mut self.pending).await;
                        ingest
                            .reserve_large_frame(&self.reader, &mut self.large)
                            .await;
                    }
                    Err((items, e)) => {
                        close_invalid(ingest, recv, &e);
                        self.read_side = ReadSide::Done;
                        ingest.admit(items, &mut self.pending).await;
                        self.pending
                            .push_back(Outcome::Ready(Reply::Refused((&e).into())));
                    }
                }
            }
            Ok(Ok(None)) => {
                self.read_side = ReadSide::Done;
                if !self.reader.at_boundary() {
                    let e = FrameError::Truncated;
                    ingest.metrics.frame_invalid(&e);
                    self.pending
                        .push_back(Outcome::Ready(Reply::Refused((&e).into())));
                }
            }
            Ok(Err(_)) => return Flow::Lost,
        }
        Flow::Continue
    }
}

/// The front outcome's ack (only called when the front is pending).
async fn front(
    pending: &mut VecDeque<Outcome>,
) -> Result<crate::node::Ack, crate::node::NodeError> {
    match pending.front_mut() {
        Some(Outcome::Pending(ack)) => ack.await,
        _ => std::future::pending().await,
    }
}

/// Moves the ready replies at the front of `pending` into `out`, in order.
fn take_ready(ingest: &Ingest, pending: &mut VecDeque<Outcome>, out: &mut Vec<u8>) {
    // Bounded by the queue's length.
    while let Some(front) = pending.front_mut() {
        let reply = match front {
            Outcome::Ready(reply) => reply.clone(),
            Outcome::Pending(ack) => match ack.try_now() {
                Some(answer) => ingest.answered(answer),
                None => break,
            },
        };
        reply.encode_into(out);
        pending.pop_front();
    }
}

fn close_invalid(ingest: &Ingest, recv: &mut quinn::RecvStream, e: &FrameError) {
    ingest.metrics.frame_invalid(e);
    ingest.metrics.stream_closed("frame-invalid");
    let _ = recv.stop(VarInt::from_u32(code::FRAME_INVALID));
}

/// Decodes the frames of one chunk into items (messages in batches of `VERIFY_BATCH_MAX` are
/// admitted by the caller). On an invalid frame, returns the items before it and the error.
#[allow(clippy::type_complexity, reason = "a pair local to this module")]
fn decode_chunk(
    ingest: &Ingest,
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
            }) => items.push(ingest.decode_message(payload)),
            Some(Event::Frame { kind, .. }) => return Err((items, FrameError::Unexpected(kind))),
            Some(Event::Bulk { bytes, end }) => {
                *bulk += bytes as u64;
                ingest.metrics.bulk_bytes.inc_by(bytes as u64);
                if end {
                    ingest.metrics.frames(Kind::Bulk).inc();
                    items.push(Item::Ready(Reply::Bulk(std::mem::take(bulk))));
                }
            }
            None if input.is_empty() => return Ok(items),
            None => {}
        }
        debug_assert!(items.len() <= READ_CHUNK_BYTES_MAX / 16 + VERIFY_BATCH_MAX);
    }
}

/// quinn's tokio socket, counting what arrives and what cannot be QUIC (quinn drops those
/// silently; the node wants them in `/metrics`).
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<IngressMetrics>,
}

/// Shorter datagrams cannot be QUIC: RFC 9000 §10.3 makes 21 bytes the shortest packet an
/// endpoint sends (a stateless reset), and every real packet carries a 16-byte AEAD tag too.
const DATAGRAM_BYTES_MIN: usize = 21;

impl CountingSocket {
    fn wrap(
        socket: std::net::UdpSocket,
        metrics: Arc<IngressMetrics>,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        use quinn::Runtime as _;
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(Self { inner, metrics }))
    }

    fn count(&self, datagram: &[u8]) {
        self.metrics.datagrams_received.inc();
        self.metrics
            .datagram_bytes_received
            .inc_by(datagram.len() as u64);
        // RFC 9000 §17.2/17.3: every QUIC v1 packet has the fixed bit (0x40) set.
        let reason = if datagram.len() < DATAGRAM_BYTES_MIN {
            "runt"
        } else if datagram[0] & 0x40 == 0 {
            "fixed-bit-clear"
        } else {
            return;
        };
        self.metrics
            .datagrams_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &polled {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(*count) {
                let stride = meta.stride.max(1);
                for segment in buf[..meta.len.min(buf.len())].chunks(stride) {
                    self.count(segment);
                }
            }
        }
        polled
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
