//! The reconcile loop on fakes: the real driver and machine, the VXLAN
//! backend on the in-memory netlink fake, peer sets handed in as the lease
//! source would, a firewall that fails on demand, and tokio's paused clock.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::driver::{self, Inputs, Rules};
use crate::annotations::Mac;
use crate::backend::{Backend, Peer, PeerData};
use crate::config::VxlanConfig;
use crate::family::PerFamily;
use crate::lease::Update;
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::netlink::fake::Fake;
use crate::netlink::{Netlink, Observed, Op, Route};
use crate::testing::{add_eth0, local};
use crate::vxlan::{Vxlan, plan};

#[derive(Debug, thiserror::Error)]
#[error("injected nftables failure")]
pub(super) struct Injected;

/// What the firewall was told, and how many of its next writes fail.
#[derive(Debug, Default)]
pub(super) struct RulesLog {
    pub(super) allowed: Option<Vec<IpAddr>>,
    pub(super) fail_next: usize,
}

#[derive(Debug, Default, Clone)]
pub(super) struct FakeRules(pub(super) Rc<RefCell<RulesLog>>);

impl Rules for FakeRules {
    type Error = Injected;
    fn peers_changed(&mut self, set: &PeerSet, _: &Metrics) -> Result<(), Injected> {
        let mut log = self.0.borrow_mut();
        if log.fail_next > 0 {
            log.fail_next -= 1;
            return Err(Injected);
        }
        log.allowed = Some(set.public_ips());
        Ok(())
    }
    fn resync(&mut self, _: &Metrics) -> Result<(), Injected> {
        Ok(())
    }
}

pub(super) fn peer(n: u8) -> Peer {
    Peer {
        subnet: format!("10.244.{n}.0/24").parse().unwrap(),
        public_ip: format!("198.51.100.{}", 10 + n).parse().unwrap(),
        data: PeerData::VtepMac(Mac([0x0a, 0, 0, 0, 0, n])),
    }
}

fn update(peers: &[Peer], complete: bool) -> Option<Update> {
    Some(Update {
        set: Arc::new(PeerSet::new(
            PerFamily {
                v4: peers.to_vec(),
                v6: vec![],
            },
            vec![],
        )),
        complete,
    })
}

/// The kernel on `flannel.1` equals exactly `peers`' triples.
pub(super) async fn holds(nl: &Fake, peers: &[Peer]) -> bool {
    let Some(link) = nl.link_by_name("flannel.1").await.unwrap() else {
        return false;
    };
    let entries: Vec<plan::PeerEntry> = peers.iter().filter_map(plan::PeerEntry::of).collect();
    let mut want = plan::desired(link.index, &entries);
    let mut got = nl.dump(link.index);
    for o in [&mut want, &mut got] {
        o.neighs.sort();
        o.fdb.sort();
        o.routes.sort();
    }
    got == want
}

/// Everything the loop runs on, plus the handles a test pokes it with.
/// Kernel changes come from the fake itself, as the kernel reports them
/// (weft's own writes included).
struct Rig {
    nl: Fake,
    metrics: Metrics,
    rules: FakeRules,
    peers: watch::Sender<Option<Update>>,
}

impl Rig {
    fn new() -> (Rig, watch::Receiver<Option<Update>>) {
        let (peers, peers_rx) = watch::channel(None);
        let rig = Rig {
            nl: Fake::new(),
            metrics: Metrics::default(),
            rules: FakeRules::default(),
            peers,
        };
        (rig, peers_rx)
    }

    fn inputs(&self, peers: watch::Receiver<Option<Update>>, backend: &Vxlan) -> Inputs {
        Inputs {
            peers,
            changes: self
                .nl
                .watch_changes(Backend::<Fake>::devices(backend))
                .unwrap(),
            resync: Duration::from_secs(300),
            rules_resync: Duration::from_secs(10),
        }
    }

    async fn backend(&self) -> Vxlan {
        let eth0 = add_eth0(&self.nl).await;
        let local = local(eth0, "198.51.100.11");
        let cfg = VxlanConfig {
            vni: 1,
            port: 8472,
            mtu: None,
            direct_routing: false,
            gbp: false,
            learning: false,
        };
        Vxlan::start(&self.nl, &cfg, &local, &self.metrics)
            .await
            .unwrap()
    }

    fn send(&self, u: Option<Update>) {
        self.peers.send(u).unwrap();
    }
}

/// Lets the loop run until it waits for something again (with the clock
/// paused, a short sleep returns once everything else is idle).
pub(super) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Runs the loop beside `script`, then stops it; returns the rig.
macro_rules! with_loop {
    (|$rig:ident| $script:block) => {{
        let (rig, peers) = Rig::new();
        let mut backend = rig.backend().await;
        let inputs = rig.inputs(peers, &backend);
        let mut rules = rig.rules.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let drive = driver::drive(
            &rig.nl,
            &mut backend as &mut dyn Backend<Fake>,
            &mut rules,
            &rig.metrics,
            inputs,
            async {
                let _ = stopped.await;
            },
        );
        let $rig = &rig;
        let script = async move {
            $script;
            let _ = stop.send(());
        };
        tokio::join!(drive, script);
        rig
    }};
}

