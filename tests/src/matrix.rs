//! The fault matrix: faults injected one after another into a running VXLAN
//! lab whose pods ping each other across nodes (100 packets/s per pair),
//! each judged on three things: recovered (every node's kernel equals what
//! the API prescribes, [`Lab::drift_all`]), the time it took, and the pod
//! packets lost.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pods::Pod;
use crate::probe::{Loss, Pinger};
use crate::{Lab, LabConfig, LabError};

/// The faults, in the order the matrix runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kube-apiserver stopped, then started.
    ApiserverDown,
    /// One node cut off from the API server while a node joins and one
    /// leaves, then healed.
    Partition,
    /// Nodes change and etcd is compacted while one weftd is frozen and
    /// the API server restarts: its watch comes back 410 Gone.
    WatchExpired,
    /// weftd's ClusterRoleBinding deleted, then restored.
    RbacRevoked,
    /// weftd SIGKILLed and started again.
    WeftdKilled,
    /// weftd SIGKILLed in the middle of its first list of many Nodes,
    /// started again.
    KilledMidList,
    /// weftd started with many Nodes in a memory cgroup limited to the
    /// chart's memory request (flannel's old limit).
    MemoryLimit,
    /// A second weftd started on a node beside the running one.
    TwoWeftd,
    /// The underlay link down, then up.
    UnderlayDown,
    /// flannel.1's MAC changed by hand.
    VtepMac,
    /// flannel.1 recreated by hand with another VNI.
    Vni,
    /// Foreign routes inside the pod network: one on flannel.1, one on
    /// the underlay taking half of a peer's pod subnet.
    ForeignRoute,
    /// `nft flush ruleset`.
    RulesFlushed,
    /// `/run/flannel/subnet.env` deleted.
    SubnetEnvDeleted,
    /// `/etc/cni/net.d/10-weft.conflist` deleted.
    ConflistDeleted,
    /// `/opt/cni/bin/weft` overwritten with garbage.
    PluginGarbage,
    /// The underlay's MTU lowered to 1400.
    MtuLowered,
    /// The underlay address changed (and the Node's InternalIP with it).
    AddressChanged,
    /// 50 pods added and deleted at once through a delegate that fails one
    /// call in five; then an ADD on a full `/var/lib/cni`.
    CniChurn,
}

