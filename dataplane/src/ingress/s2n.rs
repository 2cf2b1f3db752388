//! The s2n-quic backend (`--transport s2n`), for side-by-side comparison with quinn.
//!
//! `threads` s2n-quic servers run on a tokio runtime of `threads` workers, each on its own UDP
//! socket bound to the same address with `SO_REUSEPORT` (as the tokio backend does). TLS is
//! s2n-quic's rustls provider fed the node's own [`rustls::ServerConfig`] (tls.rs), so the
//! certificate is the node key and clients pin the node address exactly as with quinn; s2n-quic
//! wraps the packet keys rustls derives. Streams are served with the shared [`Ingest`] steps and
//! the frame decoding of [`super::tokio`]; only the stream and connection plumbing is s2n's.
//!
//! Limits map to s2n's providers: `CONNECTIONS_MAX` to the endpoint limiter (a connection
//! attempt over it is closed and counted), stream credit and windows to the connection limits,
//! the idle timeout to both the connection idle timeout and the handshake duration (a handshake
//! that never completes is closed after it and counted as `handshake`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use s2n_quic::provider::endpoint_limits::{ConnectionAttempt, Limiter, Outcome as Attempt};
use s2n_quic::provider::event::{ConnectionInfo, ConnectionMeta, Subscriber, events};
use s2n_quic::provider::packet_interceptor::PacketInterceptor;
use s2n_quic::stream::{BidirectionalStream, ReceiveStream};

use super::frame::{FrameError, FrameReader};
use super::tokio::{front, refused, reuse_port_socket, take_ready};
use super::{
    CONNECTION_RECEIVE_WINDOW_BYTES, CONNECTIONS_MAX, FRAMES_IN_FLIGHT_PER_STREAM_MAX, Ingest,
    IngressError, IngressMetrics, LargeFrame, Outcome, READ_CHUNK_BYTES_MAX, Reply,
    SEND_WINDOW_BYTES, STREAM_RECEIVE_WINDOW_BYTES, STREAMS_PER_CONNECTION_MAX, Settings,
    Transport, TransportKind, code,
};

/// IPv4 + UDP header bytes: s2n-quic's MTU settings count them, the node's setting does not.
const IPV4_UDP_HEADER_BYTES: u16 = 28;

/// The running s2n-quic backend.
pub struct S2nTransport {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: tokio::sync::watch::Sender<bool>,
    local: SocketAddr,
    servers: usize,
}

impl std::fmt::Debug for S2nTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S2nTransport")
            .field("local", &self.local)
            .field("servers", &self.servers)
            .finish()
    }
}

/// s2n-quic's per-connection limits for the node: the same numbers quinn gets.
fn limits(idle_timeout: Duration) -> Result<s2n_quic::provider::limits::Limits, String> {
    let limits = s2n_quic::provider::limits::Limits::new()
        .with_max_open_remote_bidirectional_streams(u64::from(STREAMS_PER_CONNECTION_MAX))
        .and_then(|l| l.with_max_open_remote_unidirectional_streams(0))
        .and_then(|l| l.with_max_open_local_bidirectional_streams(0))
        .and_then(|l| l.with_max_open_local_unidirectional_streams(0))
        .and_then(|l| {
            l.with_bidirectional_remote_data_window(u64::from(STREAM_RECEIVE_WINDOW_BYTES))
        })
        .and_then(|l| l.with_data_window(u64::from(CONNECTION_RECEIVE_WINDOW_BYTES)))
        // Per stream here (quinn's is per connection); replies are small either way.
        .and_then(|l| {
            l.with_max_send_buffer_size(SEND_WINDOW_BYTES.min(u64::from(u32::MAX)) as u32)
        })
        .and_then(|l| l.with_max_idle_timeout(idle_timeout))
        .and_then(|l| l.with_max_handshake_duration(idle_timeout));
    limits.map_err(|e| e.to_string())
}

