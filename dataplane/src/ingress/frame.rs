//! Framing of QUIC streams (sans-IO): a 16-byte header, then the payload padded to 16 bytes.
//!
//! ```text
//!  0        4        8                16                      16 + len   16 + pad16(len)
//!  +--------+--------+----------------+-----------------------+----------+
//!  | len    | kind   | reserved (0)   | payload (len bytes)   | 0 padding|
//!  | u32 LE | u32 LE | 8 bytes        |                       | to 16    |
//!  +--------+--------+----------------+-----------------------+----------+
//! ```
//!
//! Every frame is a multiple of 16 bytes long, so when a stream's bytes are copied into a
//! 16-byte aligned buffer every payload starts 16-byte aligned, and an rkyv message is validated
//! and read in place ([`AlignedFrame`], then `wire::access`). Integers are little-endian (the
//! byte order of rkyv's archive and of every host we run on). Reserved bytes and padding must be
//! zero: a frame with other bytes there is invalid, which leaves them free for later versions.
//!
//! [`FrameReader`] parses incrementally over arbitrary chunk boundaries. Bulk payloads are never
//! buffered: the reader reports how many bytes went by. Nothing here touches a socket or a clock.

use rkyv::util::AlignedVec;

use crate::message::wire::{WIRE_ALIGN, WIRE_BYTES_MAX};

/// Length of the frame header.
pub const HEADER_BYTES: usize = 16;
/// Alignment of frames, headers and payloads (the rkyv archive root's alignment).
pub const FRAME_ALIGN: usize = 16;
/// Largest payload: one wire message (16 MiB message + the archive's overhead). A header that
/// announces more is a [`FrameError::TooLarge`]: the stream is closed, and the refusal counted.
pub const PAYLOAD_BYTES_MAX: usize = WIRE_BYTES_MAX;
/// Largest frame on the wire: header, largest payload, padding.
pub const FRAME_BYTES_MAX: usize = HEADER_BYTES + pad16(PAYLOAD_BYTES_MAX);

const _: () = assert!(HEADER_BYTES == FRAME_ALIGN);
const _: () = assert!(FRAME_ALIGN == WIRE_ALIGN);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_BYTES_MAX.is_multiple_of(FRAME_ALIGN));

/// `len` rounded up to a multiple of 16.
pub const fn pad16(len: usize) -> usize {
    len.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Client → node: an rkyv wire message (`message::wire`), to schedule or spawn.
    Message,
    /// Client → node: opaque bytes for throughput tests, answered by a [`Kind::BulkAck`].
    Bulk,
    /// Node → client: a message is durable ([`ACK_BYTES`] of fixed binary, see `ingress`).
    Ack,
    /// Node → client: a message was refused; JSON `{"error": code, "message": text}`.
    Refused,
    /// Node → client: a bulk frame was received; `u64 LE` byte count + 8 reserved bytes.
    BulkAck,
}

/// Length of an [`Kind::Ack`] payload: id, process, assignment, hashpath (32 bytes each), slot,
/// timestamp (u64 LE each), flags (u32 LE, bit 0 = duplicate), 12 reserved bytes.
pub const ACK_BYTES: usize = 4 * 32 + 8 + 8 + 4 + 12;
/// Length of a [`Kind::BulkAck`] payload.
pub const BULK_ACK_BYTES: usize = 16;
/// Largest [`Kind::Refused`] payload: a refusal's JSON is cut to fit.
pub const REFUSED_BYTES_MAX: usize = 4096;

const _: () = assert!(ACK_BYTES.is_multiple_of(FRAME_ALIGN));

impl Kind {
    /// The kind's number in the header.
    pub fn code(self) -> u32 {
        match self {
            Kind::Message => 1,
            Kind::Bulk => 2,
            Kind::Ack => 3,
            Kind::Refused => 4,
            Kind::BulkAck => 5,
        }
    }

    /// Inverse of [`Kind::code`].
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Kind::Message,
            2 => Kind::Bulk,
            3 => Kind::Ack,
            4 => Kind::Refused,
            5 => Kind::BulkAck,
            _ => return None,
        })
    }

    /// Largest payload of this kind: replies are small and fixed, so a peer cannot make the
    /// other side buffer 17 MiB for an ack.
    pub fn payload_bytes_max(self) -> usize {
        match self {
            Kind::Message | Kind::Bulk => PAYLOAD_BYTES_MAX,
            Kind::Ack => ACK_BYTES,
            Kind::Refused => REFUSED_BYTES_MAX,
            Kind::BulkAck => BULK_ACK_BYTES,
        }
    }
}

