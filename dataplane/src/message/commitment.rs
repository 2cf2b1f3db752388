//! Commitments (signatures) on messages: Ed25519 natively, RSA-PSS-SHA512 with Arweave JWK
//! wallets as the AO-ecosystem scheme.
//!
//! A commitment signs `COMMIT_DOMAIN ‖ unsigned id`, so signing cost does not grow with the
//! message and the signature covers exactly what the id names. A batch commitment
//! (`ed25519-batch`) signs `BATCH_COMMIT_DOMAIN ‖ leaf count ‖ root` of a Merkle tree over many
//! unsigned ids once, and each message carries its leaf's inclusion proof (the `merkle` module):
//! the node signs a group commit's assignments this way, one signature per batch, not per slot.
//!
//! Ed25519 commitments are accepted under one rule (ZIP-215, small-order keys refused: the
//! `ed25519` module, docs/protocol.md), whether checked alone ([`VerifiedMessage::verify`]) or in a
//! batch ([`verify_batch`]): a message is accepted alone if and only if it is accepted in any batch.

use ed25519_dalek::Signer as _;
use rand_core::CryptoRngCore;
use rsa::BigUint;
use rsa::pss;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Verifier as _};
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use sha2::{Digest, Sha256, Sha512};

use super::merkle::{self, BATCH_LEAVES_MAX, BATCH_PATH_MAX};
use super::{Address, Id, Message, MessageError, b64, ed25519, unb64};

/// Domain separator of every commitment's signed payload.
pub const COMMIT_DOMAIN: &[u8] = b"ferrobeam-commit-v1";
/// Domain separator of a batch commitment's signed payload (a Merkle root, never an id).
pub const BATCH_COMMIT_DOMAIN: &[u8] = b"ferrobeam-commit-batch-v1";
/// Bytes of an `ed25519-batch` signature before its path: signature, leaf index, leaf count.
const BATCH_HEADER_BYTES: usize = 64 + 4 + 4;
/// Smallest accepted RSA modulus (2048 bits); Arweave wallets are 4096.
pub const RSA_MODULUS_BYTES_MIN: usize = 256;
/// Largest accepted RSA modulus (4096 bits): bounds verification cost per message.
pub const RSA_MODULUS_BYTES_MAX: usize = 512;
/// The only RSA public exponent in use (Arweave's).
pub const RSA_EXPONENT: u32 = 65_537;

/// A signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// Ed25519 (RFC 8032) under the ZIP-215 rule, small-order keys refused (see `ed25519`).
    Ed25519,
    /// RSA-PSS with SHA-512 and a 64-byte salt; the public key is the modulus (e = 65537).
    RsaPssSha512,
    /// One Ed25519 signature (same rule) over the Merkle root of a batch of messages; the
    /// signature bytes are `signature (64) ‖ leaf index (u32 BE) ‖ leaf count (u32 BE) ‖ proof
    /// (32 bytes per hash)`.
    Ed25519Batch,
}

