//! Commitments (signatures) on messages: Ed25519 natively, RSA-PSS-SHA512 with Arweave JWK
//! wallets as the AO-ecosystem scheme.
//!
//! A commitment signs `COMMIT_DOMAIN ‖ unsigned id`, so signing cost does not grow with the
//! message and the signature covers exactly what the id names.

use ed25519_dalek::Signer as _;
use rand_core::CryptoRngCore;
use rsa::BigUint;
use rsa::pss;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Verifier as _};
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use sha2::{Digest, Sha256, Sha512};

use super::{Address, Id, Message, MessageError, b64, unb64};

/// Domain separator of every commitment's signed payload.
pub const COMMIT_DOMAIN: &[u8] = b"ferrobeam-commit-v1";
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
    /// Ed25519 (RFC 8032), strict verification.
    Ed25519,
    /// RSA-PSS with SHA-512 and a 64-byte salt; the public key is the modulus (e = 65537).
    RsaPssSha512,
}

impl Scheme {
    /// The scheme's name in JSON and docs.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::RsaPssSha512 => "rsa-pss-sha512",
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
        let payload = signed_payload(unsigned_id);
        match self.scheme {
            Scheme::Ed25519 => {
                let key = ed25519_key(&self.public_key)?;
                let signature = ed25519_dalek::Signature::from_slice(&self.signature)
                    .map_err(|_| MessageError::SignatureInvalid)?;
                key.verify_strict(&payload, &signature)
                    .map_err(|_| MessageError::SignatureInvalid)
            }
            Scheme::RsaPssSha512 => {
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

fn ed25519_key(bytes: &[u8]) -> Result<ed25519_dalek::VerifyingKey, MessageError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| MessageError::CommitmentInvalid("ed25519 key length".into()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| MessageError::CommitmentInvalid("ed25519 key is not a curve point".into()))?;
    if key.is_weak() {
        return Err(MessageError::CommitmentInvalid(
            "ed25519 key has small order".into(),
        ));
    }
    Ok(key)
}

/// What a commitment signs.
pub fn signed_payload(unsigned_id: &Id) -> Vec<u8> {
    let mut payload = Vec::with_capacity(COMMIT_DOMAIN.len() + 32);
    payload.extend_from_slice(COMMIT_DOMAIN);
    payload.extend_from_slice(&unsigned_id.0);
    payload
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

/// Verifies many messages; results are in input order.
///
/// Each commitment is verified on its own, with the same strict rule as
/// [`VerifiedMessage::verify`]. ed25519-dalek's batch equation is cofactorless with random
/// coefficients, so a crafted signature whose `R` has a torsion component can pass a batch that
/// the strict single check rejects — then a node would schedule a message that every auditor's
/// `verify_strict` refuses. Batching comes back once acceptance is batch-equivalent (e.g. a
/// cofactored rule such as ZIP-215 for single and batch alike, a protocol change).
pub fn verify_batch(messages: Vec<Message>) -> Vec<Result<VerifiedMessage, MessageError>> {
    messages.into_iter().map(VerifiedMessage::verify).collect()
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
        let wallet = Wallet::generate_rsa(&mut rng(), 2048).unwrap();
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
