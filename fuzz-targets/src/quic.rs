//! QUIC stream framing in the ingress: `FrameReader` fed the input cut at fuzzer-chosen points,
//! the message view it hands over, and the reply (ack, refusal, bulk ack) decoders.
//!
//! Input: byte 0 holds the number of cuts (mod 8), then one `u16 BE` position per cut, then the
//! stream bytes.

use ferrobeam::ingress::frame::{self, Event, FRAME_ALIGN, FrameError, FrameReader, Header, Kind};
use ferrobeam::ingress::{Refusal, Reply, decode_ack, encode_ack};
use ferrobeam::message::wire;

use crate::message::check_message;

/// The node's reader (message and bulk frames) and the validated message view.
pub fn quic_frames(data: &[u8]) {
    let (cuts, stream) = split_input(data);
    let frames = read_every_way(FrameReader::node, &cuts, stream);
    for seen in &frames {
        if let Seen::Frame { kind, payload, .. } = seen {
            assert_eq!(*kind, Kind::Message);
            message_payload(payload);
        }
    }
}

/// The client's reader (acks, refusals, bulk acks), the reply decoders and their round trip,
/// and the node's refusal encoder on the input as text.
pub fn quic_replies(data: &[u8]) {
    let (cuts, stream) = split_input(data);
    let frames = read_every_way(FrameReader::client, &cuts, stream);
    for seen in &frames {
        if let Seen::Frame { kind, payload, .. } = seen {
            assert!(matches!(kind, Kind::Ack | Kind::Refused | Kind::BulkAck));
            reply_round_trip(*kind, payload);
        }
    }
    // Whatever a refusal says, the node must send a frame the client can decode.
    let text = String::from_utf8_lossy(stream);
    let (code, message) = text.split_once('\n').unwrap_or(("FrameInvalid", &text));
    let refusal = Refusal {
        code: code.chars().take(64).collect(),
        message: message.to_owned(),
    };
    let mut out = Vec::new();
    Reply::Refused(refusal.clone()).encode_into(&mut out);
    let decoded = decode_one_reply(&out).expect("an encoded refusal decodes");
    let Reply::Refused(decoded) = decoded else {
        panic!("a refusal decoded as {decoded:?}");
    };
    assert_eq!(decoded.code, refusal.code);
    assert!(
        refusal.message.starts_with(&decoded.message),
        "the text may only be cut"
    );
}