impl S2nTransport {
    /// Binds the sockets and starts `settings.threads` servers on a runtime of as many workers.
    ///
    /// # Errors
    /// [`IngressError::Io`] when a socket cannot be bound or a server cannot start.
    pub fn start(
        ingest: Arc<Ingest>,
        settings: &Settings,
        tls: rustls::ServerConfig,
    ) -> Result<Self, IngressError> {
        let io = |source| IngressError::Io {
            addr: settings.listen,
            source,
        };
        let other = |e: String| io(std::io::Error::other(e));
        assert!(settings.threads >= 1, "at least one ingress thread");
        let runtime = super::ingress_runtime(settings).map_err(io)?;
        let limits = limits(settings.idle_timeout).map_err(other)?;
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        // s2n-quic spawns its endpoint tasks on the current runtime: enter ours.
        let _entered = runtime.enter();
        let mut local = settings.listen;
        for _ in 0..settings.threads {
            let socket = reuse_port_socket(local).map_err(io)?;
            local = socket.local_addr().map_err(io)?;
            let send = socket.try_clone().map_err(io)?;
            let mtu = settings.max_udp_payload + IPV4_UDP_HEADER_BYTES;
            let provider = s2n_quic::provider::io::tokio::Builder::default()
                .with_rx_socket(socket)
                .and_then(|b| b.with_tx_socket(send))
                .and_then(|b| b.with_max_mtu(mtu))
                .and_then(|b| b.build())
                .map_err(io)?;
            let server = s2n_quic::Server::builder()
                .with_tls(s2n_quic::provider::tls::rustls::Server::from(tls.clone()))
                .map_err(|e| other(e.to_string()))?
                .with_io(provider)
                .map_err(|e| other(e.to_string()))?
                .with_limits(limits)
                .map_err(|e| other(e.to_string()))?
                .with_endpoint_limits(ConnectionCap(
                    ingest.metrics.clone(),
                    settings.connections_max,
                ))
                .map_err(|e| other(e.to_string()))?
                .with_event(HandshakeWatch(ingest.metrics.clone()))
                .map_err(|e| other(e.to_string()))?
                .with_packet_interceptor(DatagramCounter(ingest.metrics.clone()))
                .map_err(|e| other(e.to_string()))?
                .start()
                .map_err(|e| other(e.to_string()))?;
            runtime.spawn(accept_loop(server, ingest.clone(), watch.clone()));
        }
        Ok(Self {
            runtime: Some(runtime),
            shutdown,
            local,
            servers: settings.threads,
        })
    }
}

impl Transport for S2nTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::S2n
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn shutdown(mut self: Box<Self>) {
        let _ = self.shutdown.send(true);
        if let Some(runtime) = self.runtime.take() {
            // Give the close frames a moment to leave before every task is dropped.
            std::thread::sleep(Duration::from_millis(100));
            runtime.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

impl Drop for S2nTransport {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not shut down explicitly (a failed start): never block inside an async context.
            runtime.shutdown_background();
        }
    }
}

/// Refuses connection attempts over the endpoint's `connections_max` (at most
/// [`CONNECTIONS_MAX`]; open and handshaking connections together).
struct ConnectionCap(Arc<IngressMetrics>, usize);

impl Limiter for ConnectionCap {
    fn on_connection_attempt(&mut self, info: &ConnectionAttempt) -> Attempt {
        debug_assert!(self.1 <= CONNECTIONS_MAX);
        if info.connection_count >= self.1 {
            refused(&self.0, "connections-max");
            return Attempt::close();
        }
        Attempt::allow()
    }
}

/// Counts connections that close before their handshake completed (a wrong pin, a handshake
/// that never finishes) as refused, reason `handshake`.
struct HandshakeWatch(Arc<IngressMetrics>);

impl Subscriber for HandshakeWatch {
    /// Whether the handshake completed.
    type ConnectionContext = bool;

    fn create_connection_context(
        &mut self,
        _meta: &ConnectionMeta,
        _info: &ConnectionInfo,
    ) -> Self::ConnectionContext {
        false
    }

    fn on_handshake_status_updated(
        &mut self,
        context: &mut Self::ConnectionContext,
        _meta: &ConnectionMeta,
        event: &events::HandshakeStatusUpdated,
    ) {
        if matches!(event.status, events::HandshakeStatus::Complete { .. }) {
            *context = true;
        }
    }

    fn on_connection_closed(
        &mut self,
        context: &mut Self::ConnectionContext,
        _meta: &ConnectionMeta,
        _event: &events::ConnectionClosed,
    ) {
        if !*context {
            refused(&self.0, "handshake");
        }
    }
}

/// Counts every datagram the endpoint receives, and those that cannot be QUIC (the same
/// counters and rules as the tokio backend's socket; s2n-quic drops them silently).
struct DatagramCounter(Arc<IngressMetrics>);

impl PacketInterceptor for DatagramCounter {
    fn intercept_rx_datagram<'a>(
        &mut self,
        _subject: &events::Subject,
        _datagram: &s2n_quic_core::packet::interceptor::Datagram,
        payload: s2n_codec::DecoderBufferMut<'a>,
    ) -> s2n_codec::DecoderBufferMut<'a> {
        self.0.count_datagram(payload.as_less_safe_slice());
        payload
    }
}

async fn accept_loop(
    mut server: s2n_quic::Server,
    ingest: Arc<Ingest>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // Ends when the server is closed (node shutdown drops the runtime).
    while let Some(connection) = server.accept().await {
        tokio::spawn(serve_connection(
            connection,
            ingest.clone(),
            shutdown.clone(),
        ));
    }
}

