//! One bidirectional stream of a quinn-proto connection, served like the tokio backend's stream
//! task but without a task: the ring loop calls [`Stream::service`] whenever the connection has
//! news or a wakeup came. The shared [`Ingest`] steps are async (the sequencer's queue and the
//! large-frame budget wait when full); their future is polled here with the ring's waker, and
//! while it is pending the stream is not read, so QUIC stream credit shrinks (backpressure).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use quinn_proto::{Connection, ReadError, StreamId, VarInt, WriteError};

use crate::ingress::frame::{FrameError, FrameReader};
use crate::ingress::{
    FRAMES_IN_FLIGHT_PER_STREAM_MAX, Ingest, Item, LargeFrame, LargeFrameWanted, Outcome,
    READ_CHUNK_BYTES_MAX, Reply, code,
};

/// The admit step of one chunk, running: the outcomes for the stream's queue and the stream's
/// large-frame reservation, handed back when it completes.
type Admitting = Pin<Box<dyn Future<Output = (VecDeque<Outcome>, LargeFrame)>>>;

/// Whether the stream is done with (and can be forgotten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still serving.
    Open,
    /// Finished, reset, or lost: drop it.
    Closed,
}

/// The read side and reply queue of one stream.
pub struct Stream {
    id: StreamId,
    reader: FrameReader,
    pending: VecDeque<Outcome>,
    /// Bytes of the bulk frame being received.
    bulk: u64,
    /// The large-frame reservation; `None` while an admit future holds it.
    large: Option<LargeFrame>,
    admitting: Option<Admitting>,
    /// Reply bytes not yet accepted by QUIC (its send window), from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Finished cleanly, or stopped by the node after an invalid frame or a timeout.
    read_done: bool,
    /// When the stream last delivered bytes (for the idle timeout).
    last_read: Instant,
}

impl Stream {
    /// A stream the peer opened.
    pub fn new(id: StreamId, now: Instant) -> Self {
        Self {
            id,
            reader: FrameReader::node(),
            pending: VecDeque::new(),
            bulk: 0,
            large: Some(LargeFrame::default()),
            admitting: None,
            out: Vec::new(),
            sent: 0,
            read_done: false,
            last_read: now,
        }
    }