fn split_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), &[]);
    };
    let count = usize::from(count % 8);
    let Some((positions, stream)) = rest.split_at_checked(2 * count) else {
        return (Vec::new(), rest);
    };
    let mut cuts: Vec<usize> = positions
        .chunks_exact(2)
        .map(|p| usize::from(u16::from_be_bytes([p[0], p[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    (cuts, stream)
}

/// What a reader reported, with the stream offset just past it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Frame {
        kind: Kind,
        payload: Vec<u8>,
        end: usize,
    },
    /// A whole bulk frame (its events summed: how they are split depends on the cuts).
    Bulk { bytes: usize, end: usize },
}

struct Run {
    seen: Vec<Seen>,
    error: Option<FrameError>,
    at_boundary: bool,
}

/// Reads `stream` whole, at the fuzzer's cuts and (when short) byte by byte: the frames and
/// the error must not depend on the cuts. Then checks the frames against the stream bytes.
fn read_every_way(reader: fn() -> FrameReader, cuts: &[usize], stream: &[u8]) -> Vec<Seen> {
    let whole = run(reader(), &[], stream);
    let cut = run(reader(), cuts, stream);
    assert_eq!(cut.seen, whole.seen, "cuts at {cuts:?} changed the frames");
    assert_eq!(cut.error, whole.error, "cuts at {cuts:?} changed the error");
    assert_eq!(cut.at_boundary, whole.at_boundary);
    if stream.len() <= 256 {
        let every: Vec<usize> = (1..stream.len()).collect();
        let bytewise = run(reader(), &every, stream);
        assert_eq!(bytewise.seen, whole.seen, "byte by byte changed the frames");
        assert_eq!(bytewise.error, whole.error);
    }
    check_against_stream(&whole, stream);
    whole.seen
}

fn run(mut reader: FrameReader, cuts: &[usize], stream: &[u8]) -> Run {
    let mut seen = Vec::new();
    let mut offset = 0;
    let mut bulk_bytes = 0;
    let bounds = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain(std::iter::once(stream.len()));
    let mut start = 0;
    for end in bounds.skip(1) {
        let mut input = &stream[start..end];
        start = end;
        // Each call consumes input or reports an event; an event without input happens at most
        // once per frame boundary, so this bounds a livelock.
        for _ in 0..=2 * input.len() + 4 {
            let (used, event) = match reader.decode(input) {
                Ok(step) => step,
                Err(error) => {
                    return Run {
                        seen,
                        error: Some(error),
                        at_boundary: false,
                    };
                }
            };
            assert!(used <= input.len());
            offset += used;
            input = &input[used..];
            match event {
                Some(Event::Frame { kind, payload }) => {
                    let bytes = payload.bytes();
                    assert!((bytes.as_ptr() as usize).is_multiple_of(FRAME_ALIGN));
                    assert!(bytes.len() <= kind.payload_bytes_max());
                    seen.push(Seen::Frame {
                        kind,
                        payload: bytes.to_vec(),
                        end: offset,
                    });
                }
                Some(Event::Bulk { bytes, end }) => {
                    bulk_bytes += bytes;
                    if end {
                        seen.push(Seen::Bulk {
                            bytes: bulk_bytes,
                            end: offset,
                        });
                        bulk_bytes = 0;
                    }
                }
                None => {
                    assert!(input.is_empty(), "no event, but input left");
                    break;
                }
            }
        }
        assert!(input.is_empty(), "the reader stopped consuming input");
    }
    Run {
        seen,
        error: None,
        at_boundary: reader.at_boundary(),
    }
}

/// Framing is canonical: each frame re-encodes to exactly the bytes it was read from, and frames
/// follow each other without gaps.
fn check_against_stream(run: &Run, stream: &[u8]) {
    let mut start = 0;
    for seen in &run.seen {
        match seen {
            Seen::Frame { kind, payload, end } => {
                assert_eq!(
                    &stream[start..*end],
                    frame::encode(*kind, payload).as_slice()
                );
                start = *end;
            }
            Seen::Bulk { bytes, end } => {
                let header = Header {
                    kind: Kind::Bulk,
                    len: *bytes,
                };
                assert_eq!(*end - start, header.frame_len());
                assert_eq!(stream[start..start + 16], header.encode());
                assert!(stream[start + 16 + bytes..*end].iter().all(|b| *b == 0));
                start = *end;
            }
        }
    }
    if run.error.is_none() {
        assert_eq!(
            run.at_boundary,
            start == stream.len(),
            "at_boundary after {start}"
        );
    }
}

/// A message frame's payload, validated in place as the ingress does, must agree with the
/// copying decoder; whatever converts is a message like any other.
fn message_payload(payload: &[u8]) {
    let mut aligned = rkyv::util::AlignedVec::<FRAME_ALIGN>::with_capacity(payload.len().max(1));
    aligned.extend_from_slice(payload);
    let view = frame::AlignedFrame::new(&aligned).expect("an aligned buffer");
    let in_place = view.access().and_then(wire::from_archived);
    assert_eq!(in_place, wire::decode(payload));
    if let Ok(message) = in_place {
        check_message(&message);
    }
}

/// A reply that decodes re-encodes to a frame that decodes to the same reply.
fn reply_round_trip(kind: Kind, payload: &[u8]) {
    if kind == Kind::Ack {
        assert_eq!(
            decode_ack(payload).is_ok(),
            payload.len() == frame::ACK_BYTES
        );
        if let Ok(ack) = decode_ack(payload) {
            assert_eq!(decode_ack(&encode_ack(&ack)), Ok(ack));
        }
    }
    let Ok(reply) = Reply::decode(kind, payload) else {
        return;
    };
    let mut out = Vec::new();
    reply.encode_into(&mut out);
    let again = decode_one_reply(&out).expect("a re-encoded reply decodes");
    match (&reply, &again) {
        // The encoder may cut a long refusal's text to fit the frame.
        (Reply::Refused(a), Reply::Refused(b)) => {
            assert_eq!(a.code, b.code);
            assert!(a.message.starts_with(&b.message));
        }
        _ => assert_eq!(again, reply),
    }
}

/// Reads exactly one reply frame from `bytes` with a client reader.
fn decode_one_reply(bytes: &[u8]) -> Option<Reply> {
    let mut reader = FrameReader::client();
    let (used, event) = reader
        .decode(bytes)
        .expect("an encoded reply is a valid frame");
    assert_eq!(used, bytes.len(), "one frame");
    match event {
        Some(Event::Frame { kind, payload }) => Reply::decode(kind, payload.bytes()).ok(),
        other => panic!("an encoded reply read as {other:?}"),
    }
}
