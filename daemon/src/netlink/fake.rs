//! An in-memory kernel for unit tests: the same tables, the same replace and
//! tolerant-delete semantics, and a count of every write.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;

use ipnetwork::IpNetwork;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{
    Change, Fdb, LinkInfo, Neigh, Netlink, NetlinkError, Observed, Op, Route, VxlanAttrs, VxlanSpec,
};

#[derive(Debug, Default)]
struct Tables {
    links: Vec<LinkInfo>,
    addrs: BTreeSet<(u32, IpNetwork)>,
    neighs: BTreeSet<Neigh>,
    fdb: BTreeSet<Fdb>,
    routes: BTreeSet<Route>,
    blackholes: BTreeSet<IpNetwork>,
    writes: usize,
    next_index: u32,
    /// Ops of these kinds fail (to test retries and isolation).
    failing: Vec<&'static str>,
    /// Where changes are reported, with the device names watched.
    watchers: Vec<(Vec<String>, UnboundedSender<Change>)>,
}

impl Tables {
    /// Reports a change to every watcher, as the kernel multicasts it.
    fn tell(&mut self, change: Change) {
        self.watchers.retain(|(devices, tx)| match &change {
            Change::LinkDeleted(name) if !devices.contains(name) => true,
            _ => tx.send(change.clone()).is_ok(),
        });
    }
}

/// An in-memory [`Netlink`].
#[derive(Debug, Default)]
pub struct Fake {
    t: Mutex<Tables>,
}

fn fail(op: &str) -> NetlinkError {
    NetlinkError::Request {
        op: op.to_string(),
        message: "injected failure".into(),
        errno: Some(105),
    }
}

impl Fake {
    pub fn new() -> Fake {
        let fake = Fake::default();
        fake.with(|t| t.next_index = 100);
        fake
    }

