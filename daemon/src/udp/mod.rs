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

pub mod backend;
pub mod forward;
pub mod offload;
mod pump;
mod socket;
pub mod steer;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnetwork::Ipv4Network;

use forward::{Counters, Forwarder, Peer, PeerTable, SharedTable};

pub use backend::{Udp, codec, teardown};
use pump::{In, Out, Queue};
pub use socket::sockets;

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
