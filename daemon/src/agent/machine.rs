//! The reconcile loop's decisions, without I/O (as boringtun's `Tunn` and
//! kube-rs's reconciler with its error policy): events in, actions out.
//! The driver ([`super::driver`]) feeds it what happened and carries out
//! what it asks for.
//!
//! - A new peer set asks for a quick pass (a partial one while the first
//!   list is still arriving: add, never delete).
//! - A kernel change that contradicts the backend, the resync tick and a
//!   due retry ask for a full pass against the last set.
//! - A pass that failed (or a failed check of the rules) schedules a retry
//!   with backoff (200 ms doubling to 10 s); a successful complete pass
//!   clears it, and the first one makes the node ready.

use std::sync::Arc;

use tokio::time::Instant;

use crate::backend::Pass;
use crate::backoff::Backoff;
use crate::lease::Update;
use crate::lease::peers::PeerSet;

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The lease source handed on a peer set.
    Peers(Update),
    /// The kernel changed; whether the backend says it undoes its work.
    Kernel { contradicts: bool },
    /// The periodic full resync is due.
    Resync,
    /// The retry scheduled after a failure is due.
    RetryDue,
    /// A pass the machine asked for ended.
    Reconciled { pass: Pass, ok: bool },
    /// Checking the nftables table failed.
    RulesFailed,
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run a backend pass over this peer set (and, for a complete set,
    /// bring the firewall's allow-list along), then report
    /// [`Event::Reconciled`].
    Reconcile { pass: Pass, set: Arc<PeerSet> },
    /// The first complete pass succeeded: report ready.
    BecomeReady,
}

/// The loop's state.
#[derive(Debug)]
pub struct Machine {
    current: Option<Update>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    ready: bool,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Machine {
        Machine {
            current: None,
            backoff: Backoff::new(),
            retry_at: None,
            ready: false,
        }
    }

    /// When the next retry is due, if one is scheduled.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The last peer set handed in.
    pub fn current(&self) -> Option<&Update> {
        self.current.as_ref()
    }

    /// Takes in one event at time `now`.
    pub fn handle(&mut self, event: Event, now: Instant) -> Option<Action> {
        match event {
            Event::Peers(update) => {
                let pass = if update.complete {
                    Pass::Quick
                } else {
                    Pass::Partial
                };
                let set = update.set.clone();
                self.current = Some(update);
                Some(Action::Reconcile { pass, set })
            }
            Event::Kernel { contradicts: false } => None,
            Event::Kernel { contradicts: true } | Event::Resync => self.full(),
            Event::RetryDue => {
                self.retry_at = None;
                self.full()
            }
            Event::Reconciled {
                pass: Pass::Partial,
                ..
            } => None,
            Event::Reconciled { ok: true, .. } => {
                self.retry_at = None;
                self.backoff = Backoff::new();
                (!std::mem::replace(&mut self.ready, true)).then_some(Action::BecomeReady)
            }
            Event::Reconciled { ok: false, .. } => {
                self.retry_at = Some(now + self.backoff.next_wait());
                None
            }
            Event::RulesFailed => {
                if self.retry_at.is_none() {
                    self.retry_at = Some(now + self.backoff.next_wait());
                }
                None
            }
        }
    }

    /// A full pass over the last set (partial while the list is).
    fn full(&self) -> Option<Action> {
        let update = self.current.as_ref()?;
        Some(Action::Reconcile {
            pass: if update.complete {
                Pass::Full
            } else {
                Pass::Partial
            },
            set: update.set.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn update(complete: bool) -> Update {
        Update {
            set: Arc::new(PeerSet::default()),
            complete,
        }
    }

    fn pass_of(a: Option<Action>) -> Option<Pass> {
        match a {
            Some(Action::Reconcile { pass, .. }) => Some(pass),
            _ => None,
        }
    }

    #[test]
    fn nothing_happens_before_the_first_peer_set() {
        let mut m = Machine::new();
        let now = Instant::now();
        assert_eq!(m.handle(Event::Resync, now), None);
        assert_eq!(m.handle(Event::Kernel { contradicts: true }, now), None);
        assert_eq!(m.handle(Event::RetryDue, now), None);
    }

    #[test]
    fn pages_of_the_first_list_are_partial_and_only_a_complete_pass_makes_ready() {
        let mut m = Machine::new();
        let now = Instant::now();
        assert_eq!(
            pass_of(m.handle(Event::Peers(update(false)), now)),
            Some(Pass::Partial)
        );
        // Repairs during the list stay partial: nothing may be deleted yet.
        assert_eq!(pass_of(m.handle(Event::Resync, now)), Some(Pass::Partial));
        let done = Event::Reconciled {
            pass: Pass::Partial,
            ok: true,
        };
        assert_eq!(m.handle(done, now), None);
        assert!(!m.ready());
        assert_eq!(
            pass_of(m.handle(Event::Peers(update(true)), now)),
            Some(Pass::Quick)
        );
        let done = Event::Reconciled {
            pass: Pass::Quick,
            ok: true,
        };
        assert_eq!(m.handle(done.clone(), now), Some(Action::BecomeReady));
        assert_eq!(m.handle(done, now), None, "ready once");
    }

    #[test]
    fn contradictions_resyncs_and_retries_run_full_passes_other_changes_nothing() {
        let mut m = Machine::new();
        let now = Instant::now();
        m.handle(Event::Peers(update(true)), now);
        assert_eq!(m.handle(Event::Kernel { contradicts: false }, now), None);
        for e in [
            Event::Kernel { contradicts: true },
            Event::Resync,
            Event::RetryDue,
        ] {
            assert_eq!(pass_of(m.handle(e, now)), Some(Pass::Full));
        }
    }

    #[test]
    fn failures_back_off_doubling_to_ten_seconds_and_success_resets() {
        let mut m = Machine::new();
        let t = Instant::now();
        m.handle(Event::Peers(update(true)), t);
        let fail = Event::Reconciled {
            pass: Pass::Full,
            ok: false,
        };
        let mut waits = Vec::new();
        for _ in 0..8 {
            m.handle(fail.clone(), t);
            waits.push(m.retry_at().map(|at| at - t).unwrap_or_default());
            assert_eq!(pass_of(m.handle(Event::RetryDue, t)), Some(Pass::Full));
            assert_eq!(m.retry_at(), None, "a due retry is taken");
        }
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        let ok = Event::Reconciled {
            pass: Pass::Full,
            ok: true,
        };
        assert_eq!(m.handle(ok, t), Some(Action::BecomeReady));
        m.handle(fail, t);
        assert_eq!(
            m.retry_at(),
            Some(t + Duration::from_millis(200)),
            "backoff reset"
        );
    }

    #[test]
    fn a_failed_rules_check_schedules_one_retry() {
        let mut m = Machine::new();
        let t = Instant::now();
        m.handle(Event::Peers(update(true)), t);
        m.handle(Event::RulesFailed, t);
        let first = m.retry_at();
        assert_eq!(first, Some(t + Duration::from_millis(200)));
        m.handle(Event::RulesFailed, t + Duration::from_secs(1));
        assert_eq!(m.retry_at(), first, "an earlier retry is kept");
    }
}
