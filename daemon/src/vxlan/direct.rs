//! flannel's `DirectRouting`: a peer whose public IP sits on one of the
//! external interface's own subnets (flannel asks `ip route get` for exactly
//! one route without a gateway; the interface's connected prefixes say the
//! same) is reached without VXLAN, through
//! `<peer subnet> via <peer public IP> dev <external interface>`, and gets
//! no neighbour, FDB or route on the VXLAN device. Peers elsewhere keep
//! their VXLAN triple. Only routes on the external interface whose
//! destination lies inside the pod network are weft's to manage here.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;

use super::plan::PeerEntry;
use crate::netlink::{Change, Netlink, NetlinkError, Op, Route};

/// Where direct routes go: the external interface and its connected
/// prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct Direct {
    pub link: u32,
    pub onlink: Vec<IpNetwork>,
    /// The routes of the last successful reconcile, per pod network.
    pub known: BTreeMap<IpNetwork, Vec<Route>>,
}

impl Direct {
    /// Whether `peer` is reached directly.
    pub fn reaches(&self, peer: &PeerEntry) -> bool {
        self.onlink
            .iter()
            .any(|n| n.is_ipv4() == peer.public_ip.is_ipv4() && n.contains(peer.public_ip))
    }

    /// Whether a change seen on netlink undoes one of our routes, or adds
    /// a foreign one inside a pod network we route: then a repair is due.
    pub fn contradicted_by(&self, change: &Change) -> bool {
        let Change::Route(r, deleted) = change else {
            return false;
        };
        if r.link != self.link {
            return false;
        }
        self.known
            .iter()
            .any(|(net, routes)| inside(net, &r.dst) && (routes.contains(r) == *deleted))
    }

    /// The peers of `entries` reached directly, and the rest (for VXLAN).
    pub fn split(&self, entries: &[PeerEntry]) -> (Vec<PeerEntry>, Vec<PeerEntry>) {
        entries.iter().partition(|p| self.reaches(p))
    }
}

fn inside(network: &IpNetwork, dst: &IpNetwork) -> bool {
    dst.is_ipv4() == network.is_ipv4()
        && dst.prefix() >= network.prefix()
        && network.contains(dst.network())
}

fn desired(link: u32, direct: &[PeerEntry]) -> BTreeMap<IpNetwork, Route> {
    direct
        .iter()
        .map(|p| {
            (
                p.subnet,
                Route {
                    link,
                    dst: p.subnet,
                    gateway: Some(p.public_ip),
                    onlink: false,
                },
            )
        })
        .collect()
}

/// The operations that leave exactly `direct`'s routes (one per peer, via its
/// public IP) among the routes on `link` inside `network`.
pub fn plan(link: u32, network: IpNetwork, direct: &[PeerEntry], observed: &[Route]) -> Vec<Op> {
    let want = desired(link, direct);
    let ours = |r: &&Route| r.link == link && inside(&network, &r.dst);
    let mut ops = Vec::new();
    let mut have: BTreeMap<IpNetwork, Vec<Route>> = BTreeMap::new();
    for r in observed.iter().filter(ours) {
        have.entry(r.dst).or_default().push(*r);
    }
    for (dst, routes) in &have {
        match want.get(dst) {
            None => ops.extend(routes.iter().map(|r| Op::DelRoute(*r))),
            // One wrong route is replaced in place below; of several, the
            // extra ones go (a delete names its gateway, so it cannot hit
            // the replacement).
            Some(w) if routes.len() > 1 => {
                ops.extend(routes.iter().filter(|r| *r != w).map(|r| Op::DelRoute(*r)))
            }
            Some(_) => {}
        }
    }
    for (dst, w) in &want {
        if !have.get(dst).is_some_and(|rs| rs.contains(w)) {
            ops.push(Op::ReplaceRoute(*w));
        }
    }
    ops
}

/// Reads the external interface's routes and carries out the plan; the
/// operations done and the ones the kernel refused. On success the routes
/// become the known ones (for `contradicted_by`).
pub async fn reconcile<N: Netlink>(
    nl: &N,
    direct: &mut Direct,
    network: IpNetwork,
    peers: &[PeerEntry],
) -> Result<(Vec<Op>, Vec<(Op, NetlinkError)>), NetlinkError> {
    let observed = nl.observe(direct.link, network.is_ipv6()).await?;
    let ops = plan(direct.link, network, peers, &observed.routes);
    direct
        .known
        .insert(network, desired(direct.link, peers).into_values().collect());
    let results = nl.apply(&ops).await;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for (op, r) in ops.into_iter().zip(results) {
        match r {
            Ok(()) => done.push(op),
            Err(e) => failed.push((op, e)),
        }
    }
    Ok((done, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::Mac;

    fn peer(n: u8, ip: &str) -> PeerEntry {
        PeerEntry {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: Mac([2, 0, 0, 0, 0, n]),
        }
    }

    fn route(dst: &str, gw: &str) -> Route {
        Route {
            link: 2,
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            onlink: false,
        }
    }

    #[test]
    fn peers_on_a_connected_prefix_go_direct_and_the_rest_by_vxlan() {
        let d = Direct {
            link: 2,
            onlink: vec!["198.51.100.0/24".parse().unwrap()],
            known: BTreeMap::new(),
        };
        let (direct, vxlan) = d.split(&[peer(2, "198.51.100.12"), peer(3, "203.0.113.7")]);
        assert_eq!(direct, vec![peer(2, "198.51.100.12")]);
        assert_eq!(vxlan, vec![peer(3, "203.0.113.7")]);
    }

    #[test]
    fn the_plan_adds_missing_fixes_changed_and_drops_stale_routes_inside_the_network_only() {
        let net: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let peers = [peer(2, "198.51.100.12"), peer(3, "198.51.100.13")];
        let observed = [
            route("10.244.2.0/24", "198.51.100.12"), // right
            route("10.244.3.0/24", "198.51.100.99"), // wrong gateway
            route("10.244.9.0/24", "198.51.100.19"), // a peer that left
            route("0.0.0.0/0", "198.51.100.1"),      // not ours
            route("192.168.0.0/16", "198.51.100.1"), // not ours
        ];
        let ops = plan(2, net, &peers, &observed);
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(route("10.244.9.0/24", "198.51.100.19")),
                Op::ReplaceRoute(route("10.244.3.0/24", "198.51.100.13")),
            ]
        );
        let settled = [
            route("10.244.2.0/24", "198.51.100.12"),
            route("10.244.3.0/24", "198.51.100.13"),
        ];
        assert!(plan(2, net, &peers, &settled).is_empty());
    }

    #[test]
    fn only_changes_that_undo_our_routes_or_add_foreign_ones_call_for_a_repair() {
        let net: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let ours = route("10.244.2.0/24", "198.51.100.12");
        let d = Direct {
            link: 2,
            onlink: vec![],
            known: BTreeMap::from([(net, vec![ours])]),
        };
        assert!(d.contradicted_by(&Change::Route(ours, true)));
        assert!(!d.contradicted_by(&Change::Route(ours, false)));
        assert!(d.contradicted_by(&Change::Route(
            route("10.244.7.0/24", "198.51.100.9"),
            false
        )));
        assert!(!d.contradicted_by(&Change::Route(route("0.0.0.0/0", "198.51.100.1"), true)));
        let elsewhere = Route { link: 9, ..ours };
        assert!(!d.contradicted_by(&Change::Route(elsewhere, true)));
    }
}