    /// Moves the stream as far as it goes now: answers that arrived become replies, replies are
    /// written, chunks are read while the in-flight bound allows. Bounded: each pass reads a
    /// chunk (at most the stream's receive window) or returns.
    pub fn service(
        &mut self,
        ingest: &Arc<Ingest>,
        connection: &mut Connection,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> Status {
        loop {
            if let Some(admitting) = self.admitting.as_mut() {
                match admitting.as_mut().poll(cx) {
                    Poll::Ready((outcomes, large)) => {
                        self.pending.extend(outcomes);
                        self.large = Some(large);
                        self.admitting = None;
                    }
                    Poll::Pending => {}
                }
            }
            self.take_ready(ingest, cx);
            match self.write(connection) {
                Ok(()) => {}
                Err(()) => return Status::Closed,
            }
            let written = self.sent == self.out.len();
            if self.read_done && self.pending.is_empty() && self.admitting.is_none() && written {
                let _ = connection.send_stream(self.id).finish();
                return Status::Closed;
            }
            let can_read = !self.read_done
                && self.admitting.is_none()
                && written
                && self.pending.len() < FRAMES_IN_FLIGHT_PER_STREAM_MAX;
            if !can_read {
                return Status::Open;
            }
            match self.read(ingest, connection, now) {
                Read::Chunk => {}
                Read::Blocked => return Status::Open,
                Read::Lost => return Status::Closed,
            }
        }
    }

    /// Moves the answered outcomes at the front of the queue into the reply bytes, in order.
    fn take_ready(&mut self, ingest: &Ingest, cx: &mut Context<'_>) {
        // Bounded by the queue's length.
        while let Some(front) = self.pending.front_mut() {
            let reply = match front {
                Outcome::Ready(reply) => reply.clone(),
                Outcome::Pending(ack) => match Pin::new(ack).poll(cx) {
                    Poll::Ready(answer) => ingest.answered(answer),
                    Poll::Pending => break,
                },
            };
            if self.sent == self.out.len() {
                self.out.clear();
                self.sent = 0;
            }
            reply.encode_into(&mut self.out);
            self.pending.pop_front();
        }
    }

    /// Writes what QUIC's send window takes. `Err` when the peer stopped the stream.
    fn write(&mut self, connection: &mut Connection) -> Result<(), ()> {
        // Each pass writes bytes or returns.
        while self.sent < self.out.len() {
            match connection
                .send_stream(self.id)
                .write(&self.out[self.sent..])
            {
                Ok(0) | Err(WriteError::Blocked) => return Ok(()),
                Ok(written) => self.sent += written,
                Err(WriteError::Stopped(_) | WriteError::ClosedStream) => return Err(()),
            }
        }
        Ok(())
    }

    /// Reads what the stream holds, up to `READ_CHUNK_BYTES_MAX` bytes (quinn-proto hands out
    /// one STREAM frame per chunk, ~1.4 KB: one admit step per packet would cost more than the
    /// packet), and starts one admit step for all of it.
    fn read(&mut self, ingest: &Arc<Ingest>, connection: &mut Connection, now: Instant) -> Read {
        let mut recv = connection.recv_stream(self.id);
        let Ok(mut chunks) = recv.read(true) else {
            return Read::Lost; // Stopped or closed already.
        };
        let mut items = Vec::new();
        let mut invalid = None;
        let mut read_bytes = 0;
        let mut end = Read::Blocked;
        // Each pass takes a chunk or stops: bounded by READ_CHUNK_BYTES_MAX.
        while read_bytes < READ_CHUNK_BYTES_MAX {
            match chunks.next(READ_CHUNK_BYTES_MAX - read_bytes) {
                Ok(Some(chunk)) => {
                    read_bytes += chunk.bytes.len();
                    end = Read::Chunk;
                    match ingest.decode_chunk(&mut self.reader, &chunk.bytes, &mut self.bulk) {
                        Ok(decoded) => items.extend(decoded),
                        Err((decoded, e)) => {
                            items.extend(decoded);
                            invalid = Some(e);
                            break;
                        }
                    }
                }
                Ok(None) => {
                    end = Read::Chunk;
                    self.read_done = true;
                    if !self.reader.at_boundary() {
                        let e = FrameError::Truncated;
                        ingest.metrics.frame_invalid(&e);
                        invalid = Some(e);
                    }
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(_)) => {
                    end = Read::Lost;
                    break;
                }
            }
        }
        // Returning credit to the peer is the connection's next transmit.
        let _ = chunks.finalize();
        if read_bytes > 0 {
            self.last_read = now;
        }
        if let Some(e) = &invalid
            && !self.read_done
        {
            self.close_invalid(ingest, connection, e);
        }
        let large = self.large.as_ref();
        let idle = items.is_empty()
            && invalid.is_none()
            && large.is_some_and(|held| held.is_for(LargeFrameWanted::of(&self.reader)));
        if !idle {
            self.admit(ingest, items, invalid);
        }
        end
    }

    /// Starts the shared admit step (then the large-frame reservation) for the items read;
    /// `invalid` is the frame error that ended them, answered after them.
    fn admit(&mut self, ingest: &Arc<Ingest>, items: Vec<Item>, invalid: Option<FrameError>) {
        debug_assert!(self.admitting.is_none());
        let ingest = ingest.clone();
        let wanted = LargeFrameWanted::of(&self.reader);
        let mut large = self.large.take().unwrap_or_default();
        self.admitting = Some(Box::pin(async move {
            let mut outcomes = VecDeque::new();
            ingest.admit(items, &mut outcomes).await;
            if let Some(e) = invalid {
                outcomes.push_back(Outcome::Ready(Reply::Refused((&e).into())));
            } else {
                ingest.reserve_large(wanted, &mut large).await;
            }
            (outcomes, large)
        }));
    }

    fn close_invalid(&mut self, ingest: &Ingest, connection: &mut Connection, e: &FrameError) {
        ingest.metrics.frame_invalid(e);
        ingest.metrics.stream_closed("frame-invalid");
        let _ = connection
            .recv_stream(self.id)
            .stop(VarInt::from_u32(code::FRAME_INVALID));
        self.read_done = true;
    }

    /// Closes the stream if it sat inside a frame, or open with nothing owed, for `limit`:
    /// such a stream holds node memory. While acks are owed the client is waiting too.
    pub fn idle(
        &mut self,
        ingest: &Ingest,
        connection: &mut Connection,
        now: Instant,
        limit: std::time::Duration,
    ) -> Status {
        let owed = !self.pending.is_empty() || self.admitting.is_some();
        if self.read_done || owed || now.saturating_duration_since(self.last_read) < limit {
            return Status::Open;
        }
        ingest.metrics.stream_closed("idle-timeout");
        let idle = VarInt::from_u32(code::IDLE_TIMEOUT);
        let _ = connection.recv_stream(self.id).stop(idle);
        let _ = connection.send_stream(self.id).reset(idle);
        Status::Closed
    }
}

enum Read {
    Chunk,
    Blocked,
    Lost,
}
