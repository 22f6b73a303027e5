//! The udp backend: flannel's wire format (the raw inner IP packet is the
//! UDP payload, sent to the peer's public IP at the backend's port) over a
//! TUN device `flannel0`. Split as boringtun is: a pure forwarder deciding
//! what happens to each packet (`forward`), and this thin I/O shell around
//! it: the device, the socket, and one thread per direction.
//!
//! The fast path: the TUN device with `IFF_VNET_HDR` and checksum/TSO
//! offload hands over TCP (and UDP) super-packets of up to 64 KiB; they
//! leave as one UDP GSO send of MTU-sized segments whose headers are
//! written here and whose payloads go from where the read put them
//! (`offload`). Received datagrams come in batches through UDP GRO; runs of
//! one TCP flow's segments go into the TUN device as one super-packet (one
//! fresh header, the payloads where they were received, `writev`). One TUN
//! queue per core, each with its own socket on the port (SO_REUSEPORT,
//! datagrams steered to a socket by their inner flow: `steer`) and a thread
//! per direction. Each offload the kernel refuses is logged once and done
//! without.

mod backend;
pub mod forward;
pub mod offload;
pub mod steer;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnetwork::Ipv4Network;

use forward::{Counters, Forwarder, Peer, PeerTable, Reason, SharedTable, Verdict};
use offload::{VNET_HDR_LEN, VnetHdr};

pub use backend::{Udp, codec, teardown};

/// flannel's device name.
pub const DEVICE: &str = "flannel0";
/// IPv4 + UDP headers.
pub const OVERHEAD: u32 = 28;

/// What the data path needs.
#[derive(Debug, Clone)]
pub struct UdpSpec {
    pub name: String,
    /// The address the socket binds (the node's public IP).
    pub local: Ipv4Addr,
    pub port: u16,
    pub subnet: Ipv4Network,
    pub network: Ipv4Network,
    pub mtu: u32,
    /// Ask for TUN offload, UDP GSO and UDP GRO (`--udp-offload`); without,
    /// one packet per read, write, send and receive.
    pub offload: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("creating TUN device {name} (is /dev/net/tun there, and CAP_NET_ADMIN held?)")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binding UDP {addr}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
}

/// The running data path. The TUN device exists as long as this process
/// holds it (flannel's is not persistent either).
#[derive(Debug)]
pub struct DataPlane {
    /// The device's interface index.
    pub index: u32,
    table: Arc<SharedTable>,
    counters: Arc<Counters>,
    /// Tells the threads to end (checked between packets and after every
    /// error).
    stop: Arc<AtomicBool>,
    /// The sockets (duplicates): shutting one down for reading wakes its
    /// thread blocked in a receive.
    sockets: Vec<UdpSocket>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// At most this many TUN queues (and thread pairs).
const MAX_QUEUES: usize = 8;

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
/// Largest packet a TUN read or UDP receive can bring.
const BUF: usize = 65_536;

fn pause_after_error(what: &str, e: &std::io::Error, errors: &mut u64) {
    *errors += 1;
    // One line per power of two: a broken path does not flood the log.
    if errors.is_power_of_two() {
        tracing::warn!(error = %e, count = *errors, "udp backend: {what} failed");
    }
    std::thread::sleep(Duration::from_millis(10));
}

fn io_slices<'a>(v: &[&'a [u8]]) -> Vec<std::io::IoSlice<'a>> {
    v.iter().map(|b| std::io::IoSlice::new(b)).collect()
}

/// Largest UDP GSO send: one IPv4 datagram's worth of payload.
const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;

/// What each direction of one TUN queue holds: the queue, its socket, the
/// shared peer table, counters and forwarder, and the stop flag.
struct Queue {
    dev: Arc<tun_rs::SyncDevice>,
    /// Whether packets carry a virtio-net header (offload on).
    vnet: bool,
    sock: UdpSocket,
    table: Arc<SharedTable>,
    counters: Arc<Counters>,
    fwd: Arc<Forwarder>,
    errors: u64,
    stop: Arc<AtomicBool>,
}

