//! The udp backend's socket group against the real kernel: datagrams are
//! steered to a socket by their inner flow, as `steer::index` says, in a
//! private network namespace. Needs root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::Duration;

use common::{in_private_netns, sh};
use weftd::udp::{sockets, steer};

/// An inner TCP packet header of one flow (the rest of the payload zero).
fn inner(sport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 244, 0, 2]);
    p[16..20].copy_from_slice(&[10, 244, 1, 2]);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p
}

#[test]
fn datagrams_go_to_the_socket_their_inner_flow_hashes_to() {
    in_private_netns(|| {
        sh("ip link set lo up");
        for count in [2usize, 3] {
            let addr: SocketAddrV4 = "127.0.0.1:8285".parse().unwrap();
            let (socks, _) = sockets(addr, count, true).unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            // Even ports, as connect() hands them out.
            let flows: Vec<u16> = (40_000..40_064).step_by(2).collect();
            for round in 0..3 {
                for &sport in &flows {
                    let mut p = inner(sport);
                    p[4] = round; // vary the IP ID: three distinct datagrams per flow
                    client.send_to(&p, addr).unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut seen = vec![0usize; count];
            for (i, s) in socks.iter().enumerate() {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 2048];
                while let Ok(n) = s.recv(&mut buf) {
                    let want = steer::index(&buf[..n], count as u32) as usize;
                    assert_eq!(
                        i,
                        want,
                        "{count} sockets: flow from port {} landed on socket {i}, the model says {want}",
                        u16::from_be_bytes([buf[20], buf[21]])
                    );
                    seen[i] += 1;
                }
            }
            assert_eq!(seen.iter().sum::<usize>(), 3 * flows.len(), "{seen:?}");
            assert!(
                seen.iter().all(|&n| n > 0),
                "every socket gets some flows: {seen:?}"
            );
        }
    });
}
