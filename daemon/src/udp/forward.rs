//! The udp backend's forwarder: bytes in, a [`Verdict`] out.
//!
//! As in boringtun, the data path is split in two. This module is the pure
//! half: it never touches a socket, the TUN device or the clock, and decides
//! each packet without allocating. The I/O shell reads batches from the TUN
//! queues and the UDP socket, asks [`Forwarder::outbound`] or
//! [`Forwarder::inbound`] about each packet, carries the verdict out and
//! feeds it to [`Counters`].
//!
//! Wire format (flannel's, IPv4 only): the UDP payload is the raw inner IPv4
//! packet, sent to `<peer public IP>:<port>` (8285 by default).
//!
//! **Peer table.** One [`PeerTable`] is built from the complete peer list on
//! every reconcile and published through [`SharedTable`] (an `ArcSwap`): the
//! hot path loads it without a lock, and a batch that loaded the old table
//! keeps it alive until the batch ends. Destinations are matched by longest
//! prefix; when two peers claim the same subnet the first one listed wins
//! (as in flannel's C proxy) and the other claim is ignored altogether.
//!
//! **Checks on receive** (no spoofing across nodes), in this order:
//! the datagram's source IP must be a current peer's public IP
//! (`unknown_sender`); the inner packet must be well formed (`malformed`);
//! the inner source must be routed back to that same peer by the table
//! (strict reverse-path check: a source in our own subnet, in no peer's
//! subnet, or in a more specific subnet of another peer is `spoofed`); the
//! inner destination must lie in our own subnet (`not_for_us`, which also
//! covers multicast and limited broadcast). The source port is not checked:
//! flannel only ever trusted the address.
//!
//! **GSO.** With `IFF_VNET_HDR` the TUN hands over TCP super-packets of up to
//! 64 KiB (more with BIG TCP, whose IPv4 total length is 0). Outbound, the
//! total length may therefore be 0 or must equal the buffer length; only the
//! addresses are read. Inbound, a datagram carries one real packet and its
//! total length must match exactly.
//!
//! Not done here, unlike flannel's proxy: TTL decrement (the kernel already
//! decrements it when it forwards into and out of `flannel0`), ICMP
//! unreachable replies (the shell may answer `no_route`), and the header
//! checksum (the kernel verifies it when the packet is written to the TUN).

use std::cmp::Reverse;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use ipnetwork::Ipv4Network;

/// A remote node: the pod subnet it owns and where its udp backend listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
}

/// The peers of one reconcile, immutable once built.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// One level per prefix length present, longest first.
    levels: Vec<Level>,
    /// Kept peers sorted by public IP, for the receive-side checks.
    by_public: Vec<Peer>,
}

#[derive(Debug)]
struct Level {
    mask: u32,
    /// Sorted by network address (the subnet with its host bits cleared).
    peers: Vec<(u32, Peer)>,
}

impl PeerTable {
    /// Builds the table; a subnet already claimed by an earlier peer is ignored.
    pub fn new(peers: &[Peer]) -> Self {
        let mut levels: Vec<Level> = Vec::new();
        for &peer in peers {
            let mask = u32::from(peer.subnet.mask());
            let entry = (u32::from(peer.subnet.ip()) & mask, peer);
            match levels.iter_mut().find(|l| l.mask == mask) {
                Some(level) => level.peers.push(entry),
                None => levels.push(Level {
                    mask,
                    peers: vec![entry],
                }),
            }
        }
        for level in &mut levels {
            // A stable sort keeps the first listed of equal subnets first.
            level.peers.sort_by_key(|&(key, _)| key);
            level.peers.dedup_by_key(|&mut (key, _)| key);
        }
        // Longer masks are numerically larger.
        levels.sort_unstable_by_key(|l| Reverse(l.mask));
        let mut by_public: Vec<Peer> = levels
            .iter()
            .flat_map(|l| l.peers.iter().map(|&(_, peer)| peer))
            .collect();
        by_public.sort_by_key(|p| p.public_ip);
        Self { levels, by_public }
    }

    /// The peer owning `addr`, by longest prefix match.
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<&Peer> {
        let addr = u32::from(addr);
        self.levels.iter().find_map(|level| {
            let key = addr & level.mask;
            let i = level.peers.binary_search_by_key(&key, |&(k, _)| k).ok()?;
            level.peers.get(i).map(|(_, peer)| peer)
        })
    }

    /// The subnets the node at `public_ip` owns in this table (none: not a peer).
    pub fn subnets_of(&self, public_ip: Ipv4Addr) -> impl Iterator<Item = Ipv4Network> + '_ {
        let start = self.by_public.partition_point(|p| p.public_ip < public_ip);
        self.by_public[start..]
            .iter()
            .take_while(move |p| p.public_ip == public_ip)
            .map(|p| p.subnet)
    }

    /// Number of routed subnets.
    pub fn len(&self) -> usize {
        self.by_public.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_public.is_empty()
    }
}

/// The current [`PeerTable`], replaced whole by the reconcile loop and read
/// without a lock by the data path.
#[derive(Debug, Default)]
pub struct SharedTable(ArcSwap<PeerTable>);

impl SharedTable {
    pub fn new(table: PeerTable) -> Self {
        Self(ArcSwap::from_pointee(table))
    }