/// TUN → UDP: read a packet (with offload, a TCP or UDP super-packet of up
/// to 64 KiB), decide, and send it to the peer: a super-packet leaves as
/// segments whose headers are written here and whose payloads are sent from
/// where the read put them, one UDP GSO send per 64 KiB.
struct Out {
    q: Queue,
    /// Whether UDP GSO sends work (turned off at the first refusal).
    gso: bool,
}

impl Out {
    fn run(mut self) {
        let mut buf = vec![0u8; VNET_HDR_LEN + BUF];
        let mut headers = vec![[0u8; 128]; offload::MAX_SEGMENTS];
        let skip = if self.q.vnet { VNET_HDR_LEN } else { 0 };
        while !self.q.stop.load(Ordering::Relaxed) {
            let n = match nix::unistd::read(&*self.q.dev, &mut buf) {
                Ok(n) if n > skip => n,
                Ok(_) => continue,
                Err(e) => {
                    if self.q.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    pause_after_error("reading the TUN device", &e.into(), &mut self.q.errors);
                    continue;
                }
            };
            let vnet = VnetHdr::parse(&buf[..skip]).unwrap_or_default();
            let pkt = &mut buf[skip..n];
            let table = self.q.table.load();
            let verdict = match vnet.gso_type & !offload::GSO_ECN {
                offload::GSO_NONE
                    if vnet.flags & offload::NEEDS_CSUM != 0
                        && !offload::complete_checksum(
                            pkt,
                            usize::from(vnet.csum_start),
                            usize::from(vnet.csum_offset),
                        ) =>
                {
                    Verdict::Drop(Reason::Malformed)
                }
                offload::GSO_NONE | offload::GSO_TCPV4 | offload::GSO_UDP_L4 => {
                    self.q.fwd.outbound(&table, pkt)
                }
                // IPv6 super-packets: this backend carries IPv4 only.
                _ => Verdict::Drop(Reason::NotIpv4),
            };
            let Verdict::Send(to) = verdict else {
                self.q.counters.record(verdict, pkt.len());
                continue;
            };
            if vnet.gso_type == offload::GSO_NONE {
                self.q.counters.record(verdict, pkt.len());
                self.send(&[&[], pkt], 0, to);
                continue;
            }
            let Some(split) = offload::Split::new(pkt, usize::from(vnet.gso_size)) else {
                self.q
                    .counters
                    .record(Verdict::Drop(Reason::Malformed), pkt.len());
                continue;
            };
            self.send_split(&split, &mut headers, verdict, to);
        }
    }

    /// Sends the segments of `split`: as many per UDP GSO send as fit.
    fn send_split(
        &mut self,
        split: &offload::Split<'_>,
        headers: &mut [[u8; 128]],
        verdict: Verdict,
        to: SocketAddrV4,
    ) {
        let hl = split.header_len();
        let per_send = (GSO_MAX_BYTES / split.segment_len()).clamp(1, headers.len());
        let mut first = 0;
        while first < split.count() {
            let last = (first + per_send).min(split.count());
            for (i, h) in (first..last).zip(headers.iter_mut()) {
                split.header(i, h);
                self.q.counters.record(verdict, hl + split.payload(i).len());
            }
            let mut iov: Vec<&[u8]> = Vec::with_capacity(2 * per_send);
            for (i, h) in (first..last).zip(headers.iter()) {
                iov.push(&h[..hl]);
                iov.push(split.payload(i));
            }
            let segment = if last - first > 1 {
                split.segment_len()
            } else {
                0
            };
            self.send(&iov, segment, to);
            first = last;
        }
    }

