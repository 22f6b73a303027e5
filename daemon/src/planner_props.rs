//! Property tests of the reconcile planners, on the netlink fake (whose
//! replace semantics are the kernel's: a route replace takes over the route
//! to that destination on any link; a neighbour replace the entry of that
//! IP on the link; an FDB replace the first destination of that MAC).
//!
//! From any starting state of the device (entries of a previous run, of
//! flannel, of a person: wrong MACs, wrong gateways, several routes to one
//! destination, strangers) and through any sequence of peer sets, with
//! entries changed by hand between reconciles, one
//! reconcile leaves exactly the desired entries on our link, the next plan
//! is empty, and nothing else on the host moves but the routes the kernel's
//! replace takes over.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use crate::annotations::Mac;
use crate::backend::{Peer, PeerData};
use crate::netlink::fake::Fake;
use crate::netlink::{Fdb, Neigh, Netlink, Observed, Op, Route};
use crate::testing::block_on;
use crate::vxlan::plan::{PeerEntry, desired, plan};
use ipnetwork::IpNetwork;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn mac(i: u8) -> Mac {
    Mac([2, 0, 0, 0, 0, i])
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn net(ip: IpAddr, prefix: u8) -> IpNetwork {
    let n = IpNetwork::new(ip, prefix).unwrap();
    IpNetwork::new(n.network(), prefix).unwrap()
}

/// Which link an entry is on: ours (true) or a stranger's.
#[derive(Debug, Clone)]
enum Entry {
    Neigh(bool, IpAddr, u8),
    Fdb(bool, u8, IpAddr),
    Route(bool, IpNetwork, Option<IpAddr>, bool),
}

/// Addresses from small spaces, so that entries collide with peers'.
fn pod_ip() -> impl Strategy<Value = IpAddr> {
    (0u8..12, prop_oneof![Just(0u8), 1u8..4]).prop_map(|(c, d)| v4(10, 244, c, d))
}

fn public_ip() -> impl Strategy<Value = IpAddr> {
    (1u8..7).prop_map(|d| v4(198, 51, 100, d))
}

fn dst() -> impl Strategy<Value = IpNetwork> {
    prop_oneof![
        (0u8..12).prop_map(|c| net(v4(10, 244, c, 0), 24)),
        (0u8..12).prop_map(|c| net(v4(10, 244, c, 128), 25)),
        Just(net(v4(10, 244, 0, 0), 16)),
        (0u8..4).prop_map(|c| net(v4(192, 168, c, 0), 24)),
        Just(net(v4(0, 0, 0, 0), 0)),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        (any::<bool>(), pod_ip(), 1u8..7).prop_map(|(o, ip, m)| Entry::Neigh(o, ip, m)),
        (any::<bool>(), 1u8..7, public_ip()).prop_map(|(o, m, ip)| Entry::Fdb(o, m, ip)),
        (
            any::<bool>(),
            dst(),
            proptest::option::of(prop_oneof![pod_ip(), public_ip()]),
            any::<bool>()
        )
            .prop_map(|(o, d, gw, onlink)| Entry::Route(o, d, gw, onlink)),
    ]
}

fn seed(nl: &Fake, ours: u32, other: u32, start: &[Entry]) {
    let mut s = Observed::default();
    let link = |o: bool| if o { ours } else { other };
    for e in start {
        match *e {
            Entry::Neigh(o, ip, m) => s.neighs.push(Neigh {
                link: link(o),
                ip,
                mac: mac(m),
            }),
            Entry::Fdb(o, m, dst) => s.fdb.push(Fdb {
                link: link(o),
                mac: mac(m),
                dst,
            }),
            Entry::Route(o, dst, gateway, onlink) => s.routes.push(Route {
                link: link(o),
                dst,
                gateway,
                onlink,
            }),
        }
    }
    // The kernel holds one neighbour per IP and link (`ip neigh replace`);
    // routes to one destination (other metrics) and FDB destinations of one
    // MAC (`bridge fdb append`) may be several.
    apply(
        nl,
        &s.neighs.drain(..).map(Op::ReplaceNeigh).collect::<Vec<_>>(),
    );
    nl.seed(&s);
}

/// A VXLAN peer set as arbitration hands it over: distinct subnets and
/// distinct VTEP MACs (public IPs may repeat).
fn vxlan_peers() -> impl Strategy<Value = Vec<PeerEntry>> {
    btree_map(1u8..12, (1u8..7, 1u8..7), 0..7).prop_map(|m| {
        let mut macs = BTreeSet::new();
        m.into_iter()
            .filter(|(_, (mac_i, _))| macs.insert(*mac_i))
            .map(|(c, (m, ip))| PeerEntry {
                subnet: net(v4(10, 244, c, 0), 24),
                public_ip: v4(198, 51, 100, ip),
                vtep_mac: mac(m),
            })
            .collect()
    })
}

type Sets = (BTreeSet<Neigh>, BTreeSet<Fdb>, BTreeSet<Route>);

fn sets(o: &Observed) -> Sets {
    (
        o.neighs.iter().copied().collect(),
        o.fdb.iter().copied().collect(),
        o.routes.iter().copied().collect(),
    )
}

fn apply(nl: &Fake, ops: &[Op]) {
    for r in block_on(nl.apply(ops)) {
        r.unwrap();
    }
}

/// The stranger's link after a reconcile: as before, but for the routes to
/// a destination we replaced a route to (the kernel's replace takes them).
fn stranger_after(before: &Observed, ops: &[Op]) -> Sets {
    let replaced: BTreeSet<IpNetwork> = ops
        .iter()
        .filter_map(|op| match op {
            Op::ReplaceRoute(r) => Some(r.dst),
            _ => None,
        })
        .collect();
    let mut b = before.clone();
    b.routes.retain(|r| !replaced.contains(&r.dst));
    sets(&b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn vxlan_reconcile_leaves_exactly_the_peers_entries(
        start in vec(entry(), 0..24),
        steps in vec((vxlan_peers(), vec(entry(), 0..6)), 1..6),
    ) {
        let nl = Fake::new();
        let dev = nl.add_link("flannel.1", 1450);
        let other = nl.add_link("eth9", 1500);
        seed(&nl, dev, other, &start);
        for (peers, meddling) in steps {
            // Someone changes entries between two reconciles.
            seed(&nl, dev, other, &meddling);
            let stranger = nl.dump(other);
            let ops = plan(dev, &peers, &nl.dump(dev));
            apply(&nl, &ops);
            prop_assert_eq!(sets(&nl.dump(dev)), sets(&desired(dev, &peers)));
            prop_assert_eq!(plan(dev, &peers, &nl.dump(dev)), vec![]);
            prop_assert_eq!(sets(&nl.dump(other)), stranger_after(&stranger, &ops));
        }
    }

    #[test]
    fn host_route_reconcile_leaves_exactly_the_peers_routes(
        start in vec(entry(), 0..24),
        steps in vec((btree_map(1u8..12, public_ip(), 0..7), vec(entry(), 0..6)), 1..6),
    ) {
        use crate::backend::routes::plan;
        let nl = Fake::new();
        let eth = nl.add_link("eth0", 1500);
        let other = nl.add_link("eth9", 1500);
        seed(&nl, eth, other, &start);
        let network = net(v4(10, 244, 0, 0), 16);
        for (m, meddling) in steps {
            seed(&nl, eth, other, &meddling);
            let peers: Vec<Peer> = m
                .into_iter()
                .map(|(c, ip)| Peer {
                    subnet: net(v4(10, 244, c, 0), 24),
                    public_ip: ip,
                    data: PeerData::None,
                })
                .collect();
            let before = nl.dump(eth);
            let stranger = nl.dump(other);
            let ops = plan(eth, network, &peers, &before.routes);
            apply(&nl, &ops);
            let after = nl.dump(eth);
            // Inside the network: exactly one route per peer, via its IP.
            let inside = |r: &&Route| {
                r.dst.prefix() >= network.prefix() && network.contains(r.dst.network())
            };
            let got: BTreeSet<Route> = after.routes.iter().filter(inside).copied().collect();
            let want: BTreeSet<Route> = peers
                .iter()
                .map(|p| Route { link: eth, dst: p.subnet, gateway: Some(p.public_ip), onlink: false })
                .collect();
            prop_assert_eq!(got, want);
            // Outside it, and every neighbour and FDB entry: untouched.
            let outside = |o: &Observed| -> Sets {
                let mut o = o.clone();
                o.routes.retain(|r| !inside(&r));
                sets(&o)
            };
            prop_assert_eq!(outside(&after), outside(&before));
            prop_assert_eq!(plan(eth, network, &peers, &after.routes), vec![]);
            prop_assert_eq!(sets(&nl.dump(other)), stranger_after(&stranger, &ops));
        }
    }
}
