//! The VXLAN backend, flannel's wire format kept byte for byte.
//!
//! Per address family one device, `flannel.<VNI>` (`flannel-v6.<VNI>` for
//! IPv6): VXLAN id VNI, UDP port 8472, `nolearning`, local address = this
//! node's external IP, MAC = the VtepMAC this node publishes (kept across
//! restarts by reading it back from our own `backend-data` annotation), MTU =
//! underlay MTU − 50, address = our subnet's network address as a /32
//! (/128), and no prefix route.
//!
//! Per peer, three entries, all on our device:
//! - neighbour `<peer subnet>.0 lladdr <peer VtepMAC> nud permanent`, so the
//!   kernel never ARPs across the overlay;
//! - FDB `<peer VtepMAC> dst <peer public IP> self permanent`, which tells
//!   the VXLAN driver which underlay address to encapsulate towards;
//! - route `<peer subnet> via <peer subnet>.0 dev flannel.1 onlink`, which
//!   sends pod traffic for that subnet into the device with the neighbour's
//!   MAC as destination.
//!
//! The device is created or adopted (kept when VNI, port, local IP, underlay
//! device, learning and GBP match; recreated otherwise), then every reconcile
//! plans against what the kernel holds (see [`plan`]) and applies the
//! difference; a second reconcile with nothing changed writes nothing.
//!
//! With `DirectRouting`, peers on the external interface's own subnets are
//! routed without VXLAN (host routes, shared with host-gw: see
//! [`routes`](crate::backend::routes)) and get no triple on the device.

pub mod device;
pub mod plan;

use std::sync::Arc;
use std::time::Instant;

use futures::future::LocalBoxFuture;
use ipnetwork::IpNetwork;

use crate::annotations::{Mac, VxlanData};
use crate::backend::routes::HostRoutes;
use crate::backend::{
    Backend, BackendError, Local, Pass, Peer, PeerCodec, PeerData, Refusal, Teardown, delete_links,
    pod_mtu, record,
};
use crate::config::{NetConfig, VxlanConfig};
use crate::family::{Family, PerFamily};
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::netlink::kernel::Kernel;
use crate::netlink::{Change, LinkInfo, Netlink, NetlinkError, VxlanSpec};
pub use device::{Device, reconcile};
use plan::PeerEntry;

/// VXLAN's overhead on the underlay: outer IP header + UDP (8) + VXLAN (8) +
/// inner Ethernet (14): 50 bytes over IPv4, 70 over IPv6. (flannel subtracts
/// 50 for its IPv6 device too; the kernel then clamps that device to 70
/// below the underlay, so weft asks for what it will get.)
pub fn overhead(underlay_ipv6: bool) -> u32 {
    if underlay_ipv6 { 70 } else { 50 }
}

#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error(
        "device {name}: changes came for a peer set it does not hold; a full pass reads the kernel"
    )]
    NotHeld { name: String },
    #[error("looking up device {name}")]
    Lookup {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("creating device {name}")]
    Create {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("setting MTU and state of device {name}")]
    SetLink {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("setting the address of device {name}")]
    Address {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("reading the neighbours, FDB and routes of device {name}")]
    Observe {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("the kernel gave device {name} MAC {got} instead of {want}")]
    MacMismatch {
        name: String,
        want: Mac,
        got: String,
    },
}

impl From<VxlanError> for BackendError {
    fn from(e: VxlanError) -> Self {
        BackendError::Setup(Box::new(e))
    }
}

/// One family's device, as weft wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub spec: VxlanSpec,
    /// Our pod subnet of this family.
    pub subnet: IpNetwork,
    /// The whole pod network of this family (other addresses in it are removed).
    pub network: IpNetwork,
}

/// The device name of a family (`flannel.1`, `flannel-v6.1`).
pub fn device_name(vni: u32, ipv6: bool) -> String {
    if ipv6 {
        format!("flannel-v6.{vni}")
    } else {
        format!("flannel.{vni}")
    }
}

