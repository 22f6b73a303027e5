//! Host routes: a peer's pod subnet routed through the underlay to its
//! public IP, `<peer subnet> via <peer public IP> dev <external interface>`.
//! The whole of flannel's host-gw backend, and VXLAN's `DirectRouting` for
//! the peers on the external interface's own subnets.
//!
//! A peer is reachable this way when its public IP sits on one of the
//! external interface's connected prefixes (flannel asks `ip route get` for
//! a route without a gateway; the connected prefixes say the same). Only
//! routes on the external interface whose destination lies inside the pod
//! network are ours to manage: everything else on that link is left alone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use ipnetwork::IpNetwork;

use super::{Outcome, Pass, Peer, Teardown, carry_out, record};
use crate::config::NetConfig;
use crate::family::Family;
use crate::metrics::Metrics;
use crate::netlink::kernel::Kernel;
use crate::netlink::{Change, Netlink, NetlinkError, Op, Route};

/// Where host routes go: the external interface and its connected
/// prefixes, and the routes each pod network got in the last pass.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRoutes {
    pub link: u32,
    pub onlink: Vec<IpNetwork>,
    /// The routes of the last successful pass, per pod network (sorted).
    known: BTreeMap<IpNetwork, Vec<Route>>,
    /// During the first list: the routes on our link as read at its first
    /// page, with what the pages since added (so a page reads nothing).
    partial: BTreeMap<IpNetwork, Vec<Route>>,
}

impl HostRoutes {
    pub fn new(link: u32, onlink: Vec<IpNetwork>) -> HostRoutes {
        HostRoutes {
            link,
            onlink,
            known: BTreeMap::new(),
            partial: BTreeMap::new(),
        }
    }

    /// The external interface's connected prefixes, read from the kernel.
    pub async fn connected<N: Netlink>(nl: &N, link: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        Ok(nl
            .addresses(link)
            .await?
            .into_iter()
            .filter_map(|a| IpNetwork::new(a.network(), a.prefix()).ok())
            .collect())
    }