impl Scheme {
    /// The scheme's name in JSON and docs.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::RsaPssSha512 => "rsa-pss-sha512",
            Scheme::Ed25519Batch => "ed25519-batch",
        }
    }

    /// Parses a scheme name.
    ///
    /// # Errors
    /// [`MessageError::CommitmentInvalid`] for an unknown name.
    pub fn from_name(name: &str) -> Result<Self, MessageError> {
        match name {
            "ed25519" => Ok(Scheme::Ed25519),
            "rsa-pss-sha512" => Ok(Scheme::RsaPssSha512),
            "ed25519-batch" => Ok(Scheme::Ed25519Batch),
            other => Err(MessageError::CommitmentInvalid(format!(
                "unknown scheme {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// The scheme's byte in the wire form.
    pub fn code(self) -> u8 {
        match self {
            Scheme::Ed25519 => 1,
            Scheme::RsaPssSha512 => 2,
            Scheme::Ed25519Batch => 3,
        }
    }

    /// Inverse of [`Scheme::code`].
    ///
    /// # Errors
    /// [`MessageError::CommitmentInvalid`] for an unknown code.
    pub fn from_code(code: u8) -> Result<Self, MessageError> {
        match code {
            1 => Ok(Scheme::Ed25519),
            2 => Ok(Scheme::RsaPssSha512),
            3 => Ok(Scheme::Ed25519Batch),
            other => Err(MessageError::CommitmentInvalid(format!(
                "unknown scheme code {other}"
            ))),
        }
    }
}

/// One signature on a message, with the key that made it. Construction checks lengths only;
/// [`Commitment::verify`] checks the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    scheme: Scheme,
    public_key: Vec<u8>,
    signature: Vec<u8>,
}

impl Commitment {
    /// Checks key and signature lengths for the scheme.
    ///
    /// # Errors
    /// [`MessageError::CommitmentInvalid`] with the reason.
    pub fn new(
        scheme: Scheme,
        public_key: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Self, MessageError> {
        let bad = |what: &str| Err(MessageError::CommitmentInvalid(what.to_owned()));
        match scheme {
            Scheme::Ed25519 => {
                if public_key.len() != 32 {
                    return bad("ed25519 public key must be 32 bytes");
                }
                if signature.len() != 64 {
                    return bad("ed25519 signature must be 64 bytes");
                }
            }
            Scheme::RsaPssSha512 => {
                if !(RSA_MODULUS_BYTES_MIN..=RSA_MODULUS_BYTES_MAX).contains(&public_key.len()) {
                    return bad("rsa modulus must be 2048 to 4096 bits");
                }
                if public_key[0] == 0 {
                    return bad("rsa modulus has a leading zero byte");
                }
                if signature.len() != public_key.len() {
                    return bad("rsa signature length must equal the modulus length");
                }
            }
            Scheme::Ed25519Batch => {
                if public_key.len() != 32 {
                    return bad("ed25519 public key must be 32 bytes");
                }
                BatchProof::parse(&signature)?;
            }
        }
        Ok(Self {
            scheme,
            public_key,
            signature,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The public key (the big-endian modulus for RSA).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The committer's address: SHA-256 of the public key.
    pub fn address(&self) -> Address {
        Address(Sha256::digest(&self.public_key).into())
    }

    /// Verifies this commitment over the message whose unsigned id is `unsigned_id`.
    ///
    /// # Errors
    /// [`MessageError::SignatureInvalid`] or [`MessageError::CommitmentInvalid`].
    pub fn verify(&self, unsigned_id: &Id) -> Result<(), MessageError> {
        match self.scheme {
            Scheme::Ed25519 | Scheme::Ed25519Batch => {
                let (signature, payload) = self.ed25519_signed(unsigned_id)?;
                ed25519::verify(&self.public_key, signature, &payload)
            }
            Scheme::RsaPssSha512 => {
                let payload = signed_payload(unsigned_id);
                let key = rsa::RsaPublicKey::new(
                    BigUint::from_bytes_be(&self.public_key),
                    BigUint::from(RSA_EXPONENT),
                )
                .map_err(|e| MessageError::CommitmentInvalid(e.to_string()))?;
                let signature = pss::Signature::try_from(self.signature.as_slice())
                    .map_err(|_| MessageError::SignatureInvalid)?;
                pss::VerifyingKey::<Sha512>::new(key)
                    .verify(&payload, &signature)
                    .map_err(|_| MessageError::SignatureInvalid)
            }
        }
    }
}

impl Commitment {
    /// For the Ed25519 schemes: the 64-byte signature and the payload it must cover for the
    /// message `unsigned_id` (for a batch commitment, the root its proof leads to).
    fn ed25519_signed(&self, unsigned_id: &Id) -> Result<(&[u8], Vec<u8>), MessageError> {
        match self.scheme {
            Scheme::Ed25519Batch => {
                let proof = BatchProof::parse(&self.signature)?;
                Ok((proof.signature, proof.signed_payload(unsigned_id)?))
            }
            _ => Ok((&self.signature, signed_payload(unsigned_id))),
        }
    }
}

/// What a commitment signs.
pub fn signed_payload(unsigned_id: &Id) -> Vec<u8> {
    let mut payload = Vec::with_capacity(COMMIT_DOMAIN.len() + 32);
    payload.extend_from_slice(COMMIT_DOMAIN);
    payload.extend_from_slice(&unsigned_id.0);
    payload
}

/// What a batch commitment signs: the tree's leaf count and Merkle root, under their own
/// domain.
///
/// The count is signed because RFC 9162 proofs do not fix it: leaf 1 of 3 and leaf 1 of 4 have
/// the same path to the same root, so an unsigned count would let anyone rewrite it, and with
/// it the message's id (the hash of the signature bytes). With the count fixed, the position's
/// left/right pattern fixes the index too.
pub fn batch_signed_payload(size: u32, root: &[u8; 32]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(BATCH_COMMIT_DOMAIN.len() + 4 + 32);
    payload.extend_from_slice(BATCH_COMMIT_DOMAIN);
    payload.extend_from_slice(&size.to_be_bytes());
    payload.extend_from_slice(root);
    payload
}

/// The parts of an `ed25519-batch` signature (see [`Scheme::Ed25519Batch`]).
struct BatchProof<'a> {
    signature: &'a [u8],
    index: u32,
    size: u32,
    path: Vec<[u8; 32]>,
}

impl<'a> BatchProof<'a> {
    /// Splits the bytes and checks their shape: a leaf of a tree of at most
    /// [`BATCH_LEAVES_MAX`] leaves, with exactly the proof length its position has.
    fn parse(bytes: &'a [u8]) -> Result<Self, MessageError> {
        let bad = |what: &str| MessageError::CommitmentInvalid(what.to_owned());
        let path_bytes = bytes
            .len()
            .checked_sub(BATCH_HEADER_BYTES)
            .filter(|n| n % 32 == 0 && n / 32 <= BATCH_PATH_MAX)
            .ok_or_else(|| bad("ed25519-batch signature length"))?;
        let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let (index, size) = (word(64), word(68));
        if size == 0 || size as usize > BATCH_LEAVES_MAX || index >= size {
            return Err(bad("ed25519-batch leaf index or count out of range"));
        }
        if merkle::proof_len(index.into(), size.into()) != Some(path_bytes / 32) {
            return Err(bad("ed25519-batch proof length does not fit its leaf"));
        }
        let path = bytes[BATCH_HEADER_BYTES..]
            .chunks_exact(32)
            .map(|hash| hash.try_into().expect("32"))
            .collect();
        Ok(Self {
            signature: &bytes[..64],
            index,
            size,
            path,
        })
    }

    /// The payload the Ed25519 signature must cover for the message `unsigned_id`: the
    /// batch root its proof leads to.
    fn signed_payload(&self, unsigned_id: &Id) -> Result<Vec<u8>, MessageError> {
        // The length was checked in `parse`, so the walk always ends at a root.
        let root = merkle::root_from_proof(
            merkle::leaf_hash(unsigned_id),
            self.index.into(),
            self.size.into(),
            &self.path,
        )
        .ok_or(MessageError::SignatureInvalid)?;
        Ok(batch_signed_payload(self.size, &root))
    }
}

/// A message whose every commitment verified: the only way to obtain one is
/// [`VerifiedMessage::verify`] or [`verify_batch`], so code that takes it cannot skip
/// verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMessage {
    message: Message,
    id: Id,
    from: Address,
}

impl VerifiedMessage {
    /// Verifies every commitment; at least one is required.
    ///
    /// # Errors
    /// [`MessageError::Unsigned`] when unsigned, or the first failing check.
    pub fn verify(message: Message) -> Result<Self, MessageError> {
        let first = message
            .commitments()
            .first()
            .ok_or(MessageError::Unsigned)?;
        let from = first.address();
        let unsigned_id = message.unsigned_id();
        for commitment in message.commitments() {
            commitment.verify(&unsigned_id)?;
        }
        let id = message.id();
        Ok(Self { message, id, from })
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Consumes the proof, keeping the message.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The message id (computed once, at verification).
    pub fn id(&self) -> Id {
        self.id
    }

    /// The address of the first committer: who sent it.
    pub fn from(&self) -> Address {
        self.from
    }
}

/// Verifies many messages; results are in input order, and each is exactly what
/// [`VerifiedMessage::verify`] gives for that message alone.
///
/// Ed25519 commitments are checked together in one batch under the same rule as the single
/// check (ZIP-215, small-order keys refused; see the `ed25519` module), so batching changes the
/// cost, never the answer. Keys are checked first, per commitment; when the batch fails, each of
/// its signatures is checked alone, so one forged message never gets a valid one refused.
/// Other schemes (RSA-PSS) are verified one by one. A message's refusal reason is that of its
/// first failing commitment, in commitment order, as for the single check.
pub fn verify_batch(messages: Vec<Message>) -> Vec<Result<VerifiedMessage, MessageError>> {
    let mut entries = Vec::with_capacity(messages.len());
    let plans: Vec<Plan> = messages
        .into_iter()
        .map(|message| Plan::new(message, &mut entries))
        .collect();
    let valid = ed25519::verify_entries(&entries);
    plans.into_iter().map(|plan| plan.finish(&valid)).collect()
}

/// One message of a batch: its Ed25519 commitments queued as batch entries, the rest checked.
struct Plan {
    message: Message,
    /// Indices into the batch's entries of the Ed25519 commitments before `refusal`.
    queued: std::ops::Range<usize>,
    /// The first refusal found without the batch: no commitment, a bad key, an RSA failure.
    refusal: Option<MessageError>,
}

impl Plan {
    fn new(message: Message, entries: &mut Vec<ed25519::Entry>) -> Self {
        let first = entries.len();
        let mut refusal = message
            .commitments()
            .is_empty()
            .then_some(MessageError::Unsigned);
        let unsigned_id = message.unsigned_id();
        for commitment in message.commitments() {
            let checked = match commitment.scheme {
                Scheme::Ed25519 | Scheme::Ed25519Batch => commitment
                    .ed25519_signed(&unsigned_id)
                    .and_then(|(signature, payload)| {
                        ed25519::Entry::new(&commitment.public_key, signature, &payload)
                    })
                    .map(|entry| entries.push(entry)),
                Scheme::RsaPssSha512 => commitment.verify(&unsigned_id),
            };
            // Later commitments cannot change the answer: the earlier ones are queued.
            if let Err(e) = checked {
                refusal = Some(e);
                break;
            }
        }
        let queued = first..entries.len();
        Self {
            message,
            queued,
            refusal,
        }
    }

    fn finish(self, valid: &[bool]) -> Result<VerifiedMessage, MessageError> {
        // Queued commitments come before the refusal, so a failing one is the first failure.
        if !valid[self.queued].iter().all(|&ok| ok) {
            return Err(MessageError::SignatureInvalid);
        }
        if let Some(refusal) = self.refusal {
            return Err(refusal);
        }
        let from = self.message.commitments()[0].address();
        let id = self.message.id();
        Ok(VerifiedMessage {
            message: self.message,
            id,
            from,
        })
    }
}

/// A signing key with its scheme: the node key, or a user's wallet (a JWK file).
#[derive(Clone)]
pub enum Wallet {
    /// An Ed25519 key (boxed: the signing key carries its expanded form).
    Ed25519(Box<ed25519_dalek::SigningKey>),
    /// An RSA key (Arweave wallets are 4096-bit).
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wallet({}, {})", self.scheme().name(), self.address())
    }
}

/// Why a wallet file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// Not a JWK this node understands.
    #[error("invalid wallet JWK: {0}")]
    Invalid(String),
    /// The RSA key generator failed.
    #[error("key generation failed: {0}")]
    Generate(String),
}

impl Wallet {
    /// A new Ed25519 wallet from `rng`.
    pub fn generate_ed25519(rng: &mut impl CryptoRngCore) -> Self {
        Wallet::Ed25519(Box::new(ed25519_dalek::SigningKey::generate(rng)))
    }

    /// A new RSA wallet of `bits` (4096 for Arweave compatibility).
    ///
    /// # Errors
    /// [`WalletError::Generate`].
    pub fn generate_rsa(rng: &mut impl CryptoRngCore, bits: usize) -> Result<Self, WalletError> {
        let key = rsa::RsaPrivateKey::new_with_exp(rng, bits, &BigUint::from(RSA_EXPONENT))
            .map_err(|e| WalletError::Generate(e.to_string()))?;
        Ok(Wallet::Rsa(Box::new(key)))
    }

    /// The scheme this wallet signs with.
    pub fn scheme(&self) -> Scheme {
        match self {
            Wallet::Ed25519(_) => Scheme::Ed25519,
            Wallet::Rsa(_) => Scheme::RsaPssSha512,
        }
    }

    /// The public key as it appears in commitments.
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Wallet::Ed25519(key) => key.verifying_key().to_bytes().to_vec(),
            Wallet::Rsa(key) => key.n().to_bytes_be(),
        }
    }

    /// The wallet's address.
    pub fn address(&self) -> Address {
        Address(Sha256::digest(self.public_key()).into())
    }

    /// Signs `message`, appending a commitment. Ed25519 signatures are deterministic; RSA-PSS
    /// draws its salt from `rng`.
    pub fn sign(&self, mut message: Message, rng: &mut impl CryptoRngCore) -> Message {
        let payload = signed_payload(&message.unsigned_id());
        let signature = match self {
            Wallet::Ed25519(key) => key.sign(&payload).to_bytes().to_vec(),
            Wallet::Rsa(key) => pss::BlindedSigningKey::<Sha512>::new((**key).clone())
                .sign_with_rng(rng, &payload)
                .to_vec(),
        };
        // Lengths are right by construction of the key types; a failure is a bug here.
        let commitment = Commitment::new(self.scheme(), self.public_key(), signature)
            .expect("a wallet's own commitment is well formed");
        if let Err(e) = message.push_commitment(commitment) {
            panic!("signing a message that already has the maximum of commitments: {e}");
        }
        message
    }

    /// Signs `messages` as [`Wallet::sign`] does each, but an Ed25519 wallet makes one
    /// signature per [`BATCH_LEAVES_MAX`] messages: an `ed25519-batch` commitment over the
    /// Merkle root of their unsigned ids, with each message's proof. A single message (and any
    /// RSA wallet) gets a plain commitment. Each result verifies on its own.
    pub fn sign_batch(&self, messages: Vec<Message>, rng: &mut impl CryptoRngCore) -> Vec<Message> {
        let key = match self {
            Wallet::Ed25519(key) if messages.len() > 1 => key,
            _ => return messages.into_iter().map(|m| self.sign(m, rng)).collect(),
        };
        let public_key = key.verifying_key().to_bytes().to_vec();
        let mut signed = Vec::with_capacity(messages.len());
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let chunk: Vec<Message> = messages.by_ref().take(BATCH_LEAVES_MAX).collect();
            let tree = merkle::Tree::new(
                chunk
                    .iter()
                    .map(|m| merkle::leaf_hash(&m.unsigned_id()))
                    .collect(),
            );
            let size = u32::try_from(tree.size()).expect("at most BATCH_LEAVES_MAX leaves");
            let signature = key
                .sign(&batch_signed_payload(size, &tree.root()))
                .to_bytes();
            for (index, mut message) in chunk.into_iter().enumerate() {
                let path = tree.proof(index);
                let mut bytes = Vec::with_capacity(BATCH_HEADER_BYTES + 32 * path.len());
                bytes.extend_from_slice(&signature);
                bytes.extend_from_slice(&(index as u32).to_be_bytes());
                bytes.extend_from_slice(&size.to_be_bytes());
                path.iter().for_each(|hash| bytes.extend_from_slice(hash));
                let commitment = Commitment::new(Scheme::Ed25519Batch, public_key.clone(), bytes)
                    .expect("a wallet's own batch commitment is well formed");
                if let Err(e) = message.push_commitment(commitment) {
                    panic!("signing a message that already has the maximum of commitments: {e}");
                }
                signed.push(message);
            }
        }
        signed
    }

    /// Signs raw bytes (e.g. attestation evidence) with the same domain-free primitive.
    pub fn sign_bytes(&self, bytes: &[u8], rng: &mut impl CryptoRngCore) -> Vec<u8> {
        match self {
            Wallet::Ed25519(key) => key.sign(bytes).to_bytes().to_vec(),
            Wallet::Rsa(key) => pss::BlindedSigningKey::<Sha512>::new((**key).clone())
                .sign_with_rng(rng, bytes)
                .to_vec(),
        }
    }

    /// The wallet as a JWK (RFC 7517): `OKP`/`Ed25519` (RFC 8037) or Arweave's `RSA` form.
    pub fn to_jwk(&self) -> serde_json::Value {
        match self {
            Wallet::Ed25519(key) => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(key.verifying_key().as_bytes()),
                "d": b64(key.as_bytes()),
            }),
            Wallet::Rsa(key) => {
                let primes = key.primes();
                let mut jwk = serde_json::json!({
                    "kty": "RSA",
                    "n": b64(&key.n().to_bytes_be()),
                    "e": b64(&key.e().to_bytes_be()),
                    "d": b64(&key.d().to_bytes_be()),
                });
                if let [p, q] = primes {
                    jwk["p"] = b64(&p.to_bytes_be()).into();
                    jwk["q"] = b64(&q.to_bytes_be()).into();
                }
                jwk
            }
        }
    }

    /// Reads a JWK (`OKP`/`Ed25519`, or an Arweave `RSA` wallet).
    ///
    /// # Errors
    /// [`WalletError::Invalid`] with the reason.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, WalletError> {
        let field = |name: &str| -> Result<Vec<u8>, WalletError> {
            let text = jwk[name]
                .as_str()
                .ok_or_else(|| WalletError::Invalid(format!("missing {name:?}")))?;
            unb64(text, name).map_err(|e| WalletError::Invalid(e.to_string()))
        };
        match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("OKP"), Some("Ed25519")) => {
                let secret: [u8; 32] = field("d")?
                    .try_into()
                    .map_err(|_| WalletError::Invalid("d must be 32 bytes".into()))?;
                let key = ed25519_dalek::SigningKey::from_bytes(&secret);
                if let Ok(x) = field("x")
                    && x != key.verifying_key().as_bytes()
                {
                    return Err(WalletError::Invalid("x does not match d".into()));
                }
                Ok(Wallet::Ed25519(Box::new(key)))
            }
            (Some("RSA"), _) => {
                let n = BigUint::from_bytes_be(&field("n")?);
                let e = BigUint::from_bytes_be(&field("e")?);
                let d = BigUint::from_bytes_be(&field("d")?);
                let primes = match (field("p"), field("q")) {
                    (Ok(p), Ok(q)) => vec![BigUint::from_bytes_be(&p), BigUint::from_bytes_be(&q)],
                    _ => Vec::new(),
                };
                if e != BigUint::from(RSA_EXPONENT) {
                    return Err(WalletError::Invalid("rsa exponent must be 65537".into()));
                }
                let bytes = n.to_bytes_be().len();
                if !(RSA_MODULUS_BYTES_MIN..=RSA_MODULUS_BYTES_MAX).contains(&bytes) {
                    return Err(WalletError::Invalid(
                        "rsa modulus must be 2048 to 4096 bits".into(),
                    ));
                }
                let mut key = rsa::RsaPrivateKey::from_components(n, e, d, primes)
                    .map_err(|e| WalletError::Invalid(e.to_string()))?;
                key.precompute()
                    .map_err(|e| WalletError::Invalid(e.to_string()))?;
                key.validate()
                    .map_err(|e| WalletError::Invalid(e.to_string()))?;
                Ok(Wallet::Rsa(Box::new(key)))
            }
            _ => Err(WalletError::Invalid(
                "kty must be OKP (crv Ed25519) or RSA".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    /// One RSA-2048 wallet for every test here: key generation is seconds in a debug build.
    fn rsa_wallet() -> &'static Wallet {
        static WALLET: std::sync::OnceLock<Wallet> = std::sync::OnceLock::new();
        WALLET.get_or_init(|| Wallet::generate_rsa(&mut rng(), 2048).unwrap())
    }

    #[test]
    fn ed25519_sign_verify_and_tamper() {
        let wallet = Wallet::generate_ed25519(&mut rng());
        let signed = wallet.sign(Message::new().with("data", "hi"), &mut rng());
        let verified = VerifiedMessage::verify(signed.clone()).unwrap();
        assert_eq!(verified.from(), wallet.address());
        assert_eq!(verified.id(), signed.id());
        assert_ne!(signed.id(), signed.unsigned_id());
        // Same fields, other content under the same signature: rejected.
        let mut forged = signed.unsigned().with("data", "bye");
        forged
            .push_commitment(signed.commitments()[0].clone())
            .unwrap();
        assert_eq!(
            VerifiedMessage::verify(forged),
            Err(MessageError::SignatureInvalid)
        );
        assert_eq!(
            VerifiedMessage::verify(Message::new().with("a", 1)),
            Err(MessageError::Unsigned)
        );
    }

    #[test]
    fn rsa_sign_verify_and_jwk_round_trip() {
        let wallet = rsa_wallet();
        let again = Wallet::from_jwk(&wallet.to_jwk()).unwrap();
        assert_eq!(again.address(), wallet.address());
        let signed = again.sign(Message::new().with("data", "hi"), &mut rng());
        let verified = VerifiedMessage::verify(signed.clone()).unwrap();
        assert_eq!(verified.from(), wallet.address());
        let mut sig = signed.commitments()[0].signature().to_vec();
        sig[10] ^= 1;
        let mut tampered = signed.unsigned();
        tampered
            .push_commitment(
                Commitment::new(Scheme::RsaPssSha512, wallet.public_key(), sig).unwrap(),
            )
            .unwrap();
        assert_eq!(
            VerifiedMessage::verify(tampered),
            Err(MessageError::SignatureInvalid)
        );
    }

    #[test]
    fn batch_finds_the_bad_one() {
        let wallet = Wallet::generate_ed25519(&mut rng());
        let mut messages: Vec<Message> = (0..8)
            .map(|i| wallet.sign(Message::new().with("n", i), &mut rng()))
            .collect();
        let good = messages[3].commitments()[0].clone();
        let mut bad = Message::new().with("n", 99);
        bad.push_commitment(good).unwrap();
        messages[5] = bad;
        let results = verify_batch(messages);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 5, "message {i}");
        }
    }

    /// A message of one of the kinds `verify_batch` must decide exactly as the single check
    /// does: valid, forged, malformed, torsion-edged, small-order keys, unsigned, RSA, and
    /// several commitments whose first failure sets the reason.
    fn mixed_message(kind: u8, n: u64, wallets: &[Wallet], rsa: &Wallet) -> Message {
        use super::super::ed25519::craft;
        let rng = || rand::rngs::StdRng::seed_from_u64(n);
        let unsigned = Message::new().with("n", n as i64);
        let payload = signed_payload(&unsigned.unsigned_id());
        let wallet = &wallets[n as usize % wallets.len()];
        let good = || wallet.sign(unsigned.clone(), &mut rng());
        let ed25519 = |key: &[u8], signature: &[u8]| {
            Commitment::new(Scheme::Ed25519, key.to_vec(), signature.to_vec()).unwrap()
        };
        let forged = || {
            let other = wallet.sign(Message::new().with("other", n as i64), &mut rng());
            other.commitments()[0].clone()
        };
        let tweak = |f: &dyn Fn(&[u8; 64]) -> [u8; 64]| {
            let c = good().commitments()[0].clone();
            ed25519(c.public_key(), &f(c.signature().try_into().unwrap()))
        };
        let weak = || {
            let key = curve25519_dalek::constants::EIGHT_TORSION[(n % 8) as usize]
                .compress()
                .to_bytes();
            ed25519(&key, &craft::forged_for_small_order_key())
        };
        // Leaf 1 of a 3-leaf batch commitment, its signature bytes edited by `edit`.
        let batch = |edit: &dyn Fn(&mut [u8])| {
            let other = |k: i64| Message::new().with("other", n as i64).with("k", k);
            let signed = wallet.sign_batch(vec![other(1), unsigned.clone(), other(2)], &mut rng());
            let c = signed[1].commitments()[0].clone();
            let mut bytes = c.signature().to_vec();
            edit(&mut bytes);
            Commitment::new(Scheme::Ed25519Batch, c.public_key().to_vec(), bytes).unwrap()
        };
        let rsa_garbage = || {
            let mut modulus = vec![0u8; 256];
            rand::RngCore::fill_bytes(&mut rng(), &mut modulus);
            modulus[0] |= 0x80;
            Commitment::new(Scheme::RsaPssSha512, modulus, vec![7u8; 256]).unwrap()
        };
        let commitments: Vec<Commitment> = match kind {
            0 => return good(),
            1 => vec![forged()],
            2 => vec![tweak(&|s| {
                let mut s = *s;
                s[40] ^= 1;
                s
            })],
            3 => vec![tweak(&|s| {
                let mut s = *s;
                s[3] ^= 0x10;
                s
            })],
            4 => vec![tweak(&craft::s_plus_order)],
            5 => vec![tweak(&craft::r_shifted)],
            6 => {
                let (key, signature) = craft::with_torsion_in_r(n as u8, &payload);
                vec![ed25519(&key, &signature)]
            }
            7 => vec![weak()],
            8 => return unsigned,
            9 => vec![good().commitments()[0].clone(), forged()],
            10 => vec![forged(), good().commitments()[0].clone()],
            11 => vec![weak(), good().commitments()[0].clone()],
            12 => vec![good().commitments()[0].clone(), weak()],
            13 => vec![forged(), weak()],
            14 => return rsa.sign(unsigned, &mut rng()),
            15 => vec![rsa_garbage()],
            16 => vec![
                rsa.sign(unsigned.clone(), &mut rng()).commitments()[0].clone(),
                forged(),
            ],
            17 => vec![forged(), rsa_garbage()],
            18 => vec![batch(&|_| {})],
            19 => vec![batch(&|bytes| bytes[BATCH_HEADER_BYTES + 5] ^= 1)],
            // Leaf 1 of 3 and of 4 share their path to the same root: the count is signed.
            20 => vec![batch(&|bytes| bytes[71] = 4)],
            21 => vec![batch(&|bytes| bytes[67] = 0)],
            _ => unreachable!("kind {kind}"),
        };
        let mut message = unsigned;
        for commitment in commitments {
            message.push_commitment(commitment).unwrap();
        }
        message
    }

    #[test]
    fn batch_agrees_with_single_on_seeded_mixes() {
        const KINDS: u8 = 22;
        let wallets: Vec<Wallet> = (1..=4u8)
            .map(|i| Wallet::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&[i; 32]))))
            .collect();
        let rsa = rsa_wallet();
        let seeds: Vec<u64> = match std::env::var("FERROBEAM_SEED") {
            Ok(seed) => vec![seed.parse().expect("FERROBEAM_SEED is a u64")],
            Err(_) => (1..=4).collect(),
        };
        let (mut accepted, mut refused) = (0, 0);
        for seed in seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // Mostly valid, as on a real ingress, with every kind of failure mixed in.
            let count = rand::Rng::gen_range(&mut rng, 1..=48u64);
            let messages: Vec<Message> = (0..count)
                .map(|i| {
                    let kind = if rand::Rng::gen_bool(&mut rng, 0.5) {
                        0
                    } else {
                        rand::Rng::gen_range(&mut rng, 0..KINDS)
                    };
                    mixed_message(kind, seed * 1000 + i, &wallets, rsa)
                })
                .collect();
            let single: Vec<_> = messages
                .iter()
                .cloned()
                .map(VerifiedMessage::verify)
                .collect();
            let batch = verify_batch(messages);
            assert_eq!(
                batch, single,
                "seed {seed} (replay with FERROBEAM_SEED={seed})"
            );
            accepted += single.iter().filter(|r| r.is_ok()).count();
            refused += single.iter().filter(|r| r.is_err()).count();
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn every_mixed_kind_is_decided_the_same_alone_and_together() {
        let wallets = vec![Wallet::generate_ed25519(&mut rng())];
        let rsa = rsa_wallet();
        let messages: Vec<Message> = (0..22u8)
            .map(|kind| mixed_message(kind, u64::from(kind), &wallets, rsa))
            .collect();
        let single: Vec<_> = messages
            .iter()
            .cloned()
            .map(VerifiedMessage::verify)
            .collect();
        let reasons: Vec<&str> = single
            .iter()
            .map(|r| match r {
                Ok(_) => "ok",
                Err(MessageError::SignatureInvalid) => "signature",
                Err(MessageError::CommitmentInvalid(_)) => "commitment",
                Err(MessageError::Unsigned) => "unsigned",
                Err(_) => "other",
            })
            .collect();
        // What the rule decides for each kind, in kind order.
        assert_eq!(
            reasons[..15],
            [
                "ok",
                "signature",
                "signature",
                "signature",
                "signature",
                "signature",
                "ok",
                "commitment",
                "unsigned",
                "signature",
                "signature",
                "commitment",
                "commitment",
                "signature",
                "ok",
            ]
        );
        assert_eq!(reasons[16], "signature");
        assert_eq!(reasons[18..], ["ok", "signature", "signature", "signature"]);
        assert_eq!(verify_batch(messages), single);
    }

    #[test]
    fn batch_signing_gives_each_message_its_own_verifiable_commitment() {
        let wallet = Wallet::generate_ed25519(&mut rng());
        let messages: Vec<Message> = (0..5).map(|i| Message::new().with("n", i)).collect();
        let signed = wallet.sign_batch(messages.clone(), &mut rng());
        assert_eq!(signed.len(), 5);
        let mut ids = std::collections::BTreeSet::new();
        for (message, signed) in messages.iter().zip(&signed) {
            assert_eq!(signed.unsigned_id(), message.unsigned_id());
            assert_eq!(signed.commitments()[0].scheme(), Scheme::Ed25519Batch);
            // Both encodings carry it, and it verifies alone after either.
            let json = super::super::json::from_slice(
                &serde_json::to_vec(&super::super::json::to_json(signed)).unwrap(),
            )
            .unwrap();
            let wire = super::super::wire::decode(&super::super::wire::encode(signed)).unwrap();
            for copy in [signed.clone(), json, wire] {
                let verified = VerifiedMessage::verify(copy).unwrap();
                assert_eq!(verified.from(), wallet.address());
                assert_eq!(verified.id(), signed.id());
            }
            ids.insert(signed.id());
        }
        assert_eq!(ids.len(), 5, "every message has its own id");
        assert!(verify_batch(signed.clone()).iter().all(Result::is_ok));
        // Another message under a batch member's commitment.
        let mut moved = Message::new().with("n", 99);
        moved
            .push_commitment(signed[2].commitments()[0].clone())
            .unwrap();
        assert_eq!(
            VerifiedMessage::verify(moved),
            Err(MessageError::SignatureInvalid)
        );
        // One message is signed plainly; none gives none.
        let one = wallet.sign_batch(messages[..1].to_vec(), &mut rng());
        assert_eq!(one[0].commitments()[0].scheme(), Scheme::Ed25519);
        assert!(wallet.sign_batch(Vec::new(), &mut rng()).is_empty());
    }

    #[test]
    fn malformed_batch_commitments_are_refused_on_construction() {
        let wallet = Wallet::generate_ed25519(&mut rng());
        let messages: Vec<Message> = (0..3).map(|i| Message::new().with("n", i)).collect();
        let good = wallet.sign_batch(messages, &mut rng())[0].commitments()[0].clone();
        let key = good.public_key().to_vec();
        let bytes = good.signature().to_vec();
        assert_eq!(
            bytes.len(),
            BATCH_HEADER_BYTES + 2 * 32,
            "leaf 0 of 3: two hashes"
        );
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = bytes.clone();
            edit(&mut bytes);
            Commitment::new(Scheme::Ed25519Batch, key.clone(), bytes)
        };
        assert!(with(&|_| {}).is_ok());
        let refused = [
            ("no path", with(&|b| b.truncate(BATCH_HEADER_BYTES))),
            ("ragged", with(&|b| b.truncate(BATCH_HEADER_BYTES + 40))),
            (
                "one hash too many",
                with(&|b| b.extend_from_slice(&[0; 32])),
            ),
            ("too short", with(&|b| b.truncate(64))),
            ("index = count", with(&|b| b[67] = 3)),
            ("no leaves", with(&|b| b[71] = 0)),
            ("count too large", with(&|b| b[68] = 2)),
            ("leaf 2 of 3 has one hash", with(&|b| b[67] = 2)),
            (
                "17 hashes",
                with(&|b| {
                    b[68..72].copy_from_slice(&(1u32 << 17).to_be_bytes());
                    b.resize(BATCH_HEADER_BYTES + 17 * 32, 0);
                }),
            ),
        ];
        for (what, result) in refused {
            assert!(
                matches!(result, Err(MessageError::CommitmentInvalid(_))),
                "{what}: {result:?}"
            );
        }
        assert!(Commitment::new(Scheme::Ed25519Batch, key[..31].to_vec(), bytes.clone()).is_err());
    }

    #[test]
    fn jwk_rejects_garbage() {
        assert!(Wallet::from_jwk(&serde_json::json!({"kty": "EC"})).is_err());
        assert!(
            Wallet::from_jwk(&serde_json::json!({"kty": "OKP", "crv": "Ed25519", "d": "AA"}))
                .is_err()
        );
        let wallet = Wallet::generate_ed25519(&mut rng());
        let mut jwk = wallet.to_jwk();
        jwk["x"] = b64(&[1u8; 32]).into();
        assert!(Wallet::from_jwk(&jwk).is_err());
    }
}