/// Why a stream's bytes are not a valid frame sequence. The stream cannot be resynchronized
/// after any of these: the peer is at fault and its stream is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header's kind is not one of [`Kind`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u32),
    /// The reserved header bytes or the padding are not zero.
    #[error("reserved bytes or padding are not zero")]
    ReservedNotZero,
    /// The header announces more than the kind's maximum payload.
    #[error("frame of {len} bytes over the {max}-byte limit")]
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The limit of its kind.
        max: usize,
    },
    /// The peer may not send this kind (a client sending an ack, a node sending a message).
    #[error("frame kind {0:?} not expected in this direction")]
    Unexpected(Kind),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A payload that is not 16-byte aligned or is over the limit was offered as aligned.
    #[error("payload is not 16-byte aligned or is too large")]
    Misaligned,
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The payload kind.
    pub kind: Kind,
    /// Payload length before padding.
    pub len: usize,
}

impl Header {
    /// The header's 16 bytes.
    pub fn encode(self) -> [u8; HEADER_BYTES] {
        assert!(
            self.len <= self.kind.payload_bytes_max(),
            "frame over its limit"
        );
        let mut out = [0u8; HEADER_BYTES];
        // Fits: the limits are below u32::MAX (asserted at compile time).
        out[0..4].copy_from_slice(&(self.len as u32).to_le_bytes());
        out[4..8].copy_from_slice(&self.kind.code().to_le_bytes());
        out
    }

    /// Parses and checks 16 header bytes.
    ///
    /// # Errors
    /// [`FrameError::UnknownKind`], [`FrameError::ReservedNotZero`], [`FrameError::TooLarge`].
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Self, FrameError> {
        let [l0, l1, l2, l3, k0, k1, k2, k3, reserved @ ..] = *bytes;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let code = u32::from_le_bytes([k0, k1, k2, k3]);
        let kind = Kind::from_code(code).ok_or(FrameError::UnknownKind(code))?;
        if reserved != [0; 8] {
            return Err(FrameError::ReservedNotZero);
        }
        let max = kind.payload_bytes_max();
        if len as usize > max {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max,
            });
        }
        Ok(Self {
            kind,
            len: len as usize,
        })
    }

    /// Header, payload and padding together.
    pub fn frame_len(self) -> usize {
        HEADER_BYTES + pad16(self.len)
    }
}

/// Appends one frame (header, payload, zero padding) to `out`.
///
/// # Panics
/// When `payload` is over its kind's limit: senders build their own frames, so that is a bug.
pub fn encode_into(kind: Kind, payload: &[u8], out: &mut Vec<u8>) {
    let header = Header {
        kind,
        len: payload.len(),
    };
    out.reserve(header.frame_len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out.resize(out.len() + pad16(payload.len()) - payload.len(), 0);
}

/// One frame as a fresh buffer.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(kind, payload, &mut out);
    out
}

/// A payload known to start on a 16-byte boundary and to be at most [`PAYLOAD_BYTES_MAX`]
/// long: what `wire::access` needs to read an archive in place.
///
/// Invariant (held by [`AlignedFrame::new`], the only constructor): `bytes.as_ptr()` is a
/// multiple of [`FRAME_ALIGN`] and `bytes.len() <= PAYLOAD_BYTES_MAX`.
#[derive(Debug, Clone, Copy)]
pub struct AlignedFrame<'a> {
    bytes: &'a [u8],
}

impl<'a> AlignedFrame<'a> {
    /// Checks the invariant.
    ///
    /// # Errors
    /// [`FrameError::Misaligned`].
    pub fn new(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if !(bytes.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) || bytes.len() > PAYLOAD_BYTES_MAX
        {
            return Err(FrameError::Misaligned);
        }
        Ok(Self { bytes })
    }

    /// The payload.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Validates the payload as an rkyv wire message, in place (never unchecked).
    ///
    /// # Errors
    /// As `wire::access`.
    pub fn access(
        &self,
    ) -> Result<&'a crate::message::wire::ArchivedWireFrame, crate::message::MessageError> {
        crate::message::wire::access(self.bytes)
    }
}

/// Buffer capacity a reader keeps between frames; after a larger frame the buffer is freed, so
/// an idle stream holds at most this much (a 17 MiB message does not pin 17 MiB per stream).
pub const BUFFER_KEPT_BYTES: usize = 64 * 1024;

