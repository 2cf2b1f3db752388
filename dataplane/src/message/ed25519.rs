//! The Ed25519 acceptance rule, the same for a commitment checked alone and in a batch.
//!
//! The rule is ZIP-215 (Zcash's "explicitly defining and modifying Ed25519 validation rules"),
//! implemented by `ed25519-zebra`, plus one refusal of ferrobeam's own:
//!
//! - `A` (the public key) and `R` are any 32 bytes that decode to a curve point, non-canonical
//!   encodings included;
//! - `S` must be canonical (`S < ℓ`);
//! - the check is the cofactored equation `[8][S]B = [8]R + [8][k]A`, with
//!   `k = SHA-512(R ‖ A ‖ payload)` over the bytes as sent;
//! - a small-order `A` is refused ([`check_key`]) before any signature is looked at.
//!
//! Multiplying by the cofactor makes acceptance blind to torsion, so a random linear combination
//! of many equations (the batch check) holds exactly when every equation does: a batch with only
//! valid signatures always passes, and one with an invalid signature fails except with
//! probability 2⁻¹²⁸. The cofactorless `verify_strict` of ed25519-dalek has no such batch
//! equivalent (a crafted `R` with a torsion component passes a batch with probability 1/8 and
//! fails alone), which is why the protocol moved to this rule.
//!
//! What ZIP-215 accepts that `verify_strict` refused, all of it only makeable by the key's holder:
//! an `R` with a torsion component or a non-canonical encoding, and keys with a torsion component
//! (another address for the same secret). No one else can change a valid signature into another
//! valid one: `k` hashes `R` and `A` as sent and `S` must be canonical, so a message's id (the
//! hash of its signature) cannot be altered in flight.
//!
//! Small-order keys: under ZIP-215 alone, `A` of order 1, 2, 4 or 8 makes `[8][k]A` vanish, so
//! `R = [S]B` "signs" every payload for anyone. ZIP-215 accepts them (Zcash needed to keep old
//! signatures valid); ferrobeam refuses them, as it always did. The refusal depends on `A`'s bytes
//! only, so it is the same for a commitment alone and in any batch.
//!
//! Batch coefficients are derived from a SHA-512 transcript of every entry in the batch, as
//! ed25519-dalek's own batch verifier does: no OS randomness (this module is sans-IO), and since
//! each coefficient depends on every key, signature and payload, no sender can choose signatures
//! that cancel out.

use std::cell::RefCell;
use std::collections::HashSet;

use ed25519_zebra::batch;
use rand::SeedableRng as _;
use sha2::{Digest as _, Sha512};

use super::MessageError;

/// Domain separator of the transcript that seeds a batch's coefficients.
const BATCH_TRANSCRIPT_DOMAIN: &[u8] = b"ferrobeam-ed25519-batch-v1";

/// Most keys one thread remembers as checked (32 bytes each; the set is emptied when full).
pub const CHECKED_KEYS_MAX: usize = 4096;

thread_local! {
    /// Keys that passed [`check_key`] on this thread. A sender signs many messages with one key,
    /// and decoding a key (a field square root) is about a tenth of an ingress thread's time.
    /// Only accepted keys go in, so what the set holds never changes an answer; a flood of new
    /// keys only empties it.
    static CHECKED_KEYS: RefCell<HashSet<[u8; 32]>> = RefCell::new(HashSet::new());
}

/// Decodes an Ed25519 public key and refuses small-order ones.
///
/// # Errors
/// [`MessageError::CommitmentInvalid`]: not 32 bytes, not a curve point, or of small order.
pub fn check_key(bytes: &[u8]) -> Result<[u8; 32], MessageError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| MessageError::CommitmentInvalid("ed25519 key length".into()))?;
    if CHECKED_KEYS.with(|keys| keys.borrow().contains(&bytes)) {
        return Ok(bytes);
    }
    decode_key(&bytes)?;
    CHECKED_KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if keys.len() >= CHECKED_KEYS_MAX {
            keys.clear();
        }
        keys.insert(bytes);
    });
    Ok(bytes)
}

