//! Judging one node's lease on its own, purely: is it a peer, and for each
//! address family, its entry or why it has none.
//!
//! A peer is a flannel/weft node (Kubernetes: `kube-subnet-manager: "true"`)
//! with a pod CIDR inside Network, a public IP of the family, and a backend
//! type and data that this node's backend accepts (the backend's
//! [`PeerCodec`] decides; its result is kept without looking inside). A node
//! with garbage is skipped with its reason; it never disturbs the others.
//! Overlaps between nodes are arbitrated later, over all of them
//! ([`peers`](super::peers)).

use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::{FieldNames, Record};
use crate::backend::{Peer, PeerCodec, Refusal};
use crate::family::{Family, PerFamily};

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
    Unreachable,
    UnusablePublicIp,
    DuplicateVtepMac,
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
            SkipReason::Unreachable => "unreachable_by_backend",
            SkipReason::UnusablePublicIp => "unusable_public_ip",
            SkipReason::DuplicateVtepMac => "duplicate_vtep_mac",
        }
    }

    pub const ALL: [SkipReason; 11] = [
        SkipReason::NoPodCidr,
        SkipReason::BadPodCidr,
        SkipReason::OutsideNetwork,
        SkipReason::OverlapsLocal,
        SkipReason::OverlapsPeer,
        SkipReason::OtherBackend,
        SkipReason::BadPublicIp,
        SkipReason::BadBackendData,
        SkipReason::Unreachable,
        SkipReason::UnusablePublicIp,
        SkipReason::DuplicateVtepMac,
    ];
}

/// One node skipped for one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skip {
    pub node: String,
    pub family: Family,
    pub reason: SkipReason,
    pub detail: String,
}

/// One enabled address family, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subnets {
    pub network: IpNetwork,
    pub local_subnet: IpNetwork,
    /// The public IP this node publishes (a peer claiming it is refused).
    pub local_ip: IpAddr,
}

/// What peer derivation needs to know about this node.
#[derive(Debug, Clone)]
pub struct Context {
    /// How the source names the fields (for the reasons given).
    pub fields: FieldNames,
    pub own_name: String,
    pub families: PerFamily<Option<Subnets>>,
    /// How this node's backend judges peers' backend data.
    pub codec: Arc<dyn PeerCodec>,
}

/// One family's entry of a node, or why it has none.
pub type Verdict = Result<Peer, (SkipReason, String)>;

/// One node judged on its own: its entry or skip reason per family.
/// Computed once per Node event, so a change to one node costs one parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub name: Arc<str>,
    /// RFC 3339 creation time: the older of two overlapping nodes wins.
    pub created: Arc<str>,
    /// `None` for a disabled family.
    pub families: PerFamily<Option<Verdict>>,
}

/// Judges one node's lease; `None` for our own node and for nodes that are
/// not flannel/weft nodes at all.
pub fn judge(ctx: &Context, node: &Record<'_>) -> Option<Judged> {
    if node.name == ctx.own_name || !node.managed {
        return None;
    }
    Some(Judged {
        name: node.name.into(),
        created: node.created.as_str().into(),
        families: ctx
            .families
            .map(|f, subnets| subnets.as_ref().map(|s| entry(ctx, s, f, node))),
    })
}

pub(super) fn masked(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

/// One node's entry for one family, or why it has none.
fn entry(ctx: &Context, subnets: &Subnets, family: Family, node: &Record<'_>) -> Verdict {
    let cidrs = &node.pod_cidrs;
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
        if Family::of_net(&n) == family {
            subnet = Some(masked(n));
        }
    }
    let subnet = subnet.ok_or_else(|| {
        (
            SkipReason::NoPodCidr,
            format!("no IPv{} podCIDR", family.number()),
        )
    })?;
    let network = subnets.network;
    if !(network.contains(subnet.network()) && subnet.prefix() >= network.prefix()) {
        return Err((
            SkipReason::OutsideNetwork,
            format!("podCIDR {subnet} is outside Network {network}"),
        ));
    }
    let names = &ctx.fields;
    let (ip_key, data_key) = (names.public_ip.get(family), names.data.get(family));
    let ty = node.backend_type;
    let ip_text = node.public_ip.get(family).unwrap_or("");
    let public_ip: Option<IpAddr> = ip_text.parse().ok().filter(|ip: &IpAddr| family.holds(ip));
    // The type first: a node of another backend is that, whatever its IP.
    let data = *node.data.get(family);
    let decoded = ctx
        .codec
        .decode(family, ty, data, public_ip)
        .map_err(|r| refusal(names, data_key, r));
    let public_ip = match (&decoded, public_ip) {
        (Err(e @ (SkipReason::OtherBackend, _)), _) => return Err(e.clone()),
        (_, None) => {
            return Err((SkipReason::BadPublicIp, format!("{ip_key} is {ip_text:?}")));
        }
        (_, Some(ip)) => ip,
    };
    if let Some(why) = unusable(&public_ip, subnets.local_ip) {
        return Err((
            SkipReason::UnusablePublicIp,
            format!("{ip_key} {public_ip} {why}"),
        ));
    }
    let data = decoded?;
    Ok(Peer {
        subnet,
        public_ip,
        data,
    })
}

/// Why `ip` cannot be another host's address to tunnel or route to, if it
/// cannot: routes, neighbours and FDB entries toward it would send pod
/// traffic to this host itself, to nowhere, or to a group.
fn unusable(ip: &IpAddr, own: IpAddr) -> Option<&'static str> {
    if *ip == own {
        return Some("is this node's own public IP");
    }
    not_a_host_address(ip)
}

/// Why `ip` is no single host's address on a network, if it is not
/// (unspecified, loopback, multicast, broadcast, IPv6 link-local or
/// IPv4-mapped).
pub fn not_a_host_address(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("is unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("is a loopback address"),
        IpAddr::V4(a) if a.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("is unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("is a loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("is a multicast address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            Some("is link-local (it means nothing without an interface)")
        }
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("is an IPv4-mapped address, not an IPv6 one")
        }
        _ => None,
    }
}

/// A backend's refusal as a skip reason and a text naming the annotation.
fn refusal(names: &FieldNames, data_key: &str, r: Refusal) -> (SkipReason, String) {
    match r {
        Refusal::OtherBackend(why) => (
            SkipReason::OtherBackend,
            format!("{} {why}", names.backend_type),
        ),
        Refusal::BadData(why) => (SkipReason::BadBackendData, format!("{data_key} {why}")),
        Refusal::Unreachable(why) => (SkipReason::Unreachable, why),
    }
}
