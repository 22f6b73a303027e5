//! Which of the port's sockets (one per TUN queue) a datagram goes to.
//!
//! Without help the kernel picks a `SO_REUSEPORT` socket by the outer
//! addresses and ports, which are the same for everything one peer sends:
//! all flows from a peer would land on one socket, one thread. A classic BPF
//! program attached to the group picks by the *inner* flow instead: source
//! and destination address and the first four bytes after the inner IP
//! header (the ports of TCP and UDP). The kernel runs it with the packet
//! data starting at the UDP payload, which in flannel's wire format is the
//! inner IP header. A TUN queue's writes also decide where the kernel
//! queues that flow's outgoing packets (it steers a flow to the queue that
//! last wrote it), so a flow's both directions stay on one queue and
//! different flows spread over the queues.
//!
//! `index` is the same function in Rust; the kernel test checks the two
//! agree.

use nix::libc::sock_filter;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const MSH: u16 = 0xa0;
const K: u16 = 0x00;
const X: u16 = 0x08;
const A: u16 = 0x10;
const MUL: u16 = 0x20;
const RSH: u16 = 0x70;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const TAX: u16 = 0x00;

/// Fibonacci hashing: multiplying by 2^32 / φ carries each input bit into
/// every higher bit. Bit k of a product depends only on bits 0..=k of the
/// input, so the input's halves are folded together first (the source port
/// sits in the high half, and Linux hands out even ephemeral ports).
const GOLDEN: u32 = 0x9e37_79b1;

fn op(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The program choosing among `sockets` sockets (at least 1). A packet too
/// short for a load ends the program with 0: the first socket.
pub fn program(sockets: u32) -> Vec<sock_filter> {
    vec![
        op(LD | W | ABS, 12), // A = inner source address
        op(ST, 0),
        op(LD | W | ABS, 16), // A = inner destination address
        op(LDX | MEM, 0),
        op(ALU | XOR | X, 0),
        op(ST, 0),
        op(LDX | B | MSH, 0), // X = inner IP header length
        op(LD | W | IND, 0),  // A = the four bytes after it (ports)
        op(LDX | MEM, 0),
        op(ALU | XOR | X, 0),
        op(MISC | TAX, 0),
        op(ALU | RSH | K, 16),
        op(ALU | XOR | X, 0), // fold the high half into the low one
        op(ALU | MUL | K, GOLDEN),
        op(ALU | RSH | K, 16),
        op(ALU | MOD | K, sockets.max(1)),
        op(RET | A, 0),
    ]
}

/// What `program(sockets)` returns for `packet` (the UDP payload).
pub fn index(packet: &[u8], sockets: u32) -> u32 {
    let word = |at: usize| -> Option<u32> {
        let b = packet.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let hash = || -> Option<u32> {
        let addrs = word(12)? ^ word(16)?;
        let ihl = usize::from(*packet.first()? & 0x0f) * 4;
        let x = addrs ^ word(ihl)?;
        let h = ((x >> 16) ^ x).wrapping_mul(GOLDEN) >> 16;
        Some(h % sockets.max(1))
    };
    hash().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn flows_differing_only_in_a_port_spread_over_the_sockets() {
        // Consecutive ports, even ones (what connect() hands out), every
        // fourth: each spreads.
        for step in [1, 2, 4] {
            for sockets in [2u32, 3, 4] {
                let mut used = [0u32; 4];
                for sport in (40_000..).step_by(step).take(64) {
                    let p = packet([10, 244, 0, 2], [10, 244, 1, 2], sport, 5201);
                    used[index(&p, sockets) as usize] += 1;
                }
                let fair = 64 / sockets;
                assert!(
                    used[..sockets as usize].iter().all(|&n| n >= fair / 2),
                    "step {step}, {sockets} sockets: {used:?}"
                );
            }
        }
    }

    #[test]
    fn one_flow_always_picks_the_same_socket_and_short_packets_the_first() {
        let p = packet([10, 244, 0, 2], [10, 244, 1, 2], 40_001, 5201);
        assert_eq!(index(&p, 2), index(&p, 2));
        assert!(index(&p, 2) < 2);
        assert_eq!(index(&p[..18], 2), 0);
        assert_eq!(index(&[], 2), 0);
        // Header length from the packet: options move the ports.
        let mut with_options = packet([10, 244, 0, 2], [10, 244, 1, 2], 0, 0);
        with_options[0] = 0x46;
        with_options[24..28].copy_from_slice(&[0x9c, 0x41, 0x14, 0x51]);
        let plain = packet([10, 244, 0, 2], [10, 244, 1, 2], 0x9c41, 0x1451);
        assert_eq!(index(&with_options, 7), index(&plain, 7));
        assert_eq!(index(&plain, 0), 0, "no sockets: the first");
    }

    #[test]
    fn the_program_ends_in_a_return_and_divides_by_the_socket_count() {
        let p = program(3);
        assert_eq!(p.last().map(|i| i.code), Some(RET | A));
        assert!(p.iter().any(|i| i.code == ALU | MOD | K && i.k == 3));
        assert!(
            program(0)
                .iter()
                .any(|i| i.code == ALU | MOD | K && i.k == 1)
        );
    }
}
