//! One family's VXLAN device and what weft knows its tables hold: the
//! quick, full and partial passes over its per-peer triples.

use super::plan::{self, PeerEntry};
use super::{DeviceConfig, VxlanError, ensure_device};
use crate::backend::{Outcome, carry_out, diff};
use std::collections::HashSet;

use crate::netlink::{Change, Netlink, Observed, Op};

/// Makes the device and its per-peer entries match `peers`: ensures the
/// device, then plans against the kernel and applies the difference.
pub async fn reconcile<N: Netlink>(
    nl: &N,
    cfg: &DeviceConfig,
    peers: &[PeerEntry],
) -> Result<Outcome, VxlanError> {
    Device::new(cfg.clone()).reconcile(nl, peers, true).await
}

/// A device and what weft knows its kernel tables hold.
///
/// A full reconcile ensures the device and reads the kernel's tables; a
/// quick one (after a peer-set change) plans against the state the last
/// successful reconcile left, which is exact as long as nobody else writes
/// to our device; the periodic resync and device events run full ones, so
/// anything changed behind weft's back is still repaired.
#[derive(Debug, Clone)]
pub struct Device {
    pub cfg: DeviceConfig,
    /// The link index and the (sorted) peers the kernel was last made to hold.
    known: Option<(u32, Vec<PeerEntry>)>,
    /// During the first list: what the kernel held when it began and the
    /// peers added since.
    partial: Option<Partial>,
    /// The list a quick pass replaced, kept for the next ([`Device::buffer`]).
    spare: Vec<PeerEntry>,
    /// The number of the peer set `known` holds (see [`Device::generation`]).
    generation: Option<u64>,
}

/// The first list's passes: the device's tables as the first one found
/// them (so a restart rewrites nothing that is already right) and the
/// (sorted) peers added since. The complete set's pass plans against both
/// instead of reading the kernel again.
#[derive(Debug, Clone)]
struct Partial {
    index: u32,
    base: Observed,
    done: Vec<PeerEntry>,
}

/// The tables after writing `written` over `base`: a route replaces its
/// destination's, a neighbour its address's; an FDB entry is added to its
/// MAC's (the plan deletes extra destinations, and deleting one the
/// kernel replaced already is no failure).
fn overlay(base: &Observed, written: &Observed) -> Observed {
    let dsts: HashSet<_> = written.routes.iter().map(|r| (r.link, r.dst)).collect();
    let ips: HashSet<_> = written.neighs.iter().map(|n| (n.link, n.ip)).collect();
    let fdb: HashSet<_> = written.fdb.iter().collect();
    let mut out = Observed {
        routes: base
            .routes
            .iter()
            .filter(|r| !dsts.contains(&(r.link, r.dst)))
            .copied()
            .collect(),
        neighs: base
            .neighs
            .iter()
            .filter(|n| !ips.contains(&(n.link, n.ip)))
            .copied()
            .collect(),
        fdb: base
            .fdb
            .iter()
            .filter(|f| !fdb.contains(f))
            .copied()
            .collect(),
    };
    out.routes.extend_from_slice(&written.routes);
    out.neighs.extend_from_slice(&written.neighs);
    out.fdb.extend_from_slice(&written.fdb);
    out
}

impl Device {
    pub fn new(cfg: DeviceConfig) -> Device {
        Device {
            cfg,
            known: None,
            partial: None,
            spare: Vec::new(),
            generation: None,
        }
    }

    /// The number of the peer set the kernel was last made to hold, while
    /// weft knows what that is.
    pub fn generation(&self) -> Option<u64> {
        self.known.as_ref().and(self.generation)
    }

    /// Records that the last pass was over the peer set numbered `g`.
    pub fn set_generation(&mut self, g: u64) {
        self.generation = Some(g);
    }

    /// How many peers the kernel was last made to hold.
    pub fn peers_held(&self) -> usize {
        self.known.as_ref().map_or(0, |(_, p)| p.len())
    }

    /// A quick pass from the changes alone: `gone` and `new` (sorted)
    /// applied to the peers the kernel holds, which must be those of the
    /// set the changes start from ([`Device::generation`]), and the
    /// kernel's entries planned for them only. A Node event then costs what
    /// it changes, not a comparison of thousands of peers.
    pub async fn apply_changes<N: Netlink>(
        &mut self,
        nl: &N,
        gone: Vec<PeerEntry>,
        new: Vec<PeerEntry>,
        generation: u64,
    ) -> Result<Outcome, VxlanError> {
        let Some((index, mut peers)) = self.known.take() else {
            return Err(VxlanError::NotHeld {
                name: self.cfg.spec.name.clone(),
            });
        };
        crate::backend::apply_changes(&mut peers, &gone, &new);
        let ops = plan::plan(index, &new, &plan::desired(index, &gone));
        let out = carry_out(nl, ops, false).await;
        if out.failed.is_empty() {
            self.known = Some((index, peers));
            self.generation = Some(generation);
        }
        // Passes from changes need no second list.
        self.spare = Vec::new();
        Ok(out)
    }

