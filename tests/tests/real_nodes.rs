//! weft on real nodes: kubelet and containerd run weft's DaemonSet from its
//! image after `kubectl apply -f manifests/weft.yaml`, and containerd's CRI
//! wires every pod through the `weft` plugin (`weft-lab up --kubelet`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weft_lab::lab::RealPod;
use weft_lab::{Lab, LabConfig, unique_name};

fn real_lab(tag: &str, nodes: usize) -> Lab {
    let cfg = LabConfig {
        kubelet: true,
        verbose: true,
        ..LabConfig::new(&unique_name(tag), nodes)
    };
    Lab::up(&cfg).unwrap()
}

/// What of a pod is left on its node: its IP in host-local's store, weft's
/// saved config, libcni's cached result, and its host-side veth.
#[derive(Debug, Default, PartialEq)]
struct Traces {
    ip_reserved: bool,
    saved_config: bool,
    cached_result: bool,
    veth: bool,
}

/// The sandbox (container) ID host-local recorded for `pod`'s IP, and the
/// host-side veth from libcni's cached result.
fn sandbox_of(lab: &Lab, pod: &RealPod) -> (String, String) {
    let node = lab.node(&pod.node).unwrap();
    let reserved = node.host_path(&format!("/var/lib/cni/networks/cbr0/{}", pod.ip));
    let id = std::fs::read_to_string(&reserved)
        .unwrap_or_else(|e| panic!("{}: {e}", reserved.display()))
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let cached = node.host_path(&format!("/var/lib/cni/results/cbr0-{id}-eth0"));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cached).unwrap()).unwrap();
    let veth = result["result"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().starts_with("veth"))
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no veth in {result}"))
        .to_string();
    (id, veth)
}

fn traces(lab: &Lab, pod: &RealPod, id: &str, veth: &str) -> Traces {
    let node = lab.node(&pod.node).unwrap();
    let exists = |p: String| node.host_path(&p).exists();
    Traces {
        ip_reserved: exists(format!("/var/lib/cni/networks/cbr0/{}", pod.ip)),
        saved_config: exists(format!("/var/lib/cni/flannel/{id}")),
        cached_result: exists(format!("/var/lib/cni/results/cbr0-{id}-eth0")),
        veth: lab.run(&pod.node, &["ip", "link", "show", veth]).is_ok(),
    }
}

