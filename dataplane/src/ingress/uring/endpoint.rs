//! The loop of one ingress core: a sans-IO `quinn_proto::Endpoint` and its connections, driven
//! by the core's ring. Datagrams in → endpoint → connection events; connection events →
//! streams ([`super::stream`]); transmits → GSO sends; a userspace timer heap for the
//! connections' timeouts and the streams' idle sweep.
//!
//! Connections never leave their core: the endpoint, its connection ids and its connections
//! are owned by this thread alone, and the kernel's `SO_REUSEPORT` hash sends every datagram of
//! a 4-tuple to the same socket, so a connection's packets are always handled here. (A peer
//! that migrates to a new 4-tuple may land on another core, whose endpoint does not know the
//! connection id and drops the packet: migration is not supported across cores.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, ServerConfig, StreamEvent, Transmit,
};

use super::ring::{Completion, Ring, Token, Wakeup};
use super::socket::{GSO_BYTES_MAX, GSO_SEGMENTS_MAX};
use super::stream::{Status, Stream};
use crate::ingress::{Ingest, IngressMetrics, ReasonLabel, code};

/// How long shutdown waits for close frames and in-flight sends.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(200);

/// One connection and its streams.
struct Conn {
    connection: quinn_proto::Connection,
    streams: HashMap<quinn_proto::StreamId, Stream>,
    /// The deadline last put in the timer heap.
    timer: Option<Instant>,
    /// The handshake completed (counted in `connections_open`).
    established: bool,
    /// Queued in `Core::dirty`.
    dirty: bool,
}

/// The state of one ingress core.
pub struct Core {
    ring: Ring,
    endpoint: Endpoint,
    server: Arc<ServerConfig>,
    ingest: Arc<Ingest>,
    /// Most open connections (`quic-connections-max`); more are refused and counted.
    connections_max: usize,
    /// Indexed by `ConnectionHandle.0` (the endpoint's dense slab index).
    conns: Vec<Option<Conn>>,
    /// Connections with work to do before the ring waits again.
    dirty: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    next_sweep: Instant,
    waker: Waker,
    wakeup: Arc<Wakeup>,
    /// Scratch buffer for the endpoint's stateless responses.
    response: Vec<u8>,
}

