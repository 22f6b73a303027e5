//! The forwarder's table tests and a fixed-seed fuzz.

use super::Reason::*;
use super::*;

const PORT: u16 = 8285;
const A: &str = "192.0.2.2";
const B: &str = "192.0.2.3";
const STRANGER: &str = "192.0.2.99";
const POD: &str = "10.244.1.5";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn peer(subnet: &str, public_ip: &str) -> Peer {
    let subnet = subnet.parse().unwrap();
    Peer {
        subnet,
        public_ip: ip(public_ip),
    }
}

fn from(public_ip: &str) -> SocketAddrV4 {
    SocketAddrV4::new(ip(public_ip), PORT)
}

fn to(public_ip: &str) -> Verdict {
    Verdict::Send(from(public_ip))
}

fn dropped(reason: Reason) -> Verdict {
    Verdict::Drop(reason)
}

fn owner(table: &PeerTable, addr: &str) -> Option<Ipv4Addr> {
    table.lookup(ip(addr)).map(|p| p.public_ip)
}

/// An IPv4 packet of `len` bytes (UDP, TTL 64) whose total length says `len`.
fn ipv4(src: &str, dst: &str, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&ip(src).octets());
    p[16..20].copy_from_slice(&ip(dst).octets());
    p
}

fn with_total(mut p: Vec<u8>, total: u16) -> Vec<u8> {
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

/// Us: 10.244.1.0/24 in 10.244.0.0/16, with a table of peers.
struct Node {
    fwd: Forwarder,
    table: PeerTable,
}

impl Node {
    /// Node A owns 10.244.2.0/24, node B 10.244.3.0/24.
    fn two_peers() -> Self {
        Self::with(&[peer("10.244.2.0/24", A), peer("10.244.3.0/24", B)])
    }

    fn with(peers: &[Peer]) -> Self {
        let (local, network) = ("10.244.1.0/24", "10.244.0.0/16");
        let fwd = Forwarder::new(local.parse().unwrap(), network.parse().unwrap(), PORT);
        Self {
            fwd,
            table: PeerTable::new(peers),
        }
    }

    fn out(&self, packet: &[u8]) -> Verdict {
        self.fwd.outbound(&self.table, packet)
    }

    fn inn(&self, sender: &str, packet: &[u8]) -> Verdict {
        self.fwd.inbound(&self.table, from(sender), packet)
    }

    /// Our pod sends a ping-sized packet to `dst`.
    fn send_to(&self, dst: &str) -> Verdict {
        self.out(&ipv4(POD, dst, 84))
    }

    /// `sender` delivers a ping-sized packet from `src` to `dst`.
    fn recv(&self, sender: &str, src: &str, dst: &str) -> Verdict {
        self.inn(sender, &ipv4(src, dst, 84))
    }
}

#[test]
fn outbound_goes_to_the_peer_owning_the_destination() {
    let n = Node::two_peers();
    assert_eq!(n.send_to("10.244.2.7"), to(A));
    assert_eq!(n.send_to("10.244.3.7"), to(B));
    assert_eq!(n.send_to("10.244.1.9"), dropped(Local));
    assert_eq!(n.send_to("10.244.4.1"), dropped(NoRoute), "no peer owns it");
    assert_eq!(
        n.send_to("10.245.2.7"),
        dropped(NoRoute),
        "outside the network"
    );
    assert_eq!(n.send_to("8.8.8.8"), dropped(NoRoute));
}

#[test]
fn longest_prefix_wins_among_overlapping_subnets() {
    let n = Node::with(&[
        peer("10.244.8.0/21", A),
        peer("10.244.9.128/25", STRANGER),
        peer("10.244.9.0/24", B),
    ]);
    assert_eq!(n.send_to("10.244.10.1"), to(A));
    assert_eq!(n.send_to("10.244.9.1"), to(B));
    assert_eq!(n.send_to("10.244.9.200"), to(STRANGER));
    assert_eq!(n.send_to("10.244.16.1"), dropped(NoRoute));
    // A's /21 covers 10.244.9.1, but B's /24 routes it: A may not send from it.
    assert_eq!(n.recv(A, "10.244.10.1", POD), Verdict::Deliver);
    assert_eq!(n.recv(A, "10.244.9.1", POD), dropped(Spoofed));
    assert_eq!(n.recv(B, "10.244.9.1", POD), Verdict::Deliver);
    assert_eq!(n.recv(B, "10.244.9.200", POD), dropped(Spoofed));
}

#[test]
fn duplicate_subnets_first_listed_wins_and_the_other_claim_is_ignored() {
    let n = Node::with(&[peer("10.244.2.0/24", A), peer("10.244.2.0/24", B)]);
    assert_eq!(n.table.len(), 1);
    assert_eq!(owner(&n.table, "10.244.2.1"), Some(ip(A)));
    assert_eq!(n.table.subnets_of(ip(B)).count(), 0);
    assert_eq!(n.recv(B, "10.244.2.1", POD), dropped(UnknownSender));
}

#[test]
fn subnets_by_public_ip_and_host_bits_are_ignored() {
    let table = PeerTable::new(&[
        peer("10.244.5.0/24", B),
        peer("10.244.2.77/24", A),
        peer("10.244.4.0/24", A),
    ]);
    let of_a: Vec<_> = table.subnets_of(ip(A)).map(|s| s.to_string()).collect();
    assert_eq!(of_a, ["10.244.2.77/24", "10.244.4.0/24"]);
    assert_eq!(owner(&table, "10.244.2.1"), Some(ip(A)));
    assert_eq!(table.subnets_of(ip(STRANGER)).count(), 0);
    assert!(PeerTable::default().is_empty());
    assert_eq!(owner(&PeerTable::default(), "10.244.2.1"), None);
}

#[test]
fn inbound_delivers_what_a_peer_sends_from_its_own_subnet() {
    let n = Node::two_peers();
    assert_eq!(n.recv(A, "10.244.2.7", POD), Verdict::Deliver);
    assert_eq!(n.recv(B, "10.244.3.7", POD), Verdict::Deliver);
    let other_port = SocketAddrV4::new(ip(A), 40000);
    let p = ipv4("10.244.2.7", POD, 84);
    assert_eq!(n.fwd.inbound(&n.table, other_port, &p), Verdict::Deliver);
}

#[test]
fn inbound_spoofed_inner_sources_are_dropped() {
    let n = Node::two_peers();
    for src in [
        "10.244.3.7",
        "10.244.1.9",
        "10.244.9.9",
        "8.8.8.8",
        "0.0.0.0",
    ] {
        assert_eq!(n.recv(A, src, POD), dropped(Spoofed), "{src}");
    }
}

#[test]
fn inbound_from_unknown_senders_is_dropped_before_parsing() {
    let n = Node::two_peers();
    assert_eq!(n.recv(STRANGER, "10.244.2.7", POD), dropped(UnknownSender));
    assert_eq!(
        n.recv("10.244.2.7", "10.244.2.7", POD),
        dropped(UnknownSender)
    );
    assert_eq!(n.inn(STRANGER, b"junk"), dropped(UnknownSender));
    assert_eq!(n.inn(A, b"\x45junk"), dropped(Malformed));
    assert_eq!(n.inn(A, b"junk"), dropped(NotIpv4), "version 6");
}

#[test]
fn inbound_for_other_destinations_is_dropped() {
    let n = Node::two_peers();
    for dst in ["10.244.3.7", "10.244.2.8", "8.8.8.8"] {
        assert_eq!(n.recv(A, "10.244.2.7", dst), dropped(NotForUs), "{dst}");
    }
}

#[test]
fn multicast_and_broadcast_destinations() {
    let n = Node::two_peers();
    for dst in ["224.0.0.251", "239.1.2.3", "255.255.255.255"] {
        assert_eq!(n.send_to(dst), dropped(NoRoute), "{dst}");
        assert_eq!(n.recv(A, "10.244.2.7", dst), dropped(NotForUs), "{dst}");
    }
    // Subnet-directed broadcasts are ordinary addresses of the owning subnet.
    assert_eq!(n.send_to("10.244.2.255"), to(A));
    assert_eq!(n.recv(A, "10.244.2.7", "10.244.1.255"), Verdict::Deliver);
}

#[test]
fn mtu_sized_packets_pass_both_ways() {
    let n = Node::two_peers();
    assert_eq!(n.out(&ipv4(POD, "10.244.3.7", 1472)), to(B));
    assert_eq!(n.inn(B, &ipv4("10.244.3.7", POD, 1472)), Verdict::Deliver);
}

#[test]
fn gso_super_packets_go_out_with_total_length_zero_or_exact() {
    let n = Node::two_peers();
    let big = ipv4(POD, "10.244.2.7", 65535);
    assert_eq!(n.out(&big), to(A));
    assert_eq!(n.out(&with_total(big.clone(), 0)), to(A));
    let big_tcp = with_total(ipv4(POD, "10.244.2.7", 150_000), 0);
    assert_eq!(n.out(&big_tcp), to(A));
    assert_eq!(n.out(&with_total(big, 1500)), dropped(Malformed));
    // A datagram carries one real packet: total length 0 is refused inbound.
    let p = with_total(ipv4("10.244.2.7", POD, 1472), 0);
    assert_eq!(n.inn(A, &p), dropped(Malformed));
}

#[test]
fn malformed_headers_are_dropped() {
    let n = Node::two_peers();
    let good = ipv4(POD, "10.244.2.7", 60);
    let first_byte = |b: u8, len| [&[b], &ipv4(POD, "10.244.2.7", len)[1..]].concat();
    let cases = [
        ("empty", Vec::new()),
        ("shorter than a header", good[..19].to_vec()),
        ("header length 16", first_byte(0x44, 60)),
        ("header length 60 in 40 bytes", first_byte(0x4f, 40)),
        ("truncated", good[..59].to_vec()),
        ("padded", [good.as_slice(), &[0]].concat()),
        ("total length below header", with_total(good.clone(), 19)),
    ];
    for (what, p) in cases {
        assert_eq!(n.out(&p), dropped(Malformed), "{what}");
        assert_eq!(n.inn(A, &p), dropped(Malformed), "{what}");
    }
    assert_eq!(n.out(&first_byte(0x4f, 60)), to(A), "a 60-byte header fits");
    let ipv6 = first_byte(0x60, 60);
    assert_eq!(n.out(&ipv6), dropped(NotIpv4));
    assert_eq!(n.inn(A, &ipv6), dropped(NotIpv4));
}

/// xorshift64*: a fixed-seed generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbage_and_mutated_packets_never_panic() {
    let n = Node::two_peers();
    let seeds = [
        ipv4(POD, "10.244.2.7", 64),
        ipv4("10.244.2.7", POD, 64),
        with_total(ipv4(POD, "10.244.3.7", 300), 0),
    ];
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let seen = Counters::default();
    for round in 0..20_000 {
        let mut p = if round % 2 == 0 {
            seeds[rng.below(seeds.len())].clone()
        } else {
            (0..rng.below(80)).map(|_| rng.next() as u8).collect()
        };
        for _ in 0..rng.below(4) {
            if !p.is_empty() {
                let i = rng.below(p.len().min(24));
                p[i] = rng.next() as u8;
            }
        }
        if rng.below(4) == 0 {
            p.truncate(rng.below(p.len() + 1));
        }
        let sender = if rng.below(4) == 0 { STRANGER } else { A };
        let (out, inn) = (n.out(&p), n.inn(sender, &p));
        if matches!(out, Verdict::Send(_)) || inn == Verdict::Deliver {
            assert!(p.len() >= 20 && p[0] >> 4 == 4, "accepted {p:?}");
        }
        seen.record(out, p.len());
        seen.record(inn, p.len());
    }
    // The rounds reached every branch, not only the first length check.
    let t = seen.totals();
    assert!(t.packets_out > 0 && t.packets_in > 0, "{t:?}");
    for reason in Reason::ALL {
        assert!(t.drops(reason) > 0, "{reason:?} never seen");
    }
}

