//! weftd with flannel's host-gw backend on lab nodes, behaviour a user sees:
//! every peer's pod subnet routed via its public IP on eth0 and nothing
//! else (no device), pods reaching each other over both families, routes
//! repaired at once when changed by hand, node churn followed, no loss
//! across a SIGKILL restart, an off-subnet peer skipped and counted, and
//! `weftd cleanup` taking exactly the routes away.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use nix::sys::signal::Signal;
use weft_lab::pods::Pod;
use weft_lab::probe::{metric, routes, within};
use weft_lab::{Backend, Lab, LabConfig, cluster, unique_name};

const PREFIX: &str = "flannel.alpha.coreos.com";

fn lab(tag: &str, nodes: usize, dual_stack: bool) -> Lab {
    let cfg = LabConfig {
        backend: Backend::HostGw,
        dual_stack,
        ..LabConfig::with_weftd(&unique_name(tag), nodes)
    };
    Lab::up(&cfg).expect("host-gw lab comes up")
}

/// Every Node as the API has it.
fn nodes(lab: &Lab) -> Vec<Node> {
    let admin = lab.admin_kubeconfig();
    lab.block_on(|| async {
        let client = cluster::client(&admin).await.unwrap();
        cluster::list_nodes(&client).await.unwrap()
    })
    .unwrap()
}

fn annotation(n: &Node, key: &str) -> Option<String> {
    n.metadata
        .annotations
        .as_ref()?
        .get(&format!("{PREFIX}/{key}"))
        .cloned()
}

/// What `node` must route, per family: `<podCIDR> via <public IP>` toward
/// every other node, from what the API holds.
fn expected(lab: &Lab, node: &str) -> BTreeMap<u8, Vec<String>> {
    let mut want: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for n in nodes(lab) {
        if n.metadata.name.as_deref() == Some(node) {
            continue;
        }
        let spec = n.spec.clone().unwrap();
        for cidr in spec.pod_cidrs.unwrap_or_default() {
            let (family, key) = if cidr.contains(':') {
                (6, "public-ipv6")
            } else {
                (4, "public-ip")
            };
            let ip = annotation(&n, key).unwrap();
            want.entry(family)
                .or_default()
                .push(format!("{cidr} via {ip}"));
        }
    }
    for v in want.values_mut() {
        v.sort();
    }
    want
}

fn held(lab: &Lab, node: &str, dual_stack: bool) -> BTreeMap<u8, Vec<String>> {
    let mut got = BTreeMap::from([(4, routes(lab, node, 4, "eth0", "10.244.0.0/16"))]);
    if dual_stack {
        got.insert(
            6,
            routes(lab, node, 6, "eth0", weft_lab::lab::CLUSTER_CIDR6)
                .into_iter()
                // `ip -6 route` adds the metric and preference.
                .map(|r| r.split(" metric ").next().unwrap().to_string())
                .collect(),
        );
    }
    got
}

fn link_exists(lab: &Lab, node: &str, link: &str) -> bool {
    lab.exec(node, &["ip", "link", "show", link])
        .unwrap()
        .status
        .success()
}