    /// The peers reached directly, and the rest.
    pub fn split(&self, peers: &[Peer]) -> (Vec<Peer>, Vec<Peer>) {
        peers
            .iter()
            .partition(|p| on_link(&self.onlink, &p.public_ip))
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

    /// Makes the routes inside `network` on our link exactly those of
    /// `peers` (a partial pass only adds), then counts and logs it; whether
    /// it all succeeded.
    pub async fn reconcile<N: Netlink>(
        &mut self,
        nl: &N,
        network: IpNetwork,
        peers: &[Peer],
        pass: Pass,
        metrics: &Metrics,
    ) -> bool {
        let t0 = Instant::now();
        let result = self.apply(nl, network, peers, pass).await;
        let what = format!(
            "host routes {} dev {}",
            Family::of_net(&network).label(),
            self.link
        );
        record(metrics, &what, peers.len(), pass, t0, result)
    }

    async fn apply<N: Netlink>(
        &mut self,
        nl: &N,
        network: IpNetwork,
        peers: &[Peer],
        pass: Pass,
    ) -> Result<Outcome, NetlinkError> {
        let want = desired(self.link, peers);
        let known = self.known.remove(&network);
        if pass == Pass::Partial {
            return self.add_partial(nl, network, want).await;
        }
        self.partial.remove(&network);
        let ops = match (pass, known) {
            // Quick: against what the last pass left (exact unless someone
            // else wrote, which the change watch and full passes catch).
            (Pass::Quick, Some(known)) => plan(self.link, network, peers, &known),
            _ => {
                let observed = nl.observe(self.link, network.is_ipv6()).await?;
                plan(self.link, network, peers, &observed.routes)
            }
        };
        let out = carry_out(nl, ops, false).await;
        if out.failed.is_empty() {
            self.known.insert(network, want.into_values().collect());
        }
        Ok(out)
    }

    /// A page of the first list: puts what is missing, deletes nothing. The
    /// link is read at the first page only; later pages plan against that
    /// reading and what the pages since put there.
    async fn add_partial<N: Netlink>(
        &mut self,
        nl: &N,
        network: IpNetwork,
        want: BTreeMap<IpNetwork, Route>,
    ) -> Result<Outcome, NetlinkError> {
        let mut have = match self.partial.remove(&network) {
            Some(have) => have,
            None => nl.observe(self.link, network.is_ipv6()).await?.routes,
        };
        let ours = have
            .iter()
            .filter(|r| r.link == self.link && inside(&network, &r.dst));
        let (_, puts) = route_ops(&want, ours);
        let out = carry_out(nl, puts.clone(), false).await;
        if out.failed.is_empty() {
            // One pass, not one per put: a first page holds thousands.
            let put: Vec<Route> = puts
                .into_iter()
                .filter_map(|op| match op {
                    Op::ReplaceRoute(r) => Some(r),
                    _ => None,
                })
                .collect();
            let dsts: std::collections::HashSet<IpNetwork> = put.iter().map(|r| r.dst).collect();
            have.retain(|h| !dsts.contains(&h.dst));
            have.extend(put);
            self.partial.insert(network, have);
        }
        Ok(out)
    }
}

/// Whether `ip` lies on one of the connected prefixes `onlink` (then a
/// route via it needs no gateway of its own).
pub fn on_link(onlink: &[IpNetwork], ip: &IpAddr) -> bool {
    onlink
        .iter()
        .any(|n| n.is_ipv4() == ip.is_ipv4() && n.contains(*ip))
}

fn inside(network: &IpNetwork, dst: &IpNetwork) -> bool {
    dst.is_ipv4() == network.is_ipv4()
        && dst.prefix() >= network.prefix()
        && network.contains(dst.network())
}

fn desired(link: u32, peers: &[Peer]) -> BTreeMap<IpNetwork, Route> {
    peers
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

/// The operations that leave exactly `peers`' routes (one per peer, via its
/// public IP) among the routes on `link` inside `network`.
pub fn plan(link: u32, network: IpNetwork, peers: &[Peer], observed: &[Route]) -> Vec<Op> {
    let want = desired(link, peers);
    let ours = observed
        .iter()
        .filter(|r| r.link == link && inside(&network, &r.dst));
    let (mut ops, puts) = route_ops(&want, ours);
    ops.extend(puts);
    ops
}

/// The route half of every planner (host routes, and the VXLAN device's):
/// of `have` (only routes the caller manages), those to destinations not
/// wanted go, and so do the extras beside a wanted one (several routes to
/// one destination, say with other metrics); each wanted route not present
/// is put with a replace, so one wrong route to a destination is replaced
/// in place, with no gap (a delete names its gateway, so it cannot hit the
/// replacement). Deletes and puts come apart, for the caller to order.
pub fn route_ops<'a>(
    want: &BTreeMap<IpNetwork, Route>,
    have: impl IntoIterator<Item = &'a Route>,
) -> (Vec<Op>, Vec<Op>) {
    let mut by_dst: BTreeMap<IpNetwork, Vec<Route>> = BTreeMap::new();
    for r in have {
        by_dst.entry(r.dst).or_default().push(*r);
    }
    let mut dels = Vec::new();
    for (dst, routes) in &by_dst {
        match want.get(dst) {
            None => dels.extend(routes.iter().map(|r| Op::DelRoute(*r))),
            Some(w) if routes.len() > 1 => {
                dels.extend(routes.iter().filter(|r| *r != w).map(|r| Op::DelRoute(*r)))
            }
            Some(_) => {}
        }
    }
    let puts = want
        .iter()
        .filter(|(dst, w)| !by_dst.get(*dst).is_some_and(|rs| rs.contains(w)))
        .map(|(_, w)| Op::ReplaceRoute(*w))
        .collect();
    (dels, puts)
}

/// `weftd cleanup` for host routes: on every link, the main-table routes
/// through a gateway whose destination lies inside a pod network of
/// net-conf.json (what host-gw or DirectRouting programmed).
pub async fn teardown(nl: &Kernel, cfg: &NetConfig) -> Teardown {
    teardown_on(nl, cfg, |_| true).await
}

/// The same, on the links whose name `on` accepts.
pub async fn teardown_on(nl: &Kernel, cfg: &NetConfig, on: impl Fn(&str) -> bool) -> Teardown {
    let mut done = Teardown::default();
    let links = match nl.links().await {
        Ok(l) => l,
        Err(e) => {
            done.failed.push(("listing links".into(), e.to_string()));
            return done;
        }
    };
    for network in cfg.networks() {
        for link in links.iter().filter(|l| on(&l.name)) {
            let observed = match nl.observe(link.index, network.is_ipv6()).await {
                Ok(o) => o,
                Err(e) => {
                    done.failed.push((
                        format!("reading the routes of {}", link.name),
                        e.to_string(),
                    ));
                    continue;
                }
            };
            let ops: Vec<Op> = plan(link.index, network, &[], &observed.routes)
                .into_iter()
                .filter(|op| matches!(op, Op::DelRoute(r) if r.gateway.is_some()))
                .collect();
            for (op, r) in ops.iter().zip(nl.apply(&ops).await) {
                let Op::DelRoute(route) = op else { continue };
                let text = format!(
                    "route {} via {} dev {}",
                    route.dst,
                    route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    link.name
                );
                match r {
                    Ok(()) => done.removed.push(text),
                    Err(e) => done
                        .failed
                        .push((format!("deleting {text}"), e.to_string())),
                }
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PeerData;
    use crate::netlink::fake::Fake;
    use crate::testing::block_on;

    fn peer(n: u8, ip: &str) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            data: PeerData::None,
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

    fn net() -> IpNetwork {
        "10.244.0.0/16".parse().unwrap()
    }

    #[test]
    fn peers_on_a_connected_prefix_go_direct_and_the_rest_not() {
        let d = HostRoutes::new(2, vec!["198.51.100.0/24".parse().unwrap()]);
        let (direct, rest) = d.split(&[peer(2, "198.51.100.12"), peer(3, "203.0.113.7")]);
        assert_eq!(direct, vec![peer(2, "198.51.100.12")]);
        assert_eq!(rest, vec![peer(3, "203.0.113.7")]);
    }

    #[test]
    fn the_plan_adds_missing_fixes_changed_and_drops_stale_routes_inside_the_network_only() {
        let peers = [peer(2, "198.51.100.12"), peer(3, "198.51.100.13")];
        let observed = [
            route("10.244.2.0/24", "198.51.100.12"), // right
            route("10.244.3.0/24", "198.51.100.99"), // wrong gateway
            route("10.244.9.0/24", "198.51.100.19"), // a peer that left
            route("0.0.0.0/0", "198.51.100.1"),      // not ours
            route("192.168.0.0/16", "198.51.100.1"), // not ours
        ];
        let ops = plan(2, net(), &peers, &observed);
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
        assert!(plan(2, net(), &peers, &settled).is_empty());
    }

    #[test]
    fn only_changes_that_undo_our_routes_or_add_foreign_ones_call_for_a_repair() {
        block_on(async {
            let nl = Fake::new();
            let eth0 = nl.add_link("eth0", 1500);
            let mut d = HostRoutes::new(eth0, vec![]);
            let m = Metrics::default();
            let ours = Route {
                link: eth0,
                ..route("10.244.2.0/24", "198.51.100.12")
            };
            assert!(
                !d.contradicted_by(&Change::Route(ours, true)),
                "nothing known yet"
            );
            assert!(
                d.reconcile(&nl, net(), &[peer(2, "198.51.100.12")], Pass::Full, &m)
                    .await
            );
            assert!(d.contradicted_by(&Change::Route(ours, true)));
            assert!(!d.contradicted_by(&Change::Route(ours, false)));
            let foreign = Route {
                link: eth0,
                ..route("10.244.7.0/24", "198.51.100.9")
            };
            assert!(d.contradicted_by(&Change::Route(foreign, false)));
            let default = Route {
                link: eth0,
                ..route("0.0.0.0/0", "198.51.100.1")
            };
            assert!(!d.contradicted_by(&Change::Route(default, true)));
            let elsewhere = Route {
                link: eth0 + 9,
                ..ours
            };
            assert!(!d.contradicted_by(&Change::Route(elsewhere, true)));
        });
    }

    #[test]
    fn partial_passes_only_add_quick_ones_trust_the_last_pass_full_ones_repair() {
        block_on(async {
            let nl = Fake::new();
            let eth0 = nl.add_link("eth0", 1500);
            let m = Metrics::default();
            let stale = Route {
                link: eth0,
                ..route("10.244.9.0/24", "198.51.100.19")
            };
            nl.seed(&crate::netlink::Observed {
                routes: vec![stale],
                ..Default::default()
            });
            let mut d = HostRoutes::new(eth0, vec![]);
            let a = peer(2, "198.51.100.12");
            let b = peer(3, "198.51.100.13");
            assert!(d.reconcile(&nl, net(), &[a], Pass::Partial, &m).await);
            assert_eq!(
                nl.dump(eth0).routes.len(),
                2,
                "nothing deleted while partial"
            );
            assert!(d.reconcile(&nl, net(), &[a, b], Pass::Quick, &m).await);
            let want: Vec<Route> = desired(eth0, &[a, b]).into_values().collect();
            assert_eq!(nl.dump(eth0).routes, want, "the complete set prunes");
            // Deleted behind our back: a quick pass cannot know, a full one repairs.
            nl.apply(&[Op::DelRoute(want[0])]).await;
            let writes = nl.writes();
            assert!(d.reconcile(&nl, net(), &[a, b], Pass::Quick, &m).await);
            assert_eq!(
                nl.writes(),
                writes,
                "a quick pass with nothing changed writes nothing"
            );
            assert!(d.reconcile(&nl, net(), &[a, b], Pass::Full, &m).await);
            assert_eq!(nl.dump(eth0).routes, want);
        });
    }
}