/// The decoding and small-order check of [`check_key`], without its memory.
fn decode_key(bytes: &[u8; 32]) -> Result<(), MessageError> {
    // ed25519-dalek decodes with the same curve25519-dalek decompression ed25519-zebra uses.
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|_| MessageError::CommitmentInvalid("ed25519 key is not a curve point".into()))?;
    if key.is_weak() {
        return Err(MessageError::CommitmentInvalid(
            "ed25519 key has small order: anyone can sign for it".into(),
        ));
    }
    Ok(())
}

/// Verifies one signature under the rule above.
///
/// # Errors
/// [`MessageError::CommitmentInvalid`] for a bad key (see [`check_key`]);
/// [`MessageError::SignatureInvalid`] for a malformed or failing signature.
pub fn verify(key: &[u8], signature: &[u8], payload: &[u8]) -> Result<(), MessageError> {
    Entry::new(key, signature, payload)?.verify_alone()
}

/// One checked key with its signature and payload, ready for a batch.
#[derive(Clone)]
pub struct Entry {
    item: batch::Item,
    key: [u8; 32],
    signature: [u8; 64],
    payload_digest: [u8; 64],
}

impl Entry {
    /// Checks the key ([`check_key`]) and the signature's length.
    ///
    /// # Errors
    /// As [`verify`], for what can be told without the equation.
    pub fn new(key: &[u8], signature: &[u8], payload: &[u8]) -> Result<Self, MessageError> {
        let key = check_key(key)?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| MessageError::SignatureInvalid)?;
        let parsed = ed25519_zebra::Signature::from_bytes(&signature);
        let item = batch::Item::from((key.into(), parsed, payload));
        Ok(Self {
            item,
            key,
            signature,
            payload_digest: Sha512::digest(payload).into(),
        })
    }

    /// The cofactored single check (ed25519-zebra's, the batch's leaf).
    fn verify_alone(&self) -> Result<(), MessageError> {
        self.item
            .clone()
            .verify_single()
            .map_err(|_| MessageError::SignatureInvalid)
    }
}

/// Decides each entry, in order: `true` where its signature holds.
///
/// All entries are checked in one batch. When that fails, each is checked alone, so a forged
/// signature never gets a valid one refused. Bisecting instead was measured no faster at 64
/// entries with one forgery (`verify/ed25519/batch-64-one-forged`, docs/BENCHMARKS.md: about 1.5x
/// the old one-by-one strict loop either way, since every sub-batch decodes its points again), and
/// with dense failures it costs several batches per entry. Checking alone after a failed batch
/// bounds the cost for any failure pattern at one batch plus one single check per entry; ingress
/// batches hold one stream's messages, so that cost falls on the sender of the forgery.
pub fn verify_entries(entries: &[Entry]) -> Vec<bool> {
    if verify_together(entries) {
        return vec![true; entries.len()];
    }
    entries
        .iter()
        .map(|entry| entry.verify_alone().is_ok())
        .collect()
}

/// One batch check over `entries`: true when every signature holds (up to 2⁻¹²⁸).
fn verify_together(entries: &[Entry]) -> bool {
    let mut transcript = Sha512::new();
    transcript.update(BATCH_TRANSCRIPT_DOMAIN);
    transcript.update((entries.len() as u64).to_le_bytes());
    let mut verifier = batch::Verifier::new();
    for entry in entries {
        transcript.update(entry.key);
        transcript.update(entry.signature);
        transcript.update(entry.payload_digest);
        verifier.queue(entry.item.clone());
    }
    let digest = transcript.finalize();
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&digest[..32]);
    // StdRng is a CSPRNG (ChaCha12): coefficients unpredictable without the whole batch.
    verifier.verify(rand::rngs::StdRng::from_seed(seed)).is_ok()
}

