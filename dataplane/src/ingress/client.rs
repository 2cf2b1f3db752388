//! A QUIC client of the ingress (quinn on tokio): what `ferrobeam bench`, the tests and the
//! criterion benches use. It pins the node address (see [`super::tls`]).
//!
//! A stream is split in two halves so a sender can pipeline: [`FrameSender`] writes frames,
//! [`ReplyReceiver`] reads one reply per frame, in the order the frames were sent. Read replies
//! concurrently with sending: the node stops reading a stream whose replies are not read.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Reply;
use super::frame::{self, Event, FrameError, FrameReader, Kind};
use super::tls::{self, TlsError};
use super::tokio::{TokioSocket, endpoint_config, set_max_udp_payload, transport_config};
use crate::message::{Address, Message, wire};

/// Idle timeout of client connections (the node's own may be shorter).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default keep-alive interval: a third of the node's default idle timeout.
pub const KEEP_ALIVE_DEFAULT: Duration = Duration::from_millis(super::IDLE_TIMEOUT_MS_DEFAULT / 3);
/// Largest chunk a client reads at once.
const CLIENT_READ_CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local socket could not be bound.
    #[error("binding the client socket: {0}")]
    Bind(std::io::Error),
    /// The connection could not be started, or the handshake failed (a wrong pinned address
    /// ends here).
    #[error("connecting: {0}")]
    Connect(String),
    /// The connection was lost.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed (stopped by the node, connection lost).
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a stream failed (reset by the node, connection lost).
    #[error("reading: {0}")]
    Read(#[from] quinn::ReadError),
    /// The node's bytes are not valid reply frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One connection to a node.
#[derive(Debug)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl QuicClient {
    /// Connects to the node at `addr`, accepting only the node whose address is `node`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the handshake fails (a wrong address included).
    pub async fn connect(addr: SocketAddr, node: Address) -> Result<Self, ClientError> {
        Self::connect_with(addr, node, KEEP_ALIVE_DEFAULT).await
    }

    /// [`QuicClient::connect`] with a keep-alive interval (keep it under the node's idle
    /// timeout for connections that sit idle between bursts).
    ///
    /// # Errors
    /// As [`QuicClient::connect`].
    pub async fn connect_with(
        addr: SocketAddr,
        node: Address,
        keep_alive: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_tuned(addr, node, keep_alive, super::UDP_PAYLOAD_BYTES_DEFAULT).await
    }

    /// [`QuicClient::connect_with`] whose packets may grow (by MTU discovery) to
    /// `max_udp_payload` bytes of UDP payload, when the node allows as much.
    ///
    /// # Errors
    /// As [`QuicClient::connect`].
    pub async fn connect_tuned(
        addr: SocketAddr,
        node: Address,
        keep_alive: Duration,
        max_udp_payload: u16,
    ) -> Result<Self, ClientError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(node)?)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = transport_config(CLIENT_IDLE_TIMEOUT);
        transport.keep_alive_interval(Some(keep_alive));
        set_max_udp_payload(&mut transport, max_udp_payload);
        config.transport_config(Arc::new(transport));
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| ClientError::Connect("bad local".into()))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| ClientError::Connect("bad local".into()))?
        };
        let socket = std::net::UdpSocket::bind(local).map_err(ClientError::Bind)?;
        let socket = socket2::Socket::from(socket);
        super::tokio::set_buffers(&socket);
        let socket =
            TokioSocket::wrap(socket.into(), max_udp_payload, None).map_err(ClientError::Bind)?;
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(max_udp_payload),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(ClientError::Bind)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(addr, tls::SERVER_NAME)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Self {
            endpoint,
            connection,
        })
    }

    /// Opens a bidirectional stream.
    ///
    /// # Errors
    /// [`ClientError::Connection`].
    pub async fn open(&self) -> Result<(FrameSender, ReplyReceiver), ClientError> {
        let (send, recv) = self.connection.open_bi().await?;
        Ok((
            FrameSender { send },
            ReplyReceiver {
                recv,
                reader: FrameReader::client(),
                ready: VecDeque::new(),
            },
        ))
    }

    /// The underlying connection (statistics, close reason).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Closes the connection and waits (briefly) for the close to be sent.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// The sending half of a stream.
#[derive(Debug)]
pub struct FrameSender {
    send: quinn::SendStream,
}

impl FrameSender {
    /// Writes already-encoded frames (one or many).
    ///
    /// # Errors
    /// [`ClientError::Write`].
    pub async fn send(&mut self, frames: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(frames).await?;
        Ok(())
    }

    /// Writes already-encoded frames without copying them into QUIC's send buffer (the bytes
    /// are shared until acknowledged): a sender that repeats or keeps frames saves a copy.
    ///
    /// # Errors
    /// [`ClientError::Write`].
    pub async fn send_bytes(&mut self, frames: bytes::Bytes) -> Result<(), ClientError> {
        self.send.write_chunk(frames).await?;
        Ok(())
    }

    /// Ends the stream: the node answers what it has and finishes its side.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The receiving half of a stream: one reply per frame sent, in order.
#[derive(Debug)]
pub struct ReplyReceiver {
    recv: quinn::RecvStream,
    reader: FrameReader,
    ready: VecDeque<Reply>,
}

impl ReplyReceiver {
    /// The next reply, or `None` when the node finished the stream.
    ///
    /// # Errors
    /// [`ClientError::Read`] (a stream reset by the node, e.g. after an idle timeout),
    /// [`ClientError::Frame`].
    pub async fn next(&mut self) -> Result<Option<Reply>, ClientError> {
        // Each pass reads a chunk or returns a reply.
        loop {
            if let Some(reply) = self.ready.pop_front() {
                return Ok(Some(reply));
            }
            let Some(chunk) = self
                .recv
                .read_chunk(CLIENT_READ_CHUNK_BYTES_MAX, true)
                .await?
            else {
                if !self.reader.at_boundary() {
                    return Err(FrameError::Truncated.into());
                }
                return Ok(None);
            };
            let mut input = &chunk.bytes[..];
            // Each pass consumes input or stops: bounded by the chunk.
            loop {
                let (used, event) = self.reader.decode(input)?;
                input = &input[used..];
                match event {
                    Some(Event::Frame { kind, payload }) => {
                        self.ready.push_back(Reply::decode(kind, payload.bytes())?);
                    }
                    Some(Event::Bulk { .. }) => {
                        return Err(FrameError::Unexpected(Kind::Bulk).into());
                    }
                    None if input.is_empty() => break,
                    None => {}
                }
            }
        }
    }
}

/// A message as a frame: its rkyv wire form, framed.
pub fn message_frame(message: &Message) -> Vec<u8> {
    frame::encode(Kind::Message, &wire::encode(message))
}

/// A bulk frame of `size` payload bytes (at most [`frame::PAYLOAD_BYTES_MAX`]).
///
/// # Panics
/// When `size` is over the limit (a caller's bug).
pub fn bulk_frame(size: usize) -> Vec<u8> {
    assert!(
        size <= frame::PAYLOAD_BYTES_MAX,
        "bulk frame over the limit"
    );
    let mut payload = vec![0u8; size];
    // Not all zeros, so nothing along the way can special-case it.
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    frame::encode(Kind::Bulk, &payload)
}
