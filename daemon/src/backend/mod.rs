//! The backend seam: what every backend (vxlan, udp, host-gw) does, as
//! flannel's `backend.Network` and netavark's network driver split it.
//!
//! A backend is started once ([`start`]: devices created or adopted, the
//! data it publishes decided), then the agent hands it the COMPLETE peer set
//! after every change and it makes the kernel match ([`Backend::reconcile`]):
//! a quick pass plans against what the last successful pass left, a full one
//! reads the kernel again, a partial one (pages of the first list) only adds.
//! Peers' backend data is decoded by the backend's [`PeerCodec`]; the lease
//! code stores the result without looking inside ([`PeerData`]).
//!
//! Adding a backend: a module with a type implementing [`Backend`] and a
//! [`PeerCodec`], and its line where backends are chosen
//! ([`backends`](crate::backends)).

pub mod routes;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::future::LocalBoxFuture;
use ipnetwork::IpNetwork;

use crate::annotations::Mac;
use crate::family::{Family, PerFamily};
use crate::iface::ExtIface;
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::netlink::kernel::Kernel;
use crate::netlink::{Change, Netlink, NetlinkError, Op};

/// The smallest pod MTU weft accepts (IPv4's minimum datagram size).
pub const MIN_POD_MTU: u32 = 576;

/// What a peer's backend data said, decoded by this node's backend. The
/// lease code keeps it without looking inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerData {
    /// The backend publishes nothing (`null`): udp, host-gw.
    None,
    /// The MAC of the peer's VXLAN device of that family.
    VtepMac(Mac),
}

/// One peer, for one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// Its pod subnet of this family.
    pub subnet: IpNetwork,
    /// Where it is reached (its public IP of this family).
    pub public_ip: IpAddr,
    pub data: PeerData,
}

/// Why a backend refuses a peer's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It runs another backend (or another VNI's network).
    OtherBackend(String),
    /// Its backend data is garbage.
    BadData(String),
    /// This backend cannot reach it (host-gw: not on our subnet).
    Unreachable(String),
}

/// How a backend recognises its peers. Given to the lease code, which calls
/// it once per node event and family, never per reconcile.
pub trait PeerCodec: fmt::Debug + Send + Sync {
    /// Judges one peer's `backend-type` and backend data (`None`: the
    /// annotation is absent) for one family, and its public IP where a
    /// backend cares (`None`: not a valid address; the lease code refuses
    /// that itself, after the type).
    fn decode(
        &self,
        family: Family,
        backend_type: &str,
        data: Option<&str>,
        public_ip: Option<IpAddr>,
    ) -> Result<PeerData, Refusal>;
}

/// Everything a backend knows about this node when it starts.
#[derive(Debug, Clone)]
pub struct Local {
    /// The external interface (underlay).
    pub ext: ExtIface,
    /// The enabled families.
    pub families: PerFamily<Option<LocalFamily>>,
    /// The udp backend asks the kernel for TUN offload, UDP GSO and GRO.
    pub udp_offload: bool,
}

/// One enabled family of this node.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalFamily {
    /// The whole pod network.
    pub network: IpNetwork,
    /// Our pod subnet.
    pub subnet: IpNetwork,
    /// The address our tunnel binds to.
    pub public_ip: IpAddr,
    /// The address we publish (`public-ip-overwrite`, else `public_ip`).
    pub advertised: IpAddr,
    /// The backend data our lease held before (to keep a VTEP MAC).
    pub stored_data: Option<String>,
}

/// Which kind of reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A page of the first list: add what it holds, delete nothing.
    Partial,
    /// A peer-set change: plan against the state the last pass left.
    Quick,
    /// Devices ensured and the kernel's tables read again.
    Full,
}

