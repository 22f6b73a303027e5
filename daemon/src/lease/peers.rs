//! From the complete list of Nodes to the complete peer set, purely.
//!
//! A peer is a node annotated `kube-subnet-manager: "true"` (weft's or
//! flannel's) with a podCIDR inside Network and valid backend annotations.
//! Each address family is judged on its own. A node with garbage (bad JSON,
//! bad MAC, bad IP, a podCIDR outside Network or overlapping ours or an
//! older peer's) is skipped with its reason; it never disturbs the others.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::node::SlimNode;
use crate::annotations::{Mac, Names, VxlanData};
use crate::vxlan::plan::PeerEntry;

/// Why a node is not a peer (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    NoPodCidr,
    BadPodCidr,
    OutsideNetwork,
    OverlapsLocal,
    OverlapsPeer,
    OtherBackend,
    BadPublicIp,
    BadBackendData,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::NoPodCidr => "no_pod_cidr",
            SkipReason::BadPodCidr => "bad_pod_cidr",
            SkipReason::OutsideNetwork => "pod_cidr_outside_network",
            SkipReason::OverlapsLocal => "overlaps_local_subnet",
            SkipReason::OverlapsPeer => "overlaps_peer_subnet",
            SkipReason::OtherBackend => "other_backend_type",
            SkipReason::BadPublicIp => "bad_public_ip",
            SkipReason::BadBackendData => "bad_backend_data",
        }
    }

    pub const ALL: [SkipReason; 8] = [
        SkipReason::NoPodCidr,
        SkipReason::BadPodCidr,
        SkipReason::OutsideNetwork,
        SkipReason::OverlapsLocal,
        SkipReason::OverlapsPeer,
        SkipReason::OtherBackend,
        SkipReason::BadPublicIp,
        SkipReason::BadBackendData,
    ];
}

/// One node skipped for one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skip {
    pub node: String,
    pub ipv6: bool,
    pub reason: SkipReason,
    pub detail: String,
}

/// One enabled address family, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    pub network: IpNetwork,
    pub local_subnet: IpNetwork,
}

/// What peer derivation needs to know about this node.
#[derive(Debug, Clone)]
pub struct Context {
    pub names: Names,
    pub own_name: String,
    pub v4: Option<Family>,
    pub v6: Option<Family>,
    pub backend: PeerBackend,
}

/// Which backend this node runs: only nodes of the same backend are peers
/// (flannel's nodes of another backend are skipped, with a reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerBackend {
    Vxlan {
        vni: u32,
    },
    /// flannel's udp backend: no backend data; the VTEP MAC of the entries
    /// is unused (all zero).
    Udp,
}

/// The complete peer set, per family, plus what was skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerSet {
    pub v4: Vec<PeerEntry>,
    pub v6: Vec<PeerEntry>,
    pub skipped: Vec<Skip>,
}