    /// Publishes a new table; readers holding the old one keep it until they drop it.
    pub fn store(&self, table: PeerTable) {
        self.0.store(Arc::new(table));
    }

    /// The current table, for one batch of packets (lock-free, no allocation).
    pub fn load(&self) -> Guard<Arc<PeerTable>> {
        self.0.load()
    }
}

/// Why a packet was dropped; [`Reason::label`] is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An IPv4 packet shorter than its header, or lengths that do not add up.
    Malformed,
    /// Not IPv4: this backend carries IPv4 only (as flannel's). The
    /// kernel's own IPv6 chatter on `flannel0` (a router solicitation when
    /// it comes up) lands here.
    NotIpv4,
    /// Outbound to our own subnet: that traffic belongs on the bridge.
    Local,
    /// Outbound outside the pod network, or to a subnet no peer owns.
    NoRoute,
    /// Inbound from an address that is no current peer's public IP.
    UnknownSender,
    /// Inbound whose inner source the table does not route to the sender.
    Spoofed,
    /// Inbound whose inner destination is outside our subnet.
    NotForUs,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Malformed,
        Reason::NotIpv4,
        Reason::Local,
        Reason::NoRoute,
        Reason::UnknownSender,
        Reason::Spoofed,
        Reason::NotForUs,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::NotIpv4 => "not_ipv4",
            Reason::Local => "local_destination",
            Reason::NoRoute => "no_route",
            Reason::UnknownSender => "unknown_sender",
            Reason::Spoofed => "spoofed_source",
            Reason::NotForUs => "not_for_us",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the I/O shell does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the packet, unchanged, as the payload of a datagram to this address.
    Send(SocketAddrV4),
    /// Write the packet to the TUN device.
    Deliver,
    /// Drop the packet; the reason is counted.
    Drop(Reason),
}

/// This node's view: its own subnet, the pod network, the backend's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarder {
    local_subnet: Ipv4Network,
    network: Ipv4Network,
    port: u16,
}

impl Forwarder {
    pub fn new(local_subnet: Ipv4Network, network: Ipv4Network, port: u16) -> Self {
        Self {
            local_subnet,
            network,
            port,
        }
    }

    /// A packet read from the TUN device (a GSO super-packet included).
    pub fn outbound(&self, table: &PeerTable, packet: &[u8]) -> Verdict {
        let (_, dst) = match addresses(packet, true) {
            Ok(a) => a,
            Err(r) => return Verdict::Drop(r),
        };
        if self.local_subnet.contains(dst) {
            return Verdict::Drop(Reason::Local);
        }
        if !self.network.contains(dst) {
            return Verdict::Drop(Reason::NoRoute);
        }
        match table.lookup(dst) {
            Some(peer) => Verdict::Send(SocketAddrV4::new(peer.public_ip, self.port)),
            None => Verdict::Drop(Reason::NoRoute),
        }
    }

    /// A datagram received on the UDP socket from `from`.
    pub fn inbound(&self, table: &PeerTable, from: SocketAddrV4, packet: &[u8]) -> Verdict {
        let sender = *from.ip();
        if table.subnets_of(sender).next().is_none() {
            return Verdict::Drop(Reason::UnknownSender);
        }
        let (src, dst) = match addresses(packet, false) {
            Ok(a) => a,
            Err(r) => return Verdict::Drop(r),
        };
        if self.local_subnet.contains(src)
            || table.lookup(src).is_none_or(|p| p.public_ip != sender)
        {
            return Verdict::Drop(Reason::Spoofed);
        }
        if !self.local_subnet.contains(dst) {
            return Verdict::Drop(Reason::NotForUs);
        }
        Verdict::Deliver
    }
}

/// Source and destination of a consistent IPv4 header. The total length must
/// equal the buffer's, or be 0 when `gso` (a super-packet from the TUN).
fn addresses(packet: &[u8], gso: bool) -> Result<(Ipv4Addr, Ipv4Addr), Reason> {
    if packet.first().is_some_and(|b| b >> 4 != 4) {
        return Err(Reason::NotIpv4);
    }
    let h: &[u8; 20] = packet.first_chunk().ok_or(Reason::Malformed)?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let lengths_ok =
        (20..=packet.len()).contains(&header_len) && (total == packet.len() || (gso && total == 0));
    if !lengths_ok {
        return Err(Reason::Malformed);
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    Ok((src, dst))
}

/// Data-path totals, shared lock-free by the I/O shell and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    drops: [AtomicU64; Reason::ALL.len()],
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    drops: [u64; Reason::ALL.len()],
}

impl Totals {
    pub fn drops(&self, reason: Reason) -> u64 {
        self.drops[reason.index()]
    }
}

impl Counters {
    /// Counts one packet of `bytes` (its inner IP length) by its verdict: a
    /// `Send` is outgoing, a `Deliver` incoming.
    pub fn record(&self, verdict: Verdict, bytes: usize) {
        let (packets, octets) = match verdict {
            Verdict::Send(_) => (&self.packets_out, &self.bytes_out),
            Verdict::Deliver => (&self.packets_in, &self.bytes_in),
            Verdict::Drop(reason) => {
                self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        packets.fetch_add(1, Ordering::Relaxed);
        octets.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            packets_in: self.packets_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests;
