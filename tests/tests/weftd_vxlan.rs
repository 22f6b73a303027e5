//! weftd on a 3-node lab, VXLAN backend, behaviour a user sees: the kernel
//! holds exactly flannel's per-peer triples, pods ping across nodes, and
//! that stays true through node churn, garbage annotations, a deleted
//! device, a crash and restart, and a node deleted while weftd was down.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nix::sys::signal::Signal;
use weft_lab::pods::Pod;
use weft_lab::probe::{metric, ping_run, within};
use weft_lab::{Lab, LabConfig, cluster, unique_name};

use weft_lab::judge::{PREFIX, Published, View, expected_view};

fn lab(tag: &str, nodes: usize) -> Lab {
    Lab::up(&LabConfig::with_weftd(&unique_name(tag), nodes)).expect("lab with weftd comes up")
}

/// Per node, as published in the API.
fn published(lab: &Lab) -> BTreeMap<String, Published> {
    lab.published().unwrap()
}

/// What `node`'s kernel holds on flannel.1; a failed read panics, so that
/// "nothing there" is never mistaken for a read that failed.
fn kernel_view(lab: &Lab, node: &str) -> View {
    try_kernel_view(lab, node).unwrap_or_else(|| panic!("reading flannel.1 on {node} failed"))
}

/// The same, `None` when flannel.1 cannot be read (say, while it is gone).
fn try_kernel_view(lab: &Lab, node: &str) -> Option<View> {
    lab.vxlan_view(node)
}

fn pods(lab: &Lab) -> Vec<Pod> {
    lab.state
        .nodes
        .iter()
        .map(|n| {
            lab.add_plain_pod(&n.name, &format!("pod-{}", n.name), 2)
                .unwrap()
        })
        .collect()
}

fn all_ping(lab: &Lab, pods: &[Pod]) {
    for a in pods {
        for b in pods {
            if a != b {
                assert!(
                    lab.pod_pings(a, b, 2).unwrap(),
                    "{} -> {} ({})",
                    a.name,
                    b.name,
                    b.ip
                );
            }
        }
    }
}

#[test]
fn every_node_holds_exactly_flannels_triples_and_pods_ping_across_nodes() {
    let lab = lab("triples", 3);
    let all = published(&lab);
    assert_eq!(all.len(), 3, "every weftd published its annotations");
    for node in ["node-1", "node-2", "node-3"] {
        assert_eq!(
            kernel_view(&lab, node),
            expected_view(&all, node),
            "on {node}"
        );
        let env =
            std::fs::read_to_string(lab.node(node).unwrap().host_path("/run/flannel/subnet.env"))
                .unwrap();
        let cidr = &all[node].pod_cidr;
        let first = cidr.replace(".0/", ".1/");
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
            )
        );
        assert_eq!(metric(&lab, node, "weft_peers{family=\"ipv4\"}"), Some(2.0));
    }
    // NetworkUnavailable=False is set; Ready is kept.
    let admin = lab.admin_kubeconfig();
    let conds = lab
        .block_on(|| async {
            let api: Api<Node> = Api::all(cluster::client(&admin).await.unwrap());
            api.get("node-2")
                .await
                .unwrap()
                .status
                .unwrap()
                .conditions
                .unwrap()
        })
        .unwrap();
    let mut c: Vec<(String, String)> = conds.into_iter().map(|c| (c.type_, c.status)).collect();
    c.sort();
    assert_eq!(
        c,
        vec![
            ("NetworkUnavailable".into(), "False".into()),
            ("Ready".into(), "True".into())
        ]
    );

    let pods = pods(&lab);
    all_ping(&lab, &pods);
    // TCP across nodes too.
    lab.spawn_on(
        "node-3",
        "iperf3",
        &["ip", "netns", "exec", "pod-node-3", "iperf3", "-s", "-1"],
    )
    .unwrap();
    within(Duration::from_secs(5), "iperf3 listening", || {
        lab.pod_exec(&pods[2], &["ss", "-Hltn"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(":5201"))
            .unwrap_or(false)
    });
    let out = lab
        .pod_exec(
            &pods[0],
            &["iperf3", "-c", &pods[2].ip.to_string(), "-t", "1", "-J"],
        )
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 1_000_000);
}

