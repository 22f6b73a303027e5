//! Segmentation and coalescing, checked against the RFC 1071 sum and round trips.

use super::*;

/// Reference checksum: 16-bit big-endian words, RFC 1071.
fn reference(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An IPv4 TCP packet from 10.244.1.5:40000 to 10.244.2.7:5201.
fn tcp_packet(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hl = 20 + 20 + options.len();
    let mut p = vec![0u8; hl];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&7u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = TCP;
    p[12..16].copy_from_slice(&[10, 244, 1, 5]);
    p[16..20].copy_from_slice(&[10, 244, 2, 7]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&99u32.to_be_bytes());
    p[32] = (((20 + options.len()) / 4) << 4) as u8;
    p[33] = flags;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p[40..].copy_from_slice(options);
    p.extend_from_slice(payload);
    set_ip_checksum(&mut p, 20);
    let c = !fold(sum(&p[20..], pseudo(&p, p.len() - 20)));
    p[36..38].copy_from_slice(&c.to_ne_bytes());
    p
}

fn tcp_checksum_ok(p: &[u8]) -> bool {
    fold(sum(&p[20..], pseudo(p, p.len() - 20))) == 0xffff
}

fn ip_checksum_ok(p: &[u8]) -> bool {
    reference(&p[..20]) == 0xffff
}

#[test]
fn the_fast_sum_agrees_with_rfc_1071_for_every_length_and_offset() {
    let data = bytes(7, 3000);
    for start in 0..4 {
        for len in (0..200).chain([1419, 1420, 1421, 2995]) {
            let d = &data[start..start + len];
            let ours = u16::from_be_bytes(fold(sum(d, 0)).to_ne_bytes());
            assert_eq!(ours, reference(d), "start {start} len {len}");
        }
    }
    // A 64 KiB run of 0xff cannot overflow the accumulator.
    assert_eq!(fold(sum(&[0xff; 65536], 0)), 0xffff);
}

#[test]
fn a_partial_checksum_is_completed_in_place() {
    let mut p = tcp_packet(1, ACK, &[], &bytes(3, 777));
    let good = p.clone();
    // What the kernel hands over with NEEDS_CSUM: the pseudo-header sum.
    let partial = fold(pseudo(&p, p.len() - 20));
    p[36..38].copy_from_slice(&partial.to_ne_bytes());
    assert!(complete_checksum(&mut p, 20, 16));
    assert_eq!(p, good);
    assert!(!complete_checksum(&mut p[..30], 20, 16));
}

#[test]
fn a_super_packet_splits_into_valid_segments_that_coalesce_back() {
    let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamp
    let payload = bytes(11, 65_000);
    let mut sup = tcp_packet(1_000_000, ACK | PSH | CWR, &opts, &payload);
    sup[2..4].fill(0); // a TUN super-packet may carry total length 0
    let split = Split::new(&sup, 1408).unwrap();
    assert_eq!(split.count(), 65_000usize.div_ceil(1408));
    assert_eq!(split.header_len(), 52);
    assert_eq!(split.segment_len(), 1460);
    let mut segs = Vec::new();
    for i in 0..split.count() {
        let mut h = [0u8; 120];
        split.header(i, &mut h);
        let mut s = h[..split.header_len()].to_vec();
        s.extend_from_slice(split.payload(i));
        assert!(ip_checksum_ok(&s) && tcp_checksum_ok(&s), "segment {i}");
        assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
        assert_eq!(seq(&s, 20), 1_000_000 + (i * 1408) as u32);
        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 7 + i as u16);
        let last = i + 1 == split.count();
        assert_eq!(s[33] & PSH != 0, last, "PSH only on the last");
        assert_eq!(s[33] & CWR != 0, i == 0, "CWR only on the first");
        segs.push(s);
    }
    assert_eq!(segs.last().unwrap().len(), 52 + 65_000 % 1408);
    // Received again: one group, and the merged header describes it.
    let views: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
    // CWR on the first makes its flags not plain ACK: it goes alone.
    assert_eq!(groups(&views), vec![1, segs.len() - 1]);
    let rest = &views[1..];
    let mut h = [0u8; 120];
    let (vnet, hl) = merged_header(rest, &mut h);
    assert_eq!(hl, 52);
    assert_eq!(
        vnet,
        VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1408,
            csum_start: 20,
            csum_offset: 16
        }
    );
    // The kernel's view: header + payloads, checksum completed.
    let mut merged = h[..hl].to_vec();
    for s in rest {
        merged.extend_from_slice(&s[hl..]);
    }
    assert_eq!(&merged[hl..], &payload[1408..]);
    assert!(ip_checksum_ok(&merged));
    assert!(complete_checksum(&mut merged, 20, 16));
    assert!(tcp_checksum_ok(&merged));
    assert_eq!(merged[33] & PSH, PSH, "the last segment's PSH is kept");
    assert_eq!(seq(&merged, 20), 1_000_000 + 1408);
}

