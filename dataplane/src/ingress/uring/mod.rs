//! The io_uring backend (`--transport uring`, the default on Linux): one pinned thread per
//! ingress core, each owning a UDP socket bound with `SO_REUSEPORT` to the node's address, an
//! io_uring (multishot `recvmsg` on a provided-buffer ring with UDP GRO; `sendmsg` with UDP GSO),
//! a userspace timer heap and a sans-IO `quinn_proto::Endpoint`. Nothing is shared between cores
//! but the [`Ingest`] state (sequencer handle, metrics, large-frame budget): no locks on the hot
//! path. docs/dataplane.md draws the threads, rings and buffers with their bounds.
//!
//! - [`socket`]: the socket and its control messages (GRO segment size, GSO segment size).
//! - [`ring`]: the ring, the provided buffers, the send slots and the eventfd wakeup: the only
//!   place with `unsafe`.
//! - [`endpoint`]: the core's loop (endpoint, connections, timers).
//! - [`stream`]: one stream on top of the shared [`Ingest`] steps.

mod endpoint;
mod ring;
mod socket;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Ingest, IngressError, Settings, Transport, TransportKind};
use ring::{Ring, Wakeup};

/// The running io_uring backend.
pub struct UringTransport {
    cores: Vec<(Arc<Wakeup>, std::thread::JoinHandle<()>)>,
    local: SocketAddr,
}

impl std::fmt::Debug for UringTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringTransport")
            .field("local", &self.local)
            .field("cores", &self.cores.len())
            .finish()
    }
}

/// Whether this process may use io_uring with the operations the backend needs (a seccomp
/// filter or `kernel.io_uring_disabled` say no).
///
/// # Errors
/// Why not.
pub fn probe() -> std::io::Result<()> {
    ring::probe()
}

impl UringTransport {
    /// Binds one socket and ring per ingress core and starts the cores' threads, pinned to the
    /// last `settings.threads` CPUs ([`ingress_core`]). Returns once every core is set up (or
    /// one failed).
    ///
    /// # Errors
    /// [`IngressError::Io`] when a socket, ring or thread cannot be set up.
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
        let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport_config = super::tokio::transport_config(settings.idle_timeout);
        super::tokio::set_max_udp_payload(&mut transport_config, settings.max_udp_payload);
        server.transport_config(Arc::new(transport_config));
        let server = Arc::new(server);
        let mut transport = Self {
            cores: Vec::with_capacity(settings.threads),
            local: settings.listen,
        };
        for core in 0..settings.threads {
            // Every core binds the port the first one got (port 0 picks one).
            let socket = socket::bind(transport.local).map_err(io)?;
            transport.local = socket.local_addr().map_err(io)?;
            // The core plan's ingress CPUs (node::cores), as the other backends use them.
            let pin = settings
                .cores
                .get(core % settings.cores.len().max(1))
                .copied();
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let (server, ingest) = (server.clone(), ingest.clone());
            let (max_udp_payload, connections_max) =
                (settings.max_udp_payload, settings.connections_max);
            let thread = std::thread::Builder::new()
                .name(format!("ferrobeam-ingress-{core}"))
                .spawn(move || {
                    if let Some(pin) = pin {
                        crate::node::cores::pin_current_thread(pin);
                    }
                    // The ring is made on its thread: it is single-issuer.
                    let ring = match Ring::new(socket) {
                        Ok(ring) => ring,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(ring.wakeup()));
                    if let Err(e) =
                        endpoint::Core::new(ring, server, ingest, max_udp_payload, connections_max)
                            .run()
                    {
                        tracing::error!(error = %e, "QUIC ingress core stopped");
                    }
                })
                .map_err(io)?;
            match ready_rx.recv() {
                Ok(Ok(wakeup)) => transport.cores.push((wakeup, thread)),
                Ok(Err(e)) => {
                    let _ = thread.join();
                    return Err(io(e)); // Drop stops the cores already running.
                }
                Err(_) => {
                    let _ = thread.join();
                    return Err(io(std::io::Error::other("ingress core failed to start")));
                }
            }
        }
        Ok(transport)
    }

    fn stop(&mut self) {
        for (wakeup, _) in &self.cores {
            wakeup
                .stop
                .store(true, std::sync::atomic::Ordering::Release);
            wakeup.wake();
        }
        for (_, thread) in self.cores.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Transport for UringTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Uring
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn shutdown(mut self: Box<Self>) {
        self.stop();
    }
}

impl Drop for UringTransport {
    fn drop(&mut self) {
        self.stop();
    }
}