#[test]
fn a_deleted_node_is_gone_from_the_others_and_a_joining_node_reachable_within_2s() {
    let mut lab = lab("churn", 3);
    let pods = pods(&lab);
    lab.remove_node("node-3").unwrap();
    for node in ["node-1", "node-2"] {
        let took = within(Duration::from_secs(2), "node-3's entries removed", || {
            kernel_view(&lab, node) == expected_view(&published(&lab), node)
                && !kernel_view(&lab, node)
                    .2
                    .iter()
                    .any(|r| r.starts_with("10.244.2.0/24"))
        });
        eprintln!("{node}: node-3 pruned after {took:?}");
    }
    assert!(lab.pod_pings(&pods[0], &pods[1], 1).unwrap());

    let joined = lab.join_node().unwrap();
    let new_pod = lab.add_plain_pod(&joined.name, "pod-new", 2).unwrap();
    let took = within(
        Duration::from_secs(2),
        "the new node reachable from node-1",
        || lab.pod_pings(&pods[0], &new_pod, 1).unwrap_or(false),
    );
    eprintln!(
        "{} reachable {took:?} after its weftd was ready",
        joined.name
    );
    assert!(lab.pod_pings(&new_pod, &pods[1], 1).unwrap());
}

#[test]
fn a_peer_with_garbage_annotations_is_skipped_and_the_rest_still_ping() {
    let lab = lab("garbage", 3);
    let pods = pods(&lab);
    lab.annotate_node(
        "node-3",
        &[(&format!("{PREFIX}/backend-data"), "{this is not json")],
    )
    .unwrap();
    for node in ["node-1", "node-2"] {
        within(Duration::from_secs(2), "node-3 skipped", || {
            !kernel_view(&lab, node)
                .2
                .iter()
                .any(|r| r.starts_with("10.244.2.0/24"))
        });
        assert_eq!(
            metric(
                &lab,
                node,
                "weft_skipped_peers{reason=\"bad_backend_data\"}"
            ),
            Some(1.0)
        );
        assert!(
            lab.weftd_ready(node).unwrap(),
            "weftd on {node} is unharmed"
        );
    }
    assert!(lab.pod_pings(&pods[0], &pods[1], 2).unwrap());
    assert!(lab.pod_pings(&pods[1], &pods[0], 2).unwrap());
    let log =
        std::fs::read_to_string(lab.node("node-1").unwrap().dir.join("logs/weftd.log")).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("skipping node node-3"))
        .count();
    assert_eq!(warnings, 1, "one warning per distinct problem:\n{log}");
}

#[test]
fn entries_changed_by_hand_and_a_deleted_device_are_repaired_at_once() {
    let lab = lab("devdel", 3);
    let pods = pods(&lab);
    let before = kernel_view(&lab, "node-1");
    assert_eq!(
        before,
        expected_view(&published(&lab), "node-1"),
        "the baseline is flannel's triples toward both peers"
    );
    assert_eq!(before.2.len(), 2);
    // Entries removed or altered by hand come back at once (no polling: the
    // resync interval is minutes).
    let all = published(&lab);
    let Published {
        pod_cidr: cidr,
        vtep_mac: mac,
        public_ip: ip,
    } = &all["node-2"];
    let gw = cidr.split('/').next().unwrap();
    for script in [
        format!("ip route del {cidr} dev flannel.1"),
        format!("ip neigh del {gw} dev flannel.1"),
        format!("bridge fdb del {mac} dev flannel.1 dst {ip} self"),
        format!("ip route replace {cidr} via 10.244.99.1 dev flannel.1 onlink"),
    ] {
        lab.by_hand("node-1", &script).unwrap();
        let took = within(
            Duration::from_secs(2),
            &format!("repaired after `{script}`"),
            || try_kernel_view(&lab, "node-1").as_ref() == Some(&before),
        );
        eprintln!("`{script}` repaired after {took:?}");
    }
    lab.delete_link("node-1", "flannel.1").unwrap();
    let took = within(
        Duration::from_secs(2),
        "flannel.1 recreated and replayed",
        || try_kernel_view(&lab, "node-1").as_ref() == Some(&before),
    );
    eprintln!("flannel.1 back with all peers after {took:?}");
    all_ping(&lab, &pods);
    assert_eq!(
        metric(&lab, "node-1", "weft_device_creations_total"),
        Some(2.0)
    );
}

