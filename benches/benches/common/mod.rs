//! Fixtures shared by the criterion benches: messages shaped like real traffic (a `data` field of
//! the size under test, a `target`, an `anchor`), and wallets from fixed seeds so every run signs
//! the same bytes.
#![allow(dead_code, reason = "each bench target uses a different subset")]

use ferrobeam::message::{Id, Message, Wallet, b64};

/// 1 KiB: the typical message the node is sized for (REQUEST_QUEUE_MAX's doc).
pub const KIB: usize = 1024;

/// A deterministic Ed25519 wallet (the same JWK form the node reads).
pub fn wallet(seed: u8) -> Wallet {
    let d = [seed; 32];
    Wallet::from_jwk(&serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "d": b64(&d) }))
        .expect("a 32-byte Ed25519 seed is a valid JWK")
}

/// `size` bytes of printable ASCII, so the JSON form carries it as a plain string.
pub fn text_data(size: usize, salt: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            // xorshift64: cheap, deterministic filler that does not compress to nothing.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize]
        })
        .collect()
}

/// An unsigned message to `target` with a `data` field of `size` bytes; `n` makes it unique.
pub fn data_message(target: &Id, size: usize, n: u64) -> Message {
    Message::new()
        .with("type", "Message")
        .with("target", target.to_string())
        .with("anchor", format!("{n:032}"))
        .with("action", "Eval")
        .with("data", text_data(size, n))
}

/// `count` messages of `size` bytes to `target`, signed round-robin by four wallets, numbered from
/// `first`.
pub fn signed_messages(target: &Id, size: usize, first: u64, count: usize) -> Vec<Message> {
    let wallets: Vec<Wallet> = (1..=4).map(wallet).collect();
    (0..count as u64)
        .map(|i| {
            let n = first + i;
            let signer = &wallets[(n % 4) as usize];
            signer.sign(data_message(target, size, n), &mut rand::rngs::OsRng)
        })
        .collect()
}

/// A stand-in process id (the benches that need a real process spawn one in a `Scheduler`).
pub fn process_id() -> Id {
    Message::new()
        .with("type", "Process")
        .with("module", Id([7; 32]).to_string())
        .id()
}