/// The interface every backend implements (over the netlink port `N`, so
/// the loop runs on the in-memory fake in tests).
pub trait Backend<N: Netlink> {
    /// The `backend-type` it publishes.
    fn type_name(&self) -> &'static str;
    /// The MTU pods get (`FLANNEL_MTU`).
    fn mtu(&self) -> u32;
    /// The backend data it publishes for a family (JSON text; `null`).
    fn data(&self, family: Family) -> String;
    /// How it judges peers' backend data.
    fn codec(&self) -> Arc<dyn PeerCodec>;
    /// The UDP port its tunnel listens on, which the allow-list guards.
    fn guarded_port(&self) -> Option<u16>;
    /// The devices it owns (a deletion calls for a full pass).
    fn devices(&self) -> Vec<String>;
    /// Whether a change seen on netlink undoes what it wants (its device
    /// deleted, one of its entries deleted or changed, a foreign entry
    /// added where it manages them).
    fn contradicted_by(&self, change: &Change) -> bool;
    /// Makes the kernel match the peer set; whether everything succeeded
    /// (failures are logged and counted; the loop retries with backoff).
    /// A quick pass may apply the set's changes to the set it last
    /// reconciled ([`PeerSet::changes_since`]) instead of comparing all.
    fn reconcile<'a>(
        &'a mut self,
        nl: &'a N,
        set: &'a PeerSet,
        pass: Pass,
        metrics: &'a Metrics,
    ) -> LocalBoxFuture<'a, bool>;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("net-conf.json: {field} is not supported by this version of weft yet")]
    Unsupported { field: &'static str },
    #[error(
        "the underlay MTU {mtu} of {iface} leaves no room for the {backend} backend (pods need at least 576 bytes): choose another --iface{hint}"
    )]
    MtuTooSmall {
        backend: &'static str,
        iface: String,
        mtu: u32,
        hint: &'static str,
    },
    #[error("generating a VTEP MAC")]
    Mac(#[source] std::io::Error),
    #[error(
        "host-gw: the public IP {public} differs from {iface}'s address {own}: host-gw cannot work behind NAT (peers route to the public IP directly)"
    )]
    BehindNat {
        public: IpAddr,
        own: IpAddr,
        iface: String,
    },
    /// A backend's own failure (creating its device, binding its socket).
    #[error(transparent)]
    Setup(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// What `weftd cleanup` removed (one line each) and what failed (what, why).
#[derive(Debug, Default)]
pub struct Teardown {
    pub removed: Vec<String>,
    pub failed: Vec<(String, String)>,
}

impl Teardown {
    pub fn extend(&mut self, other: Teardown) {
        self.removed.extend(other.removed);
        self.failed.extend(other.failed);
    }
}

/// Deletes the links named `names` where present (`ip link del`).
pub async fn delete_links(nl: &Kernel, names: &[String]) -> Teardown {
    let mut done = Teardown::default();
    for name in names {
        match nl.delete_link(name).await {
            Ok(true) => done.removed.push(format!("device {name}")),
            Ok(false) => {}
            Err(e) => done
                .failed
                .push((format!("deleting device {name}"), e.to_string())),
        }
    }
    done
}

/// The MTU left for pods on an underlay of `underlay` bytes after
/// `overhead`, or why there is none.
pub fn pod_mtu(
    backend: &'static str,
    ext: &ExtIface,
    underlay: u32,
    overhead: u32,
    hint: &'static str,
) -> Result<u32, BackendError> {
    underlay
        .checked_sub(overhead)
        .filter(|m| *m >= MIN_POD_MTU)
        .ok_or_else(|| BackendError::MtuTooSmall {
            backend,
            iface: ext.name.clone(),
            mtu: underlay,
            hint,
        })
}

/// What one reconcile of one part (a device, a family's routes) did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Writes done, by operation kind.
    pub done: BTreeMap<&'static str, u64>,
    /// Operations the kernel refused, with why.
    pub failed: Vec<(Op, String)>,
    /// Whether a device had to be created (first run, or it was deleted).
    pub created: bool,
}

impl Outcome {
    pub fn writes(&self) -> u64 {
        self.done.values().sum()
    }
}

/// Applies `ops` (many in flight) and tells what happened.
pub async fn carry_out<N: Netlink>(nl: &N, ops: Vec<Op>, created: bool) -> Outcome {
    let results = nl.apply(&ops).await;
    let mut out = Outcome {
        created,
        ..Default::default()
    };
    for (op, r) in ops.into_iter().zip(results) {
        match r {
            Ok(()) => *out.done.entry(op.kind()).or_default() += 1,
            Err(e) => out.failed.push((op, e.to_string())),
        }
    }
    out
}

/// Counts and logs one part's reconcile (started at `t0`); whether it
/// succeeded.
pub fn record<E: std::error::Error>(
    metrics: &Metrics,
    what: &str,
    peers: usize,
    pass: Pass,
    t0: Instant,
    result: Result<Outcome, E>,
) -> bool {
    let secs = t0.elapsed().as_secs_f64();
    match result {
        Ok(out) => {
            let failed: Vec<&'static str> = out.failed.iter().map(|(op, _)| op.kind()).collect();
            metrics.reconciled(secs, &out.done, &failed, false, out.created);
            let writes = out.writes();
            if pass != Pass::Partial && (writes > 0 || !out.failed.is_empty()) {
                tracing::info!(
                    part = what,
                    peers,
                    writes,
                    failed = out.failed.len(),
                    // Two decimals: 0.34, not 0.33512000000000003.
                    ms = (secs * 1e5).round() / 1e2,
                    "reconciled"
                );
            }
            for (op, why) in out.failed.iter().take(5) {
                tracing::warn!(part = what, ?op, error = %why, "kernel refused a write; will retry");
            }
            out.failed.is_empty()
        }
        Err(e) => {
            metrics.reconciled(secs, &BTreeMap::new(), &[], true, false);
            tracing::warn!(part = what, error = %crate::chain(&e), "reconcile failed; will retry");
            false
        }
    }
}

/// Takes `gone` out of the sorted list `sorted` and puts `new` in, in
/// place: a change applied without comparing the whole list ([`diff`]'s
/// inverse).
pub fn apply_changes<T: Ord + Copy>(sorted: &mut Vec<T>, gone: &[T], new: &[T]) {
    for g in gone {
        if let Ok(at) = sorted.binary_search(g) {
            sorted.remove(at);
        }
    }
    for n in new {
        if let Err(at) = sorted.binary_search(n) {
            sorted.insert(at, *n);
        }
    }
}

/// Entries only in `old` and entries only in `new` (both sorted).
pub fn diff<T: Ord + Copy>(old: &[T], new: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                gone.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (Some(a), None) => {
                gone.push(*a);
                i += 1;
            }
            (None, None) => break,
        }
    }
    (gone, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_tells_what_left_and_what_came() {
        assert_eq!(diff(&[1, 2, 4], &[2, 3, 4, 5]), (vec![1], vec![3, 5]));
        assert_eq!(diff::<u8>(&[], &[]), (vec![], vec![]));
        assert_eq!(diff(&[1], &[]), (vec![1], vec![]));
    }
}
