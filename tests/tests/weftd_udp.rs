//! weftd with the udp backend on a 3-node lab, pods from the conflist:
//! flannel's layout on `flannel0`, the full matrix (ICMP and TCP), a
//! datagram from a non-peer dropped by the allow-list and an inner source
//! spoofed by a peer dropped by the data path (counted; the pod never sees
//! either), a node leaving and one joining, weftd killed and restarted,
//! `flannel0` deleted behind weftd's back, and a node annotated exactly as
//! flannel's udp backend annotates (no backend type) taken as a peer.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use weft_lab::packets::SEND_PY;
use weft_lab::runtime::PodRecord;
use weft_lab::{Backend, Lab, LabConfig, unique_name};

/// Prints every datagram's payload for `secs` seconds.
const LISTEN: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("listening", flush=True)
try:
    while True:
        print(s.recvfrom(65535)[0].decode(errors="replace"), flush=True)
except socket.timeout:
    pass
"#;

fn udp_lab(tag: &str) -> Lab {
    let cfg = LabConfig {
        backend: Backend::Udp,
        ..LabConfig::with_weftd(&unique_name(tag), 3)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    lab
}

fn matrix_ok(lab: &Lab) {
    let results = lab.connectivity().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");
}

fn metric(lab: &Lab, node: &str, line_start: &str) -> u64 {
    let m = lab.weftd_metrics(node).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{m}"))
}

#[test]
fn udp_backend_layout_matrix_and_what_it_refuses() {
    let lab = udp_lab("udp");
    let node = lab.node("node-1").unwrap().clone();
    let link = lab
        .run("node-1", &["ip", "-d", "link", "show", "flannel0"])
        .unwrap();
    assert!(
        link.contains("mtu 1472") && link.contains("tun type tun"),
        "{link}"
    );
    let addr = lab
        .run("node-1", &["ip", "-4", "-o", "addr", "show", "flannel0"])
        .unwrap();
    assert!(addr.contains("inet 10.244.0.0/32"), "{addr}");
    let routes = lab
        .run("node-1", &["ip", "route", "show", "dev", "flannel0"])
        .unwrap();
    assert_eq!(routes.trim(), "10.244.0.0/16");
    let env = std::fs::read_to_string(node.host_path("/run/flannel/subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_MTU=1472\n"), "{env}");
    matrix_ok(&lab);

    // A listener in node-1's pod; datagrams from the outside host (not a
    // peer) and from node-2 with an inner source outside node-2's subnet.
    let p1 = lab.pod("node-1-pod").unwrap().clone();
    let mut listen = lab.node_command("node-1", "ip").unwrap();
    let mut child = listen
        .args([
            "netns", "exec", &p1.name, "python3", "-u", "-c", LISTEN, "7777", "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    let dropped_before = metric(
        &lab,
        "node-1",
        "weft_udp_dropped_packets_total{reason=\"spoofed_source\"}",
    );
    let send = |mut c: Command, src: &str, text: &str| {
        assert!(
            c.args([
                "-c",
                SEND_PY,
                "198.51.100.11",
                "8285",
                "raw",
                src,
                &p1.ip.to_string(),
                "7777",
                text
            ])
            .status()
            .unwrap()
            .success()
        );
    };
    send(
        lab.outside_command("python3"),
        "10.244.1.99",
        "from-a-stranger",
    );
    send(
        lab.node_command("node-2", "python3").unwrap(),
        "10.244.2.99",
        "spoofed-by-a-peer",
    );
    send(
        lab.node_command("node-2", "python3").unwrap(),
        "10.244.1.99",
        "from-node-2",
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-node-2");
    assert_eq!(
        metric(
            &lab,
            "node-1",
            "weft_udp_dropped_packets_total{reason=\"spoofed_source\"}"
        ),
        dropped_before + 1
    );
    let input = lab
        .run("node-1", &["nft", "list", "chain", "inet", "weft", "input"])
        .unwrap();
    assert!(
        input.contains("udp dport 8285 counter packets 1 "),
        "{input}"
    );
}

#[test]
fn udp_backend_through_node_churn_and_a_weftd_restart() {
    let mut lab = udp_lab("udpchurn");
    lab.remove_node("node-3").unwrap();
    lab.state.pods.retain(|p| p.node != "node-3");
    let joined = lab.join_node().unwrap();
    lab.add_pod(&joined.name, "joined-pod").unwrap();
    matrix_ok(&lab);

    lab.kill_agent("node-1").unwrap();
    lab.start_weftd("node-1").unwrap();
    lab.wait_weftd_ready(&["node-1"], Duration::from_secs(30))
        .unwrap();
    matrix_ok(&lab);

    // flannel0 deleted behind weftd's back: a new device, socket, address
    // and route, at once.
    lab.delete_link("node-2", "flannel0").unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let routes = lab.run("node-2", &["ip", "route", "show", "dev", "flannel0"]);
        if routes.is_ok_and(|r| r.contains("10.244.0.0/16")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "flannel0 not back");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("flannel0 back in {:?}", t0.elapsed());
    matrix_ok(&lab);
}

/// The CNI suite's checks with the udp backend: two pods per node from the
/// conflist, the full matrix, and DEL freeing the address, veth and saved
/// config; the rest still reach each other.
#[test]
fn udp_backend_pods_from_the_conflist_and_del() {
    let cfg = LabConfig {
        backend: Backend::Udp,
        ..LabConfig::with_weftd(&unique_name("udpcni"), 3)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        for k in 1..=2 {
            lab.add_pod(n, &format!("{n}-pod-{k}")).unwrap();
        }
    }
    assert_eq!(lab.connectivity().unwrap().len(), 30);
    matrix_ok(&lab);
    let gone = lab.pod("node-2-pod-1").unwrap().clone();
    let node = lab.node("node-2").unwrap().clone();
    lab.del_pod("node-2", "node-2-pod-1").unwrap();
    assert!(
        !node
            .host_path(&format!("/var/lib/cni/networks/cbr0/{}", gone.ip))
            .exists()
    );
    assert!(!node.host_path("/var/lib/cni/flannel/node-2-pod-1").exists());
    let veths = lab
        .run("node-2", &["ip", "-o", "link", "show", "master", "cni0"])
        .unwrap();
    assert_eq!(veths.lines().count(), 1, "{veths}");
    matrix_ok(&lab);
}

/// Accepts one TCP connection on the port and prints how many bytes came
/// and their SHA-256.
const SINK: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(60)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
"#;

/// Sends `argv[3]` MiB of seeded pseudo-random bytes to `argv[1]:argv[2]`
/// and prints how many and their SHA-256.
const SOURCE: &str = r#"
import hashlib, random, socket, sys
data = random.Random(7).randbytes(int(sys.argv[3]) << 20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(data)
c.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"#;

/// `mib` MiB from `from` to `to` over TCP; what the sink received must be
/// what the source sent, byte for byte.
fn bulk_transfer_intact(lab: &Lab, from: &PodRecord, to: &PodRecord, mib: u32) {
    let mut sink = lab.node_command(&to.node, "ip").unwrap();
    let mut child = sink
        .args([
            "netns", "exec", &to.name, "python3", "-u", "-c", SINK, "7070",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let sent = lab
        .pod_cmd(
            from,
            &[
                "python3",
                "-c",
                SOURCE,
                &to.ip.to_string(),
                "7070",
                &mib.to_string(),
            ],
        )
        .unwrap();
    let sent = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = child.wait();
    assert!(
        sent.starts_with(&format!("{} ", mib << 20)),
        "source: {sent}"
    );
    assert_eq!(line.trim(), sent, "{} -> {}", from.name, to.name);
}

/// `--udp-offload=false` on one node: that node moves one packet per
/// system call (its TUN device without the virtio-net header, as flannel's
/// is) and still exchanges traffic with a node whose super-packets are cut
/// into segments and whose received segments are coalesced: every segment
/// crosses with valid checksums (the plain node's kernel checks each one)
/// and bulk transfers arrive intact both ways.
#[test]
fn udp_backend_with_and_without_offload_interoperate() {
    let cfg = LabConfig {
        backend: Backend::Udp,
        ..LabConfig::with_weftd(&unique_name("udpplain"), 2)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    lab.set_weftd_args("node-2", &["--udp-offload=false"])
        .unwrap();
    lab.stop_weftd("node-2", Signal::SIGTERM).unwrap();
    lab.start_weftd("node-2").unwrap();
    lab.wait_weftd_ready(&["node-2"], Duration::from_secs(30))
        .unwrap();
    let vnet = |node: &str| {
        lab.run(node, &["ip", "-d", "link", "show", "flannel0"])
            .unwrap()
    };
    assert!(vnet("node-1").contains("vnet_hdr on"), "{}", vnet("node-1"));
    assert!(
        vnet("node-2").contains("vnet_hdr off"),
        "{}",
        vnet("node-2")
    );
    for n in ["node-1", "node-2"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    matrix_ok(&lab);
    let (p1, p2) = (
        lab.pod("node-1-pod").unwrap().clone(),
        lab.pod("node-2-pod").unwrap().clone(),
    );
    bulk_transfer_intact(&lab, &p1, &p2, 64);
    bulk_transfer_intact(&lab, &p2, &p1, 64);
    for n in ["node-1", "node-2"] {
        assert_eq!(
            metric(
                &lab,
                n,
                "weft_udp_dropped_packets_total{reason=\"malformed\"}"
            ),
            0,
            "{n}"
        );
    }
}

/// flannel's udp nodes publish no backend type (`""`) and `null` data
/// (`../shared/reference/flannel.md`, the annotations table): a node whose
/// annotations are byte for byte those is a udp peer, and pods reach it.
#[test]
fn a_node_with_flannels_exact_udp_annotations_is_a_udp_peer() {
    use weft_lab::probe::{metric, within};
    let lab = udp_lab("udpflannel");
    let ip3 = lab.node("node-3").unwrap().underlay_ip.to_string();
    let events = |node: &str| metric(&lab, node, "weft_node_events_total").unwrap();
    let before: Vec<f64> = ["node-1", "node-2"].iter().map(|n| events(n)).collect();
    const P: &str = "flannel.alpha.coreos.com";
    lab.annotate_node(
        "node-3",
        &[
            (&format!("{P}/backend-type"), ""),
            (&format!("{P}/backend-data"), "null"),
            (&format!("{P}/kube-subnet-manager"), "true"),
            (&format!("{P}/public-ip"), &ip3),
        ],
    )
    .unwrap();
    let node3 = lab
        .kubectl()
        .args([
            "get",
            "node",
            "node-3",
            "-o",
            "jsonpath={.metadata.annotations}",
        ])
        .output()
        .unwrap();
    let ann: serde_json::Value = serde_json::from_slice(&node3.stdout).unwrap();
    assert_eq!(ann[format!("{P}/backend-type")], "", "{ann}");
    assert_eq!(ann[format!("{P}/backend-data")], "null", "{ann}");
    for (node, before) in ["node-1", "node-2"].iter().zip(before) {
        within(Duration::from_secs(2), "the change seen", || {
            events(node) > before
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            metric(
                &lab,
                node,
                "weft_skipped_peers{reason=\"other_backend_type\"}"
            ),
            Some(0.0),
            "{node} takes flannel's udp node as a peer"
        );
        assert_eq!(metric(&lab, node, "weft_peers{family=\"ipv4\"}"), Some(2.0));
    }
    matrix_ok(&lab);
}