impl Fault {
    pub const ALL: [Fault; 19] = [
        Fault::ApiserverDown,
        Fault::Partition,
        Fault::WatchExpired,
        Fault::RbacRevoked,
        Fault::WeftdKilled,
        Fault::KilledMidList,
        Fault::MemoryLimit,
        Fault::TwoWeftd,
        Fault::UnderlayDown,
        Fault::VtepMac,
        Fault::Vni,
        Fault::ForeignRoute,
        Fault::RulesFlushed,
        Fault::SubnetEnvDeleted,
        Fault::ConflistDeleted,
        Fault::PluginGarbage,
        Fault::MtuLowered,
        Fault::AddressChanged,
        Fault::CniChurn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ApiserverDown => "apiserver-down",
            Fault::Partition => "partition",
            Fault::WatchExpired => "watch-expired",
            Fault::RbacRevoked => "rbac-revoked",
            Fault::WeftdKilled => "weftd-killed",
            Fault::KilledMidList => "killed-mid-list",
            Fault::MemoryLimit => "memory-limit",
            Fault::TwoWeftd => "two-weftd",
            Fault::UnderlayDown => "underlay-down",
            Fault::VtepMac => "vtep-mac",
            Fault::Vni => "vni",
            Fault::ForeignRoute => "foreign-route",
            Fault::RulesFlushed => "rules-flushed",
            Fault::SubnetEnvDeleted => "subnet-env-deleted",
            Fault::ConflistDeleted => "conflist-deleted",
            Fault::PluginGarbage => "plugin-garbage",
            Fault::MtuLowered => "mtu-lowered",
            Fault::AddressChanged => "address-changed",
            Fault::CniChurn => "cni-churn",
        }
    }

    /// The fault as injected, with its durations.
    pub fn describe(self, d: &Durations) -> String {
        let (outage, rbac, link) = (d.outage.as_secs(), d.rbac.as_secs(), d.link.as_secs());
        match self {
            Fault::ApiserverDown => format!("kube-apiserver stopped {outage} s, then started"),
            Fault::Partition => format!(
                "a node cut off from the API server {outage} s while a node joins and one leaves"
            ),
            Fault::WatchExpired => "a node joins and one leaves, etcd is compacted and kube-apiserver restarted while a weftd is frozen".into(),
            Fault::RbacRevoked => format!("weftd's ClusterRoleBinding deleted for {rbac} s"),
            Fault::WeftdKilled => "weftd SIGKILLed, started again".into(),
            Fault::KilledMidList => format!(
                "{} Nodes created while weftd is stopped; weftd started, SIGKILLed in its first list, started again",
                d.nodes
            ),
            Fault::MemoryLimit => format!(
                "{} Nodes created while weftd is stopped; weftd started in a memory cgroup limited to {MEMORY_LIMIT_MIB} MiB",
                d.nodes
            ),
            Fault::TwoWeftd => "a second weftd started beside the running one".into(),
            Fault::UnderlayDown => format!("the underlay link down {link} s, then up"),
            Fault::VtepMac => "flannel.1's MAC changed by hand".into(),
            Fault::Vni => "flannel.1 recreated by hand with VNI 2".into(),
            Fault::ForeignRoute => "routes added by hand inside the pod network: an unused /24 on flannel.1, half of a peer's pod subnet on eth0".into(),
            Fault::RulesFlushed => "`nft flush ruleset`".into(),
            Fault::SubnetEnvDeleted => "/run/flannel/subnet.env deleted".into(),
            Fault::ConflistDeleted => "/etc/cni/net.d/10-weft.conflist deleted".into(),
            Fault::PluginGarbage => "/opt/cni/bin/weft overwritten with 4 KiB of garbage".into(),
            Fault::MtuLowered => "the underlay MTU lowered from 1500 to 1400".into(),
            Fault::AddressChanged => "the underlay address changed, the Node's InternalIP with it".into(),
            Fault::CniChurn => "50 concurrent pod ADD+DEL, the delegate failing one call in five; an ADD on a full /var/lib/cni".into(),
        }
    }

    /// Whether the fault leaves the data plane alone, so that no pod packet
    /// may be lost.
    pub fn data_plane_untouched(self) -> bool {
        !matches!(
            self,
            Fault::UnderlayDown
                | Fault::VtepMac
                | Fault::Vni
                | Fault::AddressChanged
                | Fault::ForeignRoute
        )
    }
}

/// How long the lasting faults last.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Durations {
    #[serde(serialize_with = "secs")]
    pub outage: Duration,
    #[serde(serialize_with = "secs")]
    pub rbac: Duration,
    #[serde(serialize_with = "secs")]
    pub link: Duration,
    /// Nodes in the cluster for the kill in the middle of a list.
    pub nodes: usize,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Durations {
    /// The issue's figures: a 60 s outage or partition, RBAC gone 30 s,
    /// the link down 10 s, 5000 Nodes.
    pub const FULL: Durations = Durations {
        outage: Duration::from_secs(60),
        rbac: Duration::from_secs(30),
        link: Duration::from_secs(10),
        nodes: 5000,
    };
    /// Short enough for CI.
    pub const QUICK: Durations = Durations {
        outage: Duration::from_secs(10),
        rbac: Duration::from_secs(8),
        link: Duration::from_secs(3),
        nodes: 1000,
    };
}