/// What [`FrameReader::decode`] found.
#[derive(Debug)]
pub enum Event<'a> {
    /// A complete buffered frame (every kind but bulk).
    Frame {
        /// Its kind.
        kind: Kind,
        /// Its payload, aligned, padding checked and removed.
        payload: AlignedFrame<'a>,
    },
    /// `bytes` of a bulk payload went by (not buffered); `end` when the frame is complete.
    Bulk {
        /// Payload bytes consumed by this event (padding excluded).
        bytes: usize,
        /// The bulk frame ended with this event.
        end: bool,
    },
}

/// Where the reader is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting header bytes (`buffer` holds `filled` of them).
    Header { filled: usize },
    /// Buffering a payload of `header.len` (+ padding) into `buffer`.
    Payload { header: Header, filled: usize },
    /// Skipping `remaining` bytes of a bulk payload, then `padding` zero bytes.
    Bulk {
        header: Header,
        remaining: usize,
        padding: usize,
    },
}

/// Incremental frame parser over a byte stream cut at arbitrary points.
///
/// The payload buffer is 16-byte aligned and holds one frame at a time, so its size is bounded
/// by the largest payload of the kinds this reader accepts.
#[derive(Debug)]
pub struct FrameReader {
    buffer: AlignedVec<FRAME_ALIGN>,
    state: State,
    accepts: fn(Kind) -> bool,
    /// Frames whose header was accepted so far (names the frame [`FrameReader::pending`] is in).
    started: u64,
}

impl FrameReader {
    /// A reader for frames a node receives (messages and bulk).
    pub fn node() -> Self {
        Self::new(|kind| matches!(kind, Kind::Message | Kind::Bulk))
    }

    /// A reader for frames a client receives (acks, refusals, bulk acks).
    pub fn client() -> Self {
        Self::new(|kind| matches!(kind, Kind::Ack | Kind::Refused | Kind::BulkAck))
    }

    fn new(accepts: fn(Kind) -> bool) -> Self {
        Self {
            buffer: AlignedVec::new(),
            state: State::Header { filled: 0 },
            accepts,
            started: 0,
        }
    }

