//! `weft-lab bench real-nodes`: weft on real nodes (kubelet, containerd,
//! kube-proxy), timed as a user meets it: `kubectl apply` of the manifest
//! until a Ready weft pod runs on every node, a Deployment until all its
//! pods run with an IP, a rolling update of weft's DaemonSet with the
//! packets a pod-to-pod ping loses meanwhile, and what each node's
//! processes cost in memory and CPU.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::lab::{Lab, LabConfig, LabError};

/// One node's processes, by kind: resident memory (MiB) and CPU over an
/// idle interval (% of one core).
#[derive(Debug, Clone, Serialize)]
pub struct NodeCost {
    pub node: String,
    pub containerd_mib: f64,
    pub shims_mib: f64,
    pub kubelet_mib: f64,
    pub kube_proxy_mib: f64,
    pub weftd_mib: f64,
    pub idle_cpu_percent: f64,
    /// (kind, % of one core) over the idle interval.
    pub cpu_by_kind: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealReport {
    pub nodes: usize,
    /// Lab start until every kubelet registered its Node with a podCIDR
    /// and weft was rolled out (includes the apply below).
    pub up_seconds: f64,
    /// `kubectl apply -f manifests/weft.yaml` until a Ready weft pod on
    /// every node and every Node Ready with NetworkUnavailable False.
    pub apply_to_ready_seconds: f64,
    pub deployment_pods: usize,
    /// `kubectl apply` of the Deployment until every pod Running with an IP.
    pub deployment_seconds: f64,
    /// `kubectl rollout restart` of weft's DaemonSet until rolled out.
    pub rollout_seconds: f64,
    pub rollout_ping_sent: u64,
    pub rollout_ping_lost: u64,
    pub idle_seconds: f64,
    pub per_node: Vec<NodeCost>,
}

/// The kind of a node process, from its command name.
fn kind(pid: i32) -> &'static str {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match comm.trim() {
        "containerd" => "containerd",
        c if c.starts_with("containerd-shim") => "shims",
        "kubelet" => "kubelet",
        "kube-proxy" => "kube-proxy",
        "weftd" => "weftd",
        _ => "other",
    }
}

/// Measures one node's processes (those in its network namespace) over
/// `idle`.
fn node_cost(lab: &Lab, node: &str, idle: Duration) -> Result<NodeCost, LabError> {
    let ns = lab.node(node)?.netns.clone();
    let pids = crate::netns::pids(&ns);
    let cpu0: Vec<(i32, f64)> = pids
        .iter()
        .map(|&p| (p, crate::bench::cpu_seconds(p as u32)))
        .collect();
    std::thread::sleep(idle);
    let mut mib = std::collections::BTreeMap::<&str, f64>::new();
    let mut cpu = std::collections::BTreeMap::<&str, f64>::new();
    for (p, c0) in cpu0 {
        if !crate::procs::alive(p) {
            continue;
        }
        let k = kind(p);
        *mib.entry(k).or_default() += crate::bench::rss_mb(p as u32).0;
        *cpu.entry(k).or_default() +=
            (crate::bench::cpu_seconds(p as u32) - c0) / idle.as_secs_f64() * 100.0;
    }
    let m = |k: &str| mib.get(k).copied().unwrap_or(0.0);
    Ok(NodeCost {
        node: node.to_string(),
        containerd_mib: m("containerd"),
        shims_mib: m("shims"),
        kubelet_mib: m("kubelet"),
        kube_proxy_mib: m("kube-proxy"),
        weftd_mib: m("weftd"),
        idle_cpu_percent: cpu.values().sum(),
        cpu_by_kind: cpu.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    })
}