/// One row of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub fault: Fault,
    pub injected: String,
    /// Every node's kernel equal to the desired state again.
    pub recovered: bool,
    /// From the end of the fault (or its injection, for a fault weftd
    /// must undo itself) to the first converged read.
    pub recover_seconds: Option<f64>,
    /// Then a node joins (and is ready) and one leaves: from the leave to
    /// every node holding the new set. weftd follows the API again.
    pub follow_seconds: Option<f64>,
    pub packets: Loss,
    /// The differences still there when the wait gave up.
    pub drift: Vec<String>,
    /// What else was seen (which weftd won, what weftd logged).
    pub notes: Vec<String>,
}

impl Row {
    /// Recovered, and no packet lost where the data plane was not touched.
    pub fn passed(&self) -> bool {
        self.recovered && (!self.fault.data_plane_untouched() || self.packets.lost == 0)
    }
}

/// The matrix's net-conf.json: VXLAN over the bench's Network.
fn net_conf() -> String {
    format!(
        r#"{{"Network":"{}","Backend":{{"Type":"vxlan"}}}}"#,
        crate::bench::NETWORK
    )
}

/// How long recovery is waited for.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// The memory limit weftd runs under in the memory-limit row: the chart's
/// memory request (kube-flannel.yml once set it as the limit).
pub const MEMORY_LIMIT_MIB: u64 = 50;

/// weftd's arguments in the matrix, as the chart gives them: the conflist
/// written once ready and kept, and the plugin kept installed.
fn keep_cni_args() -> Result<Vec<String>, LabError> {
    let weftd = crate::weftd::find_weftd()?;
    let plugin = crate::weftd::find_plugin(&weftd)?;
    Ok(vec![
        "--cni-conf-dir=/etc/cni/net.d".into(),
        "--cni-bin-dir=/opt/cni/bin".into(),
        "--cni-delegate-dir=/usr/lib/cni".into(),
        format!("--cni-plugin={}", plugin.display()),
    ])
}

/// The matrix's lab: three nodes with a pod each, pinging round the ring,
/// and a spare node without pods for the churn.
pub struct Matrix {
    pub lab: Lab,
    pods: Vec<Pod>,
    spare: String,
    /// The longest judgement read of the row, when one was slow.
    slow_reads: std::cell::Cell<Duration>,
    /// The memory cgroup of the memory-limit row, while it runs.
    mem_cgroup: Option<std::path::PathBuf>,
}

impl Matrix {
    pub fn up(name: &str) -> Result<Matrix, LabError> {
        let mut lab = Lab::up(&LabConfig::with_weftd(name, 3))?;
        let nodes: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
        // A Network wide enough for thousands of Nodes (flannel's default
        // /16 holds 256), which the lab's podCIDRs lie in.
        let keep = keep_cni_args()?;
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        for n in &nodes {
            lab.set_node(n, |s| s.net_conf = Some(net_conf()))?;
            lab.set_weftd_args(n, &keep)?;
            lab.restart_weftd(n, Duration::from_secs(30))?;
        }
        let pods = nodes
            .iter()
            .map(|n| lab.add_plain_pod(n, &format!("pod-{n}"), 2))
            .collect::<Result<Vec<_>, _>>()?;
        let mut m = Matrix {
            lab,
            pods,
            spare: String::new(),
            slow_reads: std::cell::Cell::new(Duration::ZERO),
            mem_cgroup: None,
        };
        m.spare = m.join()?;
        Ok(m)
    }

    /// A node joins and the spare leaves; the joined one is the new spare.
    /// (joined, left).
    fn churn(&mut self) -> Result<(String, String), LabError> {
        let joined = self.join()?;
        let left = std::mem::replace(&mut self.spare, joined.clone());
        self.lab.remove_node(&left)?;
        Ok((joined, left))
    }

