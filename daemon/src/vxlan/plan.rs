//! The VXLAN planner: a pure function from (our device, the complete peer
//! set, what the kernel holds on the device) to the operations that make the
//! kernel match. Only entries on our own device are ever considered, so
//! anything else on the host is left alone; entries for peers that are gone,
//! or whose MAC or address changed, are deleted, whoever left them (a previous
//! run, flannel, a person). With nothing changed the plan is empty.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::annotations::Mac;
use crate::backend::routes::route_ops;
use crate::backend::{Peer, PeerData};
use crate::netlink::{Fdb, Neigh, Observed, Op, Route};

/// What a peer contributes to one address family's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerEntry {
    /// The peer's pod subnet of this family.
    pub subnet: IpNetwork,
    /// Where its VTEP listens (its public IP of this family).
    pub public_ip: IpAddr,
    /// The MAC of its VXLAN device of this family.
    pub vtep_mac: Mac,
}

impl PeerEntry {
    /// A peer's entry, when its backend data carries a VtepMAC.
    pub fn of(p: &Peer) -> Option<PeerEntry> {
        match p.data {
            PeerData::VtepMac(vtep_mac) => Some(PeerEntry {
                subnet: p.subnet,
                public_ip: p.public_ip,
                vtep_mac,
            }),
            PeerData::None => None,
        }
    }
}

/// The desired per-peer triple on device `link`: neighbour, FDB, onlink route.
pub fn desired(link: u32, peers: &[PeerEntry]) -> Observed {
    let mut want = Observed::default();
    for p in peers {
        let gw = p.subnet.network();
        want.neighs.push(Neigh {
            link,
            ip: gw,
            mac: p.vtep_mac,
        });
        want.fdb.push(Fdb {
            link,
            mac: p.vtep_mac,
            dst: p.public_ip,
        });
        want.routes.push(Route {
            link,
            dst: p.subnet,
            gateway: Some(gw),
            onlink: true,
        });
    }
    want
}