impl PeerSet {
    /// The entries of one address family.
    pub fn family(&self, ipv6: bool) -> &[PeerEntry] {
        if ipv6 { &self.v6 } else { &self.v4 }
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn masked(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

/// One node's entry for one family, or why it has none.
fn entry(
    ctx: &Context,
    fam: &Family,
    ipv6: bool,
    node: &SlimNode,
) -> Result<PeerEntry, (SkipReason, String)> {
    let cidrs = node.pod_cidrs();
    if cidrs.is_empty() {
        return Err((SkipReason::NoPodCidr, "spec.podCIDR is not set".into()));
    }
    let mut subnet = None;
    for c in cidrs {
        let n: IpNetwork = c.parse().map_err(|_| {
            (
                SkipReason::BadPodCidr,
                format!("podCIDR {c:?} is not a CIDR"),
            )
        })?;
        if n.is_ipv6() == ipv6 {
            subnet = Some(masked(n));
        }
    }
    let subnet = subnet.ok_or_else(|| {
        (
            SkipReason::NoPodCidr,
            format!("no IPv{} podCIDR", if ipv6 { 6 } else { 4 }),
        )
    })?;
    if !(fam.network.contains(subnet.network()) && subnet.prefix() >= fam.network.prefix()) {
        return Err((
            SkipReason::OutsideNetwork,
            format!("podCIDR {subnet} is outside Network {}", fam.network),
        ));
    }
    let names = &ctx.names;
    let ty = node.annotation(&names.backend_type).unwrap_or("");
    let want = match ctx.backend {
        PeerBackend::Vxlan { .. } => "vxlan",
        PeerBackend::Udp => "udp",
    };
    if ty != want {
        return Err((
            SkipReason::OtherBackend,
            format!("{} is {ty:?}, not {want:?}", names.backend_type),
        ));
    }
    let ip_key = if ipv6 {
        &names.public_ipv6
    } else {
        &names.public_ip
    };
    let ip_text = node.annotation(ip_key).unwrap_or("");
    let public_ip: IpAddr = ip_text
        .parse()
        .ok()
        .filter(|ip: &IpAddr| ip.is_ipv6() == ipv6)
        .ok_or_else(|| (SkipReason::BadPublicIp, format!("{ip_key} is {ip_text:?}")))?;
    let PeerBackend::Vxlan { vni } = ctx.backend else {
        return Ok(PeerEntry {
            subnet,
            public_ip,
            vtep_mac: Mac([0; 6]),
        });
    };
    let data_key = if ipv6 {
        &names.backend_v6_data
    } else {
        &names.backend_data
    };
    let data_text = node.annotation(data_key).unwrap_or("");
    let data = VxlanData::decode(data_text).map_err(|e| {
        (
            SkipReason::BadBackendData,
            format!("{data_key} {data_text:?}: {e}"),
        )
    })?;
    if data.vni != vni {
        return Err((
            SkipReason::BadBackendData,
            format!("{data_key} has VNI {}, this node uses {vni}", data.vni),
        ));
    }
    if !data.vtep_mac.is_unicast() {
        return Err((
            SkipReason::BadBackendData,
            format!("{data_key} VtepMAC {} is not a unicast MAC", data.vtep_mac),
        ));
    }
    Ok(PeerEntry {
        subnet,
        public_ip,
        vtep_mac: data.vtep_mac,
    })
}

/// One node judged on its own: its entry or skip reason per family.
/// Computed once per Node event, so a change to one node costs one parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub name: String,
    /// RFC 3339 creation time: the older of two overlapping nodes wins.
    pub created: String,
    /// IPv4 then IPv6; `None` for a disabled family or an unmanaged node.
    pub families: [Option<Result<PeerEntry, (SkipReason, String)>>; 2],
}

/// Judges one Node; `None` for our own node and for nodes that are not
/// flannel/weft nodes at all (no `kube-subnet-manager: "true"`).
pub fn judge(ctx: &Context, node: &SlimNode) -> Option<Judged> {
    let name = node.name();
    if name == ctx.own_name || node.annotation(&ctx.names.subnet_manager) != Some("true") {
        return None;
    }
    let mut families = [None, None];
    for (i, fam) in [ctx.v4, ctx.v6].iter().enumerate() {
        if let Some(fam) = fam {
            families[i] = Some(entry(ctx, fam, i == 1, node));
        }
    }
    Some(Judged {
        name: name.to_string(),
        created: node.created(),
        families,
    })
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

#[derive(Debug, Clone)]
struct Accepted {
    end: u128,
    created: String,
    name: String,
    entry: PeerEntry,
}

/// One family's accepted subnets (disjoint, keyed by first address) and
/// the nodes refused for overlapping ours or an older peer's.
#[derive(Debug, Clone, Default)]
struct FamilyIndex {
    accepted: BTreeMap<u128, Accepted>,
    start_of: BTreeMap<String, u128>,
    /// Refused nodes: why, and their entry (the skip's text is made when
    /// the peer set is, from the accepted subnets of that moment).
    refused: BTreeMap<String, (SkipReason, PeerEntry)>,
}

impl FamilyIndex {
    /// The accepted peer whose subnet overlaps `subnet`, if any.
    fn clash(&self, subnet: &IpNetwork) -> Option<&Accepted> {
        let (start, end) = range(subnet);
        self.accepted
            .range(..=end)
            .next_back()
            .map(|(_, a)| a)
            .filter(|a| a.end >= start)
    }
}

/// The peer set, kept up to date one Node at a time: a Node event costs a
/// few map operations, not a pass over every node. Only when a change could
/// let a refused (overlapping) node in is the family rebuilt from scratch,
/// older nodes first.
#[derive(Debug, Clone)]
pub struct PeerIndex {
    ctx: Context,
    judged: BTreeMap<String, Judged>,
    fams: [FamilyIndex; 2],
}

impl PeerIndex {
    pub fn new(ctx: Context) -> PeerIndex {
        PeerIndex {
            ctx,
            judged: BTreeMap::new(),
            fams: Default::default(),
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Replaces everything (after a full list).
    pub fn replace_all(&mut self, judged: impl IntoIterator<Item = Judged>) {
        self.judged = judged.into_iter().map(|j| (j.name.clone(), j)).collect();
        for f in 0..2 {
            self.rebuild(f);
        }
    }

    /// A node was added or changed (`None`: it is no peer candidate at all).
    pub fn upsert(&mut self, name: &str, judged: Option<Judged>) {
        match judged {
            Some(j) => {
                self.judged.insert(name.to_string(), j);
            }
            None => {
                self.judged.remove(name);
            }
        }
        for f in 0..2 {
            self.update(f, name);
        }
    }

    /// A node was deleted.
    pub fn remove(&mut self, name: &str) {
        self.upsert(name, None);
    }

    fn local(&self, f: usize) -> Option<Family> {
        if f == 0 { self.ctx.v4 } else { self.ctx.v6 }
    }

    /// Withdraws `name`'s place in family `f`, then tries it again.
    fn update(&mut self, f: usize, name: &str) {
        let Some(fam) = self.local(f) else { return };
        let idx = &mut self.fams[f];
        let mut rebuild = false;
        if let Some(start) = idx.start_of.remove(name) {
            idx.accepted.remove(&start);
            // A refused node may have been refused because of this one.
            rebuild |= idx
                .refused
                .values()
                .any(|(r, _)| *r == SkipReason::OverlapsPeer);
        }
        idx.refused.remove(name);
        if !rebuild
            && let Some(j) = self.judged.get(name)
            && let Some(Ok(e)) = &j.families[f]
        {
            let (created, e) = (j.created.clone(), *e);
            rebuild = !place(&mut self.fams[f], &fam, name, created, e);
        }
        if rebuild {
            self.rebuild(f);
        }
    }

    /// Recomputes family `f` from every judged node, older nodes first.
    fn rebuild(&mut self, f: usize) {
        self.fams[f] = FamilyIndex::default();
        let Some(fam) = self.local(f) else { return };
        let mut cands: Vec<(&str, &str, PeerEntry)> = self
            .judged
            .values()
            .filter_map(|j| match &j.families[f] {
                Some(Ok(e)) => Some((j.created.as_str(), j.name.as_str(), *e)),
                _ => None,
            })
            .collect();
        cands.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let idx = &mut self.fams[f];
        for (created, name, e) in cands {
            // In age order a newcomer never displaces an accepted node.
            place(idx, &fam, name, created.to_string(), e);
        }
    }

    /// The complete peer set and every skip, sorted.
    pub fn peer_set(&self) -> PeerSet {
        let entries = |f: usize| {
            let mut v: Vec<PeerEntry> = self.fams[f].accepted.values().map(|a| a.entry).collect();
            v.sort_unstable();
            v
        };
        let mut skipped: Vec<Skip> = Vec::new();
        for j in self.judged.values() {
            for (f, r) in j.families.iter().enumerate() {
                if let Some(Err((reason, detail))) = r {
                    skipped.push(Skip {
                        node: j.name.clone(),
                        ipv6: f == 1,
                        reason: *reason,
                        detail: detail.clone(),
                    });
                }
            }
        }
        for (f, idx) in self.fams.iter().enumerate() {
            let Some(fam) = self.local(f) else { continue };
            for (name, (reason, e)) in &idx.refused {
                let detail = match (reason, idx.clash(&e.subnet)) {
                    (SkipReason::OverlapsPeer, Some(o)) => format!(
                        "podCIDR {} overlaps {} of older node {}",
                        e.subnet, o.entry.subnet, o.name
                    ),
                    _ => format!(
                        "podCIDR {} overlaps this node's {}",
                        e.subnet, fam.local_subnet
                    ),
                };
                skipped.push(Skip {
                    node: name.clone(),
                    ipv6: f == 1,
                    reason: *reason,
                    detail,
                });
            }
        }
        skipped.sort();
        PeerSet {
            v4: entries(0),
            v6: entries(1),
            skipped,
        }
    }
}

/// Accepts `e` for `name` unless it overlaps our subnet or an accepted
/// peer's. Returns false when it overlaps a YOUNGER accepted peer (which
/// should yield to it: the caller rebuilds the family).
fn place(idx: &mut FamilyIndex, fam: &Family, name: &str, created: String, e: PeerEntry) -> bool {
    if overlaps(&e.subnet, &fam.local_subnet) {
        idx.refused
            .insert(name.to_string(), (SkipReason::OverlapsLocal, e));
        return true;
    }
    if let Some(other) = idx.clash(&e.subnet) {
        if (other.created.as_str(), other.name.as_str()) > (created.as_str(), name) {
            return false;
        }
        idx.refused
            .insert(name.to_string(), (SkipReason::OverlapsPeer, e));
        return true;
    }
    let (start, end) = range(&e.subnet);
    idx.start_of.insert(name.to_string(), start);
    idx.accepted.insert(
        start,
        Accepted {
            end,
            created,
            name: name.to_string(),
            entry: e,
        },
    );
    true
}

/// Assembles the complete peer set from judged nodes in one go.
pub fn assemble<'a>(ctx: &Context, judged: impl IntoIterator<Item = &'a Judged>) -> PeerSet {
    let mut idx = PeerIndex::new(ctx.clone());
    idx.replace_all(judged.into_iter().cloned());
    idx.peer_set()
}

/// Derives the complete peer set from every Node.
pub fn derive<'a>(ctx: &Context, nodes: impl IntoIterator<Item = &'a SlimNode>) -> PeerSet {
    let judged: Vec<Judged> = nodes.into_iter().filter_map(|n| judge(ctx, n)).collect();
    assemble(ctx, &judged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{DEFAULT_PREFIX, Mac};

    fn ctx() -> Context {
        Context {
            names: Names::new(DEFAULT_PREFIX).unwrap(),
            own_name: "me".into(),
            v4: Some(Family {
                network: "10.244.0.0/16".parse().unwrap(),
                local_subnet: "10.244.1.0/24".parse().unwrap(),
            }),
            v6: None,
            backend: PeerBackend::Vxlan { vni: 1 },
        }
    }

    fn node(name: &str, created: &str, cidr: &str, ip: &str, data: &str) -> SlimNode {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "creationTimestamp": created,
                "annotations": {
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/public-ip": ip,
                    "flannel.alpha.coreos.com/backend-data": data,
                }
            },
            "spec": {"podCIDR": cidr},
        }))
        .unwrap()
    }

