//! The data path's UDP sockets: one per TUN queue on the port, big
//! buffers, UDP GRO when asked for, datagrams steered by inner flow.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use super::steer;

/// A UDP socket bound to `addr` (shared with its siblings when `shared`),
/// with big buffers (bursts of 64 KiB GSO sends overflow the default 208 KiB
/// at once, and every overflow is a TCP retransmission inside), UDP GRO if
/// the kernel has it and `want_gro` asks for it (the second value).
fn socket(addr: SocketAddrV4, shared: bool, want_gro: bool) -> std::io::Result<(UdpSocket, bool)> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, sockopt,
    };
    let fd = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if shared {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    for (what, r) in [
        (
            "receive",
            setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER),
        ),
        (
            "send",
            setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER),
        ),
    ] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "udp backend: cannot enlarge the socket's {what} buffer");
        }
    }
    if !want_gro {
        return Ok((UdpSocket::from(fd), false));
    }
    let gro = setsockopt(&fd, sockopt::UdpGroSegment, &true);
    if let Err(e) = &gro {
        tracing::warn!(error = %e, "udp backend: UDP GRO unavailable; one datagram per receive");
    }
    Ok((UdpSocket::from(fd), gro.is_ok()))
}

/// `count` sockets bound to `addr` (sharing the port when more than one,
/// each datagram steered to one of them by its inner flow: `steer`), and
/// whether all have UDP GRO (asked for when `gro`).
pub fn sockets(
    addr: SocketAddrV4,
    count: usize,
    gro: bool,
) -> std::io::Result<(Vec<UdpSocket>, bool)> {
    let mut all_gro = gro;
    let mut socks = Vec::new();
    for _ in 0..count.max(1) {
        let (sock, has_gro) = socket(addr, count > 1, gro)?;
        all_gro &= has_gro;
        socks.push(sock);
    }
    if count > 1 {
        let mut filter = steer::program(u32::try_from(count).unwrap_or(u32::MAX));
        let prog = nix::libc::sock_fprog {
            len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
            filter: filter.as_mut_ptr(),
        };
        if let Err(e) = nix::sys::socket::setsockopt(
            &socks[0],
            nix::sys::socket::sockopt::AttachReusePortCbpf,
            &prog,
        ) {
            tracing::warn!(error = %e, "udp backend: cannot steer datagrams by inner flow; the kernel spreads them by outer address");
        }
    }
    Ok((socks, all_gro))
}

/// The socket's receive and send buffers.
const SOCKET_BUFFER: usize = 16 << 20;