/// The VNI in a VXLAN device name flannel or weft gives (`flannel.<vni>`,
/// `flannel-v6.<vni>`), or `None` for any other name.
pub fn vni_of_device(name: &str) -> Option<u32> {
    let n = name
        .strip_prefix("flannel-v6.")
        .or_else(|| name.strip_prefix("flannel."))?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The address weft puts on the device: the subnet's network address, alone.
pub fn device_address(subnet: IpNetwork) -> IpNetwork {
    let host = if subnet.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(subnet.network(), host).unwrap_or(subnet)
}

/// Creates or adopts the device; returns it and whether it was created.
pub async fn ensure_device<N: Netlink>(
    nl: &N,
    cfg: &DeviceConfig,
) -> Result<(LinkInfo, bool), VxlanError> {
    let name = &cfg.spec.name;
    let existing = nl
        .link_by_name(name)
        .await
        .map_err(|source| VxlanError::Lookup {
            name: name.clone(),
            source,
        })?;
    let adoptable = existing.as_ref().filter(|l| {
        l.vxlan.as_ref().is_some_and(|a| cfg.spec.matches(a)) && l.mac == Some(cfg.spec.mac)
    });
    let (link, created) = match adoptable {
        Some(l) => {
            if l.mtu != cfg.spec.mtu || !l.up {
                nl.set_link(l.index, cfg.spec.mtu, true)
                    .await
                    .map_err(|source| VxlanError::SetLink {
                        name: name.clone(),
                        source,
                    })?;
            }
            (l.clone(), false)
        }
        None => {
            let l = nl
                .create_vxlan(&cfg.spec)
                .await
                .map_err(|source| VxlanError::Create {
                    name: name.clone(),
                    source,
                })?;
            if l.mac != Some(cfg.spec.mac) {
                return Err(VxlanError::MacMismatch {
                    name: name.clone(),
                    want: cfg.spec.mac,
                    got: l
                        .mac
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "none".into()),
                });
            }
            (l, true)
        }
    };
    ensure_address(nl, link.index, cfg).await?;
    Ok((link, created))
}

async fn ensure_address<N: Netlink>(
    nl: &N,
    index: u32,
    cfg: &DeviceConfig,
) -> Result<(), VxlanError> {
    let err = |source| VxlanError::Address {
        name: cfg.spec.name.clone(),
        source,
    };
    let want = device_address(cfg.subnet);
    let have = nl.addresses(index).await.map_err(err)?;
    for a in &have {
        if *a != want && a.is_ipv4() == want.is_ipv4() && cfg.network.contains(a.ip()) {
            nl.set_address(index, *a, false).await.map_err(err)?;
        }
    }
    if !have.contains(&want) {
        nl.set_address(index, want, true).await.map_err(err)?;
    }
    Ok(())
}

/// The `backend-type` of VXLAN nodes.
pub const TYPE: &str = "vxlan";

/// The VXLAN backend on this node: a device per family and the routes
/// inside the pod network on the external interface: with DirectRouting,
/// a host route per peer next to us; without it, none (a route put there
/// by hand or left by another backend would take pod traffic past the
/// device: it is removed, like a stale entry on the device).
#[derive(Debug)]
pub struct Vxlan {
    port: u16,
    devices: PerFamily<Option<Device>>,
    direct: HostRoutes,
    direct_routing: bool,
    codec: Arc<Codec>,
}

/// Judges VXLAN peers: type vxlan, our VNI, a unicast VtepMAC.
#[derive(Debug)]
struct Codec {
    vni: u32,
}

impl PeerCodec for Codec {
    fn decode(
        &self,
        _family: Family,
        backend_type: &str,
        data: Option<&str>,
        _public_ip: Option<std::net::IpAddr>,
    ) -> Result<PeerData, Refusal> {
        if backend_type != TYPE {
            return Err(Refusal::OtherBackend(format!(
                "is {backend_type:?}, not {TYPE:?}"
            )));
        }
        let text = data.unwrap_or("");
        let data =
            VxlanData::decode(text).map_err(|e| Refusal::BadData(format!("{text:?}: {e}")))?;
        if data.vni != self.vni {
            return Err(Refusal::BadData(format!(
                "has VNI {}, this node uses {}",
                data.vni, self.vni
            )));
        }
        if !data.vtep_mac.is_unicast() {
            return Err(Refusal::BadData(format!(
                "VtepMAC {} is not a unicast MAC",
                data.vtep_mac
            )));
        }
        Ok(PeerData::VtepMac(data.vtep_mac))
    }
}

