//! TCP segmentation and coalescing for the udp backend, done in place:
//! pure functions over packet bytes, tested without a device.
//!
//! With `IFF_VNET_HDR` and TSO on, the TUN device hands over TCP
//! super-packets (up to 64 KiB, one virtio-net header in front). flannel's
//! wire format carries one ordinary IP packet per datagram, so each must be
//! cut into MTU-sized segments; here only the segments' *headers* are
//! written (a few dozen bytes each), and the payload is sent from where the
//! device put it: the send is a list of (header, payload slice) pairs that
//! one UDP GSO `sendmsg` turns into datagrams. The other way, segments that
//! continue one another (same flow, next sequence number, same flags and
//! options) are written to the TUN device as one super-packet: one fresh
//! header, then the payloads where the UDP receive put them (`writev`), with
//! a partial checksum the kernel completes (`NEEDS_CSUM`), as its own GRO
//! would.

use std::net::SocketAddrV4;

use super::forward::{Forwarder, PeerTable, Reason, Verdict};

/// Length of the virtio-net header in front of each TUN packet.
pub const VNET_HDR_LEN: usize = 10;
/// virtio-net header flag: the checksum at csum_start + csum_offset is
/// partial (pseudo-header only).
pub const NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// UDP segmentation (USO, Linux 6.2+), IPv4 or IPv6 alike.
pub const GSO_UDP_L4: u8 = 5;
/// Flag in gso_type: the flow uses ECN (CWR only on the first segment).
pub const GSO_ECN: u8 = 0x80;
/// Most segments one super-packet may hold (the kernel's UDP GSO limit too).
pub const MAX_SEGMENTS: usize = 64;

const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;

/// The virtio-net header (little-endian fields, as the TUN device uses on
/// little-endian hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.first_chunk()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Adds `data` to a running one's-complement sum (in the host's byte
/// order: store the folded result with `to_ne_bytes` and the bytes come
/// out right, RFC 1071 §2(B)). Four bytes per step into a 64-bit
/// accumulator, which the compiler vectorises.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a, b, c] => {
            acc + u64::from(u16::from_ne_bytes([a, b])) + u64::from(u16::from_ne_bytes([c, 0]))
        }
        [a, b] => acc + u64::from(u16::from_ne_bytes([a, b])),
        [a] => acc + u64::from(u16::from_ne_bytes([a, 0])),
        _ => acc,
    }
}

/// The 16-bit one's-complement sum of `acc` (not inverted).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 pseudo-header's sum (protocol from the IP header).
fn pseudo(ip: &[u8], l4_len: usize) -> u64 {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&ip[12..20]);
    p[9] = ip[9];
    p[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
    sum(&p, 0)
}

fn set_ip_checksum(h: &mut [u8], ip_hl: usize) {
    h[10..12].fill(0);
    let c = !fold(sum(&h[..ip_hl], 0));
    h[10..12].copy_from_slice(&c.to_ne_bytes());
}

/// Completes a partial checksum in place: the one's-complement sum from
/// `start` to the end, stored inverted at `start + offset` (what the kernel
/// leaves to the "hardware" for NEEDS_CSUM). False when out of bounds.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    if start + offset + 2 > pkt.len() {
        return false;
    }
    let c = !fold(sum(&pkt[start..], 0));
    pkt[start + offset..start + offset + 2].copy_from_slice(&c.to_ne_bytes());
    true
}

/// An IPv4 TCP or UDP packet's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct L4 {
    /// IP header length.
    ip_hl: usize,
    /// IP + TCP (or UDP) header length.
    hl: usize,
    /// Where the payload ends (the IP total length, or the buffer's end
    /// for a super-packet with total length 0).
    end: usize,
    udp: bool,
}