    /// Sends `iov` (header/payload pairs) to `to`: cut into datagrams of
    /// `segment` bytes by UDP GSO when `segment` is not 0, else one
    /// datagram. Without GSO (refused once), pair by pair.
    fn send(&mut self, iov: &[&[u8]], segment: usize, to: SocketAddrV4) {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};
        let addr = SockaddrIn::from(to);
        let fd = self.q.sock.as_raw_fd();
        if segment == 0 || self.gso {
            let size = u16::try_from(segment).unwrap_or(u16::MAX);
            let gso = [ControlMessage::UdpGsoSegments(&size)];
            let cmsgs: &[ControlMessage<'_>] = if segment == 0 { &[] } else { &gso };
            match sendmsg(fd, &io_slices(iov), cmsgs, MsgFlags::empty(), Some(&addr)) {
                Ok(_) => return,
                // The kernel or the route cannot do it: never again.
                Err(
                    e @ (nix::errno::Errno::EIO
                    | nix::errno::Errno::EINVAL
                    | nix::errno::Errno::ENOPROTOOPT),
                ) if segment != 0 => {
                    self.gso = false;
                    tracing::warn!(error = %e, "udp backend: UDP GSO refused; sending one datagram per packet from now on");
                }
                Err(e) => {
                    pause_after_error("sending to a peer", &e.into(), &mut self.q.errors);
                    return;
                }
            }
        }
        for pair in iov.chunks(2) {
            if let Err(e) = sendmsg(fd, &io_slices(pair), &[], MsgFlags::empty(), Some(&addr)) {
                pause_after_error("sending to a peer", &e.into(), &mut self.q.errors);
            }
        }
    }
}

/// UDP → TUN: receive (many datagrams at once with UDP GRO), decide, and
/// write what is ours: runs of segments of one TCP flow as one super-packet
/// (a fresh header, then the payloads where the receive put them), the
/// rest one by one.
struct In {
    q: Queue,
}

impl In {
    fn run(mut self) {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
        let mut rbuf = vec![0u8; BUF];
        let mut ours: Vec<std::ops::Range<usize>> = Vec::new();
        while !self.q.stop.load(Ordering::Relaxed) {
            let received = {
                let mut iov = [std::io::IoSliceMut::new(&mut rbuf)];
                let mut cmsg = nix::cmsg_space!(i32);
                recvmsg::<SockaddrIn>(
                    self.q.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .map(|m| {
                    let seg = m.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                            _ => None,
                        })
                    });
                    (m.bytes, m.address.map(SocketAddrV4::from), seg)
                })
            };
            let (n, Some(from), seg) = (match received {
                Ok(r) => r,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    pause_after_error("receiving", &e.into(), &mut self.q.errors);
                    continue;
                }
            }) else {
                continue;
            };
            let table = self.q.table.load();
            let seg = seg.unwrap_or(n).max(1);
            ours.clear();
            for start in (0..n).step_by(seg) {
                let range = start..(start + seg).min(n);
                let verdict = self.q.fwd.inbound(&table, from, &rbuf[range.clone()]);
                self.q.counters.record(verdict, range.len());
                if verdict == Verdict::Deliver {
                    ours.push(range);
                }
            }
            let packets: Vec<&[u8]> = ours.iter().map(|r| &rbuf[r.clone()]).collect();
            self.deliver(&packets);
        }
    }

    fn deliver(&mut self, packets: &[&[u8]]) {
        let plain = VnetHdr::default().bytes();
        if !self.q.vnet {
            for p in packets {
                self.write(&[p]);
            }
            return;
        }
        let mut header = [0u8; 128];
        let mut at = 0;
        for n in offload::groups(packets) {
            let group = &packets[at..at + n];
            at += n;
            if n == 1 {
                self.write(&[&plain, group[0]]);
                continue;
            }
            let (vnet, hl) = offload::merged_header(group, &mut header);
            let vnet = vnet.bytes();
            let mut iov: Vec<&[u8]> = Vec::with_capacity(n + 2);
            iov.push(&vnet);
            iov.push(&header[..hl]);
            iov.extend(group.iter().map(|p| &p[hl..]));
            self.write(&iov);
        }
    }

    fn write(&mut self, iov: &[&[u8]]) {
        if let Err(e) = nix::sys::uio::writev(&*self.q.dev, &io_slices(iov)) {
            pause_after_error("writing the TUN device", &e.into(), &mut self.q.errors);
        }
    }
}

