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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller, VarInt};

use super::frame::{FrameError, FrameReader};
use super::{
    CONNECTION_RECEIVE_WINDOW_BYTES, CONNECTIONS_MAX, FRAMES_IN_FLIGHT_PER_STREAM_MAX, Ingest,
    IngressError, IngressMetrics, LargeFrame, Outcome, READ_CHUNK_BYTES_MAX, ReasonLabel, Reply,
    SEND_WINDOW_BYTES, STREAM_RECEIVE_WINDOW_BYTES, STREAMS_PER_CONNECTION_MAX, Settings,
    Transport, TransportKind, code,
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

/// Raises (or lowers) the packet size MTU discovery may reach to `bytes` of UDP payload.
pub fn set_max_udp_payload(transport: &mut quinn::TransportConfig, bytes: u16) {
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(bytes);
    transport.mtu_discovery_config(Some(discovery));
}

/// An endpoint that accepts packets of up to `bytes` of UDP payload.
pub fn endpoint_config(bytes: u16) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // The bound is within QUIC's 1200..=65527 (checked by the config).
    let _ = config.max_udp_payload_size(bytes);
    config
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
        let runtime = super::ingress_runtime(settings).map_err(io)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = transport_config(settings.idle_timeout);
        set_max_udp_payload(&mut transport, settings.max_udp_payload);
        server.transport_config(Arc::new(transport));
        // Endpoints spawn their drivers on the current runtime: enter ours.
        let _entered = runtime.enter();
        let mut endpoints = Vec::with_capacity(settings.threads);
        let mut local = settings.listen;
        for _ in 0..settings.threads {
            let socket = reuse_port_socket(local).map_err(io)?;
            local = socket.local_addr().map_err(io)?;
            let socket = TokioSocket::wrap(
                socket,
                settings.max_udp_payload,
                Some(ingest.metrics.clone()),
            )
            .map_err(io)?;
            let endpoint = quinn::Endpoint::new_with_abstract_socket(
                endpoint_config(settings.max_udp_payload),
                Some(server.clone()),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(io)?;
            runtime.spawn(accept_loop(
                endpoint.clone(),
                ingest.clone(),
                settings.connections_max,
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
pub(super) fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    set_buffers(&socket);
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Asks for [`super::SOCKET_BUFFER_BYTES`] of socket buffers; best effort (the kernel caps them).
pub(super) fn set_buffers(socket: &socket2::Socket) {
    let _ = socket.set_recv_buffer_size(super::SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(super::SOCKET_BUFFER_BYTES);
}

/// Decrements the open-connection gauge when a connection task ends, however it ends.
struct OpenConnection(Arc<IngressMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// One of an endpoint's `connections_max` connection slots, taken from the accept loop (so a
/// burst of handshakes cannot overshoot the cap before their tasks run) until the connection,
/// handshaking or open, ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(taken: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        // Only the accept loop takes slots: a load then an add cannot race another taker.
        if taken.load(Ordering::Acquire) >= max {
            return None;
        }
        taken.fetch_add(1, Ordering::AcqRel);
        Some(Self(taken.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, ingest: Arc<Ingest>, connections_max: usize) {
    debug_assert!((1..=CONNECTIONS_MAX).contains(&connections_max));
    let taken = Arc::new(AtomicUsize::new(0));
    // Ends when the endpoint is closed (node shutdown).
    while let Some(incoming) = endpoint.accept().await {
        let Some(slot) = ConnectionSlot::take(&taken, connections_max) else {
            refused(&ingest.metrics, "connections-max");
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(incoming, ingest.clone(), slot));
    }
}

pub(super) fn refused(metrics: &IngressMetrics, reason: &str) {
    metrics
        .connections_refused
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

async fn serve_connection(incoming: quinn::Incoming, ingest: Arc<Ingest>, _slot: ConnectionSlot) {
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
                // quinn hands out one STREAM frame's data per chunk, one packet's worth: take
                // every chunk already received too (READ_CHUNK_BYTES_MAX in all), so their
                // messages are verified in one batch instead of one by one.
                let mut chunks = vec![chunk.bytes];
                let mut total = chunks[0].len();
                // Seen while draining, handled after the chunks before it.
                let (mut ended, mut lost) = (false, false);
                while total < READ_CHUNK_BYTES_MAX {
                    match poll_once(recv.read_chunk(READ_CHUNK_BYTES_MAX - total, true)) {
                        Some(Ok(Some(more))) => {
                            total += more.bytes.len();
                            chunks.push(more.bytes);
                        }
                        Some(Ok(None)) => {
                            ended = true;
                            break;
                        }
                        Some(Err(_)) => {
                            lost = true;
                            break;
                        }
                        None => break,
                    }
                }
                let mut items = Vec::new();
                let mut invalid = None;
                for bytes in &chunks {
                    match ingest.decode_chunk(&mut self.reader, bytes, &mut self.bulk) {
                        Ok(decoded) => items.extend(decoded),
                        Err((decoded, e)) => {
                            items.extend(decoded);
                            invalid = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = invalid {
                    close_invalid(ingest, recv, &e);
                    self.read_side = ReadSide::Done;
                    ingest.admit(items, &mut self.pending).await;
                    self.pending
                        .push_back(Outcome::Ready(Reply::Refused((&e).into())));
                    return Flow::Continue;
                }
                ingest.admit(items, &mut self.pending).await;
                ingest
                    .reserve_large_frame(&self.reader, &mut self.large)
                    .await;
                if lost {
                    return Flow::Lost;
                }
                if ended {
                    self.on_end(ingest);
                }
            }
            Ok(Ok(None)) => self.on_end(ingest),
            Ok(Err(_)) => return Flow::Lost,
        }
        Flow::Continue
    }

    /// The client finished the stream: refuse a frame it left unfinished.
    fn on_end(&mut self, ingest: &Ingest) {
        self.read_side = ReadSide::Done;
        if !self.reader.at_boundary() {
            let e = FrameError::Truncated;
            ingest.metrics.frame_invalid(&e);
            self.pending
                .push_back(Outcome::Ready(Reply::Refused((&e).into())));
        }
    }
}

/// Polls `future` once, without waiting: its output when it is ready now. The caller polls a
/// fresh future (with its task's waker) before it sleeps, so no wake-up is lost.
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// The front outcome's ack (only called when the front is pending).
pub(super) async fn front(
    pending: &mut VecDeque<Outcome>,
) -> Result<crate::node::Ack, crate::node::NodeError> {
    match pending.front_mut() {
        Some(Outcome::Pending(ack)) => ack.await,
        _ => std::future::pending().await,
    }
}

/// Moves the ready replies at the front of `pending` into `out`, in order.
pub(super) fn take_ready(ingest: &Ingest, pending: &mut VecDeque<Outcome>, out: &mut Vec<u8>) {
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

/// quinn's tokio socket, with its GSO batches bounded to what one send may carry and, on the
/// node, counting what arrives and what cannot be QUIC (quinn drops those silently; the node wants
/// them in `/metrics`).
///
/// quinn batches up to 10 packets of the current MTU into one GSO send. Past 6.5 KB packets that
/// is more than the 64 KB the kernel takes in one send (10 × 8952 B = 89.5 KB): `sendmsg` fails
/// with `EMSGSIZE`, which quinn-udp takes for a too-large MTU probe and swallows, so the whole
/// batch is lost; under bulk load the losses look like an MTU black hole and quinn falls back to
/// 1200-byte packets. Capping the segments at `GSO_BYTES_MAX / max_udp_payload` keeps every
/// batch sendable.
#[derive(Debug)]
pub(super) struct TokioSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Option<Arc<IngressMetrics>>,
    segments_max: usize,
}

impl TokioSocket {
    pub(super) fn wrap(
        socket: std::net::UdpSocket,
        max_udp_payload: u16,
        metrics: Option<Arc<IngressMetrics>>,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        use quinn::Runtime as _;
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(Self {
            inner,
            metrics,
            segments_max: gso_segments_max(max_udp_payload),
        }))
    }
}

/// Most packets of `max_udp_payload` bytes one GSO send may carry.
pub(super) fn gso_segments_max(max_udp_payload: u16) -> usize {
    (super::GSO_BYTES_MAX / usize::from(max_udp_payload.max(1))).max(1)
}

impl AsyncUdpSocket for TokioSocket {
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
        if let (Poll::Ready(Ok(count)), Some(metrics)) = (&polled, &self.metrics) {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(*count) {
                let stride = meta.stride.max(1);
                for segment in buf[..meta.len.min(buf.len())].chunks(stride) {
                    metrics.count_datagram(segment);
                }
            }
        }
        polled
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.segments_max)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
