//! The lease source seam: where this node's subnet comes from, where it
//! publishes what it is, and where every peer's lease is read. Kubernetes
//! Nodes first ([`kube`], flannel's kube subnet manager); an in-memory source
//! serves the tests; flannel's etcd subnet manager plugs in here too.
//!
//! A source hands raw [`Record`]s to the same judging ([`judge`]) and
//! overlap arbitration ([`peers`]), so every source skips garbage the same
//! way and hands on the COMPLETE peer set after every change ([`Update`]).

pub mod etcd;
pub mod judge;
pub mod kube;
#[cfg(test)]
pub mod memory;
pub mod peers;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use tokio::sync::watch;

use crate::config::NetConfig;
use crate::family::{Family, PerFamily};
use crate::metrics::Metrics;
use judge::{Context, Skip, SkipReason};
use peers::PeerSet;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("node {node} has podCIDR {cidr:?}, which is not a CIDR")]
    BadPodCidr { node: String, cidr: String },
    #[error("node {node} has no IPv{family} podCIDR, but net-conf.json enables IPv{family}")]
    NoPodCidrForFamily { node: String, family: u8 },
    #[error("node {node}'s podCIDR {cidr} is outside Network {network} of net-conf.json")]
    OutsideNetwork {
        node: String,
        cidr: IpNetwork,
        network: IpNetwork,
    },
    #[error("etcd: {what}")]
    Etcd {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("etcd subnet manager: {0}")]
    Allocation(String),
    #[error("publishing the lease of node {node} ({how})")]
    Publish {
        node: String,
        how: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A peer set handed on. During the very first list the sets are partial
/// (the pages so far): the reconcile loop may add what they hold at once,
/// so programming thousands of peers overlaps the list, but deletes nothing
/// until the complete set arrives.
#[derive(Debug, Clone)]
pub struct Update {
    pub set: Arc<PeerSet>,
    pub complete: bool,
}

/// Our own lease as the source holds it when we start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnLease {
    pub name: String,
    /// Our pod CIDRs, as text (judged by [`own_subnets`]).
    pub pod_cidrs: Vec<String>,
    /// Addresses the cluster knows us by (Kubernetes: InternalIP), to pick
    /// the external interface.
    pub internal_ips: Vec<IpAddr>,
    pub stored: PerFamily<Stored>,
}

/// What our lease says of one family before we publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// The public IP set for us (`node-public-ip`), over the interface's.
    pub public_ip: Option<IpAddr>,
    /// The address to publish instead (`public-ip-overwrite`).
    pub overwrite: Option<IpAddr>,
    /// The backend data we published last time (to keep a VTEP MAC).
    pub data: Option<String>,
}

/// What we publish: the backend type, and per enabled family our public
/// IP and backend data.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub backend_type: String,
    pub families: PerFamily<Option<(IpAddr, String)>>,
}

/// One node's lease as a source read it, before judging: raw text, so that
/// garbage is judged (skipped with a reason), never a read error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record<'a> {
    pub name: &'a str,
    /// RFC 3339 creation time (the older of two overlapping nodes wins).
    pub created: String,
    /// Whether it is a flannel/weft node at all (Kubernetes:
    /// `kube-subnet-manager: "true"`).
    pub managed: bool,
    pub pod_cidrs: Vec<&'a str>,
    pub backend_type: &'a str,
    pub public_ip: PerFamily<Option<&'a str>>,
    pub data: PerFamily<Option<&'a str>>,
}

/// A [`Record`] that owns its text: what a source keeps of each lease
/// between changes (etcd's leases; the in-memory source's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnedRecord {
    pub name: String,
    pub created: String,
    pub pod_cidrs: Vec<String>,
    pub backend_type: String,
    pub public_ip: PerFamily<Option<String>>,
    pub data: PerFamily<Option<String>>,
}

impl OwnedRecord {
    pub fn record(&self) -> Record<'_> {
        Record {
            name: &self.name,
            created: self.created.clone(),
            managed: true,
            pod_cidrs: self.pod_cidrs.iter().map(String::as_str).collect(),
            backend_type: &self.backend_type,
            public_ip: self.public_ip.map(|_, v| v.as_deref()),
            data: self.data.map(|_, v| v.as_deref()),
        }
    }
}