    fn good(name: &str, n: u8) -> SlimNode {
        node(
            name,
            &format!("2026-01-01T00:00:{n:02}Z"),
            &format!("10.244.{n}.0/24"),
            &format!("198.51.100.{n}"),
            &format!(r#"{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{n:02x}"}}"#),
        )
    }

    fn entry_of(n: u8) -> PeerEntry {
        PeerEntry {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("198.51.100.{n}").parse().unwrap(),
            vtep_mac: Mac([0x0a, 0, 0, 0, 0, n]),
        }
    }

    fn reasons(set: &PeerSet) -> Vec<(String, &'static str)> {
        set.skipped
            .iter()
            .map(|s| (s.node.clone(), s.reason.label()))
            .collect()
    }

    #[test]
    fn good_peers_are_taken_and_self_and_unmanaged_nodes_left_out() {
        let mut unmanaged = good("flannel-less", 5);
        unmanaged.metadata.annotations = None;
        let nodes = [good("a", 2), good("b", 3), good("me", 1), unmanaged];
        let set = derive(&ctx(), &nodes);
        assert_eq!(set.v4, vec![entry_of(2), entry_of(3)]);
        assert!(set.skipped.is_empty());
    }

    #[test]
    fn a_udp_node_peers_with_udp_nodes_only_and_needs_no_backend_data() {
        let udp_ctx = Context {
            backend: PeerBackend::Udp,
            ..ctx()
        };
        let mut u = node(
            "u",
            "2026-01-01T00:00:04Z",
            "10.244.4.0/24",
            "198.51.100.4",
            "null",
        );
        if let Some(a) = u.metadata.annotations.as_mut() {
            a.insert("flannel.alpha.coreos.com/backend-type".into(), "udp".into());
        }
        let set = derive(&udp_ctx, &[u.clone(), good("v", 2)]);
        assert_eq!(
            set.v4,
            vec![PeerEntry {
                vtep_mac: Mac([0; 6]),
                ..entry_of(4)
            }]
        );
        assert_eq!(reasons(&set), vec![("v".to_string(), "other_backend_type")]);
        // And a VXLAN node skips the udp one.
        let set = derive(&ctx(), &[u, good("v", 2)]);
        assert_eq!(set.v4, vec![entry_of(2)]);
        assert_eq!(reasons(&set), vec![("u".to_string(), "other_backend_type")]);
    }

    #[test]
    fn each_kind_of_garbage_is_skipped_with_its_reason_and_the_rest_unaffected() {
        let d = |mac: &str| format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
        let t = "2026-01-01T00:00:00Z";
        let mut other_backend = good("hostgw", 20);
        other_backend.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/backend-type".into(),
            "host-gw".into(),
        );
        let nodes = [
            good("fine", 2),
            node("badjson", t, "10.244.10.0/24", "198.51.100.10", "{not json"),
            node(
                "badmac",
                t,
                "10.244.11.0/24",
                "198.51.100.11",
                &d("zz:00:00:00:00:01"),
            ),
            node(
                "multicastmac",
                t,
                "10.244.12.0/24",
                "198.51.100.12",
                &d("01:00:5e:00:00:01"),
            ),
            node(
                "badip",
                t,
                "10.244.13.0/24",
                "198.51.100.300",
                &d("0a:00:00:00:00:13"),
            ),
            node(
                "v6ip",
                t,
                "10.244.14.0/24",
                "2001:db8::1",
                &d("0a:00:00:00:00:14"),
            ),
            node(
                "outside",
                t,
                "10.99.0.0/24",
                "198.51.100.15",
                &d("0a:00:00:00:00:15"),
            ),
            node(
                "badcidr",
                t,
                "10.244.16.0/33",
                "198.51.100.16",
                &d("0a:00:00:00:00:16"),
            ),
            node("nocidr", t, "", "198.51.100.17", &d("0a:00:00:00:00:17")),
            node(
                "onme",
                t,
                "10.244.1.0/24",
                "198.51.100.18",
                &d("0a:00:00:00:00:18"),
            ),
            node(
                "vni",
                t,
                "10.244.19.0/24",
                "198.51.100.19",
                r#"{"VNI":2,"VtepMAC":"0a:00:00:00:00:19"}"#,
            ),
            other_backend,
        ];
        let set = derive(&ctx(), &nodes);
        assert_eq!(set.v4, vec![entry_of(2)], "the good peer is unaffected");
        let mut got = reasons(&set);
        got.sort();
        let mut want = vec![
            ("badjson".to_string(), "bad_backend_data"),
            ("badmac".into(), "bad_backend_data"),
            ("multicastmac".into(), "bad_backend_data"),
            ("badip".into(), "bad_public_ip"),
            ("v6ip".into(), "bad_public_ip"),
            ("outside".into(), "pod_cidr_outside_network"),
            ("badcidr".into(), "bad_pod_cidr"),
            ("nocidr".into(), "no_pod_cidr"),
            ("onme".into(), "overlaps_local_subnet"),
            ("vni".into(), "bad_backend_data"),
            ("hostgw".into(), "other_backend_type"),
        ];
        want.sort();
        assert_eq!(got, want);
        let badjson = set.skipped.iter().find(|s| s.node == "badjson").unwrap();
        assert!(
            badjson
                .detail
                .contains("flannel.alpha.coreos.com/backend-data"),
            "{}",
            badjson.detail
        );
    }

