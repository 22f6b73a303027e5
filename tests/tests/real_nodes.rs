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
}
