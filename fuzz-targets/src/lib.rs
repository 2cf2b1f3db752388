//! The bodies of ferrobeam's fuzz targets: one function per target, each taking arbitrary bytes.
//!
//! Every target feeds its input to a decoder of untrusted bytes and then asserts what must hold
//! for whatever the decoder accepted (round trips equal, ids stable, limits respected); a panic
//! is a finding. Two callers share these bodies: the cargo-fuzz binaries under `fuzz/` (nightly,
//! libFuzzer) and `tests/corpus.rs`, which replays the committed corpus and regression inputs on
//! stable and runs a short seeded mutation pass, so CI catches regressions without nightly.
//! docs/RELIABILITY.md ("Fuzzing") has the campaign figures and findings.
//!
//! Nothing here touches the network, the clock or OS randomness: a target is a pure function of
//! its input, so any finding replays exactly.

mod attest;
mod http;
mod message;
mod quic;

pub use attest::{evidence, snp_report, tpm_input, tpm_quote};
pub use http::http_path;
pub use message::{aojson_response, message_json, message_roundtrip, wire_frame};
pub use quic::{quic_frames, quic_replies};

/// A fuzz target: its name (of `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`) and
/// its body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The name.
    pub name: &'static str,
    /// The body: takes any bytes, panics on a finding.
    pub run: fn(&[u8]),
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        /// Every target.
        pub const TARGETS: &[Target] = &[$(Target { name: stringify!($name), run: $name }),*];
    };
}

targets![
    wire_frame,
    message_json,
    message_roundtrip,
    http_path,
    aojson_response,
    evidence,
    snp_report,
    tpm_quote,
    quic_frames,
    quic_replies,
];
