//! Dual-stack on a 3-node lab (VXLAN; IPv6 underlay addresses, an IPv4 and
//! an IPv6 podCIDR per Node, weft configured for both): subnet.env carries
//! both families, every node holds flannel's triples on `flannel-v6.1` too,
//! every pod from the conflist gets an address of each family, and every
//! pod reaches every other over IPv6 (ICMP and TCP) as over IPv4.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use weft_lab::{Lab, LabConfig, unique_name};

#[test]
fn dual_stack_pods_reach_each_other_over_both_families() {
    let cfg = LabConfig {
        dual_stack: true,
        ..LabConfig::with_weftd(&unique_name("dual"), 3)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        for k in 1..=2 {
            lab.add_pod(n, &format!("{n}-pod-{k}")).unwrap();
        }
    }
    let env = std::fs::read_to_string(
        lab.node("node-2")
            .unwrap()
            .host_path("/run/flannel/subnet.env"),
    )
    .unwrap();
    assert_eq!(
        env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
         FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    let link = lab
        .run("node-2", &["ip", "-d", "link", "show", "flannel-v6.1"])
        .unwrap();
    assert!(link.contains("local fd00:198:51:100::c "), "{link}");
    let routes = lab
        .run(
            "node-2",
            &["ip", "-6", "route", "show", "dev", "flannel-v6.1"],
        )
        .unwrap();
    for peer in [
        "fd00:10:244::/64 via fd00:10:244:: ",
        "fd00:10:244:2::/64 via fd00:10:244:2:: ",
    ] {
        assert!(routes.contains(peer), "{routes}");
    }
    let neigh = lab
        .run(
            "node-2",
            &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"],
        )
        .unwrap();
    assert_eq!(neigh.matches("PERMANENT").count(), 2, "{neigh}");

    // Both families: 6 pods x 5 others x (IPv4, IPv6).
    let results = lab.connectivity().unwrap();
    assert_eq!(results.len(), 60);
    assert_eq!(results.iter().filter(|r| r.to_ip.contains(':')).count(), 30);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");
}