/// Decrements the open-connection gauge when a connection task ends, however it ends.
struct OpenConnection(Arc<IngressMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

fn application_code(value: u32) -> s2n_quic::application::Error {
    s2n_quic::application::Error::from(value)
}

async fn serve_connection(
    mut connection: s2n_quic::Connection,
    ingest: Arc<Ingest>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    ingest.metrics.connections_accepted.inc();
    ingest.metrics.connections_open.inc();
    let _open = OpenConnection(ingest.metrics.clone());
    // Ends when the peer closes, the idle timeout fires, or the node shuts down. The stream
    // count is bounded by QUIC stream credit (STREAMS_PER_CONNECTION_MAX).
    loop {
        tokio::select! {
            accepted = connection.accept_bidirectional_stream() => match accepted {
                Ok(Some(stream)) => {
                    ingest.metrics.streams_opened.inc();
                    tokio::spawn(serve_stream(ingest.clone(), stream));
                }
                Ok(None) | Err(_) => return,
            },
            _ = shutdown.changed() => {
                connection.close(application_code(code::SHUTDOWN));
                return;
            }
        }
    }
}

/// Serves one stream: frames in, replies out in the same order.
async fn serve_stream(ingest: Arc<Ingest>, stream: BidirectionalStream) {
    let (mut recv, mut send) = stream.split();
    let mut state = StreamState {
        reader: FrameReader::node(),
        pending: VecDeque::new(),
        bulk: 0,
        large: LargeFrame::default(),
        open: true,
    };
    let mut out = Vec::new();
    // Each pass reads a chunk, completes an ack, or ends the stream.
    loop {
        take_ready(&ingest, &mut state.pending, &mut out);
        if !out.is_empty()
            && send
                .send(Bytes::from(std::mem::take(&mut out)))
                .await
                .is_err()
        {
            return; // The peer stopped reading or the connection is gone.
        }
        if !state.open && state.pending.is_empty() {
            // Finishes the stream and waits until the peer has every reply.
            let _ = send.close().await;
            return;
        }
        let can_read = state.open && state.pending.len() < FRAMES_IN_FLIGHT_PER_STREAM_MAX;
        let front_pending = matches!(state.pending.front(), Some(Outcome::Pending(_)));
        tokio::select! {
            biased;
            answer = front(&mut state.pending), if front_pending => {
                state.pending[0] = Outcome::Ready(ingest.answered(answer));
            }
            read = tokio::time::timeout(ingest.idle_timeout, recv.receive()), if can_read => {
                match state.on_read(&ingest, &mut recv, read.ok()).await {
                    Flow::Continue => {}
                    Flow::Reset(code) => {
                        let _ = send.reset(application_code(code));
                        return;
                    }
                    Flow::Lost => return,
                }
            }
        }
    }
}

/// The read side of one stream: the frame parser and the replies owed, in frame order.
struct StreamState {
    reader: FrameReader,
    pending: VecDeque<Outcome>,
    /// Bytes of the bulk frame being received.
    bulk: u64,
    large: LargeFrame,
    /// The read side is open (not finished, not closed by the node).
    open: bool,
}

/// What the stream task does after a read.
enum Flow {
    Continue,
    /// Reset the stream with this code and end the task.
    Reset(u32),
    /// The peer reset the stream or the connection is gone: end the task.
    Lost,
}

impl StreamState {
    /// Handles one read: a chunk, the end of the stream, an error, or the idle timeout (`None`).
    async fn on_read(
        &mut self,
        ingest: &Ingest,
        recv: &mut ReceiveStream,
        read: Option<Result<Option<Bytes>, s2n_quic::stream::Error>>,
    ) -> Flow {
        match read {
            // Idle while the node owes nothing: close it (see the tokio backend).
            None if self.pending.is_empty() => {
                ingest.metrics.stream_closed("idle-timeout");
                let _ = recv.stop_sending(application_code(code::IDLE_TIMEOUT));
                return Flow::Reset(code::IDLE_TIMEOUT);
            }
            None => {}
            Some(Ok(Some(chunk))) => {
                // s2n hands out chunks of its own size: decode at most a read chunk at a time,
                // so a decode adds as many frames as with quinn.
                for part in chunk.chunks(READ_CHUNK_BYTES_MAX) {
                    match ingest.decode_chunk(&mut self.reader, part, &mut self.bulk) {
                        Ok(items) => {
                            ingest.admit(items, &mut self.pending).await;
                            ingest
                                .reserve_large_frame(&self.reader, &mut self.large)
                                .await;
                        }
                        Err((items, e)) => {
                            ingest.metrics.frame_invalid(&e);
                            ingest.metrics.stream_closed("frame-invalid");
                            let _ = recv.stop_sending(application_code(code::FRAME_INVALID));
                            self.open = false;
                            ingest.admit(items, &mut self.pending).await;
                            self.pending
                                .push_back(Outcome::Ready(Reply::Refused((&e).into())));
                            break;
                        }
                    }
                }
            }
            Some(Ok(None)) => {
                self.open = false;
                if !self.reader.at_boundary() {
                    let e = FrameError::Truncated;
                    ingest.metrics.frame_invalid(&e);
                    self.pending
                        .push_back(Outcome::Ready(Reply::Refused((&e).into())));
                }
            }
            Some(Err(_)) => return Flow::Lost,
        }
        Flow::Continue
    }
}