#[tokio::test(start_paused = true)]
async fn the_first_lists_pages_only_add_and_the_complete_set_prunes_and_makes_ready() {
    with_loop!(|rig| {
        // A triple left by an earlier run, for a node that is gone.
        let link = rig.nl.link_by_name("flannel.1").await.unwrap().unwrap();
        let stale = plan::PeerEntry::of(&peer(9)).unwrap();
        rig.nl.seed(&plan::desired(link.index, &[stale]));

        rig.send(update(&[peer(2)], false));
        settle().await;
        assert!(
            holds(&rig.nl, &[peer(2), peer(9)]).await,
            "nothing deleted while partial"
        );
        assert!(!rig.metrics.ready());
        assert_eq!(
            rig.rules.0.borrow().allowed,
            None,
            "no allow-list from a partial set"
        );

        rig.send(update(&[peer(2), peer(3)], true));
        settle().await;
        assert!(
            holds(&rig.nl, &[peer(2), peer(3)]).await,
            "the stale peer is pruned"
        );
        assert!(rig.metrics.ready());
        let allowed = rig.rules.0.borrow().allowed.clone();
        assert_eq!(allowed, Some(vec![peer(2).public_ip, peer(3).public_ip]));
    });
}

#[tokio::test(start_paused = true)]
async fn a_deleted_device_is_recreated_and_every_peer_replayed() {
    with_loop!(|rig| {
        let peers = [peer(2), peer(3), peer(4)];
        rig.send(update(&peers, true));
        settle().await;
        assert!(holds(&rig.nl, &peers).await);
        // A change that is not ours is no reason for work.
        let writes = rig.nl.writes();
        let eth0 = rig.nl.link_by_name("eth0").await.unwrap().unwrap().index;
        let other = Route {
            link: eth0,
            dst: "192.168.7.0/24".parse().unwrap(),
            gateway: Some("198.51.100.1".parse().unwrap()),
            onlink: false,
        };
        rig.nl.apply(&[Op::ReplaceRoute(other)]).await;
        settle().await;
        assert_eq!(rig.nl.writes(), writes + 1, "only the foreign write");
        rig.nl.delete_link("flannel.1");
        settle().await;
        assert!(holds(&rig.nl, &peers).await, "device back with every peer");
        let writes = rig.nl.writes();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rig.nl.writes(), writes, "our own writes call for no repair");
    });
}

#[tokio::test(start_paused = true)]
async fn a_refused_write_is_retried_with_backoff_until_it_succeeds() {
    with_loop!(|rig| {
        rig.nl.fail_ops(&["replace_fdb"]);
        rig.send(update(&[peer(2)], true));
        settle().await;
        assert!(!rig.metrics.ready(), "not ready while a write fails");
        // Retries at +200 ms, +400 ms, ... keep failing while the kernel refuses.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!holds(&rig.nl, &[peer(2)]).await);
        rig.nl.fail_ops(&[]);
        // The next retry is due 800 ms after the last failure.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(holds(&rig.nl, &[peer(2)]).await, "retried and done");
        assert!(rig.metrics.ready());
        let writes = rig.nl.writes();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rig.nl.writes(), writes, "no retries once done");
    });
}

#[tokio::test(start_paused = true)]
async fn a_departed_peer_is_pruned_and_a_changed_one_rewritten() {
    with_loop!(|rig| {
        rig.send(update(&[peer(2), peer(3)], true));
        settle().await;
        let mut moved = peer(2);
        moved.public_ip = "198.51.100.99".parse().unwrap();
        rig.send(update(&[moved], true));
        settle().await;
        assert!(holds(&rig.nl, &[moved]).await);
        assert_eq!(rig.rules.0.borrow().allowed, Some(vec![moved.public_ip]));
    });
}

#[tokio::test(start_paused = true)]
async fn a_firewall_failure_is_retried_and_readiness_waits_for_it() {
    with_loop!(|rig| {
        rig.rules.0.borrow_mut().fail_next = 2;
        rig.send(update(&[peer(2)], true));
        settle().await;
        assert!(
            holds(&rig.nl, &[peer(2)]).await,
            "the backend does not wait for the firewall"
        );
        assert!(!rig.metrics.ready());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(rig.metrics.ready(), "ready after the second retry");
        assert_eq!(rig.rules.0.borrow().allowed, Some(vec![peer(2).public_ip]));
    });
}

#[tokio::test(start_paused = true)]
async fn an_entry_changed_behind_our_back_is_repaired_and_the_resync_catches_the_rest() {
    with_loop!(|rig| {
        let peers = [peer(2), peer(3)];
        rig.send(update(&peers, true));
        settle().await;
        let link = rig.nl.link_by_name("flannel.1").await.unwrap().unwrap();
        let route = plan::desired(link.index, &[plan::PeerEntry::of(&peer(3)).unwrap()]).routes[0];
        rig.nl.apply(&[Op::DelRoute(route)]).await;
        settle().await;
        assert!(holds(&rig.nl, &peers).await, "repaired from the event");
        // Deleted with no event seen (a netlink message can be lost):
        // the periodic full resync repairs it.
        rig.nl.remove_silently(&Observed {
            routes: vec![route],
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert!(!holds(&rig.nl, &peers).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(holds(&rig.nl, &peers).await, "repaired by the resync");
    });
}

#[tokio::test(start_paused = true)]
async fn shutdown_leaves_the_data_plane_in_place() {
    let rig = with_loop!(|rig| {
        rig.send(update(&[peer(2)], true));
        settle().await;
    });
    assert!(
        holds(&rig.nl, &[peer(2)]).await,
        "entries stay after the loop ended"
    );
    let link = rig.nl.link_by_name("flannel.1").await.unwrap().unwrap();
    assert_ne!(rig.nl.dump(link.index), Observed::default());
}