impl Core {
    /// A core over `ring` serving with `server`, accepting packets of up to `max_udp_payload`
    /// bytes and at most `connections_max` connections.
    pub fn new(
        ring: Ring,
        server: Arc<ServerConfig>,
        ingest: Arc<Ingest>,
        max_udp_payload: u16,
        connections_max: usize,
    ) -> Self {
        let wakeup = ring.wakeup();
        let endpoint = Endpoint::new(
            Arc::new(crate::ingress::tokio::endpoint_config(max_udp_payload)),
            Some(server.clone()),
            true, // The socket sets the DF bit (socket::bind): path MTU discovery works.
            None,
        );
        Self {
            ring,
            endpoint,
            server,
            connections_max,
            next_sweep: Instant::now() + sweep_interval(ingest.idle_timeout),
            ingest,
            conns: Vec::new(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            waker: Waker::from(wakeup.clone()),
            wakeup,
            response: Vec::new(),
        }
    }

    /// Runs until [`Wakeup::stop`] is set, then closes every connection.
    ///
    /// # Errors
    /// An io_uring failure (the core stops; its connections time out at their peers).
    pub fn run(mut self) -> std::io::Result<()> {
        let mut completions = Vec::with_capacity(1024);
        // Intentionally endless until shutdown; each pass handles what completed.
        loop {
            if self.wakeup.stop.load(Ordering::Acquire) {
                self.close_all();
                return Ok(());
            }
            self.ring.arm()?;
            // Connections left dirty only wait for send slots: then a completion is due.
            let timeout = if self.dirty.is_empty() || !self.ring.has_free_slot() {
                let deadline = self.next_deadline();
                Some(deadline.saturating_duration_since(Instant::now()))
            } else {
                None
            };
            self.ring.submit_and_wait(timeout)?;
            let now = Instant::now();
            self.ring.completions(&mut completions);
            for completion in &completions {
                self.on_completion(completion, now);
            }
            self.expire_timers(now);
            self.drive_dirty(now);
        }
    }

    fn next_deadline(&self) -> Instant {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        timer.map_or(self.next_sweep, |at| at.min(self.next_sweep))
    }

    fn on_completion(&mut self, completion: &Completion, now: Instant) {
        match completion.token {
            Token::Recv => self.on_receive(completion, now),
            Token::Send(_) if completion.result < 0 => {
                tracing::debug!(errno = -completion.result, "QUIC send failed");
            }
            Token::Send(_) => {}
            // Acks arrived or the sequencer has room: serve the streams that wait on it.
            Token::Wake => {
                for index in 0..self.conns.len() {
                    if self.conns[index].is_some() {
                        self.mark(index);
                    }
                }
            }
        }
    }

    fn on_receive(&mut self, completion: &Completion, now: Instant) {
        if completion.result < 0 {
            // ENOBUFS: every buffer is in use; the receive is armed again after this pass.
            tracing::debug!(errno = -completion.result, "QUIC receive failed");
            return;
        }
        let metrics = self.ingest.metrics.clone();
        let received = self
            .ring
            .with_received(completion, |peer, segment, payload| {
                let stride = segment.unwrap_or(payload.len()).max(1);
                for datagram in payload.chunks(stride) {
                    metrics.count_datagram(datagram);
                }
                // The kernel's buffer itself: quinn decrypts in place and streams keep slices.
                (peer, stride, payload)
            });
        let Some((Some(peer), stride, mut data)) = received else {
            return;
        };
        // Bounded by the batch's length.
        while !data.is_empty() {
            let datagram = data.split_to(stride.min(data.len()));
            self.on_datagram(now, peer, datagram);
        }
    }

    fn on_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: BytesMut) {
        self.response.clear();
        let event = self
            .endpoint
            .handle(now, peer, None, None, datagram, &mut self.response);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(conn) = self.conns.get_mut(handle.0).and_then(Option::as_mut) {
                    conn.connection.handle_event(event);
                    self.mark(handle.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(now, incoming),
            Some(DatagramEvent::Response(transmit)) => self.send_response(&transmit),
            None => {}
        }
    }

    fn on_incoming(&mut self, now: Instant, incoming: quinn_proto::Incoming) {
        self.response.clear();
        if self.endpoint.open_connections() >= self.connections_max {
            refused(&self.ingest.metrics, "connections-max");
            let transmit = self.endpoint.refuse(incoming, &mut self.response);
            self.send_response(&transmit);
            return;
        }
        match self
            .endpoint
            .accept(incoming, now, &mut self.response, Some(self.server.clone()))
        {
            Ok((handle, connection)) => {
                let index = handle.0;
                if self.conns.len() <= index {
                    self.conns.resize_with(index + 1, || None);
                }
                self.conns[index] = Some(Conn {
                    connection,
                    streams: HashMap::new(),
                    timer: None,
                    established: false,
                    dirty: false,
                });
                self.mark(index);
            }
            Err(e) => {
                tracing::debug!(error = %e.cause, "QUIC connection not accepted");
                refused(&self.ingest.metrics, "handshake");
                if let Some(transmit) = e.response {
                    self.send_response(&transmit);
                }
            }
        }
    }

    /// Sends an endpoint's stateless response (in `self.response`); dropped when no send slot
    /// is free (the peer retransmits).
    fn send_response(&mut self, transmit: &Transmit) {
        let Some((slot, buf)) = self.ring.send_buffer() else {
            return;
        };
        buf.extend_from_slice(&self.response[..transmit.size]);
        let sent = self.ring.send(
            slot,
            transmit.destination,
            transmit.size,
            transmit.segment_size,
        );
        if let Err(e) = sent {
            tracing::debug!(error = %e, "QUIC response not sent");
        }
    }

    fn mark(&mut self, index: usize) {
        if let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        // Each pass pops an entry: bounded by the heap's size.
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            // A stale entry (the deadline moved) is skipped; an early timeout is harmless.
            if conn.timer == Some(at) {
                conn.timer = None;
                conn.connection.handle_timeout(now);
                self.mark(index);
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + sweep_interval(self.ingest.idle_timeout);
            self.sweep_idle_streams(now);
        }
    }

    fn sweep_idle_streams(&mut self, now: Instant) {
        let limit = self.ingest.idle_timeout;
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            let before = conn.streams.len();
            let ingest = &self.ingest;
            let connection = &mut conn.connection;
            conn.streams
                .retain(|_, stream| stream.idle(ingest, connection, now, limit) == Status::Open);
            if conn.streams.len() != before {
                self.mark(index);
            }
        }
    }

