//! The HTTP server loop: hyper HTTP/1.1 connections with the node's limits on open connections
//! and on the time a client may take to send its request.
//!
//! ```text
//! accept ── permit (≤ http-connections-max; none free: accept waits, the kernel backlog holds
//!    │               new connections: backpressure)
//!    ▼
//! connection task ── request head within http-header-timeout-ms of the first read (also what
//!    │                an idle keep-alive connection gets): else closed, counted in
//!    │                ferrobeam_http_header_timeouts_total; head ≤ HTTP_HEAD_BYTES_MAX and
//!    │                ≤ HTTP_HEADERS_MAX lines: else 431
//!    ▼
//! router ── body within http-body-timeout-ms (`api::read_body`): else 408 RequestTimeout
//! ```
//!
//! A slow client holds one connection task and one permit, never a thread, and is cut off by the
//! timeouts; everyone else is served meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::node::metrics::Metrics;

/// Default most open HTTP connections: each costs a task and its buffers (~tens of KiB), and
/// 512 stays under the common soft `RLIMIT_NOFILE` of 1024 with room for the store's files and
/// the QUIC sockets. Beyond it `accept` waits (backpressure).
pub const HTTP_CONNECTIONS_MAX_DEFAULT: usize = 512;
/// Largest `http-connections-max` accepted: the permits are a `u32` count.
pub const HTTP_CONNECTIONS_MAX_LIMIT: usize = 65_536;
/// Default time a client has to send a request head (10 s): a slowloris client sending headers
/// a byte at a time, or an idle keep-alive connection, is closed after it.
pub const HTTP_HEADER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time a client has to send a request body (60 s): 16 MiB at ~2 Mbit/s. A stalled
/// upload gets 408 `RequestTimeout` and its connection is closed.
pub const HTTP_BODY_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Most header lines in a request head (hyper's default, named here): more is 431.
pub const HTTP_HEADERS_MAX: usize = 100;
/// Largest request head (request line and headers): the largest legitimate header is an
/// `x-ferrobeam-auth` of at most 8 KiB (`api::assets::AUTH_HEADER_BYTES_MAX`). A longer head is
/// 431 and the connection is closed.
pub const HTTP_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Pause after an `accept` error that is not about one connection (out of file descriptors):
/// retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

const _: () = assert!(HTTP_CONNECTIONS_MAX_DEFAULT <= HTTP_CONNECTIONS_MAX_LIMIT);
const _: () = assert!(HTTP_HEAD_BYTES_MAX >= 2 * super::assets::AUTH_HEADER_BYTES_MAX);
const _: () = assert!(HTTP_CONNECTIONS_MAX_LIMIT <= u32::MAX as usize);

/// The limits the server loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most open connections.
    pub connections_max: usize,
    /// Time to send a request head.
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests (graceful shutdown) and returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    assert!(
        (1..=HTTP_CONNECTIONS_MAX_LIMIT).contains(&limits.connections_max),
        "connections_max is checked by the configuration"
    );
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    // Endless by design: the loop ends only with the shutdown future.
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::warn!(error = %e, "accepting an HTTP connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            remote,
            limits,
            metrics: metrics.clone(),
        };
        let stopping = stopping.clone();
        tokio::spawn(async move {
            connection.run(stream, stopping).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection task holds a permit: all of them back means all connections closed.
    let all = u32::try_from(limits.connections_max).expect("checked above");
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// Errors of one connection that did not make it through `accept` (nothing to wait for).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection.
struct Connection {
    router: Router,
    remote: SocketAddr,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn run(self, stream: tokio::net::TcpStream, mut stopping: watch::Receiver<bool>) {
        let Connection {
            router,
            remote,
            limits,
            metrics,
        } = self;
        metrics.http_connections.inc();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            // What `into_make_service_with_connect_info` would add: privacy levels need it.
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_headers(HTTP_HEADERS_MAX)
            .max_header_size(HTTP_HEAD_BYTES_MAX);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                connection.as_mut().graceful_shutdown();
                connection.as_mut().await
            }
        };
        if let Err(e) = served {
            if e.is_timeout() {
                metrics.http_header_timeouts.inc();
            }
            tracing::debug!(%remote, error = %e, "HTTP connection ended");
        }
        metrics.http_connections.dec();
    }
}