impl DataPlane {
    /// Creates the device and the socket and starts both directions. The
    /// device asks the kernel for checksum and TSO offload (TCP
    /// super-packets of up to 64 KiB per read and write); the socket for
    /// UDP GSO and GRO. Whatever the kernel refuses is logged once and done
    /// without.
    pub fn start(spec: &UdpSpec) -> Result<DataPlane, UdpError> {
        let tun_err = |source| UdpError::Tun {
            name: spec.name.clone(),
            source,
        };
        let queues = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_QUEUES);
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(&spec.name)
                .mtu(u16::try_from(spec.mtu).unwrap_or(u16::MAX))
                .offload(offload)
                .multi_queue(queues > 1)
                .enable(true)
                .build_sync()
        };
        let dev = match build(spec.offload) {
            Ok(d) => d,
            Err(e) if !spec.offload => return Err(tun_err(e)),
            Err(e) => {
                tracing::warn!(error = %e, "udp backend: TUN offload unavailable; one packet per read and write");
                build(false).map_err(tun_err)?
            }
        };
        let offload = dev.tcp_gso();
        let index = dev.if_index().map_err(tun_err)?;
        // One queue per core, each with its own socket on the same port
        // (`steer` spreads the peers' flows over them) and a thread per
        // direction.
        let mut devs = vec![Arc::new(dev)];
        while devs.len() < queues {
            match devs[0].try_clone() {
                Ok(d) => devs.push(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "udp backend: no more TUN queues; going on with {}", devs.len());
                    break;
                }
            }
        }
        let addr = SocketAddrV4::new(spec.local, spec.port);
        let bind_err = |source| UdpError::Bind { addr, source };
        let (socks, gro) = sockets(addr, devs.len(), spec.offload).map_err(bind_err)?;
        tracing::info!(
            tun_offload = offload,
            udp_gro = gro,
            udp_gso = spec.offload,
            queues = devs.len(),
            "udp backend data path"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let table = Arc::new(SharedTable::default());
        let counters = Arc::new(Counters::default());
        let fwd = Arc::new(Forwarder::new(spec.subnet, spec.network, spec.port));
        let mut threads = Vec::new();
        let mut sockets = Vec::new();
        for (q, (dev, sock)) in devs.into_iter().zip(socks).enumerate() {
            let queue = |sock: UdpSocket| Queue {
                dev: dev.clone(),
                vnet: offload,
                sock,
                table: table.clone(),
                counters: counters.clone(),
                fwd: fwd.clone(),
                errors: 0,
                stop: stop.clone(),
            };
            let out = Out {
                q: queue(sock.try_clone().map_err(bind_err)?),
                gso: spec.offload,
            };
            sockets.push(sock.try_clone().map_err(bind_err)?);
            let inbound = In { q: queue(sock) };
            let spawn = |name: String, run: Box<dyn FnOnce() + Send>| {
                std::thread::Builder::new()
                    .name(name)
                    .spawn(run)
                    .map_err(tun_err)
            };
            threads.push(spawn(
                format!("weft-udp-out{q}"),
                Box::new(move || out.run()),
            )?);
            threads.push(spawn(
                format!("weft-udp-in{q}"),
                Box::new(move || inbound.run()),
            )?);
        }
        Ok(DataPlane {
            index,
            table,
            counters,
            stop,
            sockets,
            threads,
        })
    }

    /// Publishes the complete peer set (IPv4 entries); the hot path sees it
    /// from its next packet on.
    pub fn set_peers(&self, peers: &[crate::backend::Peer]) {
        let peers: Vec<Peer> = peers
            .iter()
            .filter_map(|p| match (p.subnet, p.public_ip) {
                (ipnetwork::IpNetwork::V4(subnet), std::net::IpAddr::V4(public_ip)) => {
                    Some(Peer { subnet, public_ip })
                }
                _ => None,
            })
            .collect();
        self.table.store(PeerTable::new(&peers));
    }

    /// Stops the threads and waits (up to 5 s) until they have let go of
    /// the device and the sockets, so that a new data path can take them
    /// (used once the device is gone). A receiving thread wakes at once (its
    /// socket is shut down for reading); a reading one when its device is
    /// gone (deleted) or a packet arrives.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &self.sockets {
            // An unconnected socket answers ENOTCONN, but is shut down and
            // its sleepers woken all the same.
            let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data path's counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}
