//! The udp backend's data path on bytes: what the TUN device hands over
//! (a virtio-net header and a packet, maybe a TCP super-packet) and what a
//! peer's datagram brings.

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;
use weftd::udp::forward::{Forwarder, Peer, PeerTable, Verdict};
use weftd::udp::offload::{self, FromTun, VNET_HDR_LEN, VnetHdr};

const PORT: u16 = 8285;
const US: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn local() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap()
}

fn network() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap()
}

/// Whether an IPv4 header's checksum verifies.
fn header_sums(h: &[u8]) -> bool {
    offload::fold(offload::sum(h, 0)) == 0xffff
}

/// Byte 0: how many peers (0 to 7), then 4 bytes each (their subnet's
/// third and fourth octets, its prefix, their public IP's last octet; one
/// overlapping our subnet is left out, as arbitration leaves it out);
/// then a virtio-net header and the packet. The packet goes out as the
/// TUN read would send it, and comes in as a peer's datagram cut by a
/// segment size (the header's first two bytes) as GRO would hand it.
///
/// Checks, out: a sent packet goes to a peer's port; a super-packet's
/// segments each carry a correct IPv4 total length and header checksum,
/// their payloads are the super-packet's in order, and when its source is
/// ours the peer's forwarder delivers every segment; the segments then
/// coalesce into groups whose merged headers add up. In: groups cover the
/// delivered packets and merged headers add up.
pub fn udp_path(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8);
    if rest.len() < n * 4 + VNET_HDR_LEN {
        return;
    }
    let (peer_bytes, rest) = rest.split_at(n * 4);
    let peers: Vec<Peer> = peer_bytes
        .chunks(4)
        .filter_map(|c| {
            let subnet =
                Ipv4Network::new(Ipv4Addr::new(10, 244, c[0], c[1]), 16 + c[2] % 17).ok()?;
            let subnet = Ipv4Network::new(subnet.network(), subnet.prefix()).ok()?;
            // Arbitration never lets a peer overlap our own subnet.
            if subnet.contains(local().network()) || local().contains(subnet.network()) {
                return None;
            }
            Some(Peer {
                subnet,
                public_ip: Ipv4Addr::new(198, 51, 100, c[3]),
            })
        })
        .collect();
    let (hdr, pkt) = rest.split_at(VNET_HDR_LEN);
    let fwd = Forwarder::new(local(), network(), PORT);
    let table = PeerTable::new(&peers);
    let vnet = VnetHdr::parse(hdr).unwrap_or_default();
    let mut out = pkt.to_vec();
    match offload::from_tun(&fwd, &table, vnet, &mut out) {
        FromTun::Drop(v) => assert!(matches!(v, Verdict::Drop(_)), "{v:?}"),
        FromTun::Whole(to, _) => {
            assert_eq!(to.port(), PORT);
            assert!(peers.iter().any(|p| p.public_ip == *to.ip()));
        }
        FromTun::Segments(to, split) => {
            let segs = segments(&split);
            let hl = split.header_len();
            let payload: Vec<u8> = segs.iter().flat_map(|s| s[hl..].to_vec()).collect();
            assert_eq!(payload[..], pkt[hl..hl + payload.len()]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let peer = table.lookup(dst).unwrap();
            assert_eq!(*to.ip(), peer.public_ip);
            if local().contains(src) {
                let them = Forwarder::new(peer.subnet, network(), PORT);
                let back = PeerTable::new(&[Peer {
                    subnet: local(),
                    public_ip: US,
                }]);
                for s in &segs {
                    let v = them.inbound(&back, SocketAddrV4::new(US, PORT), s);
                    assert_eq!(v, Verdict::Deliver, "segment {s:?}");
                }
            }
            coalesce(&segs);
        }
    }
    // In: the same bytes as a datagram from the first peer.
    let Some(first) = peers.first() else { return };
    let seg = usize::from(u16::from_le_bytes([hdr[0], hdr[1]])).max(1);
    let delivered: Vec<&[u8]> = pkt
        .chunks(seg)
        .filter(|c| {
            fwd.inbound(&table, SocketAddrV4::new(first.public_ip, PORT), c) == Verdict::Deliver
        })
        .collect();
    coalesce(&delivered);
}

/// The segments a split sends, headers written as the pump writes them.
fn segments(split: &offload::Split<'_>) -> Vec<Vec<u8>> {
    let hl = split.header_len();
    assert!(split.count() >= 1);
    (0..split.count())
        .map(|i| {
            let mut h = [0u8; 128];
            split.header(i, &mut h);
            let mut s = h[..hl].to_vec();
            s.extend_from_slice(split.payload(i));
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            let ip_hl = usize::from(s[0] & 0x0f) * 4;
            assert!(header_sums(&s[..ip_hl]), "segment {i}: IP checksum");
            s
        })
        .collect()
}

/// Groups `packets` as the receive path does and checks each merged header.
fn coalesce<P: AsRef<[u8]>>(packets: &[P]) {
    let groups = offload::groups(packets);
    assert_eq!(groups.iter().sum::<usize>(), packets.len());
    let mut at = 0;
    for n in groups {
        assert!(n >= 1);
        let group = &packets[at..at + n];
        at += n;
        if n == 1 {
            continue;
        }
        let mut header = [0u8; 128];
        let (vnet, hl) = offload::merged_header(group, &mut header);
        let total: usize = hl + group.iter().map(|p| p.as_ref().len() - hl).sum::<usize>();
        assert_eq!(
            usize::from(u16::from_be_bytes([header[2], header[3]])),
            total
        );
        assert!(header_sums(&header[..20]));
        assert_eq!(usize::from(vnet.gso_size), group[0].as_ref().len() - hl);
    }
}
