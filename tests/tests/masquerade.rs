//! weft's nftables table on a 3-node lab (VXLAN, `--ip-masq`, pods from the
//! conflist): masquerade toward the outside host, pod addresses kept between
//! pods, kube-proxy's mark honoured, forged VXLAN from a non-peer dropped and
//! counted, a flushed ruleset restored within the resync interval, and
//! `weftd cleanup` leaving nothing behind.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use weft_lab::lab::OUTSIDE_IP;
use weft_lab::packets::SEND_PY;
use weft_lab::runtime::PodRecord;
use weft_lab::{Lab, LabConfig, unique_name};

/// Prints "<source address> <payload>" per datagram and answers it.
const SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(30)
print("listening", flush=True)
try:
    while True:
        data, addr = s.recvfrom(65535)
        print(addr[0], data.decode(errors="replace"), flush=True)
        s.sendto(b"reply " + data, addr)
except socket.timeout:
    pass
"#;

/// Sends one datagram; succeeds when the answer comes back.
const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(65535)[0].decode())
except socket.timeout:
    sys.exit(1)
"#;

const PORT: &str = "7777";

struct Server {
    child: Child,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .args(["-u", "-c", SERVER, PORT])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        Server { child }
    }

    /// (source, payload) of every datagram received.
    fn finish(mut self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }
}

fn python_in_pod(lab: &Lab, pod: &PodRecord) -> Command {
    let mut c = lab.node_command(&pod.node, "ip").unwrap();
    c.args(["netns", "exec", &pod.name, "python3"]);
    c
}

/// Sends `text` from `pod` to `ip`; whether the reply came back.
fn send_from(lab: &Lab, pod: &PodRecord, ip: &str, text: &str) -> bool {
    let out = lab
        .pod_cmd(pod, &["python3", "-c", CLIENT, ip, PORT, text])
        .unwrap();
    out.status.success()
}

/// What the outside host sees of one datagram from `pod`, and whether the
/// pod got the answer.
fn from_pod_to_outside(lab: &Lab, pod: &PodRecord, text: &str) -> (Vec<(String, String)>, bool) {
    let server = Server::start(lab.outside_command("python3"));
    let answered = send_from(lab, pod, &OUTSIDE_IP.to_string(), text);
    (server.finish(), answered)
}

fn lab_with_pods(tag: &str) -> Lab {
    let mut lab = Lab::up(&LabConfig::with_weftd(&unique_name(tag), 3)).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    lab
}

/// Whether `node` has a link called `name`.
fn has_link(lab: &Lab, node: &str, name: &str) -> bool {
    lab.exec(node, &["ip", "link", "show", name])
        .unwrap()
        .status
        .success()
}

fn underlay_ip(lab: &Lab, node: &str) -> String {
    lab.node(node).unwrap().underlay_ip.to_string()
}