#[test]
fn every_peer_is_routed_via_its_public_ip_and_pods_reach_each_other_over_both_families() {
    let mut lab = lab("hgwlayout", 3, true);
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    for n in nodes(&lab) {
        let name = n.metadata.name.clone().unwrap();
        assert_eq!(
            annotation(&n, "backend-type").as_deref(),
            Some("host-gw"),
            "{name}"
        );
        assert_eq!(annotation(&n, "backend-data").as_deref(), Some("null"));
        assert_eq!(annotation(&n, "backend-v6-data").as_deref(), Some("null"));
        let underlay = lab.node(&name).unwrap().underlay_ip.to_string();
        assert_eq!(annotation(&n, "public-ip"), Some(underlay), "{name}");
    }
    for node in ["node-1", "node-2", "node-3"] {
        let want = expected(&lab, node);
        assert_eq!(want[&4].len(), 2);
        assert_eq!(want[&6].len(), 2);
        assert_eq!(held(&lab, node, true), want, "{node}");
        for dev in ["flannel.1", "flannel-v6.1", "flannel0"] {
            assert!(!link_exists(&lab, node, dev), "{node} has no {dev}");
        }
        let env =
            std::fs::read_to_string(lab.node(node).unwrap().host_path("/run/flannel/subnet.env"))
                .unwrap();
        assert!(env.contains("FLANNEL_MTU=1500\n"), "{env}");
    }
    let results = lab.connectivity().unwrap();
    assert_eq!(results.len(), 6 * 2, "every pair, both families");
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn a_route_changed_by_hand_is_repaired_at_once_and_node_churn_is_followed() {
    let mut lab = lab("hgwchurn", 3, false);
    let before = held(&lab, "node-1", false);
    assert_eq!(before, expected(&lab, "node-1"));
    let cidr = before[&4][0].split(' ').next().unwrap().to_string();
    for script in [
        format!("ip route del {cidr} dev eth0"),
        format!("ip route replace {cidr} via 198.51.100.99 dev eth0"),
        // A foreign route inside the pod network is not left standing.
        "ip route add 10.244.77.0/24 via 198.51.100.99 dev eth0".to_string(),
    ] {
        lab.by_hand("node-1", &script).unwrap();
        let took = within(
            Duration::from_secs(2),
            &format!("repaired after `{script}`"),
            || held(&lab, "node-1", false) == before,
        );
        eprintln!("`{script}` repaired after {took:?}");
    }

    let pod1 = lab.add_plain_pod("node-1", "pod-1", 2).unwrap();
    lab.remove_node("node-3").unwrap();
    let took = within(Duration::from_secs(5), "node-3's route pruned", || {
        held(&lab, "node-1", false)[&4].len() == 1
    });
    eprintln!("node-3 pruned after {took:?}");
    assert_eq!(held(&lab, "node-1", false), expected(&lab, "node-1"));

    let joined = lab.join_node().unwrap();
    let new_pod = lab.add_plain_pod(&joined.name, "pod-new", 2).unwrap();
    let took = within(
        Duration::from_secs(2),
        "the new node reachable from node-1",
        || lab.pod_pings(&pod1, &new_pod, 1).unwrap_or(false),
    );
    eprintln!(
        "{} reachable {took:?} after its weftd was ready",
        joined.name
    );
    assert_eq!(held(&lab, "node-1", false), expected(&lab, "node-1"));
}

#[test]
fn weftd_killed_and_restarted_during_a_10ms_ping_loses_nothing() {
    let mut lab = lab("hgwrestart", 2, false);
    let pods: Vec<Pod> = ["node-1", "node-2"]
        .iter()
        .map(|n| lab.add_plain_pod(n, &format!("pod-{n}"), 2).unwrap())
        .collect();
    let (sent, got) = lab
        .crash_and_restart_under_ping("node-1", &pods[0], &pods[1])
        .unwrap();
    assert!(sent > 200, "{sent} pings sent in 4 s");
    assert_eq!(
        sent, got,
        "no loss across the restart (routes stay in place)"
    );
    assert_eq!(held(&lab, "node-1", false), expected(&lab, "node-1"));
}

#[test]
fn a_peer_off_the_external_subnet_is_skipped_named_and_counted() {
    let lab = lab("hgwoff", 3, false);
    let pods: Vec<Pod> = ["node-1", "node-2"]
        .iter()
        .map(|n| lab.add_plain_pod(n, &format!("pod-{n}"), 2).unwrap())
        .collect();
    // node-3 now claims an address behind the hub: no on-link next hop.
    lab.annotate_node(
        "node-3",
        &[(&format!("{PREFIX}/public-ip"), "203.0.113.77")],
    )
    .unwrap();
    for node in ["node-1", "node-2"] {
        within(Duration::from_secs(2), "node-3 skipped", || {
            held(&lab, node, false)[&4].len() == 1
        });
        assert_eq!(
            metric(
                &lab,
                node,
                "weft_skipped_peers{reason=\"unreachable_by_backend\"}"
            ),
            Some(1.0)
        );
        assert!(
            lab.weftd_ready(node).unwrap(),
            "weftd on {node} is unharmed"
        );
    }
    assert!(
        !held(&lab, "node-1", false)[&4]
            .iter()
            .any(|r| r.contains("203.0.113.77")),
        "no route via an off-link address"
    );
    assert!(lab.pod_pings(&pods[0], &pods[1], 2).unwrap());
    let log =
        std::fs::read_to_string(lab.node("node-1").unwrap().dir.join("logs/weftd.log")).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("skipping node node-3"))
        .unwrap_or_else(|| panic!("no warning naming node-3:\n{log}"));
    assert!(warning.contains("203.0.113.77"), "{warning}");
}

