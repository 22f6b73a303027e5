//! flannel's host-gw backend: no tunnel and no device. Every peer's pod
//! subnet is routed through the underlay to the peer's public IP,
//! `<peer subnet> via <peer public IP> dev <external interface>` (see
//! [`routes`](crate::backend::routes)), so pod traffic takes the same kernel
//! path as any routed packet: the MTU is the external interface's own.
//!
//! The next hop must be on-link, so a peer whose public IP is not on one of
//! the external interface's own subnets cannot be reached; it is skipped with
//! a warning naming it and counted (flannel logs an error and leaves it
//! unreachable). For the same reason host-gw refuses to start when the
//! address it publishes is not the interface's own (NAT), as flannel does.
//! Publishes `backend-type: host-gw` and `backend-data: null`; dual-stack
//! like VXLAN.

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use ipnetwork::IpNetwork;

use crate::backend::routes::{HostRoutes, on_link};
use crate::backend::{Backend, BackendError, Local, Pass, PeerCodec, PeerData, Refusal};
use crate::family::{Family, PerFamily};
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::netlink::{Change, Netlink};

/// The `backend-type` of host-gw nodes.
pub const TYPE: &str = "host-gw";

/// The host-gw backend on this node.
#[derive(Debug)]
pub struct HostGw {
    routes: HostRoutes,
    networks: PerFamily<Option<IpNetwork>>,
    mtu: u32,
    codec: Arc<Codec>,
}

/// Judges host-gw peers: the type must be host-gw and the public IP on one
/// of our external interface's subnets; the backend data is not used.
#[derive(Debug)]
struct Codec {
    iface: String,
    onlink: Vec<IpNetwork>,
}

impl PeerCodec for Codec {
    fn decode(
        &self,
        _family: Family,
        backend_type: &str,
        _data: Option<&str>,
        public_ip: Option<IpAddr>,
    ) -> Result<PeerData, Refusal> {
        if backend_type != TYPE {
            return Err(Refusal::OtherBackend(format!(
                "is {backend_type:?}, not {TYPE:?}"
            )));
        }
        let Some(public_ip) = public_ip else {
            return Ok(PeerData::None);
        };
        if !on_link(&self.onlink, &public_ip) {
            let prefixes: Vec<String> = self
                .onlink
                .iter()
                .filter(|n| n.is_ipv4() == public_ip.is_ipv4())
                .map(|n| n.to_string())
                .collect();
            return Err(Refusal::Unreachable(format!(
                "host-gw needs peers on a subnet of {} ({}), but its public IP {public_ip} is not: route it some other way or use vxlan",
                self.iface,
                prefixes.join(", ")
            )));
        }
        Ok(PeerData::None)
    }
}

/// The peer codec of host-gw nodes whose external interface `iface` is
/// connected to the prefixes `onlink`.
pub fn codec(iface: &str, onlink: Vec<IpNetwork>) -> Arc<dyn PeerCodec> {
    Arc::new(Codec {
        iface: iface.to_string(),
        onlink,
    })
}

impl HostGw {
    /// Reads the external interface's subnets; checks that every family
    /// publishes the interface's own address.
    pub async fn start<N: Netlink>(nl: &N, local: &Local) -> Result<HostGw, BackendError> {
        for (family, fam) in local.families.present() {
            let own = local.ext.ip(family.is_v6()).ok();
            if own != Some(fam.advertised) {
                return Err(BackendError::BehindNat {
                    public: fam.advertised,
                    own: own.unwrap_or(fam.public_ip),
                    iface: local.ext.name.clone(),
                });
            }
        }
        let onlink = HostRoutes::connected(nl, local.ext.index).await?;
        tracing::info!(iface = %local.ext.name, ?onlink, "host-gw: peers on these prefixes are routed through {}", local.ext.name);
        Ok(HostGw {
            routes: HostRoutes::new(local.ext.index, onlink.clone()),
            networks: local.families.map(|_, f| f.as_ref().map(|f| f.network)),
            mtu: local.ext.mtu,
            codec: Arc::new(Codec {
                iface: local.ext.name.clone(),
                onlink,
            }),
        })
    }
}

impl<N: Netlink> Backend<N> for HostGw {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn data(&self, _family: Family) -> String {
        "null".into()
    }

    fn codec(&self) -> Arc<dyn PeerCodec> {
        self.codec.clone()
    }