    /// Drives every connection with news; a connection whose sends did not fit stays queued
    /// for the next pass.
    fn drive_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            if let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) {
                conn.dirty = false;
            }
            self.drive(index, now);
        }
        // Keep the allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        if self.timers.len() > 4 * self.conns.len() + 1024 {
            self.compact_timers();
        }
    }

    /// Drops the heap's stale entries (deadlines that moved), keeping it bounded.
    fn compact_timers(&mut self) {
        let conns = &self.conns;
        self.timers.retain(|Reverse((at, index))| {
            conns
                .get(*index)
                .and_then(Option::as_ref)
                .is_some_and(|conn| conn.timer == Some(*at))
        });
    }

    fn drive(&mut self, index: usize, now: Instant) {
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else {
            return;
        };
        let handle = ConnectionHandle(index);
        let mut drained = false;
        // Endpoint and application events until both are quiet: bounded by what arrived.
        loop {
            let mut progressed = false;
            while let Some(event) = conn.connection.poll_endpoint_events() {
                progressed = true;
                drained |= event.is_drained();
                if let Some(reply) = self.endpoint.handle_event(handle, event) {
                    conn.connection.handle_event(reply);
                }
            }
            while let Some(event) = conn.connection.poll() {
                progressed = true;
                self.on_event(&mut conn, event, now);
            }
            self.serve_streams(&mut conn, now);
            if !progressed {
                break;
            }
        }
        let sent_all = self.transmit(&mut conn, now);
        if drained {
            if conn.established {
                self.ingest.metrics.connections_open.dec();
            }
            return; // The endpoint forgot the handle; so do we.
        }
        let deadline = conn.connection.poll_timeout();
        if deadline != conn.timer {
            conn.timer = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, index)));
            }
        }
        self.conns[index] = Some(conn);
        if !sent_all {
            self.mark(index);
        }
    }

    fn on_event(&mut self, conn: &mut Conn, event: Event, now: Instant) {
        match event {
            Event::Connected => {
                conn.established = true;
                self.ingest.metrics.connections_accepted.inc();
                self.ingest.metrics.connections_open.inc();
            }
            Event::ConnectionLost { reason } => {
                if !conn.established {
                    tracing::debug!(error = %reason, "QUIC handshake failed");
                    refused(&self.ingest.metrics, "handshake");
                }
                conn.streams.clear();
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                // Bounded by QUIC stream credit (STREAMS_PER_CONNECTION_MAX).
                while let Some(id) = conn.connection.streams().accept(Dir::Bi) {
                    self.ingest.metrics.streams_opened.inc();
                    conn.streams.insert(id, Stream::new(id, now));
                }
            }
            // Readable, writable, finished, stopped: `serve_streams` looks at every stream.
            _ => {}
        }
    }

    fn serve_streams(&mut self, conn: &mut Conn, now: Instant) {
        let mut cx = Context::from_waker(&self.waker);
        let ingest = &self.ingest;
        let connection = &mut conn.connection;
        conn.streams
            .retain(|_, stream| stream.service(ingest, connection, &mut cx, now) == Status::Open);
    }

    /// Sends what the connection has, in GSO batches; `false` when the send slots ran out
    /// first.
    fn transmit(&mut self, conn: &mut Conn, now: Instant) -> bool {
        let mtu = usize::from(conn.connection.current_mtu()).max(1);
        let segments = (GSO_BYTES_MAX / mtu).clamp(1, GSO_SEGMENTS_MAX);
        // Bounded by the connection's congestion window and the send slots.
        loop {
            let Some((slot, buf)) = self.ring.send_buffer() else {
                return false;
            };
            let Some(transmit) = conn.connection.poll_transmit(now, segments, buf) else {
                return true;
            };
            let sent = self.ring.send(
                slot,
                transmit.destination,
                transmit.size,
                transmit.segment_size,
            );
            if let Err(e) = sent {
                tracing::debug!(error = %e, "QUIC transmit not sent");
                return true;
            }
        }
    }

    fn close_all(mut self) {
        let now = Instant::now();
        for index in 0..self.conns.len() {
            if let Some(conn) = self.conns[index].as_mut() {
                conn.connection.close(
                    now,
                    quinn_proto::VarInt::from_u32(code::SHUTDOWN),
                    bytes::Bytes::from_static(b"node shutting down"),
                );
                self.mark(index);
            }
        }
        self.drive_dirty(now);
        let _ = self.ring.submit_and_wait(None);
        for conn in self.conns.iter().flatten() {
            if conn.established {
                self.ingest.metrics.connections_open.dec();
            }
        }
        self.conns.clear();
        if !self.ring.quiesce(SHUTDOWN_DRAIN) {
            // Freeing memory the kernel may still write is worse than a leak at shutdown.
            tracing::warn!("io_uring operations still in flight at shutdown; leaking the ring");
            let Core { ring, .. } = self;
            std::mem::forget(ring);
        }
    }
}

/// How often streams are checked for the idle timeout: a quarter of it, so a stream is closed
/// between 1 and 1.25 timeouts after its last byte.
fn sweep_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).max(Duration::from_millis(10))
}

fn refused(metrics: &IngressMetrics, reason: &str) {
    metrics
        .connections_refused
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}
