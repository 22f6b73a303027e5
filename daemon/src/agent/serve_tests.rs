//! `serve`, the agent's whole setup and loop, on the netlink fake and the
//! in-memory lease source: what it publishes and writes, how it follows the
//! source, and what it refuses to start with.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::tests::{FakeRules, holds, peer, settle};
use super::{AgentError, NodeRef, Options};
use crate::config::NetConfig;
use crate::family::PerFamily;
use crate::iface::Selection;
use crate::lease::OwnLease;
use crate::lease::memory::{Lease, MemorySource};
use crate::metrics::Metrics;
use crate::netlink::fake::Fake;
use crate::nft;
use crate::testing::add_eth0;

/// A peer's lease as the in-memory source holds it (the same peer as
/// `peer(n)`).
fn lease(n: u8) -> Lease {
    Lease {
        name: format!("peer-{n}"),
        created: format!("2026-01-01T00:00:{n:02}Z"),
        pod_cidrs: vec![format!("10.244.{n}.0/24")],
        backend_type: "vxlan".into(),
        public_ip: PerFamily {
            v4: Some(format!("198.51.100.{}", 10 + n)),
            v6: None,
        },
        data: PerFamily {
            v4: Some(format!(r#"{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{n:02x}"}}"#)),
            v6: None,
        },
    }
}

/// This node's lease: 10.244.1.0/24, InternalIP 198.51.100.11.
fn own_lease(stored: PerFamily<crate::lease::Stored>) -> OwnLease {
    OwnLease {
        name: "me".into(),
        pod_cidrs: vec!["10.244.1.0/24".into()],
        internal_ips: vec!["198.51.100.11".parse().unwrap()],
        stored,
    }
}

fn vxlan_conf() -> NetConfig {
    NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap()
}

fn options(dir: &std::path::Path) -> Options {
    Options {
        subnet_manager: super::SubnetManager::Kube,
        node: NodeRef::Name("me".into()),
        kubeconfig: None,
        api_url: None,
        kubeconfig_from_env: true,
        net_config_path: dir.join("net-conf.json"),
        subnet_file: dir.join("subnet.env"),
        iface: Selection::default(),
        public_ip: None,
        public_ipv6: None,
        ip_masq: true,
        masq_fully_random: true,
        forward_rules: true,
        set_network_unavailable: true,
        blackhole_route: false,
        healthz_addr: None,
        annotation_prefix: crate::annotations::DEFAULT_PREFIX.into(),
        resync: Duration::from_secs(300),
        allow_list: true,
        rules_resync: Duration::from_secs(10),
        udp_offload: true,
        conflist: Some((dir.join("net.d"), "{\"name\":\"cbr0\"}\n".to_string())),
        plugin: None,
    }
}

#[tokio::test(start_paused = true)]
async fn serve_takes_the_lease_publishes_writes_subnet_env_and_follows_the_source() {
    let nl = Fake::new();
    add_eth0(&nl).await;
    let source = MemorySource::new(own_lease(PerFamily::default()));
    source.set(lease(2));
    let dir = std::env::temp_dir().join(format!("weftd-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = options(&dir);
    let shipped = dir.join("weft-shipped");
    std::fs::write(&shipped, b"\x7fELF the weft plugin").unwrap();
    opts.plugin = Some((shipped.clone(), dir.join("bin").join("weft")));
    let cfg = vxlan_conf();
    let metrics = Arc::new(Metrics::default());
    let rules = FakeRules::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = super::serve(
        &nl,
        &source,
        &cfg,
        &opts,
        &metrics,
        |input: nft::RulesetInput| {
            assert_eq!(input.allow_list, Some((8472, vec![])));
            Ok::<_, AgentError>(rules.clone())
        },
        async {
            let _ = stopped.await;
        },
    );
    let script = async {
        settle().await;
        let published = source.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].backend_type, "vxlan");
        let (ip, data) = published[0].families.v4.clone().unwrap();
        assert_eq!(ip, "198.51.100.11".parse::<IpAddr>().unwrap());
        assert!(data.starts_with(r#"{"VNI":1,"VtepMAC":""#), "{data}");
        assert_eq!(
            std::fs::read_to_string(&opts.subnet_file).unwrap(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert!(source.ready(), "NetworkUnavailable=False asked for");
        assert!(holds(&nl, &[peer(2)]).await, "the peer the source held");
        assert!(metrics.ready());

        source.set(lease(3));
        let mut bad = lease(4);
        bad.data.v4 = Some("{not json".into());
        source.set(bad);
        settle().await;
        assert!(holds(&nl, &[peer(2), peer(3)]).await, "garbage skipped");
        source.remove("peer-2");
        settle().await;
        assert!(holds(&nl, &[peer(3)]).await, "a departed peer pruned");
        assert_eq!(rules.0.borrow().allowed, Some(vec![peer(3).public_ip]));

        // subnet.env deleted, then edited: back within a rules period.
        let written = std::fs::read_to_string(&opts.subnet_file).unwrap();
        std::fs::remove_file(&opts.subnet_file).unwrap();
        tokio::time::sleep(opts.rules_resync + Duration::from_millis(10)).await;
        assert_eq!(std::fs::read_to_string(&opts.subnet_file).unwrap(), written);
        std::fs::write(&opts.subnet_file, "FLANNEL_SUBNET=10.244.9.1/24\n").unwrap();
        tokio::time::sleep(opts.rules_resync).await;
        assert_eq!(std::fs::read_to_string(&opts.subnet_file).unwrap(), written);
        let text = metrics.render();
        assert!(
            text.contains("weft_file_restorations_total{file=\"subnet.env\"} 2"),
            "{text}"
        );

        // The conflist, written once ready, is kept like subnet.env.
        let (conf_dir, conflist) = opts.conflist.clone().unwrap();
        let path = conf_dir.join("10-weft.conflist");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), conflist);
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(opts.rules_resync + Duration::from_millis(10)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), conflist);
        assert!(
            metrics
                .render()
                .contains("weft_file_restorations_total{file=\"10-weft.conflist\"} 1")
        );

        // The plugin too, from the binary shipped with weftd: installed
        // once ready (not a repair), then garbage of the same size and a
        // removal are both undone within a period.
        let (_, installed) = opts.plugin.clone().unwrap();
        let want = std::fs::read(&shipped).unwrap();
        assert_eq!(std::fs::read(&installed).unwrap(), want);
        let mut garbage = want.clone();
        garbage[0] = b'#';
        std::fs::write(&installed, &garbage).unwrap();
        tokio::time::sleep(opts.rules_resync + Duration::from_millis(10)).await;
        assert_eq!(std::fs::read(&installed).unwrap(), want);
        std::fs::remove_file(&installed).unwrap();
        tokio::time::sleep(opts.rules_resync + Duration::from_millis(10)).await;
        assert_eq!(std::fs::read(&installed).unwrap(), want);
        let text = metrics.render();
        assert!(
            text.contains("weft_file_restorations_total{file=\"weft\"} 2"),
            "{text}"
        );
        let _ = stop.send(());
    };
    let (served, ()) = tokio::join!(serving, script);
    served.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_conflist_appears_only_once_weftd_is_ready() {
    let dir = std::env::temp_dir().join(format!("weftd-conflist-{}", std::process::id()));
    let conf = (dir.clone(), "{\"name\":\"cbr0\"}\n".to_string());
    let path = dir.join("10-weft.conflist");
    let metrics = Metrics::default();
    let keeper = super::keep_cni_files(Some(&conf), None, &metrics, Duration::from_secs(10));
    let script = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!path.exists(), "written before weftd was ready");
        metrics.set_ready();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), conf.1);
    };
    tokio::select! {
        () = keeper => unreachable!("keep_cni_files returned"),
        () = script => {}
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unusable_public_ip_of_our_own_is_a_start_up_error_naming_where_it_came_from() {
    let cfg = vxlan_conf();
    let dir = std::env::temp_dir().join(format!("weftd-unusable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (--public-ip, node-public-ip, public-ip-overwrite, the error says)
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str);
    let cases: [Case; 3] = [
        (
            Some("127.0.0.1"),
            None,
            None,
            "--public-ip 127.0.0.1 is a loopback address",
        ),
        (
            None,
            Some("0.0.0.0"),
            None,
            "node-public-ip annotation 0.0.0.0 is unspecified",
        ),
        (
            None,
            None,
            Some("224.0.0.9"),
            "public-ip-overwrite annotation 224.0.0.9 is a multicast",
        ),
    ];
    for (flag, node_ip, overwrite, want) in cases {
        let nl = Fake::new();
        add_eth0(&nl).await;
        let mut opts = options(&dir);
        opts.public_ip = flag.map(|s| s.parse().unwrap());
        let source = MemorySource::new(own_lease(PerFamily {
            v4: crate::lease::Stored {
                public_ip: node_ip.map(|s| s.parse().unwrap()),
                overwrite: overwrite.map(|s| s.parse().unwrap()),
                data: None,
            },
            v6: Default::default(),
        }));
        let metrics = Arc::new(Metrics::default());
        let err = super::serve(
            &nl,
            &source,
            &cfg,
            &opts,
            &metrics,
            |_| Ok::<_, AgentError>(FakeRules::default()),
            std::future::pending(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(want), "{err}");
        assert!(source.published().is_empty(), "nothing published");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// flanneld's `--set-node-network-unavailable=false`: weftd is ready but
/// leaves the Node's condition alone; `--ip-masq-fully-random-disable` and
/// `--iptables-forward-rules=false` reach the ruleset; `--ip-blackhole-route`
/// keeps a blackhole route for our subnet.
#[tokio::test(start_paused = true)]
async fn flanneld_switches_reach_the_source_and_the_rules() {
    let nl = Fake::new();
    add_eth0(&nl).await;
    let source = MemorySource::new(own_lease(PerFamily::default()));
    let dir = std::env::temp_dir().join(format!("weftd-serve-sw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut opts = options(&dir);
    opts.set_network_unavailable = false;
    opts.masq_fully_random = false;
    opts.forward_rules = false;
    opts.blackhole_route = true;
    let cfg = vxlan_conf();
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = super::serve(
        &nl,
        &source,
        &cfg,
        &opts,
        &metrics,
        |input: nft::RulesetInput| {
            assert!(input.ip_masq && !input.masq_fully_random && !input.forward_rules);
            Ok::<_, AgentError>(FakeRules::default())
        },
        async {
            let _ = stopped.await;
        },
    );
    let script = async {
        settle().await;
        assert!(metrics.ready());
        assert!(!source.ready(), "NetworkUnavailable left alone");
        let subnet: ipnetwork::IpNetwork = "10.244.1.0/24".parse().unwrap();
        assert_eq!(nl.blackholes(), [subnet], "--ip-blackhole-route");
        // Gone behind weftd's back: back within one rules period.
        nl.remove_blackhole(subnet);
        tokio::time::sleep(opts.rules_resync).await;
        settle().await;
        assert_eq!(nl.blackholes(), [subnet]);
        let _ = stop.send(());
    };
    let (served, ()) = tokio::join!(serving, script);
    served.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A source that hands out subnets itself (as etcd's does) is asked once
/// our addresses are known, with our subnet of last time from subnet.env,
/// and its answer is our lease.
#[tokio::test(start_paused = true)]
async fn a_source_with_its_own_allocator_is_claimed_from_with_our_addresses() {
    let nl = Fake::new();
    add_eth0(&nl).await;
    let mut own = own_lease(PerFamily::default());
    own.pod_cidrs.clear();
    let source = MemorySource::new(own);
    source.hand_out(&["10.244.9.0/24"]);
    let dir = std::env::temp_dir().join(format!("weftd-serve-claim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = options(&dir);
    std::fs::write(&opts.subnet_file, "FLANNEL_SUBNET=10.244.7.1/24\n").unwrap();
    let metrics = Arc::new(Metrics::default());
    let cfg = vxlan_conf();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = super::serve(
        &nl,
        &source,
        &cfg,
        &opts,
        &metrics,
        |_| Ok::<_, AgentError>(FakeRules::default()),
        async {
            let _ = stopped.await;
        },
    );
    let script = async {
        settle().await;
        let claims = source.claims();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].backend_type, "vxlan");
        assert_eq!(
            claims[0].public_ip.v4,
            Some("198.51.100.11".parse().unwrap())
        );
        assert_eq!(
            claims[0].previous.v4,
            Some("10.244.7.0/24".parse().unwrap())
        );
        assert!(
            std::fs::read_to_string(&opts.subnet_file)
                .unwrap()
                .contains("FLANNEL_SUBNET=10.244.9.1/24\n")
        );
        let _ = stop.send(());
    };
    let (served, ()) = tokio::join!(serving, script);
    served.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The underlay's MTU lowered under a running agent: the device and
/// subnet.env follow (flanneld keeps its start-up MTU until restarted), and
/// the peers stay programmed throughout.
#[tokio::test(start_paused = true)]
async fn a_changed_underlay_mtu_is_followed_by_the_device_and_subnet_env() {
    use crate::netlink::Netlink;
    let nl = Fake::new();
    let eth0 = add_eth0(&nl).await;
    let source = MemorySource::new(own_lease(PerFamily::default()));
    source.set(lease(2));
    let dir = std::env::temp_dir().join(format!("weftd-serve-mtu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = options(&dir);
    let cfg = vxlan_conf();
    let metrics = Arc::new(Metrics::default());
    let rules = FakeRules::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = super::serve(
        &nl,
        &source,
        &cfg,
        &opts,
        &metrics,
        |_: nft::RulesetInput| Ok::<_, AgentError>(rules.clone()),
        async {
            let _ = stopped.await;
        },
    );
    let device_mtu = || async { nl.link_by_name("flannel.1").await.unwrap().map(|l| l.mtu) };
    let script = async {
        settle().await;
        let env = || std::fs::read_to_string(&opts.subnet_file).unwrap();
        assert!(env().contains("FLANNEL_MTU=1450\n"), "{}", env());
        assert_eq!(device_mtu().await, Some(1450));
        nl.set_link(eth0, 1400, true).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(env().contains("FLANNEL_MTU=1350\n"), "{}", env());
        assert_eq!(device_mtu().await, Some(1350));
        assert!(holds(&nl, &[peer(2)]).await, "the peer stays");
        let _ = stop.send(());
    };
    let (served, ()) = tokio::join!(serving, script);
    served.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
