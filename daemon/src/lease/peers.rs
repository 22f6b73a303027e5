//! Overlap arbitration: from every judged node to the complete peer set.
//! Of two nodes whose podCIDRs overlap, the older keeps its subnet and the
//! younger is skipped; a node overlapping our own subnet is skipped. So it
//! is with two nodes publishing the same VtepMAC in one family: a VXLAN
//! device's FDB holds one destination per MAC, so both cannot be reached
//! (a cloned VM, a copied annotation); the older keeps it. Kept up
//! to date one Node at a time ([`PeerIndex`]), and equal to a full pass over
//! all nodes ([`derive`]) after any sequence of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::Record;
use super::judge::{Context, Judged, Skip, SkipReason, Subnets, judge};
use crate::annotations::Mac;
use crate::backend::{Peer, PeerData};
use crate::family::{Family, PerFamily};

/// The complete peer set, per family, plus what was skipped, and what
/// changed since the set handed on before it.
#[derive(Debug, Clone, Default)]
pub struct PeerSet {
    pub peers: PerFamily<Vec<Peer>>,
    pub skipped: Vec<Skip>,
    /// Every peer's public IP, both families, sorted, each once.
    ips: Vec<IpAddr>,
    /// This set's number, unique in the process.
    pub generation: u64,
    /// What differs from the set numbered `changes.since` (`None`: not
    /// known, compare whole). A consumer that holds that set applies these
    /// instead of comparing thousands of peers.
    pub changes: Option<Changes>,
}

/// Two sets are equal when they hold the same peers and skips, whatever
/// their numbers and histories.
impl PartialEq for PeerSet {
    fn eq(&self, other: &PeerSet) -> bool {
        self.peers == other.peers && self.skipped == other.skipped && self.ips == other.ips
    }
}

/// What changed between two sets handed on one after the other: the net
/// difference (a peer withdrawn and accepted again unchanged, as every
/// Node status update does, is no change).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// The number of the set these apply to.
    pub since: u64,
    /// Peers gone and come, per family, sorted.
    pub removed: PerFamily<Vec<Peer>>,
    pub added: PerFamily<Vec<Peer>>,
    /// Public IPs no peer has any more, and new ones, sorted.
    pub ips_removed: Vec<IpAddr>,
    pub ips_added: Vec<IpAddr>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.removed.iter().all(|(_, v)| v.is_empty())
            && self.added.iter().all(|(_, v)| v.is_empty())
            && self.ips_removed.is_empty()
            && self.ips_added.is_empty()
    }
}

/// A new set number, unique in the process (so that sets of two indexes,
/// before and after the agent sets up again, are never taken for each
/// other).
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl PeerSet {
    pub fn new(peers: PerFamily<Vec<Peer>>, skipped: Vec<Skip>) -> PeerSet {
        let ips = peers
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.public_ip))
            .collect();
        PeerSet {
            peers,
            skipped,
            ips: sorted_once(ips),
            generation: next_generation(),
            changes: None,
        }
    }

    /// Every peer's public IP, both families, sorted, each once.
    pub fn public_ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }

    /// The changes from the set numbered `generation`, if they are known.
    pub fn changes_since(&self, generation: Option<u64>) -> Option<&Changes> {
        self.changes
            .as_ref()
            .filter(|c| Some(c.since) == generation)
    }
}

/// `added` and `removed` without what is in both (each sorted after).
fn net<T: Ord + Copy>(added: &mut Vec<T>, removed: &mut Vec<T>) {
    added.sort_unstable();
    removed.sort_unstable();
    let (gone, came) = crate::backend::diff(removed, added);
    *removed = gone;
    *added = came;
}