#[test]
fn weftd_killed_and_restarted_during_a_10ms_ping_loses_nothing_after_the_restart() {
    let mut lab = lab("restart", 2);
    let pods = pods(&lab);
    let mac_before = published(&lab)["node-1"].vtep_mac.clone();
    let (sent, got) = lab
        .crash_and_restart_under_ping("node-1", &pods[0], &pods[1])
        .unwrap();
    assert!(sent > 200, "{sent} pings sent in 4 s");

    let after = ping_run(&lab, &pods[0], &pods[1], 2, "ping after restart");
    let (sent2, got2) = after.join().unwrap();
    assert!(sent2 > 100, "{sent2} pings sent");
    assert_eq!(sent2, got2, "no loss after the restart completed");
    assert_eq!(
        published(&lab)["node-1"].vtep_mac,
        mac_before,
        "the VTEP MAC survives the restart"
    );
    assert_eq!(
        sent, got,
        "no loss across the restart either (the data plane stays in place)"
    );
}

#[test]
fn a_node_deleted_while_weftd_was_down_is_cleaned_up_on_its_next_start() {
    let mut lab = lab("downdel", 3);
    lab.stop_weftd("node-1", Signal::SIGTERM).unwrap();
    let stale = kernel_view(&lab, "node-1");
    assert_eq!(stale.2.len(), 2, "SIGTERM leaves the data plane in place");
    lab.remove_node("node-3").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        kernel_view(&lab, "node-1"),
        stale,
        "nobody touched node-1 meanwhile"
    );
    lab.start_weftd("node-1").unwrap();
    lab.wait_weftd_ready(&["node-1"], Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        kernel_view(&lab, "node-1"),
        expected_view(&published(&lab), "node-1")
    );
    assert_eq!(kernel_view(&lab, "node-1").2.len(), 1);
}

/// flannel's DirectRouting: the lab's nodes share one underlay subnet, so
/// every peer is reached through `<subnet> via <peer IP> dev eth0` and
/// flannel.1 carries no peer entries; pods reach each other; a direct route
/// deleted by hand is back at once; a node that leaves takes its route with
/// it.
#[test]
fn direct_routing_routes_peers_on_the_underlay_subnet_without_vxlan() {
    let cfg = LabConfig {
        direct_routing: true,
        ..LabConfig::with_weftd(&unique_name("direct"), 3)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    let direct = |lab: &Lab| {
        let mut r: Vec<String> = lab
            .run(
                "node-1",
                &[
                    "ip",
                    "-4",
                    "route",
                    "show",
                    "dev",
                    "eth0",
                    "root",
                    "10.244.0.0/16",
                ],
            )
            .unwrap()
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        r.sort();
        r
    };
    assert_eq!(
        direct(&lab),
        vec![
            "10.244.1.0/24 via 198.51.100.12".to_string(),
            "10.244.2.0/24 via 198.51.100.13".to_string()
        ]
    );
    assert_eq!(kernel_view(&lab, "node-1"), (vec![], vec![], vec![]));
    let results = lab.connectivity().unwrap();
    assert!(results.iter().all(|r| r.ok()), "{results:#?}");

    // A direct route deleted by hand comes back at once.
    lab.run("node-1", &["ip", "route", "del", "10.244.1.0/24"])
        .unwrap();
    let t0 = Instant::now();
    while direct(&lab).len() != 2 {
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", direct(&lab));
        std::thread::sleep(Duration::from_millis(20));
    }

    lab.remove_node("node-3").unwrap();
    let t0 = Instant::now();
    while direct(&lab).len() != 1 {
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", direct(&lab));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        direct(&lab),
        vec!["10.244.1.0/24 via 198.51.100.12".to_string()]
    );
}
