//! The reconcile loop's I/O shell: waits for the next event (a peer set, a
//! kernel change, a tick, a due retry, shutdown), hands it to the
//! [`Machine`] and carries out what it asks for on the backend and the
//! firewall. Generic over the netlink port and the rules, so the unit tests
//! drive it on the in-memory fake.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::chain;
use super::machine::{Action, Event, Machine};
use crate::backend::{Backend, Pass};
use crate::firewall::Firewall;
use crate::lease::Update;
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::netlink::{Change, Netlink};
use crate::nft::kernel::NftError;

/// What the loop needs of the firewall: bring the allow-list along with
/// the peers, and check the table (repairing what someone changed).
pub trait Rules {
    type Error: std::error::Error;
    fn peers_changed(&mut self, set: &PeerSet, m: &Metrics) -> Result<(), Self::Error>;
    fn resync(&mut self, m: &Metrics) -> Result<(), Self::Error>;
}

impl Rules for Firewall {
    type Error = NftError;
    fn peers_changed(&mut self, set: &PeerSet, m: &Metrics) -> Result<(), NftError> {
        Firewall::peers_changed(self, set, m)
    }
    fn resync(&mut self, m: &Metrics) -> Result<(), NftError> {
        Firewall::resync(self, m)
    }
}

/// Where the loop's events come from.
#[derive(Debug)]
pub struct Inputs {
    /// The lease source's peer sets (`None` until the first page).
    pub peers: watch::Receiver<Option<Update>>,
    /// Changes in the kernel's tables.
    pub changes: mpsc::UnboundedReceiver<Change>,
    /// Between full passes against the kernel.
    pub resync: Duration,
    /// Between checks of the nftables table.
    pub rules_resync: Duration,
}

/// Runs until `shutdown` resolves or the lease source ends; leaves the
/// data plane in place.
pub async fn drive<N: Netlink, R: Rules>(
    nl: &N,
    backend: &mut dyn Backend<N>,
    rules: &mut R,
    metrics: &Metrics,
    mut inputs: Inputs,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut machine = Machine::new();
    let mut resync = interval(inputs.resync).await;
    let mut rules_tick = interval(inputs.rules_resync).await;
    loop {
        let event = tokio::select! {
            r = inputs.peers.changed() => {
                if r.is_err() { break; }
                match inputs.peers.borrow_and_update().clone() {
                    Some(u) => Event::Peers(u),
                    None => continue,
                }
            }
            Some(first) = inputs.changes.recv() => {
                // Take every change already queued (a deleted device brings
                // thousands), and act once if any contradicts the backend.
                let mut contradicts = false;
                let mut next = Some(first);
                while let Some(c) = next {
                    if !contradicts && backend.contradicted_by(&c) {
                        match &c {
                            Change::LinkDeleted(name) => tracing::warn!(device = %name, "device deleted; recreating it and replaying every peer"),
                            other => tracing::warn!(change = ?other, "an entry of ours was changed behind our back; repairing"),
                        }
                        contradicts = true;
                    }
                    next = inputs.changes.try_recv().ok();
                }
                Event::Kernel { contradicts }
            }
            _ = resync.tick() => Event::Resync,
            _ = rules_tick.tick() => match rules.resync(metrics) {
                Ok(()) => continue,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "checking the nftables table failed; will retry");
                    Event::RulesFailed
                }
            },
            () = sleep_until(machine.retry_at()) => Event::RetryDue,
            () = &mut shutdown => break,
        };
        let mut next = machine.handle(event, Instant::now());
        while let Some(action) = next {
            next = match action {
                Action::Reconcile { pass, set } => {
                    let t0 = Instant::now();
                    let mut ok = backend.reconcile(nl, &set, pass, metrics).await;
                    if pass != Pass::Partial
                        && let Err(e) = rules.peers_changed(&set, metrics)
                    {
                        tracing::warn!(error = %chain(&e), "writing the nftables table failed; will retry");
                        ok = false;
                    }
                    tracing::debug!(
                        ?pass,
                        ok,
                        us = t0.elapsed().as_micros() as u64,
                        "reconcile pass"
                    );
                    // A full pass reads and plans every entry in passing.
                    if pass == Pass::Full {
                        crate::heap::release_free_pages();
                    }
                    machine.handle(Event::Reconciled { pass, ok }, Instant::now())
                }
                Action::BecomeReady => {
                    metrics.set_ready();
                    // The first list and its passes are behind us.
                    crate::heap::release_free_pages();
                    let peers = machine.current().map(|u| u.set.peers.map(|_, v| v.len()));
                    tracing::info!(
                        peers_v4 = peers.map(|p| p.v4).unwrap_or_default(),
                        peers_v6 = peers.map(|p| p.v6).unwrap_or_default(),
                        "first full reconcile done, nftables table in place: ready"
                    );
                    None
                }
            };
        }
    }
    tracing::info!("shutting down; the data plane stays in place");
}

/// An interval whose first (immediate) tick is already taken.
async fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i.tick().await;
    i
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