#[test]
fn a_stored_table_is_seen_and_a_loaded_one_stays_valid() {
    let shared = SharedTable::default();
    assert!(shared.load().is_empty());
    shared.store(Node::two_peers().table);
    let old = shared.load();
    shared.store(PeerTable::new(&[peer("10.244.2.0/24", B)]));
    let new = shared.load();
    assert_eq!(owner(&new, "10.244.2.1"), Some(ip(B)));
    assert_eq!(owner(&new, "10.244.3.1"), None);
    assert_eq!(owner(&old, "10.244.2.1"), Some(ip(A)));
    assert_eq!(old.len(), 2);
}

#[test]
fn counters_add_up_by_direction_and_reason() {
    let counters = Arc::new(Counters::default());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = Arc::clone(&counters);
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    c.record(to(A), 1472);
                    c.record(Verdict::Deliver, 100);
                    c.record(dropped(Spoofed), 60);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let t = counters.totals();
    assert_eq!((t.packets_out, t.bytes_out), (4000, 4000 * 1472));
    assert_eq!((t.packets_in, t.bytes_in), (4000, 400_000));
    assert_eq!((t.drops(Spoofed), t.drops(NoRoute)), (4000, 0));
}

#[test]
fn reasons_have_distinct_snake_case_labels_in_index_order() {
    let snake = |l: &str| {
        l.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(snake(r.label()), "{r:?}");
    }
    let mut labels: Vec<_> = Reason::ALL.iter().map(Reason::label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Reason::ALL.len());
}
