//! Dual-stack on a 3-node lab (VXLAN; IPv6 underlay addresses, an IPv4 and
//! an IPv6 podCIDR per Node, weft configured for both): subnet.env carries
//! both families, every node holds flannel's triples on `flannel-v6.1` too,
//! every pod from the conflist gets an address of each family, and every
//! pod reaches every other over IPv6 (ICMP and TCP) as over IPv4.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use weft_lab::runtime::PodRecord;
use weft_lab::{Lab, LabConfig, unique_name};

fn v6_of(lab: &Lab, pod: &PodRecord) -> String {
    let out = lab
        .pod_cmd(
            pod,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("{} has no IPv6 address: {text}", pod.name))
        .to_string()
}

#[test]
fn dual_stack_pods_reach_each_other_over_both_families() {
    let cfg = LabConfig {
        dual_stack: true,
        ..LabConfig::with_weftd(&unique_name("dual"), 3)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
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

    let results = lab.connectivity().unwrap();
    assert!(results.iter().all(|r| r.ok()), "IPv4: {results:#?}");
    let pods = lab.state.pods.clone();
    // An IPv6 TCP server in every pod (the matrix's servers listen on IPv4).
    for p in &pods {
        let ip = v6_of(&lab, p);
        assert!(
            lab.pod_cmd(p, &["iperf3", "-s", "-D", "-B", &ip, "-p", "5202"])
                .unwrap()
                .status
                .success()
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut failed = Vec::new();
    for a in &pods {
        for b in &pods {
            if a == b {
                continue;
            }
            let ip = v6_of(&lab, b);
            let icmp = lab
                // -w: a fresh IPv6 gateway may still be in duplicate
                // address detection for the first second.
                .pod_cmd(a, &["ping", "-6", "-q", "-c", "1", "-w", "5", &ip])
                .unwrap()
                .status
                .success();
            let tcp = lab
                .pod_cmd(
                    a,
                    &[
                        "iperf3",
                        "-6",
                        "-c",
                        &ip,
                        "-p",
                        "5202",
                        "-n",
                        "64K",
                        "--connect-timeout",
                        "2000",
                    ],
                )
                .unwrap()
                .status
                .success();
            if !(icmp && tcp) {
                failed.push((a.name.clone(), b.name.clone(), ip, icmp, tcp));
            }
        }
    }
    assert!(failed.is_empty(), "IPv6 pairs failed: {failed:#?}");
}