/// The peer codec of a VXLAN network with this VNI.
pub fn codec(vni: u32) -> Arc<dyn PeerCodec> {
    Arc::new(Codec { vni })
}

impl Vxlan {
    /// Creates or adopts the device of every enabled family, keeping the
    /// VTEP MAC our lease published before (peers know us by it).
    pub async fn start<N: Netlink>(
        nl: &N,
        cfg: &VxlanConfig,
        local: &Local,
        metrics: &Metrics,
    ) -> Result<Vxlan, BackendError> {
        let ext = &local.ext;
        let mut devices = PerFamily::default();
        for (family, fam) in local.families.present() {
            let mac = match fam
                .stored_data
                .as_deref()
                .and_then(|d| VxlanData::decode(d).ok())
            {
                Some(d) if d.vtep_mac.is_unicast() => d.vtep_mac,
                _ => Mac::random().map_err(BackendError::Mac)?,
            };
            let underlay = cfg.mtu.unwrap_or(ext.mtu);
            let mtu = pod_mtu(
                TYPE,
                ext,
                underlay,
                overhead(fam.public_ip.is_ipv6()),
                " or set Backend.MTU",
            )?;
            let dc = DeviceConfig {
                spec: VxlanSpec {
                    name: device_name(cfg.vni, family.is_v6()),
                    vni: cfg.vni,
                    port: cfg.port,
                    local: fam.public_ip,
                    underlay: ext.index,
                    learning: cfg.learning,
                    gbp: cfg.gbp,
                    mac,
                    mtu,
                },
                subnet: fam.subnet,
                network: fam.network,
            };
            let (link, created) = ensure_device(nl, &dc).await?;
            if created {
                metrics.device_created();
            }
            tracing::info!(device = %dc.spec.name, index = link.index, created, subnet = %fam.subnet, local = %fam.public_ip, %mac, "device ready");
            *devices.get_mut(family) = Some(Device::new(dc));
        }
        let direct = if cfg.direct_routing {
            let onlink = HostRoutes::connected(nl, ext.index).await?;
            tracing::info!(iface = %ext.name, ?onlink, "DirectRouting: peers on these prefixes are routed without VXLAN");
            HostRoutes::new(ext.index, onlink)
        } else {
            HostRoutes::new(ext.index, Vec::new())
        };
        Ok(Vxlan {
            port: cfg.port,
            devices,
            direct,
            direct_routing: cfg.direct_routing,
            codec: Arc::new(Codec { vni: cfg.vni }),
        })
    }
}

impl<N: Netlink> Backend<N> for Vxlan {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    /// The first family's device MTU (flannel writes one FLANNEL_MTU).
    fn mtu(&self) -> u32 {
        self.devices
            .present()
            .map(|(_, d)| d.cfg.spec.mtu)
            .next()
            .unwrap_or_default()
    }

    fn data(&self, family: Family) -> String {
        match self.devices.get(family) {
            Some(d) => VxlanData {
                vni: d.cfg.spec.vni,
                vtep_mac: d.cfg.spec.mac,
            }
            .encode(),
            None => "null".into(),
        }
    }

    fn codec(&self) -> Arc<dyn PeerCodec> {
        self.codec.clone()
    }

    fn guarded_port(&self) -> Option<u16> {
        Some(self.port)
    }

    fn devices(&self) -> Vec<String> {
        self.devices
            .present()
            .map(|(_, d)| d.cfg.spec.name.clone())
            .collect()
    }

    fn contradicted_by(&self, change: &Change) -> bool {
        self.direct.contradicted_by(change)
            || self
                .devices
                .present()
                .any(|(_, d)| d.contradicted_by(change))
    }