    fn guarded_port(&self) -> Option<u16> {
        None
    }

    fn devices(&self) -> Vec<String> {
        Vec::new()
    }

    fn contradicted_by(&self, change: &Change) -> bool {
        self.routes.contradicted_by(change)
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
            for (family, network) in self.networks.present() {
                ok &= self
                    .routes
                    .reconcile(nl, *network, set.peers.get(family), pass, metrics)
                    .await;
            }
            ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Peer;
    use crate::netlink::fake::Fake;
    use crate::netlink::{Op, Route};
    use crate::testing::{add_eth0, block_on, local};

    /// eth0 with 198.51.100.11/24.
    fn host() -> (Fake, u32) {
        let nl = Fake::new();
        let eth0 = block_on(add_eth0(&nl));
        (nl, eth0)
    }

    fn peer(n: u8) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("198.51.100.{}", 10 + n).parse().unwrap(),
            data: PeerData::None,
        }
    }

    #[test]
    fn peers_get_a_route_via_their_public_ip_and_publish_nothing() {
        let (nl, eth0) = host();
        block_on(async {
            let mut hg = HostGw::start(&nl, &local(eth0, "198.51.100.11"))
                .await
                .unwrap();
            assert_eq!(Backend::<Fake>::mtu(&hg), 1500);
            assert_eq!(Backend::<Fake>::data(&hg, Family::V4), "null");
            assert_eq!(Backend::<Fake>::guarded_port(&hg), None);
            let peers = PerFamily {
                v4: vec![peer(2), peer(3)],
                v6: vec![],
            };
            let m = Metrics::default();
            assert!(
                hg.reconcile(&nl, &PeerSet::new(peers.clone(), vec![]), Pass::Full, &m)
                    .await
            );
            // Routes to the pod network (the default route stays as it was).
            let pod_routes = || -> Vec<Route> {
                let net: IpNetwork = "10.244.0.0/16".parse().unwrap();
                let all = nl.dump(eth0).routes;
                all.into_iter()
                    .filter(|r| net.contains(r.dst.ip()))
                    .collect()
            };
            let routes = pod_routes();
            assert_eq!(
                routes,
                vec![
                    Route {
                        link: eth0,
                        dst: "10.244.2.0/24".parse().unwrap(),
                        gateway: Some("198.51.100.12".parse().unwrap()),
                        onlink: false,
                    },
                    Route {
                        link: eth0,
                        dst: "10.244.3.0/24".parse().unwrap(),
                        gateway: Some("198.51.100.13".parse().unwrap()),
                        onlink: false,
                    },
                ]
            );
            // A route deleted behind our back is a contradiction.
            nl.apply(&[Op::DelRoute(routes[0])]).await;
            assert!(Backend::<Fake>::contradicted_by(
                &hg,
                &Change::Route(routes[0], true)
            ));
            assert!(
                hg.reconcile(&nl, &PeerSet::new(peers.clone(), vec![]), Pass::Full, &m)
                    .await
            );
            assert_eq!(pod_routes(), routes);
        });
    }

    #[test]
    fn the_codec_takes_host_gw_peers_on_our_subnet_only() {
        let (nl, eth0) = host();
        let hg = block_on(HostGw::start(&nl, &local(eth0, "198.51.100.11"))).unwrap();
        let codec = Backend::<Fake>::codec(&hg);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            codec.decode(
                Family::V4,
                "host-gw",
                Some("null"),
                Some(ip("198.51.100.12"))
            ),
            Ok(PeerData::None)
        );
        assert!(matches!(
            codec.decode(Family::V4, "vxlan", Some("null"), Some(ip("198.51.100.12"))),
            Err(Refusal::OtherBackend(_))
        ));
        let Err(Refusal::Unreachable(why)) =
            codec.decode(Family::V4, "host-gw", None, Some(ip("203.0.113.7")))
        else {
            panic!("an off-subnet peer must be refused");
        };
        assert!(
            why.contains("203.0.113.7") && why.contains("198.51.100.0/24"),
            "{why}"
        );
    }

    #[test]
    fn a_public_ip_other_than_the_interfaces_is_refused_as_nat() {
        let (nl, eth0) = host();
        let err = block_on(HostGw::start(&nl, &local(eth0, "203.0.113.50"))).unwrap_err();
        assert!(err.to_string().contains("NAT"), "{err}");
    }
}