    /// Whether a kernel change on some link contradicts what this device
    /// should hold: one of its wanted entries deleted, or an entry on it
    /// that it does not want added or changed. (Its own writes never do:
    /// they make the kernel match the wanted state.)
    pub fn contradicted_by(&self, change: &Change) -> bool {
        let Some((index, peers)) = &self.known else {
            return false;
        };
        let want = |link: u32| link == *index;
        let by_subnet = |dst: &ipnetwork::IpNetwork| {
            peers
                .binary_search_by(|p| p.subnet.cmp(dst))
                .ok()
                .map(|i| peers[i])
        };
        // A neighbour is a peer's subnet address; the (disjoint) subnets
        // sort as their first addresses do.
        let by_address = |ip: &std::net::IpAddr| {
            peers
                .binary_search_by(|p| p.subnet.network().cmp(ip))
                .ok()
                .map(|i| peers[i])
        };
        match change {
            Change::LinkDeleted(name) => *name == self.cfg.spec.name,
            Change::Route(r, deleted) if want(r.link) => {
                let wanted = by_subnet(&r.dst).map(|p| plan::desired(*index, &[p]).routes[0]);
                if *deleted {
                    wanted == Some(*r)
                } else {
                    wanted != Some(*r)
                }
            }
            Change::Neigh(n) if want(n.link) => {
                by_address(&n.ip).is_none_or(|p| p.vtep_mac != n.mac)
            }
            Change::NeighDeleted { link, ip } if want(*link) => by_address(ip).is_some(),
            Change::Fdb(f, deleted) if want(f.link) => {
                let wanted = peers
                    .iter()
                    .any(|p| p.vtep_mac == f.mac && p.public_ip == f.dst);
                wanted == *deleted
            }
            _ => false,
        }
    }

    /// Adds (never deletes) the entries of a partial peer set, so that the
    /// first list's Nodes are programmed while the next ones arrive. The
    /// first such pass reads the device's tables; the reconcile that
    /// follows the complete set plans against them and what was added.
    pub async fn add_partial<N: Netlink>(
        &mut self,
        nl: &N,
        peers: &[PeerEntry],
    ) -> Result<Outcome, VxlanError> {
        self.known = None;
        let (mut part, created) = match self.partial.take() {
            Some(p) => (p, false),
            None => {
                let (link, created) = ensure_device(nl, &self.cfg).await?;
                let base = self.observe(nl, link.index).await?;
                let part = Partial {
                    index: link.index,
                    base,
                    done: Vec::new(),
                };
                (part, created)
            }
        };
        let mut sorted = peers.to_vec();
        sorted.sort_unstable();
        let (_, new) = diff(&part.done, &sorted);
        // Against the tables as they were: what is right already is not
        // written again; nothing is deleted before the list is complete.
        let ops: Vec<Op> = plan::plan(part.index, &new, &part.base)
            .into_iter()
            .filter(|op| {
                matches!(
                    op,
                    Op::ReplaceNeigh(_) | Op::ReplaceFdb(_) | Op::ReplaceRoute(_)
                )
            })
            .collect();
        let out = carry_out(nl, ops, created).await;
        if out.failed.is_empty() {
            part.done = sorted;
            self.partial = Some(part);
        }
        Ok(out)
    }

    async fn observe<N: Netlink>(&self, nl: &N, index: u32) -> Result<Observed, VxlanError> {
        nl.observe(index, self.cfg.subnet.is_ipv6())
            .await
            .map_err(|source| VxlanError::Observe {
                name: self.cfg.spec.name.clone(),
                source,
            })
    }

    /// Forgets the known state: the next reconcile is a full one.
    pub fn forget(&mut self) {
        self.known = None;
    }

    pub async fn reconcile<N: Netlink>(
        &mut self,
        nl: &N,
        peers: &[PeerEntry],
        full: bool,
    ) -> Result<Outcome, VxlanError> {
        self.reconcile_owned(nl, peers.to_vec(), full).await
    }