    fn reconcile<'a>(
        &'a mut self,
        nl: &'a N,
        set: &'a PeerSet,
        pass: Pass,
        metrics: &'a Metrics,
    ) -> LocalBoxFuture<'a, bool> {
        Box::pin(async move {
            let mut ok = true;
            for family in Family::ALL {
                let Some(dev) = self.devices.get_mut(family).as_mut() else {
                    continue;
                };
                // A Node event: only what changed, when the device holds
                // the set the changes start from (without DirectRouting,
                // whose split needs every peer).
                let changes = set
                    .changes_since(dev.generation())
                    .filter(|_| pass == Pass::Quick && !self.direct_routing);
                let (t0, count, result) = if let Some(c) = changes {
                    let entries = |v: &[Peer]| -> Vec<PeerEntry> {
                        v.iter().filter_map(PeerEntry::of).collect()
                    };
                    let (gone, new) =
                        (entries(c.removed.get(family)), entries(c.added.get(family)));
                    let t0 = Instant::now();
                    let result = dev.apply_changes(nl, gone, new, set.generation).await;
                    (t0, dev.peers_held(), result)
                } else {
                    let all = set.peers.get(family);
                    // With DirectRouting, the directly reachable peers leave
                    // the device. Without, the external interface holds no
                    // route inside the pod network (a first-list page, which
                    // only adds, has nothing to do there).
                    let mut entries = dev.buffer();
                    if self.direct_routing {
                        let (near, far) = self.direct.split(all);
                        ok &= self
                            .direct
                            .reconcile(nl, dev.cfg.network, &near, pass, metrics)
                            .await;
                        entries.extend(far.iter().filter_map(PeerEntry::of));
                    } else {
                        if pass != Pass::Partial {
                            ok &= self
                                .direct
                                .reconcile(nl, dev.cfg.network, &[], pass, metrics)
                                .await;
                        }
                        entries.extend(all.iter().filter_map(PeerEntry::of));
                    }
                    let t0 = Instant::now();
                    let count = entries.len();
                    let result = match pass {
                        Pass::Partial => dev.add_partial(nl, &entries).await,
                        Pass::Quick => dev.reconcile_owned(nl, entries, false).await,
                        Pass::Full => dev.reconcile_owned(nl, entries, true).await,
                    };
                    if pass != Pass::Partial {
                        dev.set_generation(set.generation);
                    }
                    (t0, count, result)
                };
                let name = dev.cfg.spec.name.clone();
                ok &= record(metrics, &name, count, pass, t0, result);
            }
            ok
        })
    }
}

/// `weftd cleanup`: the devices of the configured VNI (their neighbour, FDB
/// and route entries go with them) and, with DirectRouting, the host routes.
pub async fn teardown(nl: &Kernel, cfg: &VxlanConfig, net: &NetConfig) -> Teardown {
    let mut done = delete_devices(nl, cfg.vni).await;
    if cfg.direct_routing {
        done.extend(crate::backend::routes::teardown(nl, net).await);
    }
    done
}

/// Deletes `flannel.<vni>` and `flannel-v6.<vni>` where present.
pub async fn delete_devices(nl: &Kernel, vni: u32) -> Teardown {
    delete_links(nl, &[device_name(vni, false), device_name(vni, true)]).await
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_give_their_vni() {
        for vni in [1, 4096, 16_777_215] {
            for v6 in [false, true] {
                assert_eq!(vni_of_device(&device_name(vni, v6)), Some(vni));
            }
        }
        for other in [
            "flannel0",
            "flannel.",
            "flannel.1a",
            "flannel-v6.",
            "cni0",
            "eth0",
            "xflannel.1",
        ] {
            assert_eq!(vni_of_device(other), None, "{other}");
        }
    }

    #[test]
    fn the_codec_takes_our_vni_and_a_unicast_mac_only() {
        let c = Codec { vni: 1 };
        let ip = "198.51.100.12".parse().unwrap();
        let decode = |ty: &str, data: Option<&str>| c.decode(Family::V4, ty, data, Some(ip));
        assert_eq!(
            decode("vxlan", Some(r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}"#)),
            Ok(PeerData::VtepMac(Mac([0x0a, 0, 0, 0, 0, 2])))
        );
        assert!(matches!(
            decode("udp", Some("null")),
            Err(Refusal::OtherBackend(_))
        ));
        for bad in [
            None,
            Some("null"),
            Some("garbage"),
            Some(r#"{"VNI":2,"VtepMAC":"0a:00:00:00:00:02"}"#),
            Some(r#"{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}"#),
        ] {
            assert!(
                matches!(decode("vxlan", bad), Err(Refusal::BadData(_))),
                "{bad:?}"
            );
        }
    }
}