    /// A node joins with the matrix's Network: its Node, then its agent,
    /// waited for until ready.
    fn join(&mut self) -> Result<String, LabError> {
        let name = self.lab.add_node(true)?.name;
        self.lab
            .set_node(&name, |s| s.net_conf = Some(net_conf()))?;
        let keep = keep_cni_args()?;
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        self.lab.set_weftd_args(&name, &keep)?;
        self.lab.start_weftd(&name)?;
        self.lab
            .wait_weftd_ready(&[&name], Duration::from_secs(30))?;
        Ok(name)
    }

    /// The node most faults hit: the second pod's.
    fn target(&self) -> String {
        self.pods[1].node.clone()
    }

    /// Runs one fault and judges it.
    pub fn run(&mut self, fault: Fault, d: &Durations) -> Result<Row, LabError> {
        let mut notes = Vec::new();
        // A converged start, or the row says what was off before.
        if let Err(drift) = self.converge(Duration::from_secs(30)) {
            return Ok(Row {
                fault,
                injected: fault.describe(d),
                recovered: false,
                recover_seconds: None,
                follow_seconds: None,
                packets: Loss::default(),
                drift: drift
                    .into_iter()
                    .map(|l| format!("before the fault: {l}"))
                    .collect(),
                notes,
            });
        }
        self.slow_reads.set(Duration::ZERO);
        let pingers = (0..self.pods.len())
            .map(|i| {
                let to = &self.pods[(i + 1) % self.pods.len()];
                Pinger::start(&self.lab, &self.pods[i], to)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let target = self.target();
        let log = self.lab.node(&target)?.dir.join("logs/weftd.log");
        let logged = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(500));
        let mut problems = Vec::new();
        let judged = self
            .inject(fault, d, &mut notes, &mut problems)
            .map(|healed| (healed, self.converge(RECOVERY_LIMIT)));
        // Pings go on a second after recovery: the data plane carries again.
        std::thread::sleep(Duration::from_secs(1));
        let names: Vec<String> = pingers
            .iter()
            .map(|p| format!("{} -> {}", p.from, p.to))
            .collect();
        let each: Vec<Loss> = pingers.into_iter().map(Pinger::stop).collect();
        let packets = Loss::total(&each);
        if packets.lost > 0 {
            let per: Vec<String> = names
                .iter()
                .zip(&each)
                .map(|(n, l)| {
                    format!(
                        "{n}: {} of {} lost, {} ms",
                        l.lost, l.sent, l.longest_gap_ms
                    )
                })
                .collect();
            notes.push(format!("per pair: {}", per.join("; ")));
        }
        let (mut recovered, recover_seconds, mut drift) = match judged {
            Ok((healed, Ok(at))) => (
                true,
                Some(at.saturating_duration_since(healed).as_secs_f64()),
                Vec::new(),
            ),
            Ok((_, Err(drift))) => (false, None, drift),
            Err(e) => {
                notes.push(format!("injecting the fault failed: {e}"));
                (false, None, Vec::new())
            }
        };
        notes.extend(complaints(&target, &log, logged));
        if fault == Fault::MemoryLimit {
            // Read with every Node programmed (or at the give-up), then
            // weftd leaves the cgroup.
            notes.push(self.memory_report(&target));
            if let Err(e) = self.release_mem_cgroup() {
                problems.push(format!("leaving the memory cgroup: {e}"));
            }
        }
        // Recovered means following the API again too: a node joins, the
        // spare leaves, and every node must follow.
        let mut follow_seconds = None;
        if recovered {
            self.churn()?;
            let t0 = Instant::now();
            let followed = self.converge(RECOVERY_LIMIT);
            if matches!(fault, Fault::KilledMidList | Fault::MemoryLimit) {
                if fault == Fault::KilledMidList {
                    notes.push(self.peak_rss(&target));
                }
                crate::bench::fill::drain_api(&self.lab)?;
                if let Err(d) = self.converge(RECOVERY_LIMIT) {
                    problems.extend(
                        d.into_iter()
                            .map(|l| format!("after the synthetic Nodes left: {l}")),
                    );
                }
            }
            match followed {
                Ok(at) => follow_seconds = Some(at.saturating_duration_since(t0).as_secs_f64()),
                Err(d) => {
                    recovered = false;
                    drift = d
                        .into_iter()
                        .map(|l| format!("after a node joined and one left: {l}"))
                        .collect();
                }
            }
        }
        if !recovered && matches!(fault, Fault::KilledMidList | Fault::MemoryLimit) {
            // The synthetic Nodes go either way: the next rows need a
            // small cluster.
            crate::bench::fill::drain_api(&self.lab)?;
        }
        if !problems.is_empty() {
            recovered = false;
            drift.extend(problems);
        }
        let slow = self.slow_reads.replace(Duration::ZERO);
        if !slow.is_zero() {
            notes.push(format!(
                "one read of every node took up to {:.2} s: the times are that coarse",
                slow.as_secs_f64()
            ));
        }
        Ok(Row {
            fault,
            injected: fault.describe(d),
            recovered,
            recover_seconds,
            follow_seconds,
            packets,
            drift,
            notes,
        })
    }

    /// `node`'s weftd's peak resident memory (VmHWM), in words.
    fn peak_rss(&self, node: &str) -> String {
        let pid = self
            .lab
            .node(node)
            .ok()
            .and_then(|n| n.weftd_pid)
            .unwrap_or(0);
        let (_, peak_mb) = crate::bench::rss_mb(pid);
        match (peak_mb > 0.0).then_some(peak_mb) {
            Some(mb) => format!(
                "weftd on {node}: peak RSS {mb:.1} MiB with every Node programmed ({} build; the chart requests 50Mi and sets no limit)",
                match crate::weftd::find_weftd() {
                    Ok(p) if p.to_string_lossy().contains("/debug/") => "debug",
                    Ok(_) => "release",
                    Err(_) => "unknown",
                }
            ),
            None => format!("weftd on {node}: peak RSS unreadable"),
        }
    }

    /// Stops weftd on `node` and fills the API with `d.nodes` Nodes while
    /// it is down (its next start lists them all at once).
    fn stop_and_fill(
        &mut self,
        node: &str,
        d: &Durations,
        notes: &mut Vec<String>,
    ) -> Result<(), LabError> {
        self.lab
            .stop_weftd(node, nix::sys::signal::Signal::SIGTERM)?;
        let t0 = Instant::now();
        crate::bench::fill::fill_api(&self.lab, 0..d.nodes)?;
        notes.push(format!(
            "{} Nodes created in {:.1} s",
            d.nodes,
            t0.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The memory cgroup's figures for weftd on `node`: peak usage against
    /// the limit, how often the limit was hit, OOM kills.
    fn memory_report(&self, node: &str) -> String {
        let Some(dir) = &self.mem_cgroup else {
            return "no memory cgroup".into();
        };
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|t| t.trim().to_string())
        };
        let num = |f: &str| read(f).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        let oom_kills = read("memory.oom_control")
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(str::to_string))
            })
            .unwrap_or_else(|| "?".into());
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rss = read("memory.stat")
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("total_rss ")
                        .and_then(|v| v.parse::<u64>().ok())
                })
            })
            .unwrap_or(0);
        format!(
            "weftd on {node} in a {MEMORY_LIMIT_MIB} MiB memory cgroup: peak {:.1} MiB charged (page cache included), {:.1} MiB anonymous now, limit hit {} times, {} OOM kills",
            mib(num("memory.max_usage_in_bytes")),
            mib(rss),
            num("memory.failcnt"),
            oom_kills
        )
    }

    /// Moves what is left in the memory cgroup back to the root and
    /// removes it.
    fn release_mem_cgroup(&mut self) -> Result<(), LabError> {
        let Some(dir) = self.mem_cgroup.take() else {
            return Ok(());
        };
        let root = dir.parent().map(|p| p.join("cgroup.procs"));
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines() {
            if let Some(root) = &root {
                let _ = std::fs::write(root, pid.trim());
            }
        }
        std::fs::remove_dir(&dir).map_err(|source| LabError::State { path: dir, source })
    }

    /// Polls the judgement until nothing differs; the moment of the first
    /// converged read, or the differences at the limit.
    /// A read takes ~0.1 s on a small lab and seconds with thousands of
    /// Nodes; one that takes longer than 0.5 s is said in `slow_reads`.
    fn converge(&self, limit: Duration) -> Result<Instant, Vec<String>> {
        let t0 = Instant::now();
        loop {
            let read = Instant::now();
            let drift = self.lab.drift_all();
            let took = read.elapsed();
            if took > Duration::from_millis(500) {
                self.slow_reads.set(self.slow_reads.get().max(took));
            }
            if drift.is_empty() {
                return Ok(Instant::now());
            }
            if t0.elapsed() > limit {
                return Err(drift);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Injects `fault`; returns once the fault is over (the moment it
    /// ended, from which recovery is timed).
    fn inject(
        &mut self,
        fault: Fault,
        d: &Durations,
        notes: &mut Vec<String>,
        problems: &mut Vec<String>,
    ) -> Result<Instant, LabError> {
        let node = self.target();
        match fault {
            Fault::ApiserverDown => {
                self.lab.stop_apiserver();
                std::thread::sleep(d.outage);
                self.lab.start_apiserver()?;
            }
            Fault::Partition => {
                self.lab.partition_from_apiserver(&node, true)?;
                let t0 = Instant::now();
                let (joined, left) = self.churn()?;
                notes.push(format!(
                    "{joined} joined and {left} left while {node} was cut off"
                ));
                std::thread::sleep(d.outage.saturating_sub(t0.elapsed()));
                // The cut is real: the node has not heard of the joined one.
                let all = self.lab.published()?;
                let cidr = all.get(&joined).map(|p| p.pod_cidr.clone());
                let unheard = self.lab.drift(&all, &node).iter().any(|l| {
                    cidr.as_ref()
                        .is_some_and(|c| l.contains(&format!("missing route {c}")))
                });
                notes.push(format!(
                    "before healing, {node} {} {joined}",
                    if unheard {
                        "had no route to"
                    } else {
                        "already had a route to"
                    }
                ));
                self.lab.partition_from_apiserver(&node, false)?;
            }
            Fault::WatchExpired => {
                self.lab.freeze_weftd(&node, true)?;
                self.churn()?;
                self.lab.stop_apiserver();
                // etcd moves on (other objects change) and is compacted: the
                // frozen weftd's resourceVersion is gone for good.
                for i in 0..3 {
                    self.lab
                        .etcdctl(&["put", "/weft-lab-fault/bump", &i.to_string()])?;
                }
                let status: serde_json::Value =
                    serde_json::from_str(&self.lab.etcdctl(&["endpoint", "status", "-w", "json"])?)
                        .map_err(|e| LabError::State {
                            path: "etcdctl endpoint status".into(),
                            source: std::io::Error::other(e),
                        })?;
                let revision = status[0]["Status"]["header"]["revision"]
                    .as_i64()
                    .unwrap_or(0);
                self.lab.etcdctl(&["compact", &revision.to_string()])?;
                self.lab.start_apiserver()?;
                self.lab.freeze_weftd(&node, false)?;
                notes.push(format!("etcd compacted at revision {revision}"));
            }
            Fault::RbacRevoked => {
                // A running watch was authorized when it began: weftd meets
                // the refusals when it starts, as after a node reboot.
                self.lab.revoke_rbac(true)?;
                let t0 = Instant::now();
                self.lab.kill_agent(&node)?;
                self.lab.start_weftd(&node)?;
                std::thread::sleep(d.rbac.saturating_sub(t0.elapsed()));
                self.lab.revoke_rbac(false)?;
            }
            Fault::WeftdKilled => {
                self.lab.kill_agent(&node)?;
                self.lab.start_weftd(&node)?;
            }
            Fault::KilledMidList => {
                self.stop_and_fill(&node, d, notes)?;
                self.lab.start_weftd(&node)?;
                // Killed once its first list has begun: a page seen.
                let t0 = Instant::now();
                let mut seen = 0.0;
                while t0.elapsed() < Duration::from_secs(30) {
                    match crate::probe::metric(&self.lab, &node, "weft_node_events_total") {
                        Some(n) if n > 0.0 => {
                            seen = n;
                            break;
                        }
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                self.lab.kill_agent(&node)?;
                notes.push(format!(
                    "weftd on {node} SIGKILLed after {seen} Node events of its first list ({} Nodes)",
                    self.lab.state.nodes.len() + d.nodes
                ));
                self.lab.start_weftd(&node)?;
            }
            Fault::MemoryLimit => {
                self.stop_and_fill(&node, d, notes)?;
                let cgroup = mem_cgroup(&self.lab.state.name, &node)?;
                self.mem_cgroup = Some(cgroup.clone());
                // Born there: this kernel moves no charges with a process.
                self.lab
                    .start_weftd_in(&node, Some(&cgroup.join("cgroup.procs")))?;
            }
            Fault::TwoWeftd => {
                let second = self.lab.start_second_weftd(&node)?;
                std::thread::sleep(Duration::from_secs(3));
                let first = self.lab.node(&node)?.weftd_pid.unwrap_or(0);
                let alive = |pid: u32| crate::procs::alive(pid as i32);
                notes.push(format!(
                    "after 3 s: first weftd {}, second {}; it said: {}",
                    if alive(first) { "running" } else { "gone" },
                    if alive(second) { "running" } else { "exited" },
                    self.lab.second_weftd_said(&node).trim()
                ));
                crate::procs::terminate(&[second as i32], Duration::from_secs(5));
            }
            Fault::UnderlayDown => {
                self.lab.set_underlay(&node, false)?;
                std::thread::sleep(d.link);
                self.lab.set_underlay(&node, true)?;
            }
            Fault::VtepMac => self.lab.set_vtep_mac(&node, "02:00:00:00:be:ef")?,
            Fault::ForeignRoute => {
                // The next pod's node: half of its pod subnet, where its
                // pod lives, sent to the hub over the underlay.
                let next = &self.pods[2 % self.pods.len()];
                let half =
                    ipnetwork::Ipv4Network::new(next.ip, 25).map_err(|e| LabError::State {
                        path: "the hijacked half".into(),
                        source: std::io::Error::other(e),
                    })?;
                let half = format!("{}/25", half.network());
                let hub = self.lab.state.hub_ip.to_string();
                self.lab.run(
                    &node,
                    &[
                        "ip",
                        "route",
                        "add",
                        "10.250.7.0/24",
                        "via",
                        "10.250.7.0",
                        "dev",
                        "flannel.1",
                        "onlink",
                    ],
                )?;
                self.lab.run(
                    &node,
                    &["ip", "route", "add", &half, "via", &hub, "dev", "eth0"],
                )?;
                notes.push(format!(
                    "on {node}: 10.250.7.0/24 via 10.250.7.0 dev flannel.1 onlink; {half} (where {} lives) via {hub} dev eth0",
                    next.name
                ));
            }
            Fault::Vni => {
                // weftd would recreate the deleted device before the hand
                // could: the edit happens while it is frozen, as if busy.
                self.lab.freeze_weftd(&node, true)?;
                let edited = self.lab.recreate_vxlan(&node, 2);
                self.lab.freeze_weftd(&node, false)?;
                edited?;
            }
            Fault::RulesFlushed => self.lab.flush_rules(&node)?,
            Fault::SubnetEnvDeleted => {
                self.lab.run(&node, &["rm", "/run/flannel/subnet.env"])?;
            }
            Fault::ConflistDeleted => {
                self.lab
                    .run(&node, &["rm", "/etc/cni/net.d/10-weft.conflist"])?;
            }
            Fault::PluginGarbage => {
                self.lab.run(
                    &node,
                    &["sh", "-c", "head -c 4096 /dev/urandom > /opt/cni/bin/weft"],
                )?;
            }
            Fault::MtuLowered => self.lab.set_underlay_mtu(&node, 1400)?,
            Fault::AddressChanged => {
                let old = self.lab.node(&node)?.underlay_ip;
                let new = std::net::Ipv4Addr::from(u32::from(old) + 100);
                self.lab.move_underlay_address(&node, new)?;
                notes.push(format!("{node} moved from {old} to {new}"));
            }
            Fault::CniChurn => crate::cni_faults::churn(&self.lab, &node, notes, problems)?,
        }
        Ok(Instant::now())
    }
}

/// What weftd on `node` warned about or logged as an error since byte
/// `from` of its log (how many lines, and the first few messages), and how
/// often it listed every Node again.
fn complaints(node: &str, log: &std::path::Path, from: u64) -> Vec<String> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let mut firsts: Vec<&str> = Vec::new();
    for l in &lines {
        // Past the timestamp: level, target and message.
        let m = l.split_once(' ').map_or(*l, |(_, m)| m).trim();
        if !firsts.contains(&m) && firsts.len() < 2 {
            firsts.push(m);
        }
    }
    let relists = text.matches("listing every Node again").count();
    let mut said = Vec::new();
    if relists > 0 {
        said.push(format!(
            "weftd on {node} listed every Node again {relists} time(s)"
        ));
    }
    if !lines.is_empty() {
        said.push(format!(
            "weftd on {node} logged {} warnings/errors, first: {}",
            lines.len(),
            firsts.join(" | ")
        ));
    }
    said
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<20} {:<9} {:>9} {:>8} {:>8} {:>6} {:>7}  {}\n",
        "FAULT", "RECOVERED", "SECONDS", "FOLLOW s", "SENT", "LOST", "GAP ms", "RESULT"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<20} {:<9} {:>9} {:>8} {:>8} {:>6} {:>7}  {}\n",
            r.fault.name(),
            if r.recovered { "yes" } else { "NO" },
            r.recover_seconds
                .map(|t| format!("{t:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.follow_seconds
                .map(|t| format!("{t:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.packets.sent,
            r.packets.lost,
            r.packets.longest_gap_ms,
            if r.passed() { "pass" } else { "FAIL" }
        ));
        for n in &r.notes {
            s.push_str(&format!("    note: {n}\n"));
        }
        for l in r.drift.iter().take(10) {
            s.push_str(&format!("    drift: {l}\n"));
        }
    }
    s
}

/// A memory cgroup for weftd on `node`, limited to [`MEMORY_LIMIT_MIB`];
/// named like the real nodes' cgroups so
/// that the lab's teardown removes it after a failure.
fn mem_cgroup(lab: &str, node: &str) -> Result<std::path::PathBuf, LabError> {
    let hierarchy = crate::real::cgroup_hierarchies()
        .into_iter()
        .find(|h| h.join("memory.limit_in_bytes").exists())
        .ok_or_else(|| LabError::State {
            path: "/sys/fs/cgroup/memory".into(),
            source: std::io::Error::other("no cgroup v1 memory hierarchy is mounted"),
        })?;
    let dir = hierarchy.join(crate::real::cgroup_name(lab, &format!("{node}-weftd")));
    let io = |path: std::path::PathBuf| move |source| LabError::State { path, source };
    std::fs::create_dir_all(&dir).map_err(io(dir.clone()))?;
    let path = dir.join("memory.limit_in_bytes");
    std::fs::write(&path, (MEMORY_LIMIT_MIB * 1024 * 1024).to_string())
        .map_err(io(path.clone()))?;
    Ok(dir)
}
