//! weftd run with upstream kube-flannel.yml's container spec verbatim (its
//! command `/opt/bin/flanneld`, its args and env, its capabilities), the way
//! a flannel cluster switches by changing only the image: on one lab node,
//! next to two nodes running weftd the weft way. The node finds its name
//! through its pod (POD_NAME, POD_NAMESPACE), takes in-cluster credentials,
//! serves /healthz and /readyz on flanneld's --healthz-port, and the pod
//! matrix passes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use weft_lab::{Lab, LabConfig, unique_name};

const FLANNEL_AND_OTHERS: &str = "
iptables-nft -t nat -N FLANNEL-POSTRTG
iptables-nft -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG
iptables-nft -t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment 'flanneld masq' -j RETURN
iptables-nft -t filter -N FLANNEL-FWD
iptables-nft -t filter -A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD
iptables-nft -t filter -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT
iptables-nft -t nat -N KUBE-POSTROUTING
iptables-nft -t nat -A POSTROUTING -m comment --comment 'kubernetes postrouting rules' -j KUBE-POSTROUTING
";

fn kube_flannel_container() -> Container {
    let text = include_str!("../fixtures/kube-flannel-container.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    serde_json::from_value(v["container"].clone()).unwrap()
}

#[test]
fn kube_flannel_yml_s_container_runs_weftd_as_flanneld_beside_weft_nodes() {
    let mut lab = Lab::up(&LabConfig::with_weftd(&unique_name("flanneld"), 3)).unwrap();
    // What flanneld left on node-3 (its jumps and chains, made by iptables
    // as flanneld makes them) and what another agent keeps there.
    lab.run("node-3", &["bash", "-euc", FLANNEL_AND_OTHERS])
        .unwrap();
    let before = lab.run("node-3", &["iptables-nft-save"]).unwrap();
    lab.set_node("node-3", |s| s.container = Some(kube_flannel_container()))
        .unwrap();
    lab.restart_weftd("node-3", Duration::from_secs(30))
        .unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    let results = lab.connectivity().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");

    let log =
        std::fs::read_to_string(lab.node("node-3").unwrap().dir.join("logs/weftd.log")).unwrap();
    assert!(log.contains("weftd started as flanneld"), "{log}");
    assert!(
        log.contains("node name from this pod's spec.nodeName") && log.contains("node-3"),
        "{log}"
    );
    // --ip-masq from the args: subnet.env and the masquerade rules.
    let env = lab
        .run("node-3", &["cat", "/run/flannel/subnet.env"])
        .unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
    let table = lab
        .run("node-3", &["nft", "list", "table", "inet", "weft"])
        .unwrap();
    assert!(table.contains("masquerade fully-random"), "{table}");

    // weftd said once that flanneld's rules are still there, and left them.
    assert_eq!(
        log.matches("flanneld's rules are still on this node")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("FLANNEL-POSTRTG") && log.contains("FLANNEL-FWD"),
        "{log}"
    );
    assert_eq!(
        lab.run("node-3", &["iptables-nft-save"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("FLANNEL-"))
            .count(),
        before.lines().filter(|l| l.contains("FLANNEL-")).count()
    );
    // Asked, exactly flanneld's go: the other agent's chain and jump stay,
    // and so does weft's table.
    let weftd = weft_lab::weftd::find_weftd().unwrap();
    lab.run("node-3", &[weftd.to_str().unwrap(), "cleanup", "--flannel"])
        .unwrap();
    let after = lab.run("node-3", &["iptables-nft-save"]).unwrap();
    let rules = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("FLANNEL-"))
            .map(|l| l.split(" [").next().unwrap().to_string())
            .collect()
    };
    assert!(!after.contains("FLANNEL-"), "{after}");
    assert_eq!(rules(&after), rules(&before));
    assert!(after.contains("-j KUBE-POSTROUTING"), "{after}");
    // (counters aside: they may count a stray datagram meanwhile)
    let uncounted = |t: &str| -> String {
        t.lines()
            .map(|l| l.split(" packets ").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let table_after = lab
        .run("node-3", &["nft", "list", "table", "inet", "weft"])
        .unwrap();
    assert_eq!(uncounted(&table_after), uncounted(&table));
}