fn input_drops(lab: &Lab, node: &str) -> u64 {
    let text = lab
        .run(node, &["nft", "list", "chain", "inet", "weft", "input"])
        .unwrap();
    text.lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A weftd metric without labels; panics when it is missing (a missing
/// metric must never read as a number a comparison can pass with).
fn metric(lab: &Lab, node: &str, name: &str) -> f64 {
    weft_lab::probe::metric(lab, node, &format!("{name} "))
        .unwrap_or_else(|| panic!("{node} exports no {name}"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

#[test]
fn masquerade_to_the_outside_pod_addresses_between_pods_and_forged_vxlan_dropped() {
    let lab = lab_with_pods("masq");
    // weftd runs with the DaemonSet's privileges: CAP_NET_ADMIN (bit 12) only.
    let pid = lab.node("node-1").unwrap().weftd_pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        assert!(line.ends_with("0000000000001000"), "{line}");
    }
    let p1 = lab.pod("node-1-pod").unwrap().clone();
    let p2 = lab.pod("node-2-pod").unwrap().clone();

    // To the outside: the node's underlay address, and the answer comes back.
    let (seen, answered) = from_pod_to_outside(&lab, &p1, "to-outside");
    assert_eq!(
        seen,
        vec![(underlay_ip(&lab, "node-1"), "to-outside".into())]
    );
    assert!(answered, "the outside host's answer reaches the pod");

    // Pod to pod across nodes: the receiver sees the sender's own address.
    let server = Server::start(python_in_pod(&lab, &p2));
    assert!(send_from(&lab, &p1, &p2.ip.to_string(), "pod-to-pod"));
    assert_eq!(
        server.finish(),
        vec![(p1.ip.to_string(), "pod-to-pod".into())]
    );

    // Marked 0x4000 (as kube-proxy marks what it wants masqueraded itself):
    // weft leaves it alone, so the outside sees the pod's address.
    lab.run(
        "node-1",
        &[
            "nft",
            "add table ip marktest; \
             add chain ip marktest pre { type filter hook prerouting priority -150; }; \
             add rule ip marktest pre ip daddr 203.0.113.10 meta mark set 0x4000",
        ],
    )
    .unwrap();
    let (seen, _) = from_pod_to_outside(&lab, &p1, "marked");
    assert_eq!(seen, vec![(p1.ip.to_string(), "marked".into())]);
    lab.run("node-1", &["nft", "delete", "table", "ip", "marktest"])
        .unwrap();

    // Forged VXLAN: an inner datagram "from node-2's pod network" to p1.
    let mac = {
        let j: serde_json::Value = serde_json::from_str(
            &lab.run("node-1", &["ip", "-j", "link", "show", "flannel.1"])
                .unwrap(),
        )
        .unwrap();
        j[0]["address"].as_str().unwrap().to_string()
    };
    let fake_src = {
        let o = p2.ip.to_string();
        let mut parts: Vec<&str> = o.split('.').collect();
        parts[3] = "250";
        parts.join(".")
    };
    let forge = |from: &mut Command, text: &str| {
        let st = from
            .args(["-c", SEND_PY, &underlay_ip(&lab, "node-1"), "8472"])
            .args([
                &format!("vxlan:{mac}"),
                &fake_src,
                &p1.ip.to_string(),
                PORT,
                text,
            ])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let before = input_drops(&lab, "node-1");
    let metric_before = metric(&lab, "node-1", "weft_allowlist_dropped_packets_total");
    let server = Server::start(python_in_pod(&lab, &p1));
    forge(&mut lab.outside_command("python3"), "forged-from-outside");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        input_drops(&lab, "node-1"),
        before + 1,
        "the drop is counted"
    );
    forge(
        &mut lab.node_command("node-2", "python3").unwrap(),
        "from-a-peer",
    );
    let got = server.finish();
    assert_eq!(
        got,
        vec![(fake_src.clone(), "from-a-peer".into())],
        "only the peer's packet reaches the pod"
    );
    // weftd reads the counter on its next rules resync (10 s).
    wait_for(
        "the drop in weft_allowlist_dropped_packets_total",
        Duration::from_secs(15),
        || metric(&lab, "node-1", "weft_allowlist_dropped_packets_total") >= metric_before + 1.0,
    );
}

#[test]
fn a_flushed_ruleset_is_restored_within_the_resync_interval_and_cleanup_leaves_nothing() {
    let mut lab = lab_with_pods("nftflush");
    let p1 = lab.pod("node-1-pod").unwrap().clone();
    let expected = lab
        .run("node-1", &["nft", "list", "table", "inet", "weft"])
        .unwrap();

    lab.flush_rules("node-1").unwrap();
    // weftd reads its table back every 10 s (--rules-resync-seconds): the
    // flush is undone at the next reading, within one interval (plus our
    // own looks, every 100 ms, and the reading itself).
    let took = wait_for("the table restored", Duration::from_millis(10_500), || {
        lab.exec("node-1", &["nft", "list", "table", "inet", "weft"])
            .is_ok_and(|o| o.status.success())
    });
    eprintln!("table restored {took:?} after `nft flush ruleset`");
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.split(" packets ").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    let now = lab
        .run("node-1", &["nft", "list", "table", "inet", "weft"])
        .unwrap();
    assert_eq!(strip(&now), strip(&expected));
    assert_eq!(metric(&lab, "node-1", "weft_nft_restorations_total"), 1.0);
    let (seen, answered) = from_pod_to_outside(&lab, &p1, "after-flush");
    assert_eq!(
        seen,
        vec![(underlay_ip(&lab, "node-1"), "after-flush".into())]
    );
    assert!(answered);

    // Uninstall on node-3: weftd stopped, then `weftd cleanup`.
    lab.stop_weftd("node-3", Signal::SIGTERM).unwrap();
    let weftd = weft_lab::weftd::find_weftd().unwrap();
    lab.run("node-3", &[weftd.to_str().unwrap(), "cleanup"])
        .unwrap();
    let tables = lab.run("node-3", &["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("weft"), "{tables}");
    assert!(!has_link(&lab, "node-3", "flannel.1"), "the device is gone");
    let conflist = "/etc/cni/net.d/10-weft.conflist";
    let (subnet_env, conflist_path) = {
        let n3 = lab.node("node-3").unwrap();
        (
            n3.host_path("/run/flannel/subnet.env"),
            n3.host_path(conflist),
        )
    };
    assert!(!subnet_env.exists(), "subnet.env is gone");
    // node-3's pod is still wired by weft: the conflist stays so that the
    // runtime can still tear it down.
    assert!(
        conflist_path.exists(),
        "{conflist} kept while a pod is wired"
    );
    lab.del_pod("node-3", "node-3-pod").unwrap();
    lab.run("node-3", &[weftd.to_str().unwrap(), "cleanup"])
        .unwrap();
    assert!(
        !conflist_path.exists(),
        "{conflist} is gone with the last pod"
    );
    assert!(
        !has_link(&lab, "node-3", "cni0"),
        "the unused bridge is gone"
    );
    // Another cleanup finds nothing and still succeeds.
    lab.run("node-3", &[weftd.to_str().unwrap(), "cleanup"])
        .unwrap();
}