#[test]
fn a_udp_super_packet_splits_into_valid_datagrams() {
    let payload = bytes(5, 5000);
    let mut sup = tcp_packet(0, 0, &[], &[]);
    sup.truncate(28);
    sup[9] = UDP;
    sup[20..28].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 0]);
    sup.extend_from_slice(&payload);
    let total = (sup.len() as u16).to_be_bytes();
    sup[2..4].copy_from_slice(&total);
    let split = Split::new(&sup, 1200).unwrap();
    assert_eq!((split.count(), split.header_len()), (5, 28));
    for i in 0..5 {
        let mut h = [0u8; 64];
        split.header(i, &mut h);
        let mut d = h[..28].to_vec();
        d.extend_from_slice(split.payload(i));
        assert!(ip_checksum_ok(&d));
        assert_eq!(
            usize::from(u16::from_be_bytes([d[24], d[25]])),
            d.len() - 20
        );
        assert_eq!(
            fold(sum(&d[20..], pseudo(&d, d.len() - 20))),
            0xffff,
            "UDP checksum {i}"
        );
    }
    assert_eq!(split.payload(4), &payload[4800..]);
    assert_eq!(groups(&[&sup, &sup]), vec![1, 1], "UDP is never coalesced");
}

#[test]
fn only_continuing_segments_of_one_flow_coalesce() {
    let p =
        |seq: u32, flags: u8, len: usize| tcp_packet(seq, flags, &[], &bytes(u64::from(seq), len));
    let run = [
        p(0, ACK, 100),
        p(100, ACK, 100),
        p(200, ACK, 100),
        p(300, ACK | PSH, 40),
        p(340, ACK, 100),
    ];
    let v: Vec<&[u8]> = run.iter().map(|s| s.as_slice()).collect();
    assert_eq!(groups(&v), vec![4, 1], "PSH ends a group");
    let gap = [p(0, ACK, 100), p(150, ACK, 100)];
    let v: Vec<&[u8]> = gap.iter().map(|s| s.as_slice()).collect();
    assert_eq!(groups(&v), vec![1, 1], "a sequence gap");
    let short = [p(0, ACK, 100), p(100, ACK, 50), p(150, ACK, 50)];
    let v: Vec<&[u8]> = short.iter().map(|s| s.as_slice()).collect();
    assert_eq!(groups(&v), vec![2, 1], "a shorter segment is the last");
    let longer = [p(0, ACK, 100), p(100, ACK, 150)];
    let v: Vec<&[u8]> = longer.iter().map(|s| s.as_slice()).collect();
    assert_eq!(groups(&v), vec![1, 1], "a longer one cannot follow");
    let syn = [p(0, ACK | 0x02, 100), p(100, ACK, 100)];
    let v: Vec<&[u8]> = syn.iter().map(|s| s.as_slice()).collect();
    assert_eq!(groups(&v), vec![1, 1], "other flags go alone");
    let mut other_port = p(100, ACK, 100);
    other_port[21] ^= 1;
    let mut bad_sum = p(100, ACK, 100);
    bad_sum[60] ^= 0xff;
    let mut other_window = p(100, ACK, 100);
    other_window[35] ^= 1;
    let mut other_ttl = p(100, ACK, 100);
    other_ttl[8] -= 1;
    for (what, second) in [
        ("another port", other_port),
        ("a bad TCP checksum", bad_sum),
        ("another window", other_window),
        ("another TTL", other_ttl),
    ] {
        let first = p(0, ACK, 100);
        assert_eq!(groups(&[&first, &second]), vec![1, 1], "{what}");
    }
    let ts = |v: u8| [1, 1, 8, 10, 0, 0, 0, v, 0, 0, 0, 0];
    let a = tcp_packet(0, ACK, &ts(1), &[1; 100]);
    let b = tcp_packet(100, ACK, &ts(2), &[1; 100]);
    let c = tcp_packet(100, ACK, &ts(1), &[1; 100]);
    assert_eq!(groups(&[&a, &b]), vec![1, 1], "other options");
    assert_eq!(groups(&[&a, &c]), vec![2]);
    let udp = {
        let mut u = p(0, ACK, 100);
        u[9] = 17;
        u
    };
    assert_eq!(groups(&[&udp, &udp]), vec![1, 1]);
    let many: Vec<Vec<u8>> = (0..70).map(|i| p(i * 100, ACK, 100)).collect();
    let v: Vec<&[u8]> = many.iter().map(|s| s.as_slice()).collect();
    assert_eq!(groups(&v), vec![64, 6], "at most 64 per group");
    assert_eq!(groups::<&[u8]>(&[]), Vec::<usize>::new());
}

#[test]
fn garbage_never_panics() {
    for seed in 0..2000u64 {
        let mut a = tcp_packet(0, ACK, &[], &bytes(seed, (seed % 300) as usize));
        let len = a.len();
        let junk = bytes(seed ^ 0x5555, 8);
        a[(seed as usize * 7) % len] = junk[0];
        a.truncate(len - (seed as usize % 3));
        let _ = Split::new(&a, 1 + (seed as usize % 200)).map(|s| {
            let mut h = [0u8; 128];
            for i in 0..s.count() {
                s.header(i, &mut h);
                let _ = s.payload(i);
            }
        });
        let v: Vec<&[u8]> = vec![&a, &a, &junk];
        let g = groups(&v);
        assert_eq!(g.iter().sum::<usize>(), 3);
        let mut start = 0;
        for n in g {
            if n > 1 {
                let mut h = [0u8; 128];
                merged_header(&v[start..start + n], &mut h);
            }
            start += n;
        }
    }
}
