//! The node's QUIC identity: a self-signed Ed25519 certificate made from the node key, and the
//! client-side pin that accepts exactly the node whose address the client expects.
//!
//! There is no certificate authority. A node address is SHA-256 of the node's Ed25519 public
//! key, and the certificate's key *is* the node key, so a client that knows the address checks:
//!
//! 1. the end-entity certificate's SubjectPublicKeyInfo is an Ed25519 key `K`;
//! 2. `SHA-256(K)` equals the pinned node address;
//! 3. the TLS 1.3 `CertificateVerify` signature verifies with `K` (rustls calls
//!    [`NodePin::verify_tls13_signature`] with the same certificate).
//!
//! Names, validity dates and issuers are not looked at: the pin replaces them. Only TLS 1.3 and
//! Ed25519 are accepted (QUIC requires TLS 1.3). docs/dataplane.md explains the choice.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::message::{Address, Wallet};

/// The ALPN protocol of ferrobeam's data plane; a peer that offers no match is refused.
pub const ALPN: &[u8] = b"ferrobeam-dp/1";
/// The server name clients send (SNI); the pin, not the name, authenticates the node.
pub const SERVER_NAME: &str = "ferrobeam.node";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why the QUIC identity could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The node key is not Ed25519 (RSA node keys have no QUIC identity yet).
    #[error("the QUIC ingress needs an Ed25519 node key")]
    KeyNotEd25519,
    /// Encoding the key or the certificate failed (a bug, or a crypto library refusal).
    #[error("making the QUIC certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The node's certificate (self-signed with the node key) and that key in PKCS#8.
///
/// # Errors
/// [`TlsError::KeyNotEd25519`], [`TlsError::Certificate`].
pub fn node_certificate(
    wallet: &Wallet,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let Wallet::Ed25519(key) = wallet else {
        return Err(TlsError::KeyNotEd25519);
    };
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, wallet.address().to_string());
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let der = cert.der().clone();
    debug_assert_eq!(spki_address(&der), Some(wallet.address()));
    Ok((der, PrivateKeyDer::Pkcs8(pkcs8)))
}

/// The rustls server configuration of the node: its certificate, TLS 1.3, the data-plane ALPN.
///
/// # Errors
/// [`TlsError`].
pub fn server_config(wallet: &Wallet) -> Result<rustls::ServerConfig, TlsError> {
    let (cert, key) = node_certificate(wallet)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // QUIC has no 0-RTT replay protection at this layer: messages are not idempotent.
    config.max_early_data_size = 0;
    Ok(config)
}

/// The rustls client configuration that accepts only the node with address `node`.
///
/// # Errors
/// [`TlsError::Config`].
pub fn client_config(node: Address) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let pin = Arc::new(NodePin {
        node,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        // rustls files every custom verifier under `dangerous()`; this one is a real pin.
        .dangerous()
        .with_custom_certificate_verifier(pin)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The address of the Ed25519 key in a certificate, or `None` when it holds another key type.
pub fn spki_address(cert: &CertificateDer<'_>) -> Option<Address> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    if key.len() != 32 {
        return None;
    }
    Some(Address(Sha256::digest(key).into()))
}

/// Accepts the server whose certificate key hashes to `node`, and checks its handshake
/// signature with that key. Everything else (names, dates, issuers) is deliberately ignored.
#[derive(Debug)]
pub struct NodePin {
    node: Address,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl NodePin {
    /// The pinned address.
    pub fn node(&self) -> Address {
        self.node
    }
}

impl ServerCertVerifier for NodePin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match spki_address(end_entity) {
            Some(address) if address == self.node => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only, and the configs above offer nothing else.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_key_is_the_node_key() {
        let wallet = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
        let (cert, _) = node_certificate(&wallet).unwrap();
        assert_eq!(spki_address(&cert), Some(wallet.address()));
        let other = Wallet::generate_ed25519(&mut rand::rngs::OsRng);
        let pin = NodePin {
            node: other.address(),
            algorithms: provider().signature_verification_algorithms,
        };
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        assert!(
            pin.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_err()
        );
        let pin = NodePin {
            node: wallet.address(),
            algorithms: provider().signature_verification_algorithms,
        };
        assert!(
            pin.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert!(server_config(&wallet).is_ok());
    }
}