/// How a source names a record's fields, for the reasons it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldNames {
    pub backend_type: String,
    pub public_ip: PerFamily<String>,
    pub data: PerFamily<String>,
}

/// What we claim a lease with, once our addresses are known: a source
/// that hands out subnets itself (etcd) writes its lease with these.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub backend_type: String,
    /// Per enabled family: the public IP we advertise.
    pub public_ip: PerFamily<Option<IpAddr>>,
    /// Per enabled family: the subnet our last run had (`subnet.env`), to
    /// have it again if it is free.
    pub previous: PerFamily<Option<IpNetwork>>,
}

/// A lease a source handed out on a claim.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    /// The lease's name among the records (etcd: its key).
    pub name: String,
    pub pod_cidrs: Vec<String>,
    /// The backend data the lease held before (to keep a VTEP MAC).
    pub data: PerFamily<Option<String>>,
}

/// Where leases live.
#[allow(async_fn_in_trait)]
pub trait LeaseSource {
    /// Waits (logging) until we are known: Kubernetes, until our Node has
    /// a podCIDR.
    async fn acquire(&self) -> OwnLease;
    /// Our lease when the source hands out subnets itself (etcd: reused or
    /// allocated, and written with `claim`); None when
    /// [`acquire`](Self::acquire) already gave it (Kubernetes: the Node's
    /// podCIDRs).
    async fn claim(&self, _claim: &Claim) -> Result<Option<Claimed>, LeaseError> {
        Ok(None)
    }
    /// Publishes what we are, unless it is all there already; whether it
    /// wrote.
    async fn publish(&self, ours: &Publish) -> Result<bool, LeaseError>;
    /// Starts watching every lease: the complete peer set after every
    /// change (`None` until the first page).
    fn watch(&self, ctx: Context, metrics: Arc<Metrics>) -> watch::Receiver<Option<Update>>;
    /// Tells the cluster our network is up (retried in the background).
    fn mark_ready(&self);
    /// How its records' fields are named.
    fn fields(&self) -> FieldNames;
}

/// Our subnets from our lease's pod CIDRs, one per enabled family, each
/// inside its Network.
pub fn own_subnets(
    cfg: &NetConfig,
    lease: &OwnLease,
) -> Result<PerFamily<Option<IpNetwork>>, LeaseError> {
    let name = &lease.name;
    let mut parsed = Vec::new();
    for c in &lease.pod_cidrs {
        let n: IpNetwork = c.parse().map_err(|_| LeaseError::BadPodCidr {
            node: name.clone(),
            cidr: c.to_string(),
        })?;
        parsed.push(judge::masked(n));
    }
    let mut out = PerFamily::default();
    for (family, fam) in [(Family::V4, &cfg.ipv4), (Family::V6, &cfg.ipv6)] {
        let Some(fam) = fam else { continue };
        let cidr = parsed
            .iter()
            .find(|n| Family::of_net(n) == family)
            .copied()
            .ok_or(LeaseError::NoPodCidrForFamily {
                node: name.clone(),
                family: family.number(),
            })?;
        if !(fam.network.contains(cidr.network()) && cidr.prefix() >= fam.network.prefix()) {
            return Err(LeaseError::OutsideNetwork {
                node: name.clone(),
                cidr,
                network: fam.network,
            });
        }
        *out.get_mut(family) = Some(cidr);
    }
    Ok(out)
}

/// Warns once per distinct problem and updates the peer metrics.
pub fn report(set: &PeerSet, warned: &mut BTreeSet<Skip>, metrics: &Metrics) {
    let now: BTreeSet<Skip> = set.skipped.iter().cloned().collect();
    for s in now.difference(warned) {
        tracing::warn!(
            node = %s.node,
            reason = s.reason.label(),
            family = s.family.label(),
            "skipping node {} as a peer: {}",
            s.node,
            s.detail
        );
    }
    *warned = now;
    // Every reason, zero or not, so a cleared problem reads 0.
    metrics.set_skipped(SkipReason::ALL.map(|r| {
        let n = set.skipped.iter().filter(|s| s.reason == r).count();
        (r.label(), n as u64)
    }));
    for (family, peers) in set.peers.iter() {
        metrics.set_peers(family.label(), peers.len());
    }
}