fn sorted_once(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// Whether two networks share any address.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The address range of a network, as numbers (for overlap checks).
fn range(n: &IpNetwork) -> (u128, u128) {
    let (start, bits) = match n.network() {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let host_bits = bits - u32::from(n.prefix());
    let size_minus_one = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (start, start.saturating_add(size_minus_one))
}

/// An accepted peer; its name and creation time are the judged node's
/// own (shared, not copied: the index holds thousands).
#[derive(Debug, Clone)]
struct Accepted {
    end: u128,
    created: Arc<str>,
    name: Arc<str>,
    entry: Peer,
}

/// One family's accepted subnets (disjoint, keyed by first address) and
/// the nodes refused for overlapping ours or an older peer's.
#[derive(Debug, Clone, Default)]
struct FamilyIndex {
    accepted: BTreeMap<u128, Accepted>,
    /// The accepted peers' entries, sorted: the peer set is a copy of it.
    peers: Vec<Peer>,
    /// The accepted peers' public IPs, sorted, with how many peers have
    /// each (a list: the peer set copies it after every change).
    ips: Vec<(IpAddr, u32)>,
    start_of: BTreeMap<Arc<str>, u128>,
    /// The accepted peers' VTEP MACs: the first address of their subnet.
    mac_of: BTreeMap<Mac, u128>,
    /// Refused nodes: why, and their entry (the skip's text is made when
    /// the peer set is, from the accepted subnets of that moment).
    refused: BTreeMap<Arc<str>, (SkipReason, Peer)>,
    /// Accepted and withdrawn since the last set was handed on, and public
    /// IPs that came and went with them.
    log: Log,
}

#[derive(Debug, Clone, Default)]
struct Log {
    added: Vec<Peer>,
    removed: Vec<Peer>,
    ips_added: Vec<IpAddr>,
    ips_removed: Vec<IpAddr>,
}

impl FamilyIndex {
    fn accept(&mut self, start: u128, a: Accepted) {
        self.start_of.insert(a.name.clone(), start);
        if let PeerData::VtepMac(mac) = a.entry.data {
            self.mac_of.insert(mac, start);
        }
        if let Err(at) = self.peers.binary_search(&a.entry) {
            self.peers.insert(at, a.entry);
        }
        let ip = a.entry.public_ip;
        match self.ips.binary_search_by_key(&ip, |(ip, _)| *ip) {
            Ok(at) => self.ips[at].1 += 1,
            Err(at) => {
                self.ips.insert(at, (ip, 1));
                self.log.ips_added.push(ip);
            }
        }
        self.log.added.push(a.entry);
        self.accepted.insert(start, a);
    }

    /// Takes `name`'s accepted place away, if it has one.
    fn withdraw(&mut self, name: &str) -> bool {
        let Some(start) = self.start_of.remove(name) else {
            return false;
        };
        if let Some(gone) = self.accepted.remove(&start) {
            if let PeerData::VtepMac(mac) = gone.entry.data {
                self.mac_of.remove(&mac);
            }
            if let Ok(at) = self.peers.binary_search(&gone.entry) {
                self.peers.remove(at);
            }
            let ip = gone.entry.public_ip;
            if let Ok(at) = self.ips.binary_search_by_key(&ip, |(ip, _)| *ip) {
                self.ips[at].1 -= 1;
                if self.ips[at].1 == 0 {
                    self.ips.remove(at);
                    self.log.ips_removed.push(ip);
                }
            }
            self.log.removed.push(gone.entry);
        }
        true
    }

    /// The accepted peer whose subnet overlaps `subnet`, if any.
    fn clash(&self, subnet: &IpNetwork) -> Option<&Accepted> {
        let (start, end) = range(subnet);
        self.accepted
            .range(..=end)
            .next_back()
            .map(|(_, a)| a)
            .filter(|a| a.end >= start)
    }

    /// The accepted peer publishing the VTEP MAC of `data`, if any.
    fn same_mac(&self, data: &PeerData) -> Option<&Accepted> {
        let PeerData::VtepMac(mac) = data else {
            return None;
        };
        self.accepted.get(self.mac_of.get(mac)?)
    }
}

/// A refusal that a change to another node can lift.
fn lifted_by_others(reason: SkipReason) -> bool {
    matches!(
        reason,
        SkipReason::OverlapsPeer | SkipReason::DuplicateVtepMac
    )
}

/// The peer set, kept up to date one Node at a time: a Node event costs a
/// few map operations, not a pass over every node, and the set handed on
/// is a copy of sorted lists kept along. Only when a change could let a
/// refused (overlapping) node in is the family rebuilt from scratch, older
/// nodes first.
#[derive(Debug, Clone)]
pub struct PeerIndex {
    ctx: Context,
    judged: BTreeMap<Arc<str>, Judged>,
    /// The judged nodes refused in some family by judging alone.
    refused_by_judge: BTreeSet<Arc<str>>,
    fams: PerFamily<FamilyIndex>,
    /// The number of the last set handed on, while the families' logs
    /// hold every change since (a rebuild clears them).
    handed: Option<u64>,
}

impl PeerIndex {
    pub fn new(ctx: Context) -> PeerIndex {
        PeerIndex {
            ctx,
            judged: BTreeMap::new(),
            refused_by_judge: BTreeSet::new(),
            fams: Default::default(),
            handed: None,
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Nodes judged so far.
    pub fn len(&self) -> usize {
        self.judged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.judged.is_empty()
    }

    /// Replaces everything (after a full list).
    pub fn replace_all(&mut self, judged: impl IntoIterator<Item = Judged>) {
        self.judged = judged.into_iter().map(|j| (j.name.clone(), j)).collect();
        self.refused_by_judge = self
            .judged
            .values()
            .filter(|j| has_refusal(j))
            .map(|j| j.name.clone())
            .collect();
        for f in Family::ALL {
            self.rebuild(f);
        }
    }

    /// A node was added or changed (`None`: it is no peer candidate at all).
    pub fn upsert(&mut self, name: &str, judged: Option<Judged>) {
        self.refused_by_judge.remove(name);
        match judged {
            Some(j) => {
                if has_refusal(&j) {
                    self.refused_by_judge.insert(j.name.clone());
                }
                self.judged.insert(j.name.clone(), j);
            }
            None => {
                self.judged.remove(name);
            }
        }
        for f in Family::ALL {
            self.update(f, name);
        }
    }

    /// A node was deleted.
    pub fn remove(&mut self, name: &str) {
        self.upsert(name, None);
    }

    fn local(&self, f: Family) -> Option<Subnets> {
        *self.ctx.families.get(f)
    }

    /// Withdraws `name`'s place in family `f`, then tries it again.
    fn update(&mut self, f: Family, name: &str) {
        let Some(fam) = self.local(f) else { return };
        let idx = self.fams.get_mut(f);
        let mut rebuild = false;
        if idx.withdraw(name) {
            // A refused node may have been refused because of this one.
            rebuild |= idx.refused.values().any(|(r, _)| lifted_by_others(*r));
        }
        idx.refused.remove(name);
        if !rebuild
            && let Some(j) = self.judged.get(name)
            && let Some(Ok(e)) = j.families.get(f)
        {
            let (name, created, e) = (j.name.clone(), j.created.clone(), *e);
            let idx = self.fams.get_mut(f);
            rebuild = !place(idx, &fam, &name, created, e);
            // Accepted now, it may be the first reason of a younger node
            // refused for another (an overlap where a shared MAC was, or
            // the other way round): the reasons are a full pass's.
            rebuild |= idx.start_of.contains_key(&*name)
                && idx.refused.values().any(|(r, other)| {
                    lifted_by_others(*r)
                        && (overlaps(&other.subnet, &e.subnet)
                            || matches!((other.data, e.data), (PeerData::VtepMac(a), PeerData::VtepMac(b)) if a == b))
                });
        }
        if rebuild {
            self.rebuild(f);
        }
    }

    /// Recomputes family `f` from every judged node, older nodes first.
    fn rebuild(&mut self, f: Family) {
        *self.fams.get_mut(f) = FamilyIndex::default();
        // The next set is compared whole.
        self.handed = None;
        let Some(fam) = self.local(f) else { return };
        let mut cands: Vec<(Arc<str>, Arc<str>, Peer)> = self
            .judged
            .values()
            .filter_map(|j| match j.families.get(f) {
                Some(Ok(e)) => Some((j.created.clone(), j.name.clone(), *e)),
                _ => None,
            })
            .collect();
        cands.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let idx = self.fams.get_mut(f);
        for (created, name, e) in cands {
            // In age order a newcomer never displaces an accepted node.
            place(idx, &fam, &name, created, e);
        }
    }

    /// The complete peer set and every skip, sorted, with the changes since
    /// the set handed on before (which starts the next changes).
    pub fn peer_set(&mut self) -> PeerSet {
        let generation = next_generation();
        let since = self.handed.replace(generation);
        let mut logs = PerFamily::from_fn(|f| std::mem::take(&mut self.fams.get_mut(f).log));
        let changes = since.map(|since| {
            let mut c = Changes {
                since,
                ..Changes::default()
            };
            for f in Family::ALL {
                let log = logs.get_mut(f);
                net(&mut log.added, &mut log.removed);
                net(&mut log.ips_added, &mut log.ips_removed);
                *c.added.get_mut(f) = std::mem::take(&mut log.added);
                *c.removed.get_mut(f) = std::mem::take(&mut log.removed);
                c.ips_added.append(&mut log.ips_added);
                c.ips_removed.append(&mut log.ips_removed);
            }
            // Both families' IPs: an address may leave one family's peers
            // and come to the other's.
            net(&mut c.ips_added, &mut c.ips_removed);
            c
        });
        let peers = self.fams.map(|_, idx| idx.peers.clone());
        let mut ips = Vec::with_capacity(self.fams.v4.ips.len() + self.fams.v6.ips.len());
        for (_, idx) in self.fams.iter() {
            ips.extend(idx.ips.iter().map(|(ip, _)| *ip));
        }
        let mut skipped: Vec<Skip> = Vec::new();
        for j in self
            .refused_by_judge
            .iter()
            .filter_map(|n| self.judged.get(n))
        {
            for (f, r) in j.families.iter() {
                if let Some(Err((reason, detail))) = r {
                    skipped.push(Skip {
                        node: j.name.to_string(),
                        family: f,
                        reason: *reason,
                        detail: detail.clone(),
                    });
                }
            }
        }
        for (f, idx) in self.fams.iter() {
            let Some(fam) = self.local(f) else { continue };
            for (name, (reason, e)) in &idx.refused {
                let detail = match (reason, idx.clash(&e.subnet)) {
                    (SkipReason::OverlapsPeer, Some(o)) => format!(
                        "podCIDR {} overlaps {} of older node {}",
                        e.subnet, o.entry.subnet, o.name
                    ),
                    (SkipReason::DuplicateVtepMac, _) => match idx.same_mac(&e.data) {
                        Some(o) => format!(
                            "its VtepMAC is older node {}'s too: a VXLAN device reaches one node per MAC",
                            o.name
                        ),
                        None => "its VtepMAC is an older node's too".into(),
                    },
                    _ => format!(
                        "podCIDR {} overlaps this node's {}",
                        e.subnet, fam.local_subnet
                    ),
                };
                skipped.push(Skip {
                    node: name.to_string(),
                    family: f,
                    reason: *reason,
                    detail,
                });
            }
        }
        skipped.sort();
        PeerSet {
            peers,
            skipped,
            ips: sorted_once(ips),
            generation,
            changes,
        }
    }
}

/// Accepts `e` for `name` unless it overlaps our subnet or an accepted
/// peer's. Returns false when it overlaps a YOUNGER accepted peer (which
/// should yield to it: the caller rebuilds the family).
fn place(
    idx: &mut FamilyIndex,
    fam: &Subnets,
    name: &Arc<str>,
    created: Arc<str>,
    e: Peer,
) -> bool {
    if overlaps(&e.subnet, &fam.local_subnet) {
        idx.refused
            .insert(name.clone(), (SkipReason::OverlapsLocal, e));
        return true;
    }
    let clash = idx
        .clash(&e.subnet)
        .map(|o| (o, SkipReason::OverlapsPeer))
        .or_else(|| {
            idx.same_mac(&e.data)
                .map(|o| (o, SkipReason::DuplicateVtepMac))
        });
    if let Some((other, reason)) = clash {
        if (&other.created, &other.name) > (&created, name) {
            return false;
        }
        idx.refused.insert(name.clone(), (reason, e));
        return true;
    }
    let (start, end) = range(&e.subnet);
    idx.accept(
        start,
        Accepted {
            end,
            created,
            name: name.clone(),
            entry: e,
        },
    );
    true
}

/// Whether judging alone refused `j` in some family.
fn has_refusal(j: &Judged) -> bool {
    j.families.iter().any(|(_, r)| matches!(r, Some(Err(_))))
}

/// Assembles the complete peer set from judged nodes in one go.
pub fn assemble<'a>(ctx: &Context, judged: impl IntoIterator<Item = &'a Judged>) -> PeerSet {
    let mut idx = PeerIndex::new(ctx.clone());
    idx.replace_all(judged.into_iter().cloned());
    idx.peer_set()
}

/// Derives the complete peer set from every lease.
pub fn derive(ctx: &Context, records: &[Record<'_>]) -> PeerSet {
    let judged: Vec<Judged> = records.iter().filter_map(|n| judge(ctx, n)).collect();
    assemble(ctx, &judged)
}