    fn with<R>(&self, f: impl FnOnce(&mut Tables) -> R) -> R {
        match self.t.lock() {
            Ok(mut t) => f(&mut t),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Number of writes (link, address and table changes) so far.
    pub fn writes(&self) -> usize {
        self.with(|t| t.writes)
    }

    /// Adds a plain link (say, the underlay `eth0`); returns its index.
    pub fn add_link(&self, name: &str, mtu: u32) -> u32 {
        self.with(|t| {
            t.next_index += 1;
            let index = t.next_index;
            t.links.push(LinkInfo {
                index,
                name: name.into(),
                mac: None,
                mtu,
                up: true,
                vxlan: None,
            });
            index
        })
    }

    /// Deletes a link and everything on it, as `ip link del` would (and
    /// tells the watchers, as the kernel does: the link only).
    pub fn delete_link(&self, name: &str) {
        self.with(|t| {
            if let Some(pos) = t.links.iter().position(|l| l.name == name) {
                let index = t.links.remove(pos).index;
                t.neighs.retain(|n| n.link != index);
                t.fdb.retain(|f| f.link != index);
                t.routes.retain(|r| r.link != index);
                t.addrs.retain(|(l, _)| *l != index);
                t.tell(Change::LinkDeleted(name.to_string()));
            }
        })
    }

    /// Makes every op of kind `kind` (see `Op::kind`) fail until cleared.
    /// The blackhole routes in the main table.
    pub fn blackholes(&self) -> Vec<IpNetwork> {
        self.with(|t| t.blackholes.iter().copied().collect())
    }

    /// Removes a blackhole route behind weft's back.
    pub fn remove_blackhole(&self, dst: IpNetwork) {
        self.with(|t| t.blackholes.remove(&dst));
    }

    pub fn fail_ops(&self, kinds: &[&'static str]) {
        self.with(|t| t.failing = kinds.to_vec())
    }

    /// Inserts entries directly, as a previous run or flannel left them.
    pub fn seed(&self, state: &Observed) {
        self.with(|t| {
            t.neighs.extend(state.neighs.iter().copied());
            t.fdb.extend(state.fdb.iter().copied());
            t.routes.extend(state.routes.iter().copied());
        })
    }

    /// Removes entries without telling the watchers (a lost message).
    pub fn remove_silently(&self, state: &Observed) {
        self.with(|t| {
            t.neighs.retain(|n| !state.neighs.contains(n));
            t.fdb.retain(|f| !state.fdb.contains(f));
            t.routes.retain(|r| !state.routes.contains(r));
        })
    }

    /// Everything on `link`, sorted.
    pub fn dump(&self, link: u32) -> Observed {
        self.with(|t| Observed {
            neighs: t
                .neighs
                .iter()
                .filter(|n| n.link == link)
                .copied()
                .collect(),
            fdb: t.fdb.iter().filter(|f| f.link == link).copied().collect(),
            routes: t
                .routes
                .iter()
                .filter(|r| r.link == link)
                .copied()
                .collect(),
        })
    }
}

impl Netlink for Fake {
    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        Ok(self.with(|t| t.links.clone()))
    }

    async fn default_route_link(&self, ipv6: bool) -> Result<Option<u32>, NetlinkError> {
        Ok(self.with(|t| {
            t.routes
                .iter()
                .find(|r| r.dst.prefix() == 0 && r.dst.is_ipv6() == ipv6)
                .map(|r| r.link)
        }))
    }

    async fn ensure_blackhole(&self, dst: IpNetwork) -> Result<bool, NetlinkError> {
        Ok(self.with(|t| t.blackholes.insert(dst)))
    }

    /// Longest prefix over the routes and the addresses' connected
    /// prefixes; the source is the link's first address of the family.
    async fn route_to(&self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, NetlinkError> {
        Ok(self.with(|t| {
            let connected = t.addrs.iter().map(|(link, a)| (*link, *a));
            let routed = t.routes.iter().map(|r| (r.link, r.dst));
            let (link, _) = connected
                .chain(routed)
                .filter(|(_, net)| net.contains(dst))
                .max_by_key(|(_, net)| net.prefix())?;
            let src = t
                .addrs
                .iter()
                .find(|(l, a)| *l == link && a.is_ipv6() == dst.is_ipv6())
                .map(|(_, a)| a.ip());
            Some((link, src))
        }))
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self.with(|t| t.links.iter().find(|l| l.name == name).cloned()))
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetlinkError> {
        self.delete_link(&spec.name);
        Ok(self.with(|t| {
            t.writes += 1;
            t.next_index += 1;
            let link = LinkInfo {
                index: t.next_index,
                name: spec.name.clone(),
                mac: Some(spec.mac),
                mtu: spec.mtu,
                up: true,
                vxlan: Some(VxlanAttrs {
                    vni: spec.vni,
                    port: spec.port,
                    local: Some(spec.local),
                    underlay: Some(spec.underlay),
                    learning: spec.learning,
                    gbp: spec.gbp,
                }),
            };
            t.links.push(link.clone());
            link
        }))
    }

    async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), NetlinkError> {
        self.with(|t| {
            t.writes += 1;
            if let Some(l) = t.links.iter_mut().find(|l| l.index == index) {
                l.mtu = mtu;
                l.up = up;
            }
        });
        Ok(())
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        Ok(self.with(|t| {
            t.addrs
                .iter()
                .filter(|(l, _)| *l == index)
                .map(|(_, a)| *a)
                .collect()
        }))
    }

    async fn set_address(
        &self,
        index: u32,
        addr: IpNetwork,
        add: bool,
    ) -> Result<(), NetlinkError> {
        self.with(|t| {
            t.writes += 1;
            if add {
                t.addrs.insert((index, addr));
            } else {
                t.addrs.remove(&(index, addr));
            }
        });
        Ok(())
    }

    async fn observe(&self, index: u32, ipv6: bool) -> Result<Observed, NetlinkError> {
        let fam = |ip: &IpAddr| ip.is_ipv6() == ipv6;
        let all = self.dump(index);
        Ok(Observed {
            neighs: all.neighs.into_iter().filter(|n| fam(&n.ip)).collect(),
            fdb: all.fdb,
            routes: all
                .routes
                .into_iter()
                .filter(|r| fam(&r.dst.ip()))
                .collect(),
        })
    }

    async fn apply(&self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        self.with(|t| {
            ops.iter()
                .map(|op| {
                    if t.failing.contains(&op.kind()) {
                        return Err(fail(op.kind()));
                    }
                    t.writes += 1;
                    let change = match *op {
                        Op::ReplaceNeigh(n) => Change::Neigh(n),
                        Op::DelNeigh(n) => Change::NeighDeleted {
                            link: n.link,
                            ip: n.ip,
                        },
                        Op::ReplaceFdb(f) => Change::Fdb(f, false),
                        Op::DelFdb(f) => Change::Fdb(f, true),
                        Op::ReplaceRoute(r) => Change::Route(r, false),
                        Op::DelRoute(r) => Change::Route(r, true),
                    };
                    match *op {
                        Op::ReplaceNeigh(n) => {
                            t.neighs.retain(|x| !(x.link == n.link && x.ip == n.ip));
                            t.neighs.insert(n);
                        }
                        Op::DelNeigh(n) => {
                            t.neighs.remove(&n);
                        }
                        Op::ReplaceFdb(f) => {
                            // Replaces the first destination of that MAC.
                            let first = t
                                .fdb
                                .iter()
                                .find(|x| x.link == f.link && x.mac == f.mac)
                                .copied();
                            if let Some(old) = first {
                                t.fdb.remove(&old);
                            }
                            t.fdb.insert(f);
                        }
                        Op::DelFdb(f) => {
                            t.fdb.remove(&f);
                        }
                        Op::ReplaceRoute(r) => {
                            t.routes.retain(|x| x.dst != r.dst);
                            t.routes.insert(r);
                        }
                        Op::DelRoute(r) => {
                            t.routes.remove(&r);
                        }
                    }
                    t.tell(change);
                    Ok(())
                })
                .collect()
        })
    }

    fn watch_changes(
        &self,
        devices: Vec<String>,
    ) -> Result<UnboundedReceiver<Change>, NetlinkError> {
        let (tx, rx) = unbounded_channel();
        self.with(|t| t.watchers.push((devices, tx)));
        Ok(rx)
    }
}