    /// True between frames: a stream may end here.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header { filled: 0 }
    }

    /// The number and header of the frame being received, once its header is complete
    /// (numbers count frames from 1, so a caller can tell two frames of equal size apart).
    pub fn pending(&self) -> Option<(u64, Header)> {
        match self.state {
            State::Header { .. } => None,
            State::Payload { header, .. } | State::Bulk { header, .. } => {
                Some((self.started, header))
            }
        }
    }

    /// Consumes bytes of `input` until one event is ready or `input` is used up. Returns how
    /// many bytes were consumed and the event, if any; call again with the rest of the input.
    ///
    /// # Errors
    /// [`FrameError`]; the stream cannot continue after one.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event<'_>>), FrameError> {
        let mut used = 0;
        loop {
            // Each pass either consumes input, changes state, or returns: bounded by the input.
            match self.state {
                State::Header { filled } => {
                    if filled == 0 {
                        self.recycle_buffer();
                    }
                    let take = (HEADER_BYTES - filled).min(input.len() - used);
                    self.buffer.extend_from_slice(&input[used..used + take]);
                    used += take;
                    if filled + take < HEADER_BYTES {
                        self.state = State::Header {
                            filled: filled + take,
                        };
                        return Ok((used, None));
                    }
                    self.start_payload()?;
                }
                State::Payload { header, filled } => {
                    let total = pad16(header.len);
                    let take = (total - filled).min(input.len() - used);
                    self.buffer.extend_from_slice(&input[used..used + take]);
                    used += take;
                    if filled + take < total {
                        self.state = State::Payload {
                            header,
                            filled: filled + take,
                        };
                        return Ok((used, None));
                    }
                    return self.finish_payload(header).map(|event| (used, Some(event)));
                }
                State::Bulk {
                    header,
                    remaining,
                    padding,
                } => {
                    if remaining > 0 {
                        let take = remaining.min(input.len() - used);
                        used += take;
                        self.state = State::Bulk {
                            header,
                            remaining: remaining - take,
                            padding,
                        };
                        if take == 0 {
                            return Ok((used, None));
                        }
                        let end = remaining == take && padding == 0;
                        if end {
                            self.state = State::Header { filled: 0 };
                        }
                        return Ok((used, Some(Event::Bulk { bytes: take, end })));
                    }
                    let take = padding.min(input.len() - used);
                    if input[used..used + take].iter().any(|b| *b != 0) {
                        return Err(FrameError::ReservedNotZero);
                    }
                    used += take;
                    if take < padding {
                        self.state = State::Bulk {
                            header,
                            remaining: 0,
                            padding: padding - take,
                        };
                        return Ok((used, None));
                    }
                    self.state = State::Header { filled: 0 };
                    return Ok((
                        used,
                        Some(Event::Bulk {
                            bytes: 0,
                            end: true,
                        }),
                    ));
                }
            }
        }
    }

    /// The header is complete in `buffer`: check it and pick the payload state.
    fn start_payload(&mut self) -> Result<(), FrameError> {
        let bytes: [u8; HEADER_BYTES] = self.buffer[..HEADER_BYTES]
            .try_into()
            .map_err(|_| FrameError::Truncated)?;
        let header = Header::decode(&bytes)?;
        if !(self.accepts)(header.kind) {
            return Err(FrameError::Unexpected(header.kind));
        }
        self.buffer.clear();
        self.started += 1;
        self.state = if header.kind == Kind::Bulk {
            State::Bulk {
                header,
                remaining: header.len,
                padding: pad16(header.len) - header.len,
            }
        } else {
            // The whole payload is buffered; reserving once keeps it in one aligned block.
            self.buffer.reserve(pad16(header.len));
            State::Payload { header, filled: 0 }
        };
        Ok(())
    }

    fn finish_payload(&mut self, header: Header) -> Result<Event<'_>, FrameError> {
        debug_assert_eq!(self.buffer.len(), pad16(header.len));
        if self.buffer[header.len..].iter().any(|b| *b != 0) {
            return Err(FrameError::ReservedNotZero);
        }
        self.state = State::Header { filled: 0 };
        // The payload stays in the buffer until the next `decode` call (which the borrow on
        // `self` enforces); that call clears it before collecting the next header.
        let payload = AlignedFrame::new(&self.buffer[..header.len])?;
        Ok(Event::Frame {
            kind: header.kind,
            payload,
        })
    }

    /// Empties the buffer between frames, giving memory back after a large frame.
    fn recycle_buffer(&mut self) {
        if self.buffer.capacity() > BUFFER_KEPT_BYTES {
            self.buffer = AlignedVec::new();
        } else {
            self.buffer.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(reader: &mut FrameReader, mut input: &[u8], out: &mut Vec<(Kind, Vec<u8>)>) {
        loop {
            let (used, event) = reader.decode(input).unwrap();
            input = &input[used..];
            match event {
                Some(Event::Frame { kind, payload }) => {
                    assert!((payload.bytes().as_ptr() as usize).is_multiple_of(FRAME_ALIGN));
                    out.push((kind, payload.bytes().to_vec()));
                }
                Some(Event::Bulk { bytes, end }) => match out.last_mut() {
                    Some((Kind::Bulk, counted)) if counted.len() == 8 && counted[7] == 0 => {
                        let n = u64::from_le_bytes(counted[..8].try_into().unwrap()) as usize;
                        *counted = ((n + bytes) as u64).to_le_bytes().to_vec();
                        if end {
                            counted[7] = 1;
                        }
                    }
                    _ => {
                        let mut counted = (bytes as u64).to_le_bytes().to_vec();
                        if end {
                            counted[7] = 1;
                        }
                        out.push((Kind::Bulk, counted));
                    }
                },
                None => {
                    if input.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    fn stream() -> (Vec<u8>, Vec<(Kind, Vec<u8>)>) {
        let mut bytes = Vec::new();
        let message = crate::message::wire::encode(&crate::message::Message::new().with("a", 1));
        encode_into(Kind::Message, &message, &mut bytes);
        encode_into(Kind::Bulk, &[7u8; 37], &mut bytes);
        encode_into(Kind::Message, &[], &mut bytes);
        encode_into(Kind::Bulk, &[], &mut bytes);
        encode_into(Kind::Message, &message, &mut bytes);
        let mut bulk = 37u64.to_le_bytes();
        bulk[7] = 1;
        let mut empty_bulk = 0u64.to_le_bytes();
        empty_bulk[7] = 1;
        let expected = vec![
            (Kind::Message, message.to_vec()),
            (Kind::Bulk, bulk.to_vec()),
            (Kind::Message, vec![]),
            (Kind::Bulk, empty_bulk.to_vec()),
            (Kind::Message, message.to_vec()),
        ];
        (bytes, expected)
    }

    #[test]
    fn every_single_split_point_gives_the_same_frames() {
        let (bytes, expected) = stream();
        assert!(bytes.len().is_multiple_of(FRAME_ALIGN));
        for split in 0..=bytes.len() {
            let mut reader = FrameReader::node();
            let mut out = Vec::new();
            drain(&mut reader, &bytes[..split], &mut out);
            drain(&mut reader, &bytes[split..], &mut out);
            assert_eq!(out, expected, "split at {split}");
            assert!(reader.at_boundary());
        }
    }

    #[test]
    fn byte_by_byte_and_pairs_of_splits() {
        let (bytes, expected) = stream();
        let mut reader = FrameReader::node();
        let mut out = Vec::new();
        for b in &bytes {
            drain(&mut reader, std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out, expected);
        for a in (0..bytes.len()).step_by(7) {
            for b in (a..=bytes.len()).step_by(5) {
                let mut reader = FrameReader::node();
                let mut out = Vec::new();
                for part in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                    drain(&mut reader, part, &mut out);
                }
                assert_eq!(out, expected, "splits at {a} and {b}");
            }
        }
    }

    #[test]
    fn payloads_are_validated_in_place() {
        let m = crate::message::Message::new().with("x", "y");
        let bytes = encode(Kind::Message, &crate::message::wire::encode(&m));
        let mut reader = FrameReader::node();
        let (_, event) = reader.decode(&bytes[..]).unwrap();
        let Some(Event::Frame { payload, .. }) = event else {
            panic!("no frame")
        };
        let view = payload.access().unwrap();
        assert_eq!(crate::message::wire::from_archived(view).unwrap(), m);
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut header = Header {
            kind: Kind::Message,
            len: 3,
        }
        .encode();
        header[4] = 99;
        assert_eq!(
            FrameReader::node().decode(&header).unwrap_err(),
            FrameError::UnknownKind(99)
        );
        let mut header = Header {
            kind: Kind::Message,
            len: 3,
        }
        .encode();
        header[12] = 1;
        assert_eq!(
            FrameReader::node().decode(&header).unwrap_err(),
            FrameError::ReservedNotZero
        );
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        header[4..8].copy_from_slice(&Kind::Message.code().to_le_bytes());
        assert!(matches!(
            FrameReader::node().decode(&header).unwrap_err(),
            FrameError::TooLarge { .. }
        ));
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(&(ACK_BYTES as u32 + 16).to_le_bytes());
        header[4..8].copy_from_slice(&Kind::Ack.code().to_le_bytes());
        assert!(matches!(
            FrameReader::client().decode(&header).unwrap_err(),
            FrameError::TooLarge { .. }
        ));
        let ack = encode(Kind::Ack, &[0; ACK_BYTES]);
        assert_eq!(
            FrameReader::node().decode(&ack).unwrap_err(),
            FrameError::Unexpected(Kind::Ack)
        );
        let message = encode(Kind::Message, &[0; 16]);
        assert_eq!(
            FrameReader::client().decode(&message).unwrap_err(),
            FrameError::Unexpected(Kind::Message)
        );
    }

    #[test]
    fn pending_names_the_frame_in_progress() {
        let bytes = [
            encode(Kind::Message, &[1; 40]),
            encode(Kind::Message, &[2; 40]),
        ]
        .concat();
        let mut reader = FrameReader::node();
        assert_eq!(reader.pending(), None);
        reader.decode(&bytes[..20]).unwrap();
        let (first, header) = reader.pending().unwrap();
        assert_eq!(header.len, 40);
        let (used, _) = reader.decode(&bytes[20..64]).unwrap();
        assert_eq!(used, 44);
        assert_eq!(reader.pending(), None);
        reader.decode(&bytes[64..90]).unwrap();
        let (second, header) = reader.pending().unwrap();
        assert_eq!((second, header.len), (first + 1, 40));
    }

    #[test]
    fn nonzero_padding_is_refused() {
        let mut bytes = encode(Kind::Message, &[1, 2, 3]);
        bytes[HEADER_BYTES + 5] = 9;
        assert_eq!(
            FrameReader::node().decode(&bytes).unwrap_err(),
            FrameError::ReservedNotZero
        );
        let mut bytes = encode(Kind::Bulk, &[1, 2, 3]);
        bytes[HEADER_BYTES + 5] = 9;
        let mut reader = FrameReader::node();
        let (used, _) = reader.decode(&bytes).unwrap();
        assert_eq!(
            reader.decode(&bytes[used..]).unwrap_err(),
            FrameError::ReservedNotZero
        );
    }

    #[test]
    fn aligned_frame_checks_its_invariant() {
        let mut buffer = AlignedVec::<FRAME_ALIGN>::new();
        buffer.extend_from_slice(&[0u8; 64]);
        assert!(AlignedFrame::new(&buffer[..]).is_ok());
        assert!(AlignedFrame::new(&buffer[16..]).is_ok());
        assert_eq!(
            AlignedFrame::new(&buffer[1..]).unwrap_err(),
            FrameError::Misaligned
        );
    }
}