impl L4 {
    fn parse(p: &[u8], gso: bool) -> Option<L4> {
        let h: &[u8; 20] = p.first_chunk()?;
        let udp = h[9] == UDP;
        if h[0] >> 4 != 4 || !(h[9] == TCP || udp) {
            return None;
        }
        let ip_hl = usize::from(h[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let end = if gso && total == 0 { p.len() } else { total };
        let l4_min = if udp { 8 } else { 20 };
        if ip_hl < 20 || end > p.len() || ip_hl + l4_min > end {
            return None;
        }
        let hl = if udp {
            ip_hl + 8
        } else {
            ip_hl + usize::from(p[ip_hl + 12] >> 4) * 4
        };
        (hl >= ip_hl + l4_min && hl <= end).then_some(L4 {
            ip_hl,
            hl,
            end,
            udp,
        })
    }

    fn payload_len(&self) -> usize {
        self.end - self.hl
    }
}

fn seq(p: &[u8], ip_hl: usize) -> u32 {
    u32::from_be_bytes([p[ip_hl + 4], p[ip_hl + 5], p[ip_hl + 6], p[ip_hl + 7]])
}

/// A TCP (TSO) or UDP (USO) super-packet from the TUN device, to be sent
/// as segments of `gso_size` payload bytes each.
#[derive(Debug)]
pub struct Split<'a> {
    pkt: &'a [u8],
    l4: L4,
    gso: usize,
    count: usize,
}

impl<'a> Split<'a> {
    /// None when `pkt` is not an IPv4 TCP or UDP packet with consistent
    /// lengths, or `gso_size` is 0.
    pub fn new(pkt: &'a [u8], gso_size: usize) -> Option<Split<'a>> {
        let l4 = L4::parse(pkt, true)?;
        if gso_size == 0 || l4.payload_len() == 0 {
            return None;
        }
        let count = l4.payload_len().div_ceil(gso_size);
        Some(Split {
            pkt,
            l4,
            gso: gso_size,
            count,
        })
    }

    /// Number of segments.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Header length (IP + TCP): each segment is this plus its payload.
    pub fn header_len(&self) -> usize {
        self.l4.hl
    }

    /// Segment size on the wire, for all but the last segment.
    pub fn segment_len(&self) -> usize {
        self.l4.hl + self.gso
    }

    /// Segment `i`'s payload, where it lies in the super-packet.
    pub fn payload(&self, i: usize) -> &'a [u8] {
        let start = self.l4.hl + i * self.gso;
        &self.pkt[start..(start + self.gso).min(self.l4.end)]
    }