/// Signatures made by hand, for the tests of this rule and of `verify_batch`.
#[cfg(test)]
pub(super) mod craft {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest as _, Sha512};

    /// ℓ, the prime order of the basepoint, little-endian.
    pub const ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    /// The identity point encoded with `y = p + 1`: a non-canonical encoding that decodes.
    pub const IDENTITY_NON_CANONICAL: [u8; 32] = [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ];

    /// A point of order exactly 8.
    pub fn torsion8() -> EdwardsPoint {
        let point = EIGHT_TORSION[1];
        assert_ne!(
            point * Scalar::from(4u8),
            EdwardsPoint::default(),
            "order 8, not 4"
        );
        assert_eq!(
            point.mul_by_cofactor(),
            EdwardsPoint::default(),
            "order divides 8"
        );
        point
    }

    /// A secret scalar and its key, from a seed.
    pub fn secret(seed: u8) -> (Scalar, EdwardsPoint) {
        let secret = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).to_scalar();
        (secret, EdwardsPoint::mul_base(&secret))
    }

    /// A nonce scalar that depends on `payload` (any value works; this one is reproducible).
    pub fn nonce(payload: &[u8]) -> Scalar {
        Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(b"nonce")
                .chain_update(payload)
                .finalize()
                .into(),
        )
    }

    /// Signs `payload` with secret `a` for the key encoded as `key`, with `r_bytes` (an encoding
    /// of the point `R`) whose discrete log the caller knows as `r` up to torsion:
    /// `S = r + SHA-512(R ‖ A ‖ payload)·a`.
    pub fn sign(
        a: &Scalar,
        key: &[u8; 32],
        r_bytes: &[u8; 32],
        r: &Scalar,
        payload: &[u8],
    ) -> [u8; 64] {
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(key)
                .chain_update(payload)
                .finalize()
                .into(),
        );
        let s = r + k * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(r_bytes);
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }

    /// A signature whose `R` is `[r]B + T8`: it satisfies the cofactored equation only.
    pub fn with_torsion_in_r(seed: u8, payload: &[u8]) -> ([u8; 32], [u8; 64]) {
        let (a, key) = secret(seed);
        let r = nonce(payload);
        let big_r = ED25519_BASEPOINT_POINT * r + torsion8();
        let key = key.compress().to_bytes();
        (
            key,
            sign(&a, &key, &big_r.compress().to_bytes(), &r, payload),
        )
    }

    /// `signature` with `R` moved by T8 and `S` kept: the equation breaks beyond torsion.
    pub fn r_shifted(signature: &[u8; 64]) -> [u8; 64] {
        let r = CompressedEdwardsY(signature[..32].try_into().unwrap())
            .decompress()
            .unwrap();
        let mut shifted = *signature;
        shifted[..32].copy_from_slice(&(r + torsion8()).compress().to_bytes());
        shifted
    }

    /// `signature` with `S + ℓ` in place of `S`: the same value mod ℓ, not canonical.
    pub fn s_plus_order(signature: &[u8; 64]) -> [u8; 64] {
        let mut out = *signature;
        let mut carry = 0u16;
        for (byte, order) in out[32..].iter_mut().zip(ORDER) {
            let sum = u16::from(*byte) + u16::from(order) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + ℓ < 2^256 for a canonical S");
        out
    }

    /// A "signature" any one can make on any payload for a small-order key: `R = [S]B`.
    pub fn forged_for_small_order_key() -> [u8; 64] {
        let s = Scalar::from(5u8);
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&EdwardsPoint::mul_base(&s).compress().to_bytes());
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }
}

#[cfg(test)]
mod tests {
    use super::craft::*;
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::Signer as _;

    const PAYLOAD: &[u8] = b"ferrobeam-commit-v1 and 32 bytes of unsigned id....";