/// The operations that turn `observed` into the state `peers` call for.
/// Deletes come first (routes before the neighbours they use), then
/// neighbours, FDB entries and routes are replaced (upserts).
pub fn plan(link: u32, peers: &[PeerEntry], observed: &Observed) -> Vec<Op> {
    let want = desired(link, peers);
    let mut dels = Vec::new();
    let mut puts = Vec::new();

    // Routes, keyed by destination.
    let want_routes: BTreeMap<IpNetwork, Route> = want.routes.iter().map(|r| (r.dst, *r)).collect();
    let (route_dels, route_puts) = route_ops(
        &want_routes,
        observed.routes.iter().filter(|r| r.link == link),
    );
    dels.extend(route_dels);

    // Neighbours, keyed by IP.
    let want_neighs: BTreeMap<IpAddr, Neigh> = want.neighs.iter().map(|n| (n.ip, *n)).collect();
    let have_neighs: BTreeMap<IpAddr, Neigh> = observed
        .neighs
        .iter()
        .filter(|n| n.link == link)
        .map(|n| (n.ip, *n))
        .collect();
    for (ip, n) in &have_neighs {
        if !want_neighs.contains_key(ip) {
            dels.push(Op::DelNeigh(*n));
        }
    }

    // FDB entries, keyed by MAC; a MAC may carry several destinations.
    let want_fdb: BTreeMap<Mac, Fdb> = want.fdb.iter().map(|f| (f.mac, *f)).collect();
    let mut have_fdb: BTreeMap<Mac, BTreeSet<Fdb>> = BTreeMap::new();
    for f in observed.fdb.iter().filter(|f| f.link == link) {
        have_fdb.entry(f.mac).or_default().insert(*f);
    }
    for (mac, have) in &have_fdb {
        match want_fdb.get(mac) {
            None => dels.extend(have.iter().map(|f| Op::DelFdb(*f))),
            // One entry with another destination is replaced in place (no
            // gap); with several, the extra ones go first.
            Some(w) if have.len() > 1 => {
                dels.extend(have.iter().filter(|f| *f != w).map(|f| Op::DelFdb(*f)))
            }
            Some(_) => {}
        }
    }

    for (ip, w) in &want_neighs {
        if have_neighs.get(ip) != Some(w) {
            puts.push(Op::ReplaceNeigh(*w));
        }
    }
    for (mac, w) in &want_fdb {
        let present = have_fdb.get(mac).is_some_and(|h| h.contains(w));
        if !present {
            puts.push(Op::ReplaceFdb(*w));
        }
    }
    puts.extend(route_puts);

    // Routes go before the neighbours and FDB entries they lead to.
    dels.sort_by_key(|op| match op {
        Op::DelRoute(_) => 0,
        Op::DelNeigh(_) => 1,
        _ => 2,
    });
    dels.extend(puts);
    dels
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: u32 = 7;

    fn mac(last: u8) -> Mac {
        Mac([0x0a, 0, 0, 0, 0, last])
    }

    fn peer(n: u8, mac_last: u8, public: &str) -> PeerEntry {
        PeerEntry {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: public.parse().unwrap(),
            vtep_mac: mac(mac_last),
        }
    }

    fn ops_of(peers: &[PeerEntry], observed: &Observed) -> Vec<String> {
        plan(LINK, peers, observed)
            .iter()
            .map(|op| format!("{op:?}"))
            .collect()
    }

    #[test]
    fn adding_a_peer_adds_neighbour_fdb_and_onlink_route() {
        let p = peer(2, 2, "198.51.100.12");
        let ops = plan(LINK, &[p], &Observed::default());
        assert_eq!(
            ops,
            vec![
                Op::ReplaceNeigh(Neigh {
                    link: LINK,
                    ip: "10.244.2.0".parse().unwrap(),
                    mac: mac(2)
                }),
                Op::ReplaceFdb(Fdb {
                    link: LINK,
                    mac: mac(2),
                    dst: "198.51.100.12".parse().unwrap()
                }),
                Op::ReplaceRoute(Route {
                    link: LINK,
                    dst: "10.244.2.0/24".parse().unwrap(),
                    gateway: Some("10.244.2.0".parse().unwrap()),
                    onlink: true
                }),
            ]
        );
    }

    #[test]
    fn nothing_changed_means_no_operations() {
        let peers = [peer(2, 2, "198.51.100.12"), peer(3, 3, "198.51.100.13")];
        let observed = desired(LINK, &peers);
        assert_eq!(plan(LINK, &peers, &observed), vec![]);
    }

    #[test]
    fn a_changed_mac_replaces_the_neighbour_and_swaps_the_fdb_entry() {
        let old = [peer(2, 2, "198.51.100.12")];
        let new = [peer(2, 9, "198.51.100.12")];
        let ops = plan(LINK, &new, &desired(LINK, &old));
        assert_eq!(
            ops,
            vec![
                Op::DelFdb(Fdb {
                    link: LINK,
                    mac: mac(2),
                    dst: "198.51.100.12".parse().unwrap()
                }),
                Op::ReplaceNeigh(Neigh {
                    link: LINK,
                    ip: "10.244.2.0".parse().unwrap(),
                    mac: mac(9)
                }),
                Op::ReplaceFdb(Fdb {
                    link: LINK,
                    mac: mac(9),
                    dst: "198.51.100.12".parse().unwrap()
                }),
            ]
        );
    }

    #[test]
    fn a_changed_public_ip_replaces_the_fdb_entry_in_place() {
        let old = [peer(2, 2, "198.51.100.12")];
        let new = [peer(2, 2, "198.51.100.99")];
        assert_eq!(
            plan(LINK, &new, &desired(LINK, &old)),
            vec![Op::ReplaceFdb(Fdb {
                link: LINK,
                mac: mac(2),
                dst: "198.51.100.99".parse().unwrap()
            })]
        );
    }

    #[test]
    fn a_deleted_peer_loses_route_then_neighbour_and_fdb() {
        let both = [peer(2, 2, "198.51.100.12"), peer(3, 3, "198.51.100.13")];
        let ops = ops_of(&both[..1], &desired(LINK, &both));
        assert_eq!(
            ops,
            vec![
                "DelRoute(Route { link: 7, dst: V4(Ipv4Network { addr: 10.244.3.0, prefix: 24 }), gateway: Some(10.244.3.0), onlink: true })",
                "DelNeigh(Neigh { link: 7, ip: 10.244.3.0, mac: Mac([10, 0, 0, 0, 0, 3]) })",
                "DelFdb(Fdb { link: 7, mac: Mac([10, 0, 0, 0, 0, 3]), dst: 198.51.100.13 })",
            ]
        );
    }

    #[test]
    fn stale_entries_from_a_previous_run_are_pruned_and_other_links_ignored() {
        // A node deleted while weftd was down left its triple behind; a
        // route on another link is not ours to touch.
        let mut observed = desired(
            LINK,
            &[peer(2, 2, "198.51.100.12"), peer(5, 5, "198.51.100.15")],
        );
        observed.routes.push(Route {
            link: 1,
            dst: "10.244.9.0/24".parse().unwrap(),
            gateway: Some("198.51.100.1".parse().unwrap()),
            onlink: false,
        });
        let ops = plan(LINK, &[peer(2, 2, "198.51.100.12")], &observed);
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|op| matches!(
            op,
            Op::DelRoute(Route { link: LINK, .. })
                | Op::DelNeigh(Neigh { link: LINK, .. })
                | Op::DelFdb(Fdb { link: LINK, .. })
        )));
    }

    #[test]
    fn a_route_with_another_gateway_is_replaced() {
        let p = peer(2, 2, "198.51.100.12");
        let mut observed = desired(LINK, &[p]);
        observed.routes[0].gateway = Some("10.244.2.1".parse().unwrap());
        observed.routes[0].onlink = false;
        assert_eq!(
            plan(LINK, &[p], &observed),
            vec![Op::ReplaceRoute(desired(LINK, &[p]).routes[0])]
        );
    }

    #[test]
    fn ipv6_peers_go_through_the_same_path() {
        let p = PeerEntry {
            subnet: "fd00:10:244:2::/64".parse().unwrap(),
            public_ip: "2001:db8::12".parse().unwrap(),
            vtep_mac: mac(2),
        };
        let ops = plan(LINK, &[p], &Observed::default());
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[2],
            Op::ReplaceRoute(Route {
                link: LINK,
                dst: p.subnet,
                gateway: Some("fd00:10:244:2::".parse().unwrap()),
                onlink: true
            })
        );
        assert_eq!(plan(LINK, &[p], &desired(LINK, &[p])), vec![]);
    }
}