#[test]
fn weft_installed_by_kubectl_apply_wires_every_pod_and_deletes_leave_nothing() {
    let lab = real_lab("real", 3);
    // Lab::up waited for the rollout; check it from the API as a user would.
    let nodes = lab.kubectl_json(&["get", "nodes"]).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let cond = |t: &str| {
            n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| c["status"].as_str().unwrap().to_string())
        };
        assert_eq!(cond("Ready").as_deref(), Some("True"), "{n}");
        assert_eq!(cond("NetworkUnavailable").as_deref(), Some("False"), "{n}");
        assert!(n["spec"]["podCIDR"].is_string(), "{n}");
    }
    let weft = lab
        .kubectl_json(&["-n", "kube-weft", "get", "pods"])
        .unwrap();
    let weft_pods = weft["items"].as_array().unwrap();
    assert_eq!(weft_pods.len(), 3);
    for p in weft_pods {
        let ready = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{p}");
        // The manifest's securityContext, as the runtime applied it.
        let sc = &p["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_ADMIN"]));
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_ne!(sc["privileged"], true);
    }

    let pods = lab.deploy_workload(12).unwrap();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &pods {
        *per_node.entry(&p.node).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [4, 4, 4]);

    let results = lab.real_connectivity().unwrap();
    assert_eq!(results.len(), 12 * 11);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "{failed:#?}");

    // The node doctor, as an operator runs it: in the weft pod, with the
    // running weftd's flags and environment.
    let pod = weft_pods[0]["metadata"]["name"].as_str().unwrap();
    let out = lab
        .kubectl()
        .args(["-n", "kube-weft", "exec", pod, "-c", "weftd", "--"])
        .args(["/usr/local/bin/weftd", "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("no problem found"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // containerd's DEL, through libcni and weft, leaves nothing.
    let victim = pods[0].clone();
    let (id, veth) = sandbox_of(&lab, &victim);
    let before = traces(&lab, &victim, &id, &veth);
    assert_eq!(
        before,
        Traces {
            ip_reserved: true,
            saved_config: true,
            cached_result: true,
            veth: true
        }
    );
    weft_lab::cmd::run(
        lab.kubectl()
            .args(["delete", "pod", &victim.name, "--wait"]),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = traces(&lab, &victim, &id, &veth);
        if now == Traces::default() {
            break;
        }
        assert!(Instant::now() < deadline, "left after DEL: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A rolling update of weft's DaemonSet while a pod on node-1 pings one
    // on node-2: weftd restarts leave the data plane in place.
    let pods = lab.workload_pods().unwrap();
    let a = pods.iter().find(|p| p.node == "node-1").unwrap();
    let b = pods.iter().find(|p| p.node == "node-2").unwrap();
    let pinger = lab.start_ping(a, b.ip).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rollout = lab.restart_weft().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let count = pinger.finish(&lab).unwrap();
    let sent = count.sent;
    eprintln!(
        "rolling update of weft on 3 nodes: {rollout:.1} s; ping {} -> {}: {sent} sent, {} lost, {} unanswered when stopped",
        a.name, b.name, count.lost, count.unanswered_at_stop
    );
    // At 100/s through the whole rollout (busybox's ping keeps its pace
    // only roughly: at least half of it).
    let expected = (rollout + 4.0) * 100.0;
    assert!(
        sent as f64 > expected * 0.5,
        "{sent} sent in {rollout:.1} s"
    );
    assert_eq!(count.lost, 0, "packets lost during the rollout");
    assert!(count.unanswered_at_stop <= 1, "{count:?}");

    // The plugin overwritten with garbage on node-1: weftd (its
    // --cni-plugin, from the image) puts it back within a rules period.
    let plugin = lab.node("node-1").unwrap().host_path("/opt/cni/bin/weft");
    let good = std::fs::read(&plugin).unwrap();
    std::fs::write(&plugin, b"#!/bin/sh\nexit 1\n").unwrap();
    let t0 = Instant::now();
    while std::fs::read(&plugin).ok().as_deref() != Some(&good[..]) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the weft plugin was not put back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "garbage plugin replaced after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // node-3 loses kube-proxy, as on a cluster without it: its new weftd
    // cannot reach the API server at the Service's address and says where
    // it looked and why, once per retry, without kube's ERROR lines.
    lab.stop_kube_proxy("node-3").unwrap();
    let old = lab.weft_pod("node-3").unwrap();
    weft_lab::cmd::run(
        lab.kubectl()
            .args(["-n", "kube-weft", "delete", "pod", &old]),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = lab
            .weft_pod("node-3")
            .ok()
            .and_then(|p| {
                weft_lab::cmd::run(lab.kubectl().args([
                    "-n",
                    "kube-weft",
                    "logs",
                    &p,
                    "-c",
                    "weftd",
                ]))
                .ok()
            })
            .unwrap_or_default();
        if log.contains("failed: no answer") {
            break log;
        }
        assert!(Instant::now() < deadline, "no complaint in:\n{log}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        log.contains("from the API server at https://10.96.0.1"),
        "{log}"
    );
    assert!(log.contains("KUBERNETES_SERVICE_HOST"), "no hint:\n{log}");
    assert!(!log.contains(" ERROR "), "{log}");

    // The chart rendered with the udp backend and the API server's own
    // address, applied over the running vxlan cluster (a backend switch):
    // node-3 reaches the API again, each weftd removes the VXLAN device the
    // other backend left, and udp pods reach each other (the chart's
    // /dev/net/tun mount, under a real runtime, not privileged).
    lab.apply_chart("backend:\n  type: udp\napiServer:\n  host: 198.51.100.1\n  port: 6443\n")
        .unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        let links = lab.run(n, &["ip", "-o", "link", "show"]).unwrap();
        assert!(!links.contains("flannel.1"), "{n} kept flannel.1:\n{links}");
        assert!(links.contains("flannel0"), "{n} has no flannel0:\n{links}");
        let routes = lab.run(n, &["ip", "route", "show"]).unwrap();
        assert!(!routes.contains("flannel.1"), "{n}:\n{routes}");
    }
    let results = lab.real_connectivity().unwrap();
    assert_eq!(results.len(), 12 * 11);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "over udp: {failed:#?}");

    // Uninstall as the README says, for the chart's install: the same
    // values with cleanup.enabled (node-3 still has no kube-proxy: its
    // cleanup asks the API for its pods at apiServer.host). Pods still
    // running stay removable (the conflist and the plugin stay until the
    // last of them is gone from the API), then nothing of weft is left on
    // any node.
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let kubectl_file = |verb: &str, file: &str| {
        let path = manifests.join(file);
        weft_lab::cmd::run(lab.kubectl().args([verb, "-f"]).arg(&path).arg("--wait")).unwrap();
    };
    lab.apply_chart(
        "backend:\n  type: udp\napiServer:\n  host: 198.51.100.1\n  port: 6443\ncleanup:\n  enabled: true\n",
    )
    .unwrap();
    let on = |n: &str, path: &str| lab.node(n).unwrap().host_path(path).exists();
    for n in ["node-1", "node-2", "node-3"] {
        let links = lab.run(n, &["ip", "-o", "link", "show"]).unwrap();
        assert!(!links.contains("flannel"), "{n}:\n{links}");
        let tables = lab.run(n, &["nft", "list", "tables"]).unwrap();
        assert!(!tables.contains("weft"), "{n}: {tables}");
        assert!(!on(n, "/run/flannel/subnet.env"), "{n}: subnet.env left");
        // Pods still run here: their DEL needs the conflist and the plugin.
        assert!(
            on(n, "/etc/cni/net.d/10-weft.conflist"),
            "{n}: conflist gone too early"
        );
        assert!(on(n, "/opt/cni/bin/weft"), "{n}: plugin gone too early");
    }
    weft_lab::cmd::run(
        lab.kubectl()
            .args(["delete", "deployment", "busybox", "--wait"]),
    )
    .unwrap();
    // The kubelet 1.20 takes ~10 s per pod to finish a deletion (its
    // status manager), four pods per node.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let pods = lab
            .kubectl_json(&["get", "pods", "-l", "app=busybox"])
            .unwrap();
        let left: Vec<String> = ["node-1", "node-2", "node-3"]
            .iter()
            .flat_map(|n| {
                let links = lab.run(n, &["ip", "-o", "link", "show"]).unwrap();
                [
                    on(n, "/etc/cni/net.d/10-weft.conflist").then(|| format!("{n}: conflist")),
                    on(n, "/opt/cni/bin/weft").then(|| format!("{n}: plugin")),
                    links.contains("cni0").then(|| format!("{n}: cni0")),
                    links.contains("veth").then(|| format!("{n}: a veth")),
                ]
            })
            .flatten()
            .collect();
        if pods["items"].as_array().unwrap().is_empty() && left.is_empty() {
            break;
        }
        let states: Vec<String> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} on {} ({}, deleting since {})",
                    p["metadata"]["name"],
                    p["spec"]["nodeName"],
                    p["status"]["phase"],
                    p["metadata"]["deletionTimestamp"]
                )
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "after the workload went: {left:?}, pods {states:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    kubectl_file("delete", "weft-cleanup.yaml");
}
