//! QUIC ingress: the framing of QUIC streams ([`frame`]) and the node's QUIC identity
//! ([`tls`]). The backends come next.

pub mod frame;
pub mod tls;
