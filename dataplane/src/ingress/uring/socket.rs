//! The UDP socket of one ingress core and the bytes around its datagrams: `SO_REUSEPORT`, UDP
//! GRO on receive, `UDP_SEGMENT` (GSO) on send, socket addresses and control messages in their
//! kernel layouts, built and parsed in safe code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use super::ring::set_int;

pub use crate::ingress::GSO_BYTES_MAX;
/// Most segments of one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// Kernel socket buffers: 8 MiB hold a few milliseconds at 10+ Gbit/s while the ring catches up.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// `sizeof(struct cmsghdr)` on 64-bit Linux: `size_t len; int level; int type`.
const CMSG_HEADER_BYTES: usize = 16;
/// Room for the one control message the node sends (`UDP_SEGMENT`, a u16), `CMSG_SPACE(2)`.
pub const SEND_CONTROL_BYTES: usize = CMSG_HEADER_BYTES + 8;
/// Room for received control messages (`UDP_GRO`, an int; room to spare for others).
pub const RECV_CONTROL_BYTES: usize = 64;
/// `sizeof(struct sockaddr_in6)`, the largest address the node receives.
pub const NAME_BYTES: usize = 28;

const _: () = assert!(std::mem::size_of::<usize>() == 8, "64-bit cmsghdr layout");
const _: () = assert!(std::mem::size_of::<libc::sockaddr_in6>() == NAME_BYTES);

/// A UDP socket on `addr` with `SO_REUSEPORT` (several cores share the port), GRO on, large
/// buffers, and no fragmentation (quinn's path MTU discovery needs the DF bit). Blocking: the
/// ring waits for readiness itself.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: unprivileged processes are capped at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    let fd = socket.as_raw_fd();
    set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)?;
    let (level, name, value) = if addr.is_ipv6() {
        let (ip, discover, probe) = (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        );
        // For IPv4 peers of a dual-stack socket; kernels that refuse it keep their default.
        let _ = set_int(fd, ip, discover, probe);
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    set_int(fd, level, name, value)?;
    Ok(socket.into())
}

/// A socket address in its kernel layout (`sockaddr_in` or `sockaddr_in6`), and its length.
pub fn encode_name(addr: SocketAddr, out: &mut [u8; NAME_BYTES]) -> usize {
    *out = [0; NAME_BYTES];
    match addr {
        SocketAddr::V4(v4) => {
            out[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v4.port().to_be_bytes());
            out[4..8].copy_from_slice(&v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            out[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v6.port().to_be_bytes());
            out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&v6.ip().octets());
            out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            NAME_BYTES
        }
    }
}

/// The peer address of a received datagram; `None` for another family or a short name.
pub fn decode_name(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    if family == libc::AF_INET as u16 {
        let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
        Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
    } else if family == libc::AF_INET6 as u16 {
        let flowinfo = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
        let ip = Ipv6Addr::from(ip);
        // Dual-stack sockets see IPv4 peers as ::ffff:a.b.c.d; quinn wants them as they are.
        Some(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
            None => SocketAddrV6::new(ip, port, flowinfo, scope).into(),
        })
    } else {
        None
    }
}

/// The `UDP_SEGMENT` control message asking the kernel to split a send into `segment`-byte
/// datagrams; returns its length.
pub fn encode_segment_size(segment: u16, out: &mut [u8; SEND_CONTROL_BYTES]) -> usize {
    *out = [0; SEND_CONTROL_BYTES];
    let len = CMSG_HEADER_BYTES + 2; // CMSG_LEN(sizeof(u16))
    out[0..8].copy_from_slice(&(len as u64).to_ne_bytes());
    out[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    out[12..16].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    out[16..18].copy_from_slice(&segment.to_ne_bytes());
    SEND_CONTROL_BYTES
}

/// The GRO segment size in received control messages: the payload is a run of datagrams of
/// this size (the last may be shorter). `None` when the kernel did not coalesce.
pub fn gro_segment_size(mut control: &[u8]) -> Option<usize> {
    // Each pass consumes at least one header: bounded by the control length.
    while control.len() >= CMSG_HEADER_BYTES {
        let len = u64::from_ne_bytes(control[0..8].try_into().ok()?) as usize;
        let level = i32::from_ne_bytes(control[8..12].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[12..16].try_into().ok()?);
        if len < CMSG_HEADER_BYTES || len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            let size = i32::from_ne_bytes(control.get(16..20)?.try_into().ok()?);
            return usize::try_from(size).ok().filter(|size| *size > 0);
        }
        let space = len.next_multiple_of(8); // CMSG_ALIGN
        control = control.get(space..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for addr in ["127.0.0.1:4433", "[::1]:9", "[fe80::1%3]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut name = [0; NAME_BYTES];
            let len = encode_name(addr, &mut name);
            assert_eq!(decode_name(&name[..len]), Some(addr));
        }
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let mut name = [0; NAME_BYTES];
        encode_name(mapped, &mut name);
        assert_eq!(decode_name(&name), Some("10.0.0.1:80".parse().unwrap()));
        assert_eq!(decode_name(&[0; 3]), None);
        assert_eq!(decode_name(&[0xff; NAME_BYTES]), None);
    }

    #[test]
    fn gro_segment_size_is_found_among_control_messages() {
        let mut control = Vec::new();
        // An unrelated message first (IP_TOS, one byte, padded to 8).
        control.extend(17u64.to_ne_bytes());
        control.extend(libc::IPPROTO_IP.to_ne_bytes());
        control.extend(libc::IP_TOS.to_ne_bytes());
        control.extend([0u8; 8]);
        control.extend(20u64.to_ne_bytes());
        control.extend(libc::SOL_UDP.to_ne_bytes());
        control.extend(libc::UDP_GRO.to_ne_bytes());
        control.extend(1452i32.to_ne_bytes());
        control.extend([0u8; 4]);
        assert_eq!(gro_segment_size(&control), Some(1452));
        assert_eq!(gro_segment_size(&control[..24]), None);
        assert_eq!(gro_segment_size(&[]), None);
        // A length pointing past the end is refused, not followed.
        let mut bad = control.clone();
        bad[0..8].copy_from_slice(&999u64.to_ne_bytes());
        assert_eq!(gro_segment_size(&bad), None);
    }

    #[test]
    fn segment_size_message_has_the_kernel_layout() {
        let mut control = [0; SEND_CONTROL_BYTES];
        assert_eq!(encode_segment_size(1452, &mut control), 24);
        assert_eq!(u64::from_ne_bytes(control[0..8].try_into().unwrap()), 18);
        assert_eq!(
            u16::from_ne_bytes(control[16..18].try_into().unwrap()),
            1452
        );
    }
}