    fn valid(seed: u8, payload: &[u8]) -> ([u8; 32], [u8; 64]) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        (key.verifying_key().to_bytes(), key.sign(payload).to_bytes())
    }

    fn strict(key: &[u8; 32], signature: &[u8; 64], payload: &[u8]) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(key)
            .and_then(|k| {
                k.verify_strict(payload, &ed25519_dalek::Signature::from_bytes(signature))
            })
            .is_ok()
    }

    /// `verify` alone, and the batch [valid, this, valid] in every position of this one.
    fn decide(
        key: &[u8; 32],
        signature: &[u8; 64],
        payload: &[u8],
    ) -> (Result<(), MessageError>, Vec<bool>) {
        let alone = verify(key, signature, payload);
        let (k1, s1) = valid(11, b"one");
        let (k2, s2) = valid(12, b"two");
        let entries = vec![
            Entry::new(&k1, &s1, b"one").unwrap(),
            Entry::new(key, signature, payload).unwrap(),
            Entry::new(&k2, &s2, b"two").unwrap(),
        ];
        (alone, verify_entries(&entries))
    }

    #[test]
    fn constants_are_what_they_claim() {
        assert_eq!(Scalar::from_bytes_mod_order(ORDER), Scalar::ZERO);
        assert!(bool::from(Scalar::from_canonical_bytes(ORDER).is_none()));
        let identity = CompressedEdwardsY(IDENTITY_NON_CANONICAL)
            .decompress()
            .unwrap();
        assert_eq!(identity, EdwardsPoint::default());
        assert_ne!(identity.compress().to_bytes(), IDENTITY_NON_CANONICAL);
        torsion8();
    }

    #[test]
    fn valid_signatures_pass_alone_and_in_a_batch() {
        let (key, signature) = valid(1, PAYLOAD);
        assert_eq!(
            decide(&key, &signature, PAYLOAD),
            (Ok(()), vec![true, true, true])
        );
    }

    #[test]
    fn torsion_in_r_made_by_the_signer_passes_alone_and_in_a_batch() {
        let (key, signature) = with_torsion_in_r(2, PAYLOAD);
        // The cofactorless rule refused it; ZIP-215 accepts it everywhere.
        assert!(!strict(&key, &signature, PAYLOAD));
        assert_eq!(
            decide(&key, &signature, PAYLOAD),
            (Ok(()), vec![true, true, true])
        );
    }

    #[test]
    fn r_moved_by_torsion_without_resigning_fails_alone_and_in_a_batch() {
        let (key, signature) = valid(3, PAYLOAD);
        let shifted = r_shifted(&signature);
        assert_eq!(
            decide(&key, &shifted, PAYLOAD),
            (Err(MessageError::SignatureInvalid), vec![true, false, true])
        );
    }

    #[test]
    fn a_non_canonical_r_encoding_passes_alone_and_in_a_batch() {
        // R = identity (r = 0) written as y = p + 1: S = k·a.
        let (a, key) = secret(4);
        let key = key.compress().to_bytes();
        let signature = sign(&a, &key, &IDENTITY_NON_CANONICAL, &Scalar::ZERO, PAYLOAD);
        assert!(!strict(&key, &signature, PAYLOAD));
        assert_eq!(
            decide(&key, &signature, PAYLOAD),
            (Ok(()), vec![true, true, true])
        );
    }

    #[test]
    fn a_non_canonical_s_is_refused_alone_and_in_a_batch() {
        let (key, signature) = valid(5, PAYLOAD);
        let malleated = s_plus_order(&signature);
        assert_ne!(malleated, signature);
        assert_eq!(
            decide(&key, &malleated, PAYLOAD),
            (Err(MessageError::SignatureInvalid), vec![true, false, true])
        );
    }

    #[test]
    fn a_key_with_a_torsion_component_verifies_alone_and_in_a_batch() {
        let (a, key) = secret(6);
        let key = (key + torsion8()).compress().to_bytes();
        let r = nonce(PAYLOAD);
        let big_r = (ED25519_BASEPOINT_POINT * r).compress().to_bytes();
        let signature = sign(&a, &key, &big_r, &r, PAYLOAD);
        assert_eq!(
            decide(&key, &signature, PAYLOAD),
            (Ok(()), vec![true, true, true])
        );
    }

    #[test]
    fn small_order_keys_are_refused_though_zip215_alone_accepts_their_forgeries() {
        let mut keys: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|t| t.compress().to_bytes())
            .collect();
        keys.push(IDENTITY_NON_CANONICAL);
        for key in keys {
            let forged = forged_for_small_order_key();
            // Plain ZIP-215 takes it: the reason for the refusal.
            let zebra = ed25519_zebra::VerificationKey::try_from(key).unwrap();
            assert!(
                zebra
                    .verify(&ed25519_zebra::Signature::from_bytes(&forged), PAYLOAD)
                    .is_ok()
            );
            let refused = verify(&key, &forged, PAYLOAD);
            assert!(
                matches!(&refused, Err(MessageError::CommitmentInvalid(m)) if m.contains("small order")),
                "{key:02x?}: {refused:?}"
            );
            assert!(Entry::new(&key, &forged, PAYLOAD).is_err());
        }
    }

    #[test]
    fn keys_that_do_not_decode_are_refused() {
        // y = 2 is not the y of any curve point.
        let mut key = [0u8; 32];
        key[0] = 2;
        let (_, signature) = valid(7, PAYLOAD);
        assert!(matches!(
            verify(&key, &signature, PAYLOAD),
            Err(MessageError::CommitmentInvalid(_))
        ));
    }

    #[test]
    fn remembered_keys_change_no_answer_and_stay_bounded() {
        let (key, signature) = valid(9, PAYLOAD);
        for _ in 0..3 {
            assert_eq!(verify(&key, &signature, PAYLOAD), Ok(()));
            assert_eq!(
                verify(&key, &signature, b"other"),
                Err(MessageError::SignatureInvalid)
            );
        }
        // Refused keys are refused every time: they are never remembered.
        let weak = EIGHT_TORSION[1].compress().to_bytes();
        let mut undecodable = [0u8; 32];
        undecodable[0] = 2;
        for _ in 0..3 {
            assert!(check_key(&weak).is_err());
            assert!(check_key(&undecodable).is_err());
        }
        assert!(CHECKED_KEYS.with(|keys| !keys.borrow().contains(&weak)));
        // A flood of valid keys empties the set instead of growing it.
        for seed in 0..=CHECKED_KEYS_MAX as u64 {
            let secret = Scalar::from(seed + 1);
            let key = EdwardsPoint::mul_base(&secret).compress().to_bytes();
            assert_eq!(check_key(&key), Ok(key));
            assert!(CHECKED_KEYS.with(|keys| keys.borrow().len()) <= CHECKED_KEYS_MAX);
        }
        assert_eq!(verify(&key, &signature, PAYLOAD), Ok(()));
    }

    #[test]
    fn a_failed_batch_finds_every_failure_pattern() {
        const N: usize = 5;
        let signed: Vec<_> = (0..N as u8).map(|i| (valid(20 + i, &[i]), [i])).collect();
        for mask in 0u32..(1 << N) {
            let entries: Vec<Entry> = signed
                .iter()
                .enumerate()
                .map(|(i, ((key, signature), payload))| {
                    let payload: &[u8] = if mask & (1 << i) != 0 {
                        payload
                    } else {
                        b"other"
                    };
                    Entry::new(key, signature, payload).unwrap()
                })
                .collect();
            let expected: Vec<bool> = (0..N).map(|i| mask & (1 << i) != 0).collect();
            assert_eq!(verify_entries(&entries), expected, "mask {mask:05b}");
        }
        assert!(verify_entries(&[]).is_empty());
    }
}
