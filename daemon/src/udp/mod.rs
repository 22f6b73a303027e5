//! The udp backend: flannel's wire format (the raw inner IP packet is the
//! UDP payload, sent to the peer's public IP at the backend's port) over a
//! TUN device `flannel0`. Split as boringtun is: a pure forwarder deciding
//! what happens to each packet (`forward`), and this thin I/O shell around
//! it: the device, the socket, and one thread per direction.
//!
//! This is the plain data path (one packet per system call); the batched,
//! offloaded one (multiqueue, `IFF_VNET_HDR`, UDP GSO/GRO) is still to come.

pub mod forward;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::Ipv4Network;

use crate::vxlan::plan::PeerEntry;
use forward::{Counters, Forwarder, Peer, PeerTable, SharedTable, Verdict};

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
}

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

impl DataPlane {
    /// Creates the device and the socket and starts both directions.
    pub fn start(spec: &UdpSpec) -> Result<DataPlane, UdpError> {
        let tun_err = |source| UdpError::Tun {
            name: spec.name.clone(),
            source,
        };
        let dev = tun_rs::DeviceBuilder::new()
            .name(&spec.name)
            .mtu(u16::try_from(spec.mtu).unwrap_or(u16::MAX))
            .enable(true)
            .build_sync()
            .map_err(tun_err)?;
        let index = dev.if_index().map_err(tun_err)?;
        let addr = SocketAddrV4::new(spec.local, spec.port);
        let sock = UdpSocket::bind(addr).map_err(|source| UdpError::Bind { addr, source })?;
        let dev = Arc::new(dev);
        let table = Arc::new(SharedTable::default());
        let counters = Arc::new(Counters::default());
        let fwd = Arc::new(Forwarder::new(spec.subnet, spec.network, spec.port));

        let (d, t, c, f) = (dev.clone(), table.clone(), counters.clone(), fwd.clone());
        let s = sock
            .try_clone()
            .map_err(|source| UdpError::Bind { addr, source })?;
        std::thread::Builder::new()
            .name("weft-udp-out".into())
            .spawn(move || {
                let mut buf = vec![0u8; BUF];
                let mut errors = 0;
                loop {
                    let n = match d.recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            pause_after_error("reading the TUN device", &e, &mut errors);
                            continue;
                        }
                    };
                    let packet = &buf[..n];
                    let verdict = f.outbound(&t.load(), packet);
                    if let Verdict::Send(to) = verdict
                        && let Err(e) = s.send_to(packet, to)
                    {
                        pause_after_error("sending to a peer", &e, &mut errors);
                        continue;
                    }
                    c.record(verdict, n);
                }
            })
            .map_err(tun_err)?;
        let (t, c) = (table.clone(), counters.clone());
        std::thread::Builder::new()
            .name("weft-udp-in".into())
            .spawn(move || {
                let mut buf = vec![0u8; BUF];
                let mut errors = 0;
                loop {
                    let (n, from) = match sock.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) => {
                            pause_after_error("receiving", &e, &mut errors);
                            continue;
                        }
                    };
                    let SocketAddr::V4(from) = from else { continue };
                    let packet = &buf[..n];
                    let verdict = fwd.inbound(&t.load(), from, packet);
                    if verdict == Verdict::Deliver
                        && let Err(e) = dev.send(packet)
                    {
                        pause_after_error("writing the TUN device", &e, &mut errors);
                        continue;
                    }
                    c.record(verdict, n);
                }
            })
            .map_err(tun_err)?;
        Ok(DataPlane {
            index,
            table,
            counters,
        })
    }

    /// Publishes the complete peer set (IPv4 entries); the hot path sees it
    /// from its next packet on.
    pub fn set_peers(&self, peers: &[PeerEntry]) {
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

    /// The data path's counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}