    #[test]
    fn of_two_overlapping_peers_the_older_keeps_its_subnet() {
        let older = good("older", 2);
        let mut newer = good("newer", 9);
        newer.spec.pod_cidr = Some("10.244.2.0/23".into());
        newer.metadata.creation_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-06-01T00:00:00Z")).unwrap());
        let set = derive(&ctx(), &[newer, older]);
        assert_eq!(set.v4, vec![entry_of(2)]);
        assert_eq!(
            reasons(&set),
            vec![("newer".to_string(), "overlaps_peer_subnet")]
        );
    }

    #[test]
    fn one_node_at_a_time_gives_what_a_full_pass_gives() {
        // A deterministic walk of adds, changes (overlaps included) and deletes.
        let c = ctx();
        let mut idx = PeerIndex::new(c.clone());
        let mut all: BTreeMap<String, SlimNode> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for step in 0..3000 {
            let name = format!("n{}", rnd(40));
            if rnd(5) == 0 {
                all.remove(&name);
                idx.remove(&name);
            } else {
                let n = (rnd(30) + 2) as u8;
                let mut node = good(&name, n);
                if rnd(4) == 0 {
                    node.spec.pod_cidr = Some(format!("10.244.{}.0/23", n & !1));
                }
                node.metadata.creation_timestamp = Some(
                    serde_json::from_value(serde_json::json!(format!(
                        "2026-01-01T00:{:02}:00Z",
                        rnd(60)
                    )))
                    .unwrap(),
                );
                idx.upsert(&name, judge(&c, &node));
                all.insert(name, node);
            }
            assert_eq!(idx.peer_set(), derive(&c, all.values()), "step {step}");
        }
    }

    #[test]
    fn dual_stack_families_are_judged_separately() {
        let mut c = ctx();
        c.v6 = Some(Family {
            network: "fd00:10:244::/48".parse().unwrap(),
            local_subnet: "fd00:10:244:1::/64".parse().unwrap(),
        });
        let mut n = good("dual", 2);
        n.spec.pod_cidrs = Some(vec!["10.244.2.0/24".into(), "fd00:10:244:2::/64".into()]);
        let a = n.metadata.annotations.as_mut().unwrap();
        a.insert(
            "flannel.alpha.coreos.com/public-ipv6".into(),
            "2001:db8::2".into(),
        );
        a.insert(
            "flannel.alpha.coreos.com/backend-v6-data".into(),
            r#"{"VNI":1,"VtepMAC":"0a:06:00:00:00:02"}"#.into(),
        );
        let v4only = good("v4only", 3);
        let set = derive(&c, &[n, v4only]);
        assert_eq!(set.v4, vec![entry_of(2), entry_of(3)]);
        assert_eq!(set.v6.len(), 1);
        assert_eq!(
            set.v6[0].public_ip,
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(reasons(&set), vec![("v4only".to_string(), "no_pod_cidr")]);
    }
}
