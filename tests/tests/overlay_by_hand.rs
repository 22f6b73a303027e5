//! The lab carries overlay traffic before weftd exists: kernel VXLAN
//! programmed by hand exactly as DESIGN.md prescribes (device flannel.1,
//! VNI 1, port 8472, nolearning; per peer a neighbour, an FDB entry and an
//! onlink route) moves ICMP and TCP from a pod on one node to a pod on the
//! other, and tearing the lab down leaves nothing behind.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use weft_lab::{Lab, LabConfig, procs, unique_name};

struct HandNode {
    name: &'static str,
    underlay: String,
    /// First three octets of the node's pod subnet (a /24).
    subnet: &'static str,
    mac: &'static str,
}

fn sh(lab: &Lab, node: &str, script: &str) -> String {
    lab.run(node, &["bash", "-euxc", script])
        .unwrap_or_else(|e| panic!("on {node}: {e}"))
}

fn program_node(lab: &Lab, me: &HandNode, peers: &[&HandNode]) {
    let HandNode {
        underlay: ip,
        subnet: sub,
        mac,
        ..
    } = me;
    sh(
        lab,
        me.name,
        &format!(
            "sysctl -qw net.ipv4.ip_forward=1
             ip link add flannel.1 type vxlan id 1 local {ip} dev eth0 dstport 8472 nolearning
             ip link set flannel.1 address {mac} mtu 1450 up
             ip addr add {sub}.0/32 dev flannel.1
             ip link add cni0 type bridge
             ip addr add {sub}.1/24 dev cni0
             ip link set cni0 mtu 1450 up
             ip netns add pod
             ip link add vethpod mtu 1450 type veth peer name eth0 mtu 1450 netns pod
             ip link set vethpod master cni0 up
             ip -n pod link set lo up
             ip -n pod addr add {sub}.2/24 dev eth0
             ip -n pod link set eth0 up
             ip -n pod route add default via {sub}.1"
        ),
    );
    for p in peers {
        let HandNode {
            underlay: pip,
            subnet: psub,
            mac: pmac,
            ..
        } = p;
        sh(
            lab,
            me.name,
            &format!(
                "ip neigh replace {psub}.0 lladdr {pmac} dev flannel.1 nud permanent
                 bridge fdb append {pmac} dev flannel.1 dst {pip} self permanent
                 ip route replace {psub}.0/24 via {psub}.0 dev flannel.1 onlink"
            ),
        );
    }
}

fn rx_packets(lab: &Lab, node: &str, dev: &str) -> u64 {
    let out = lab
        .run(node, &["ip", "-j", "-s", "link", "show", "dev", dev])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

#[test]
fn hand_programmed_vxlan_carries_icmp_and_tcp_between_pods_and_teardown_leaves_nothing() {
    let name = unique_name("vxlan");
    let lab = Lab::up(&LabConfig::new(&name, 2)).expect("lab comes up");
    let ip = |n: &str| lab.node(n).unwrap().underlay_ip.to_string();
    let a = HandNode {
        name: "node-1",
        underlay: ip("node-1"),
        subnet: "10.244.0",
        mac: "02:77:65:66:74:01",
    };
    let b = HandNode {
        name: "node-2",
        underlay: ip("node-2"),
        subnet: "10.244.1",
        mac: "02:77:65:66:74:02",
    };
    program_node(&lab, &a, &[&b]);
    program_node(&lab, &b, &[&a]);

    // What the kernel holds is exactly the per-peer triple.
    let fdb = lab
        .run(
            "node-1",
            &["bridge", "-j", "fdb", "show", "dev", "flannel.1"],
        )
        .unwrap();
    assert!(
        fdb.contains("\"mac\":\"02:77:65:66:74:02\"") && fdb.contains("\"dst\":\"198.51.100.12\""),
        "fdb: {fdb}"
    );
    let routes = lab
        .run("node-1", &["ip", "-j", "route", "show", "10.244.1.0/24"])
        .unwrap();
    assert!(
        routes.contains("\"gateway\":\"10.244.1.0\"") && routes.contains("onlink"),
        "route: {routes}"
    );

    let before = rx_packets(&lab, "node-2", "flannel.1");
    let ping = lab
        .exec(
            "node-1",
            &[
                "ip",
                "netns",
                "exec",
                "pod",
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                "10.244.1.2",
            ],
        )
        .unwrap();
    assert!(
        ping.status.success(),
        "pod to pod ping across nodes failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        rx_packets(&lab, "node-2", "flannel.1") >= before + 3,
        "the pings must arrive through flannel.1"
    );

    // TCP: an iperf3 transfer from pod to pod.
    let server = [
        "ip",
        "netns",
        "exec",
        "pod",
        "iperf3",
        "-s",
        "-1",
        "-B",
        "10.244.1.2",
    ];
    lab.spawn_on("node-2", "iperf3-server", &server).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .run("node-2", &["ip", "netns", "exec", "pod", "ss", "-Hltn"])
        .unwrap()
        .contains(":5201")
    {
        assert!(Instant::now() < deadline, "iperf3 server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = lab
        .run(
            "node-1",
            &[
                "ip",
                "netns",
                "exec",
                "pod",
                "iperf3",
                "-c",
                "10.244.1.2",
                "-t",
                "2",
                "-J",
            ],
        )
        .expect("iperf3 client");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let gbps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    eprintln!("pod-to-pod TCP over hand-made VXLAN: {bytes} bytes, {gbps:.2} Gbit/s");
    assert!(bytes > 1_000_000, "TCP transfer moved only {bytes} bytes");

    let holders: Vec<i32> = lab
        .state
        .nodes
        .iter()
        .map(|n| n.holder_pid as i32)
        .collect();
    let dir = lab.dir().to_path_buf();
    drop(lab);
    assert_eq!(weft_lab::lab::lab_netns(&name), Vec::<String>::new());
    assert_eq!(procs::marked(Some(&name)), Vec::<i32>::new());
    assert!(
        holders.iter().all(|&p| !procs::alive(p)),
        "node holders gone"
    );
    assert!(!dir.exists(), "state directory {} removed", dir.display());
}
