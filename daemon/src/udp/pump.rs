//! The data path's two directions of one TUN queue, each a thread: TUN →
//! UDP (`Out`) and UDP → TUN (`In`), executing the forwarder's verdicts.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::forward::{Counters, Forwarder, SharedTable, Verdict};
use super::offload::{self, FromTun, VNET_HDR_LEN, VnetHdr};

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
pub(super) struct Queue {
    pub(super) dev: Arc<tun_rs::SyncDevice>,
    /// Whether packets carry a virtio-net header (offload on).
    pub(super) vnet: bool,
    pub(super) sock: UdpSocket,
    pub(super) table: Arc<SharedTable>,
    pub(super) counters: Arc<Counters>,
    pub(super) fwd: Arc<Forwarder>,
    pub(super) errors: u64,
    pub(super) stop: Arc<AtomicBool>,
}

/// TUN → UDP: read a packet (with offload, a TCP or UDP super-packet of up
/// to 64 KiB), decide, and send it to the peer: a super-packet leaves as
/// segments whose headers are written here and whose payloads are sent from
/// where the read put them, one UDP GSO send per 64 KiB.
pub(super) struct Out {
    pub(super) q: Queue,
    /// Whether UDP GSO sends work (turned off at the first refusal).
    pub(super) gso: bool,
}

impl Out {
    pub(super) fn run(mut self) {
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
            let len = pkt.len();
            let table = self.q.table.load();
            match offload::from_tun(&self.q.fwd, &table, vnet, pkt) {
                FromTun::Drop(verdict) => self.q.counters.record(verdict, len),
                FromTun::Whole(to, pkt) => {
                    self.q.counters.record(Verdict::Send(to), len);
                    self.send(&[&[], pkt], 0, to);
                }
                FromTun::Segments(to, split) => {
                    self.send_split(&split, &mut headers, Verdict::Send(to), to);
                }
            }
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
pub(super) struct In {
    pub(super) q: Queue,
}

impl In {
    pub(super) fn run(mut self) {
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