/// Runs the benchmark on a fresh real-node lab named `name`.
pub fn run(name: &str, nodes: usize, pods: usize, idle: Duration) -> Result<RealReport, LabError> {
    let t0 = Instant::now();
    let cfg = LabConfig {
        kubelet: true,
        verbose: true,
        ..LabConfig::new(name, nodes)
    };
    let lab = Lab::up(&cfg)?;
    let up_seconds = t0.elapsed().as_secs_f64();
    let apply_to_ready_seconds = lab.state.weft_rollout_seconds.unwrap_or(f64::NAN);

    let t = Instant::now();
    let running = lab.deploy_workload(pods)?;
    let deployment_seconds = t.elapsed().as_secs_f64();

    let a = running
        .iter()
        .find(|p| p.node == "node-1")
        .ok_or_else(|| no_pod("node-1"))?;
    let b = running
        .iter()
        .find(|p| p.node == "node-2")
        .ok_or_else(|| no_pod("node-2"))?;
    let pinger = lab.start_ping(a, b.ip)?;
    std::thread::sleep(Duration::from_secs(2));
    let rollout_seconds = lab.restart_weft()?;
    std::thread::sleep(Duration::from_secs(2));
    let count = pinger.finish(&lab)?;

    let per_node = lab
        .state
        .nodes
        .iter()
        .map(|n| node_cost(&lab, &n.name, idle))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RealReport {
        nodes,
        up_seconds,
        apply_to_ready_seconds,
        deployment_pods: pods,
        deployment_seconds,
        rollout_seconds,
        rollout_ping_sent: count.sent,
        rollout_ping_lost: count.lost,
        idle_seconds: idle.as_secs_f64(),
        per_node,
    })
}

fn no_pod(node: &str) -> LabError {
    LabError::Container {
        node: node.to_string(),
        reason: "no workload pod ran there".into(),
    }
}

impl RealReport {
    /// Bars: each node's memory by component, and the seconds each step
    /// took.
    pub fn plot(&self, path: &std::path::Path) -> Result<(), crate::plot::PlotError> {
        let memory = crate::plot::Bars {
            title: "RSS per node".into(),
            y_label: "MiB".into(),
            groups: self
                .per_node
                .iter()
                .map(|n| {
                    (
                        n.node.clone(),
                        vec![
                            ("containerd".into(), n.containerd_mib),
                            ("shims".into(), n.shims_mib),
                            ("kubelet".into(), n.kubelet_mib),
                            ("kube-proxy".into(), n.kube_proxy_mib),
                            ("weftd".into(), n.weftd_mib),
                        ],
                    )
                })
                .collect(),
        };
        let steps = crate::plot::Bars {
            title: "seconds".into(),
            y_label: "s".into(),
            groups: vec![
                ("lab up".into(), vec![("".into(), self.up_seconds)]),
                (
                    "apply -> Ready".into(),
                    vec![("".into(), self.apply_to_ready_seconds)],
                ),
                (
                    format!("{} pods Running", self.deployment_pods),
                    vec![("".into(), self.deployment_seconds)],
                ),
                ("rollout".into(), vec![("".into(), self.rollout_seconds)]),
            ],
        };
        crate::plot::bars(
            path,
            &format!(
                "weft on {} real nodes (kubelet, containerd, kube-proxy); rollout: {} of {} pings lost",
                self.nodes, self.rollout_ping_lost, self.rollout_ping_sent
            ),
            &[steps, memory],
        )
    }

    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "weft on {} real nodes (kubelet, containerd, kube-proxy)",
            self.nodes
        )?;
        writeln!(out, "{:<58} {:>10}", "", "seconds")?;
        for (what, v) in [
            (
                "lab up: nodes registered, weft applied and rolled out",
                self.up_seconds,
            ),
            (
                "kubectl apply weft -> Ready on every node",
                self.apply_to_ready_seconds,
            ),
            (
                &*format!(
                    "Deployment of {} pods -> all Running with an IP",
                    self.deployment_pods
                ),
                self.deployment_seconds,
            ),
            ("rolling update of weft's DaemonSet", self.rollout_seconds),
        ] {
            writeln!(out, "{what:<58} {v:>10.1}")?;
        }
        writeln!(
            out,
            "ping at 100/s across nodes during the rolling update: {} sent, {} lost",
            self.rollout_ping_sent, self.rollout_ping_lost
        )?;
        writeln!(
            out,
            "\nper node, RSS in MiB and CPU over {:.0} s idle:",
            self.idle_seconds
        )?;
        writeln!(
            out,
            "{:<8} {:>10} {:>8} {:>8} {:>10} {:>7} {:>9}",
            "NODE", "containerd", "shims", "kubelet", "kube-proxy", "weftd", "CPU %"
        )?;
        for n in &self.per_node {
            writeln!(
                out,
                "{:<8} {:>10.1} {:>8.1} {:>8.1} {:>10.1} {:>7.1} {:>9.2}",
                n.node,
                n.containerd_mib,
                n.shims_mib,
                n.kubelet_mib,
                n.kube_proxy_mib,
                n.weftd_mib,
                n.idle_cpu_percent
            )?;
        }
        Ok(())
    }
}
