//! A cluster switching node by node: one lab node programmed by hand exactly
//! as flanneld would (its annotations in the API through nodes/status, its
//! kernel entries, its subnet.env) and two weftd nodes. Pods reach each
//! other both ways.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use weft_lab::{Lab, LabConfig, cluster, unique_name};

const P: &str = "flannel.alpha.coreos.com";

#[test]
fn a_flannel_node_and_weftd_nodes_reach_each_others_pods_both_ways() {
    let mut lab = Lab::up(&LabConfig::new(&unique_name("interop"), 3)).unwrap();
    for n in ["node-1", "node-2"] {
        lab.start_weftd(n).unwrap();
    }
    lab.wait_weftd_ready(&["node-1", "node-2"], Duration::from_secs(30))
        .unwrap();

    // node-3 plays flanneld v0.2x: device, annotations, subnet.env, peers.
    let flannel_mac = "0e:66:6c:61:6e:33";
    lab.run(
        "node-3",
        &["bash", "-euc", &format!(
            "ip link add flannel.1 address {flannel_mac} mtu 1450 type vxlan id 1 local 198.51.100.13 dev eth0 dstport 8472 nolearning
             ip addr add 10.244.2.0/32 dev flannel.1
             ip link set flannel.1 up
             printf 'FLANNEL_NETWORK=10.244.0.0/16\\nFLANNEL_SUBNET=10.244.2.1/24\\nFLANNEL_MTU=1450\\nFLANNEL_IPMASQ=true\\n' > /run/flannel/subnet.env"
        )],
    )
    .unwrap();
    let node_kc = lab.node_kubeconfig();
    let peers = lab
        .block_on(|| async {
            // flanneld's RBAC is ours: it patches nodes/status only.
            let api: Api<Node> = Api::all(cluster::client(&node_kc).await.unwrap());
            let body = serde_json::json!({"metadata": {"annotations": {
                format!("{P}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{flannel_mac}"}}"#),
                format!("{P}/backend-type"): "vxlan",
                format!("{P}/kube-subnet-manager"): "true",
                format!("{P}/public-ip"): "198.51.100.13",
            }}});
            api.patch_status("node-3", &PatchParams::default(), &Patch::Strategic(&body))
                .await
                .unwrap();
            let mut peers = Vec::new();
            for n in ["node-1", "node-2"] {
                let node = api.get(n).await.unwrap();
                let ann = node.metadata.annotations.unwrap();
                let data: serde_json::Value =
                    serde_json::from_str(&ann[&format!("{P}/backend-data")]).unwrap();
                peers.push((
                    node.spec.unwrap().pod_cidr.unwrap(),
                    data["VtepMAC"].as_str().unwrap().to_string(),
                    ann[&format!("{P}/public-ip")].clone(),
                ));
            }
            peers
        })
        .unwrap();
    for (cidr, mac, ip) in &peers {
        let gw = cidr.split('/').next().unwrap();
        lab.run(
            "node-3",
            &[
                "bash",
                "-euc",
                &format!(
                    "ip neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent
                 bridge fdb append {mac} dev flannel.1 dst {ip} self permanent
                 ip route replace {cidr} via {gw} dev flannel.1 onlink"
                ),
            ],
        )
        .unwrap();
    }

    let pods: Vec<_> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| lab.add_plain_pod(n, &format!("pod-{n}"), 2).unwrap())
        .collect();
    // weftd picks the flannel node up from the API.
    let t0 = Instant::now();
    while !lab.pod_pings(&pods[0], &pods[2], 1).unwrap() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "weft node-1 never reached flannel node-3"
        );
    }
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1), (0, 1), (1, 0)] {
        assert!(
            lab.pod_pings(&pods[a], &pods[b], 2).unwrap(),
            "{} -> {}",
            pods[a].name,
            pods[b].name
        );
    }
}