#[test]
fn cleanup_removes_exactly_the_host_routes() {
    let mut lab = lab("hgwclean", 3, false);
    lab.stop_weftd("node-1", Signal::SIGTERM).unwrap();
    assert_eq!(
        held(&lab, "node-1", false)[&4].len(),
        2,
        "SIGTERM leaves the routes in place"
    );
    let default = |lab: &Lab| {
        lab.run("node-1", &["ip", "-4", "route", "show", "default"])
            .unwrap()
    };
    let default_before = default(&lab);
    assert!(
        default_before.contains("via 198.51.100.1"),
        "{default_before}"
    );
    let weftd = weft_lab::weftd::find_weftd().unwrap();
    let out = lab
        .exec("node-1", &[weftd.to_str().unwrap(), "cleanup"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("10.244.1.0/24 via 198.51.100.12"), "{log}");
    assert!(held(&lab, "node-1", false)[&4].is_empty());
    assert_eq!(default(&lab), default_before, "the default route stays");
    let again = lab
        .exec("node-1", &[weftd.to_str().unwrap(), "cleanup"])
        .unwrap();
    assert!(again.status.success(), "a second cleanup still succeeds");
}

#[test]
fn a_cluster_switches_from_vxlan_to_host_gw_node_by_node() {
    let mut lab = Lab::up(&LabConfig::with_weftd(&unique_name("hgwswitch"), 3)).unwrap();
    let pods: Vec<Pod> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| lab.add_plain_pod(n, &format!("pod-{n}"), 2).unwrap())
        .collect();
    let ready = Duration::from_secs(30);
    // node-3 first: the VXLAN nodes skip it (another backend) and go on
    // reaching each other.
    lab.set_node("node-3", |s| s.backend = Some(Backend::HostGw))
        .unwrap();
    lab.restart_weftd("node-3", ready).unwrap();
    for node in ["node-1", "node-2"] {
        within(
            Duration::from_secs(5),
            "node-3 skipped as another backend",
            || {
                metric(
                    &lab,
                    node,
                    "weft_skipped_peers{reason=\"other_backend_type\"}",
                ) == Some(1.0)
            },
        );
    }
    assert!(lab.pod_pings(&pods[0], &pods[1], 2).unwrap());
    // Then the rest: every node on host-gw, every pod reaching every other.
    for node in ["node-1", "node-2"] {
        lab.set_node(node, |s| s.backend = Some(Backend::HostGw))
            .unwrap();
        lab.restart_weftd(node, ready).unwrap();
    }
    for node in ["node-1", "node-2", "node-3"] {
        within(Duration::from_secs(5), "host-gw routes everywhere", || {
            held(&lab, node, false) == expected(&lab, node)
        });
        assert_eq!(
            metric(
                &lab,
                node,
                "weft_skipped_peers{reason=\"other_backend_type\"}"
            ),
            Some(0.0)
        );
    }
    for a in &pods {
        for b in &pods {
            if a != b {
                assert!(lab.pod_pings(a, b, 2).unwrap(), "{} -> {}", a.name, b.name);
            }
        }
    }
}