    /// Writes segment `i`'s IP and TCP (or UDP) header into `out` (at
    /// least `header_len()` bytes): lengths, IP ID and checksum; for TCP the
    /// sequence number and flags (FIN and PSH only on the last, CWR only on
    /// the first); the full TCP or UDP checksum over header and payload.
    pub fn header(&self, i: usize, out: &mut [u8]) {
        let L4 { ip_hl, hl, udp, .. } = self.l4;
        let h = &mut out[..hl];
        h.copy_from_slice(&self.pkt[..hl]);
        let payload = self.payload(i);
        h[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
        let id = u16::from_be_bytes([h[4], h[5]]).wrapping_add(i as u16);
        h[4..6].copy_from_slice(&id.to_be_bytes());
        set_ip_checksum(h, ip_hl);
        let l4_len = hl - ip_hl + payload.len();
        let at = if udp {
            h[ip_hl + 4..ip_hl + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip_hl + 6
        } else {
            let s = seq(self.pkt, ip_hl).wrapping_add((i * self.gso) as u32);
            h[ip_hl + 4..ip_hl + 8].copy_from_slice(&s.to_be_bytes());
            if i + 1 < self.count {
                h[ip_hl + 13] &= !(FIN | PSH);
            }
            if i > 0 {
                h[ip_hl + 13] &= !CWR;
            }
            ip_hl + 16
        };
        h[at..at + 2].fill(0);
        let mut c = !fold(sum(payload, sum(&h[ip_hl..], pseudo(h, l4_len))));
        if udp && c == 0 {
            c = 0xffff; // 0 would mean "no checksum"
        }
        h[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    }
}

/// Whether `p` (a datagram's packet) may start a coalesced super-packet:
/// IPv4 without options or fragmentation, TCP with payload, ACK (and maybe
/// PSH) as its only flags, and a correct TCP checksum (coalescing replaces
/// it with one the kernel trusts, so a bad one must not slip through).
fn coalescable(p: &[u8]) -> Option<L4> {
    let t = L4::parse(p, false).filter(|t| !t.udp)?;
    let flags = p[t.ip_hl + 13];
    let ok = t.ip_hl == 20
        && t.end == p.len()
        && u16::from_be_bytes([p[6], p[7]]) & 0x3fff == 0
        && t.payload_len() > 0
        && (flags == ACK || flags == ACK | PSH)
        && fold(sum(&p[20..], pseudo(p, p.len() - 20))) == 0xffff;
    ok.then_some(t)
}

/// Groups of consecutive packets that can be written as one super-packet:
/// the same flow and headers (addresses, TOS, TTL, DF, ports, ACK number,
/// window, options), each starting where the previous ended, all but the
/// last full-size, at most 64 and 64 KiB; a PSH or a shorter segment ends
/// a group. Returns the group lengths, covering `packets` in order.
pub fn groups<P: AsRef<[u8]>>(packets: &[P]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < packets.len() {
        let first = packets[i].as_ref();
        let mut n = 1;
        if let Some(t) = coalescable(first) {
            let gso = t.payload_len();
            let mut total = gso;
            let mut prev = first;
            let mut prev_len = gso;
            while i + n < packets.len() && n < MAX_SEGMENTS {
                let next = packets[i + n].as_ref();
                if prev[33] & PSH != 0 || prev_len != gso {
                    break;
                }
                let Some(nt) = coalescable(next) else { break };
                let len = nt.payload_len();
                let same = nt.hl == t.hl
                    && next[1] == first[1]
                    && next[6] & 0x40 == first[6] & 0x40
                    && next[8] == first[8]
                    && next[12..20] == first[12..20]
                    && next[20..24] == first[20..24]
                    && next[28..32] == first[28..32]
                    && next[34..36] == first[34..36]
                    && next[40..t.hl] == first[40..t.hl];
                if !same
                    || seq(next, 20) != seq(prev, 20).wrapping_add(prev_len as u32)
                    || len > gso
                    || t.hl + total + len > 65_535
                {
                    break;
                }
                total += len;
                prev = next;
                prev_len = len;
                n += 1;
            }
        }
        out.push(n);
        i += n;
    }
    out
}

/// The header of the super-packet made of `group` (at least two packets
/// from `groups`), into `out`: the first packet's header with the total
/// length, a fresh IP checksum, the last packet's PSH, and the TCP
/// pseudo-header sum for the kernel to complete; and the virtio-net header
/// that says so. Returns the header length.
pub fn merged_header<P: AsRef<[u8]>>(group: &[P], out: &mut [u8]) -> (VnetHdr, usize) {
    let first = group[0].as_ref();
    let hl = 20 + usize::from(first[32] >> 4) * 4;
    let payload: usize = group.iter().map(|p| p.as_ref().len() - hl).sum();
    let h = &mut out[..hl];
    h.copy_from_slice(&first[..hl]);
    h[2..4].copy_from_slice(&((hl + payload) as u16).to_be_bytes());
    set_ip_checksum(h, 20);
    if let Some(last) = group.last() {
        h[33] |= last.as_ref()[33] & PSH;
    }
    let partial = fold(pseudo(h, hl - 20 + payload));
    h[36..38].copy_from_slice(&partial.to_ne_bytes());
    let vnet = VnetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: hl as u16,
        gso_size: (first.len() - hl) as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (vnet, hl)
}

/// What becomes of one frame read from the TUN device.
#[derive(Debug)]
pub enum FromTun<'a> {
    /// Not sent: the verdict to count (a drop and its reason).
    Drop(Verdict),
    /// Sent as it is, as one datagram.
    Whole(SocketAddrV4, &'a [u8]),
    /// A super-packet, sent as these segments.
    Segments(SocketAddrV4, Split<'a>),
}

/// Decides one frame read from the TUN device: `vnet` is its virtio-net
/// header (all zero without offload), `pkt` the packet after it, whose
/// checksum is completed here when the header asks for it.
pub fn from_tun<'a>(
    fwd: &Forwarder,
    table: &PeerTable,
    vnet: VnetHdr,
    pkt: &'a mut [u8],
) -> FromTun<'a> {
    let verdict = match vnet.gso_type & !GSO_ECN {
        GSO_NONE
            if vnet.flags & NEEDS_CSUM != 0
                && !complete_checksum(
                    pkt,
                    usize::from(vnet.csum_start),
                    usize::from(vnet.csum_offset),
                ) =>
        {
            Verdict::Drop(Reason::Malformed)
        }
        GSO_NONE | GSO_TCPV4 | GSO_UDP_L4 => fwd.outbound(table, pkt),
        // IPv6 super-packets: this backend carries IPv4 only.
        _ => Verdict::Drop(Reason::NotIpv4),
    };
    let Verdict::Send(to) = verdict else {
        return FromTun::Drop(verdict);
    };
    let pkt: &'a [u8] = pkt;
    if vnet.gso_type == GSO_NONE {
        return FromTun::Whole(to, pkt);
    }
    match Split::new(pkt, usize::from(vnet.gso_size)) {
        Some(split) => FromTun::Segments(to, split),
        None => FromTun::Drop(Verdict::Drop(Reason::Malformed)),
    }
}

#[cfg(test)]
mod tests;