    /// An empty list with room, for the next pass's peers: what the pass
    /// before last held (a pass at thousands of peers then allocates
    /// nothing, and touches no fresh pages).
    pub fn buffer(&mut self) -> Vec<PeerEntry> {
        let mut v = std::mem::take(&mut self.spare);
        v.clear();
        v
    }

    /// [`Device::reconcile`] over a list it may keep.
    pub async fn reconcile_owned<N: Netlink>(
        &mut self,
        nl: &N,
        mut sorted: Vec<PeerEntry>,
        full: bool,
    ) -> Result<Outcome, VxlanError> {
        let mut created = false;
        sorted.sort_unstable();
        let (index, ops) = match (self.known.take(), self.partial.take()) {
            // Quick: only the peers that changed since the kernel was last
            // made to match (a Node event touches one or two).
            (Some((index, old)), _) if !full => {
                let (gone, new) = diff(&old, &sorted);
                self.spare = old;
                (index, plan::plan(index, &new, &plan::desired(index, &gone)))
            }
            // The list is complete: against what the first list's passes
            // found and wrote, deleting what is not wanted.
            (None, Some(part)) if !full => {
                let have = overlay(&part.base, &plan::desired(part.index, &part.done));
                (part.index, plan::plan(part.index, &sorted, &have))
            }
            _ => {
                let (link, c) = ensure_device(nl, &self.cfg).await?;
                created = c;
                let observed = self.observe(nl, link.index).await?;
                (link.index, plan::plan(link.index, &sorted, &observed))
            }
        };
        self.partial = None;
        let out = carry_out(nl, ops, created).await;
        if out.failed.is_empty() {
            self.known = Some((index, sorted));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use ipnetwork::IpNetwork;

    use super::*;
    use crate::annotations::Mac;
    use crate::netlink::fake::Fake;
    use crate::netlink::{Neigh, VxlanSpec};
    use crate::testing::block_on;

    fn cfg(underlay: u32) -> DeviceConfig {
        DeviceConfig {
            spec: VxlanSpec {
                name: "flannel.1".into(),
                vni: 1,
                port: 8472,
                local: "198.51.100.11".parse().unwrap(),
                underlay,
                learning: false,
                gbp: false,
                mac: Mac([0x0a, 0, 0, 0, 0, 1]),
                mtu: 1450,
            },
            subnet: "10.244.0.0/24".parse().unwrap(),
            network: "10.244.0.0/16".parse().unwrap(),
        }
    }

    fn peer(n: u8) -> PeerEntry {
        PeerEntry {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("198.51.100.{}", 10 + n).parse().unwrap(),
            vtep_mac: Mac([0x0a, 0, 0, 0, 0, n]),
        }
    }

    #[test]
    fn reconcile_converges_then_does_nothing_then_prunes() {
        block_on(async {
            let nl = Fake::new();
            let eth0 = nl.add_link("eth0", 1500);
            let c = cfg(eth0);
            let peers = [peer(2), peer(3)];

            let first = reconcile(&nl, &c, &peers).await.unwrap();
            assert!(first.created);
            assert!(first.failed.is_empty());
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap();
            assert_eq!(nl.dump(link.index), plan::desired(link.index, &peers));
            assert_eq!(
                nl.addresses(link.index).await.unwrap(),
                vec!["10.244.0.0/32".parse::<IpNetwork>().unwrap()]
            );

            let writes = nl.writes();
            let second = reconcile(&nl, &c, &peers).await.unwrap();
            assert_eq!(second, Outcome::default(), "nothing to do");
            assert_eq!(nl.writes(), writes, "a second pass writes nothing");

            reconcile(&nl, &c, &peers[..1]).await.unwrap();
            assert_eq!(nl.dump(link.index), plan::desired(link.index, &peers[..1]));
        });
    }

    #[test]
    fn quick_reconciles_touch_only_what_changed_and_full_ones_repair() {
        block_on(async {
            let nl = Fake::new();
            let mut dev = Device::new(cfg(nl.add_link("eth0", 1500)));
            dev.reconcile(&nl, &[peer(2)], true).await.unwrap();
            let writes = nl.writes();
            let out = dev
                .reconcile(&nl, &[peer(2), peer(3)], false)
                .await
                .unwrap();
            assert_eq!(out.done.values().sum::<u64>(), 3, "only peer 3's triple");
            assert_eq!(nl.writes(), writes + 3, "no device or address writes");
            // Someone removes an entry behind weft's back: a quick pass
            // cannot know, the next full one repairs it.
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap();
            let route = plan::desired(link.index, &[peer(3)]).routes[0];
            nl.apply(&[Op::DelRoute(route)]).await;
            let quick = dev
                .reconcile(&nl, &[peer(2), peer(3)], false)
                .await
                .unwrap();
            assert_eq!(quick, Outcome::default());
            let full = dev.reconcile(&nl, &[peer(2), peer(3)], true).await.unwrap();
            assert_eq!(full.done.get("replace_route"), Some(&1));
            // Quick passes over changes and removals leave exactly what a
            // full pass would.
            let mut moved = peer(3);
            moved.vtep_mac = Mac([0x0a, 0, 0, 0, 0, 0x33]);
            moved.public_ip = "198.51.100.99".parse().unwrap();
            let next = [moved, peer(4)];
            dev.reconcile(&nl, &next, false).await.unwrap();
            let mut want = plan::desired(link.index, &next);
            want.fdb.sort();
            assert_eq!(nl.dump(link.index), want);
            assert_eq!(
                dev.reconcile(&nl, &next, true).await.unwrap(),
                Outcome::default()
            );
        });
    }

    #[test]
    fn a_pass_from_changes_alone_leaves_what_a_full_pass_would() {
        block_on(async {
            let nl = Fake::new();
            let mut dev = Device::new(cfg(nl.add_link("eth0", 1500)));
            assert_eq!(dev.generation(), None, "nothing held yet");
            dev.reconcile(&nl, &[peer(2), peer(3)], true).await.unwrap();
            dev.set_generation(7);
            assert_eq!(dev.generation(), Some(7));
            let writes = nl.writes();
            // Peer 3 moved (new MAC and IP), peer 4 came.
            let mut moved = peer(3);
            moved.vtep_mac = Mac([0x0a, 0, 0, 0, 0, 0x33]);
            moved.public_ip = "198.51.100.99".parse().unwrap();
            let mut new = vec![moved, peer(4)];
            new.sort();
            let out = dev.apply_changes(&nl, vec![peer(3)], new, 8).await.unwrap();
            assert!(out.failed.is_empty(), "{out:?}");
            assert_eq!(
                nl.writes(),
                writes + out.writes() as usize,
                "no reads, no device writes"
            );
            assert_eq!(dev.generation(), Some(8));
            assert_eq!(dev.peers_held(), 3);
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap();
            let next = [peer(2), moved, peer(4)];
            let mut want = plan::desired(link.index, &next);
            want.fdb.sort();
            assert_eq!(nl.dump(link.index), want);
            assert_eq!(
                dev.reconcile(&nl, &next, true).await.unwrap(),
                Outcome::default(),
                "a full pass finds nothing to do"
            );
            // Changes for a set the device does not hold are refused.
            dev.forget();
            assert_eq!(dev.generation(), None);
            assert!(
                dev.apply_changes(&nl, vec![], vec![peer(5)], 9)
                    .await
                    .is_err()
            );
        });
    }

    #[test]
    fn only_changes_that_contradict_the_wanted_state_call_for_repair() {
        block_on(async {
            let nl = Fake::new();
            let mut dev = Device::new(cfg(nl.add_link("eth0", 1500)));
            dev.reconcile(&nl, &[peer(2)], true).await.unwrap();
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap().index;
            let want = plan::desired(link, &[peer(2)]);
            let (r, n, f) = (want.routes[0], want.neighs[0], want.fdb[0]);
            let mut other_gw = r;
            other_gw.gateway = Some("10.244.99.1".parse().unwrap());
            let mut elsewhere = r;
            elsewhere.link = link + 1;
            let cases = [
                (Change::Route(r, true), true),
                (Change::Route(r, false), false),
                (Change::Route(other_gw, false), true),
                (Change::Route(elsewhere, true), false),
                (Change::NeighDeleted { link, ip: n.ip }, true),
                (
                    Change::NeighDeleted {
                        link,
                        ip: "10.244.7.0".parse().unwrap(),
                    },
                    false,
                ),
                (Change::Neigh(n), false),
                (
                    Change::Neigh(Neigh {
                        mac: Mac([0x0a, 9, 9, 9, 9, 9]),
                        ..n
                    }),
                    true,
                ),
                (Change::Fdb(f, true), true),
                (Change::Fdb(f, false), false),
                (Change::LinkDeleted("flannel.1".into()), true),
                (Change::LinkDeleted("eth0".into()), false),
            ];
            for (change, want) in cases {
                assert_eq!(dev.contradicted_by(&change), want, "{change:?}");
            }
        });
    }

    #[test]
    fn partial_sets_only_add_and_the_complete_set_prunes() {
        block_on(async {
            let nl = Fake::new();
            let c = cfg(nl.add_link("eth0", 1500));
            // A stale triple from an earlier run.
            reconcile(&nl, &c, &[peer(9)]).await.unwrap();
            let mut dev = Device::new(c);
            dev.add_partial(&nl, &[peer(2)]).await.unwrap();
            dev.add_partial(&nl, &[peer(2), peer(3)]).await.unwrap();
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap().index;
            assert_eq!(
                nl.dump(link).routes.len(),
                3,
                "nothing deleted while partial"
            );
            dev.reconcile(&nl, &[peer(2), peer(3)], false)
                .await
                .unwrap();
            let mut want = plan::desired(link, &[peer(2), peer(3)]);
            want.fdb.sort();
            assert_eq!(
                nl.dump(link),
                want,
                "the complete set prunes the stale peer"
            );
        });
    }

    #[test]
    fn after_a_restart_the_first_list_rewrites_nothing_and_prunes_without_reading_again() {
        block_on(async {
            let nl = Fake::new();
            let c = cfg(nl.add_link("eth0", 1500));
            // What the previous run left: peers 2..4, and 9 which is gone.
            let before = [peer(2), peer(3), peer(4), peer(9)];
            reconcile(&nl, &c, &before).await.unwrap();
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap().index;
            let writes = nl.writes();
            let mut dev = Device::new(c);
            dev.add_partial(&nl, &[peer(2), peer(3)]).await.unwrap();
            // Peer 4 changed its VTEP MAC while weftd was down.
            let mut moved = peer(4);
            moved.vtep_mac = Mac([0x0a, 0, 0, 0, 1, 4]);
            let now = [peer(2), peer(3), moved];
            dev.add_partial(&nl, &now).await.unwrap();
            assert_eq!(
                nl.writes() - writes,
                2,
                "only peer 4's changed neighbour and FDB entry are written"
            );
            // The complete set's pass deletes what the first pass found
            // unwanted, without reading the kernel again.
            let out = dev.reconcile(&nl, &now, false).await.unwrap();
            assert!(out.failed.is_empty(), "{out:?}");
            let mut want = plan::desired(link, &now);
            want.fdb.sort();
            let mut have = nl.dump(link);
            have.fdb.sort();
            assert_eq!(have, want, "peer 9 pruned, peer 4's old FDB entry gone");
        });
    }

    #[test]
    fn a_deleted_device_is_recreated_and_every_peer_replayed() {
        block_on(async {
            let nl = Fake::new();
            let c = cfg(nl.add_link("eth0", 1500));
            let peers = [peer(2), peer(3), peer(4)];
            reconcile(&nl, &c, &peers).await.unwrap();
            nl.delete_link("flannel.1");
            let again = reconcile(&nl, &c, &peers).await.unwrap();
            assert!(again.created);
            let link = nl.link_by_name("flannel.1").await.unwrap().unwrap();
            assert_eq!(nl.dump(link.index), plan::desired(link.index, &peers));
        });
    }

    #[test]
    fn an_incompatible_device_is_recreated_and_a_compatible_one_adopted() {
        block_on(async {
            let nl = Fake::new();
            let c = cfg(nl.add_link("eth0", 1500));
            let mut wrong = c.spec.clone();
            wrong.port = 4789;
            nl.create_vxlan(&wrong).await.unwrap();
            let (_, created) = ensure_device(&nl, &c).await.unwrap();
            assert!(created, "a device on another port is replaced");
            let before = nl.writes();
            let (_, created) = ensure_device(&nl, &c).await.unwrap();
            assert!(!created, "a matching device is adopted");
            assert_eq!(nl.writes(), before);
        });
    }

    #[test]
    fn a_failing_kind_of_write_does_not_stop_the_others() {
        block_on(async {
            let nl = Fake::new();
            let c = cfg(nl.add_link("eth0", 1500));
            nl.fail_ops(&["replace_fdb"]);
            let out = reconcile(&nl, &c, &[peer(2), peer(3)]).await.unwrap();
            assert_eq!(out.failed.len(), 2);
            assert_eq!(out.done.get("replace_route"), Some(&2));
            nl.fail_ops(&[]);
            let retry = reconcile(&nl, &c, &[peer(2), peer(3)]).await.unwrap();
            assert_eq!(retry.done.get("replace_fdb"), Some(&2));
            assert!(retry.failed.is_empty());
        });
    }
}
