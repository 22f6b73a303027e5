//! An in-memory lease source for unit tests: our lease is given, what we
//! publish and whether we said we are ready is recorded, and the test sets
//! and removes peers' leases; every change hands on the complete peer set,
//! judged and arbitrated exactly as the Kubernetes source does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::judge::{self, Context, Judged};
use super::peers::PeerIndex;
use super::{Claim, Claimed, FieldNames, LeaseError, LeaseSource, OwnLease, Publish, Update};
use crate::family::PerFamily;
use crate::metrics::Metrics;

/// A peer's lease, owned.
pub use super::OwnedRecord as Lease;

#[derive(Debug, Default)]
struct State {
    own: OwnLease,
    /// Pod CIDRs handed out on a claim (as an etcd source does), if any.
    hands_out: Option<Vec<String>>,
    claims: Vec<Claim>,
    published: Vec<Publish>,
    ready: bool,
    leases: BTreeMap<String, Lease>,
    index: Option<PeerIndex>,
    tx: Option<watch::Sender<Option<Update>>>,
}

/// The source; clones share their state.
#[derive(Debug, Clone, Default)]
pub struct MemorySource(Arc<Mutex<State>>);

impl MemorySource {
    pub fn new(own: OwnLease) -> MemorySource {
        let s = MemorySource::default();
        s.with(|st| st.own = own);
        s
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        match self.0.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Hands out `cidrs` on a claim, as a source with its own allocator.
    pub fn hand_out(&self, cidrs: &[&str]) {
        self.with(|s| s.hands_out = Some(cidrs.iter().map(|c| c.to_string()).collect()));
    }

    /// Every claim made, in order.
    pub fn claims(&self) -> Vec<Claim> {
        self.with(|s| s.claims.clone())
    }

    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<Publish> {
        self.with(|s| s.published.clone())
    }

    pub fn ready(&self) -> bool {
        self.with(|s| s.ready)
    }

    /// A peer's lease added or changed.
    pub fn set(&self, lease: Lease) {
        self.with(|s| {
            let judged = s.index.as_ref().and_then(|i| judged(i.context(), &lease));
            if let Some(i) = s.index.as_mut() {
                i.upsert(&lease.name, judged);
            }
            s.leases.insert(lease.name.clone(), lease);
            send(s);
        })
    }

    /// A peer's lease gone.
    pub fn remove(&self, name: &str) {
        self.with(|s| {
            s.leases.remove(name);
            if let Some(i) = s.index.as_mut() {
                i.remove(name);
            }
            send(s);
        })
    }
}

fn judged(ctx: &Context, lease: &Lease) -> Option<Judged> {
    judge::judge(ctx, &lease.record())
}

fn send(s: &mut State) {
    if let (Some(tx), Some(index)) = (&s.tx, &mut s.index) {
        let _ = tx.send(Some(Update {
            set: Arc::new(index.peer_set()),
            complete: true,
        }));
    }
}

impl LeaseSource for MemorySource {
    async fn acquire(&self) -> OwnLease {
        self.with(|s| s.own.clone())
    }

    async fn claim(&self, claim: &Claim) -> Result<Option<Claimed>, LeaseError> {
        Ok(self.with(|s| {
            s.claims.push(claim.clone());
            s.hands_out.clone().map(|pod_cidrs| Claimed {
                name: s.own.name.clone(),
                pod_cidrs,
                data: PerFamily::default(),
            })
        }))
    }

    async fn publish(&self, ours: &Publish) -> Result<bool, LeaseError> {
        Ok(self.with(|s| {
            let new = s.published.last() != Some(ours);
            if new {
                s.published.push(ours.clone());
            }
            new
        }))
    }

    fn watch(&self, ctx: Context, _metrics: Arc<Metrics>) -> watch::Receiver<Option<Update>> {
        let (tx, rx) = watch::channel(None);
        self.with(|s| {
            let mut index = PeerIndex::new(ctx);
            let all: Vec<Judged> = s
                .leases
                .values()
                .filter_map(|l| judged(index.context(), l))
                .collect();
            index.replace_all(all);
            s.index = Some(index);
            s.tx = Some(tx);
            send(s);
        });
        rx
    }

    fn mark_ready(&self) {
        self.with(|s| s.ready = true);
    }

    fn fields(&self) -> FieldNames {
        FieldNames {
            backend_type: "backend-type".into(),
            public_ip: PerFamily {
                v4: "public-ip".into(),
                v6: "public-ipv6".into(),
            },
            data: PerFamily {
                v4: "backend-data".into(),
                v6: "backend-v6-data".into(),
            },
        }
    }
}
