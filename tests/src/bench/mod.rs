//! `weft-lab bench control-plane`: how weftd's cost grows with the cluster,
//! measured on a real API server holding realistic Node objects, over a
//! series of sizes in one lab.
//!
//! One lab node runs weftd (or another flannel-compatible agent); the API
//! server holds N−1 other Nodes of ~10 KB each (addresses, conditions,
//! capacity, 40 images), all carrying valid flannel annotations (public IPs
//! from 198.18.0.0/15, the benchmarking range: FDB destinations only, no
//! traffic is ever sent to them), filled up between sizes. Per size: start →
//! every kernel entry programmed, the sync's phases, Node added → its route
//! in the kernel (p50/p99, from the create call and from the API server's
//! event), RSS and its parts, CPU idle and per change, bytes received from
//! the API server, kernel writes per peer, the API server's and etcd's RSS.
//! In the same run, the same entries written by `ip -batch` on a scratch
//! device, as a yardstick.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;

use crate::cluster;
use crate::lab::{Lab, LabConfig, LabError};

mod etcd;
pub mod fill;
pub mod phases;
pub mod report;

pub use etcd::{EtcdPlaneBench, EtcdPlaneReport, plot_comparison, print_comparison};

use fill::{count_json, fill_api, ip_batch_yardstick, realistic_node, synthetic};

/// The bench's pod network: room for 32768 /24s.
pub const NETWORK: &str = "10.128.0.0/9";

/// Options of the control-plane benchmark.
#[derive(Debug, Clone)]
pub struct ControlPlaneBench {
    /// Cluster sizes (the agent's node included), measured one after the
    /// other in one lab, the API server filled up between them.
    pub sizes: Vec<usize>,
    pub adds: usize,
    pub idle: Duration,
    /// Another flannel-compatible agent binary in weftd's place, started as
    /// kube-flannel.yml's container runs flanneld (its command line, env
    /// and in-cluster credentials); None: weftd with the chart's flags.
    pub agent: Option<PathBuf>,
}

/// One size's results.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneReport {
    pub nodes: usize,
    pub kernel_entries: usize,
    pub api_fill_seconds: f64,
    pub node_object_bytes: usize,
    /// Start → every kernel entry programmed: weftd's readiness (its first
    /// full reconcile), or for another agent the kernel polled every 20 ms.
    pub sync_seconds: f64,
    /// From the API server's ADDED event to the route in the kernel.
    pub add_to_route_ms_p50: f64,
    pub add_to_route_ms_p99: f64,
    pub add_to_route_ms_max: f64,
    /// Adds whose route was in the kernel before the bench's own watch saw
    /// the ADDED event: counted as 0 ms above, which biases those figures
    /// down (the create-call figures have no such bias).
    pub add_to_route_before_event: usize,
    /// The same, timed from the client's create request (adds the API
    /// server's and etcd's commit, fsync included).
    pub create_to_route_ms_p50: f64,
    pub create_to_route_ms_p99: f64,
    pub adds: usize,
    pub rss_mb_after_sync: f64,
    pub rss_mb_peak: f64,
    /// Of the RSS after sync: anonymous memory (heap, stacks) and pages of
    /// files (the binary's code and data).
    pub rss_anon_mb: f64,
    pub rss_file_mb: f64,
    pub idle_cpu_seconds: f64,
    pub idle_seconds: f64,
    /// CPU (user + system) the agent used per Node added, over the adds.
    pub cpu_ms_per_add: f64,
    /// Bytes the agent's node received on its underlay from start to
    /// sync: the API server's answers (TLS, with TCP/IP headers).
    pub api_rx_mb: f64,
    /// Kernel writes per peer (weftd's weft_netlink_operations_total).
    pub netlink_writes_per_peer: Option<f64>,
    /// Time weftd spent in reconcile passes up to readiness
    /// (weft_reconcile_duration_seconds_sum): its netlink share.
    pub reconcile_seconds: Option<f64>,
    /// The sync's phases, each timed alone by the bench.
    pub phases: phases::Phases,
    pub apiserver_rss_mb: f64,
    pub etcd_rss_mb: f64,
    pub ip_batch_seconds: f64,
    /// flannel's routes alone through `ip -batch` on an empty device: the
    /// kernel's share of a sync (it looks up every route's next hop among
    /// all the device's others: quadratic).
    pub kernel_gw_routes_seconds: f64,
    /// The same destinations as routes without a gateway (linear).
    pub kernel_dev_routes_seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A `Key:   N kB` field of a /proc text, in kB (0 when absent).
fn proc_kb(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

/// VmRSS and VmHWM of `pid`, in MB.
pub(crate) fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (
        proc_kb(&status, "VmRSS:") / 1024.0,
        proc_kb(&status, "VmHWM:") / 1024.0,
    )
}

/// CPU seconds (user + system) `pid` has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields after the command: state(skipped, not numeric) ppid ... utime=14th, stime=15th overall.
    let (utime, stime) = (
        f.get(10).copied().unwrap_or(0.0),
        f.get(11).copied().unwrap_or(0.0),
    );
    (utime + stime) / 100.0
}

/// `ip monitor route` on `node`: the destination of every route added on
/// `flannel.1`, with when the kernel announced it.
fn route_monitor(
    lab: &Lab,
    node: &str,
) -> Result<(std::process::Child, mpsc::Receiver<(String, Instant)>), LabError> {
    let mut monitor = lab.node_command(node, "ip")?;
    monitor
        .args(["monitor", "route"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = monitor.spawn().map_err(|source| LabError::State {
        path: "ip monitor route".into(),
        source,
    })?;
    let stdout = child.stdout.take().ok_or_else(|| LabError::State {
        path: "ip monitor route".into(),
        source: std::io::Error::other("no stdout"),
    })?;
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("dev flannel.1") && !line.starts_with("Deleted") {
                let dst = line.split_whitespace().next().unwrap_or("").to_string();
                if tx.send((dst, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    Ok((child, rx))
}

/// One benchmark's add latencies, in ms: from the write call, and from the
/// bench's own watch event (0 when the route came first, counted apart).
#[derive(Debug, Default)]
struct AddTimes {
    from_call: Vec<f64>,
    from_event: Vec<f64>,
    before_event: usize,
}

impl AddTimes {
    /// Waits for `cidr`'s route (written at `t`) on `routes`, then for
    /// `name`'s watch event (`event`, for the message) on `events`.
    fn wait(
        &mut self,
        routes: &mpsc::Receiver<(String, Instant)>,
        events: &mpsc::Receiver<(String, Instant)>,
        t: Instant,
        cidr: &str,
        name: &str,
        event: &str,
    ) -> Result<(), LabError> {
        let deadline = t + Duration::from_secs(10);
        let at = loop {
            match routes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((dst, at)) if dst == cidr => break at,
                Ok(_) => continue,
                Err(_) => return Err(bench_err(&format!("route {cidr} never appeared"))),
            }
        };
        self.from_call
            .push(at.duration_since(t).as_secs_f64() * 1e3);
        let ev = loop {
            match events.recv_timeout(Duration::from_secs(5)) {
                Ok((n, ev)) if n == name => break ev,
                Ok(_) => continue,
                Err(_) => return Err(bench_err(&format!("no {event} for {name}"))),
            }
        };
        let d = at.checked_duration_since(ev);
        self.before_event += usize::from(d.is_none());
        self.from_event
            .push(d.unwrap_or_default().as_secs_f64() * 1e3);
        Ok(())
    }
}

fn bench_err(msg: &str) -> LabError {
    LabError::State {
        path: "bench".into(),
        source: std::io::Error::other(msg.to_string()),
    }
}

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// A series: one report per size, with who was measured.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneSeries {
    /// `weftd`, or the other agent's path.
    pub agent: String,
    pub points: Vec<ControlPlaneReport>,
}

/// VmRSS split as `/proc/PID/smaps_rollup` does: anonymous and file pages, MB.
fn rss_split_mb(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let anon = proc_kb(&text, "Anonymous:");
    (
        anon / 1024.0,
        (proc_kb(&text, "Rss:") - anon).max(0.0) / 1024.0,
    )
}

/// Bytes `node`'s eth0 has received.
fn rx_bytes(lab: &Lab, node: &str) -> Result<u64, LabError> {
    let out = lab.run(node, &["ip", "-j", "-s", "link", "show", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(v[0]["stats64"]["rx"]["bytes"].as_u64().unwrap_or(0))
}

/// A sample's value in a Prometheus text exposition (the sum over its
/// label sets when `name` names a family).
fn sample_sum(text: &str, name: &str) -> Option<f64> {
    let vals: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum())
}

/// Waits until `node`'s flannel.1 holds `peers` routes, neighbours and FDB
/// entries, looking every 20 ms.
fn wait_entries(lab: &Lab, node: &str, peers: usize, limit: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + limit;
    let mut stage = 0;
    let lists: [&[&str]; 3] = [
        &["ip", "-j", "route", "show", "dev", "flannel.1"],
        &["ip", "-j", "neigh", "show", "dev", "flannel.1"],
        &["bridge", "-j", "fdb", "show", "dev", "flannel.1"],
    ];
    while stage < lists.len() {
        if count_json(lab, node, lists[stage]).unwrap_or(0) >= peers {
            stage += 1;
            continue;
        }
        if Instant::now() > deadline {
            return Err(bench_err(&format!(
                "the agent on {node} did not program {peers} peers within {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// kube-flannel.yml's flannel container (its command, args and env), for
/// running another agent as flanneld runs.
fn kube_flannel_container() -> Result<k8s_openapi::api::core::v1::Container, LabError> {
    let text = include_str!("../../fixtures/kube-flannel-container.json");
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bench_err(&e.to_string()))?;
    serde_json::from_value(v["container"].clone()).map_err(|e| bench_err(&e.to_string()))
}

impl ControlPlaneBench {
    /// Runs the series in a lab of its own named `name`; the agent's log of
    /// the last size is kept as `keep_log`.
    pub fn run(&self, name: &str, keep_log: &Path) -> Result<ControlPlaneSeries, LabError> {
        let mut sizes = self.sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        say(&format!(
            "bringing up lab {name} (2 nodes: node-1 runs the agent, node-2 the ip -batch yardstick)"
        ));
        let mut lab = Lab::up(&LabConfig {
            verbose: false,
            ..LabConfig::new(name, 2)
        })?;
        // node-2 must not be a peer (no annotations: it runs no agent), and
        // node-1's podCIDR 10.244.0.0/24 lies inside the bench's Network.
        let agent = self.agent.clone();
        let container = match &agent {
            Some(_) => Some(kube_flannel_container()?),
            None => None,
        };
        lab.set_node("node-1", |s| {
            s.net_conf = Some(format!(
                r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#
            ));
            s.agent = agent.clone();
            s.container = container;
        })?;
        let mut in_api = 0;
        let mut points = Vec::new();
        for size in sizes {
            let peers = size.saturating_sub(1).max(in_api);
            say(&format!("{} Nodes: filling the API server", peers + 1));
            let t0 = Instant::now();
            fill_api(&lab, in_api..peers)?;
            let api_fill_seconds = t0.elapsed().as_secs_f64();
            in_api = peers;
            let point = self.point(&mut lab, peers, api_fill_seconds, keep_log)?;
            in_api += point.adds;
            points.push(point);
        }
        Ok(ControlPlaneSeries {
            agent: self
                .agent
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "weftd".into()),
            points,
        })
    }

    /// One size: the agent started on a clean node-1 with `peers` Nodes in
    /// the API server, then stopped and its device and table removed.
    fn point(
        &self,
        lab: &mut Lab,
        peers: usize,
        api_fill_seconds: f64,
        keep_log: &Path,
    ) -> Result<ControlPlaneReport, LabError> {
        let weftd = self.agent.is_none();
        let node_object_bytes = serde_json::to_vec(&realistic_node(0))
            .map(|v| v.len())
            .unwrap_or(0);
        let phases = phases::measure(lab)?;
        let rx0 = rx_bytes(lab, "node-1")?;
        say("  starting the agent on node-1");
        let t0 = Instant::now();
        let pid = lab.start_weftd("node-1")?;
        if weftd {
            lab.wait_weftd_ready(&["node-1"], Duration::from_secs(180))?;
        } else {
            wait_entries(lab, "node-1", peers, Duration::from_secs(180))?;
        }
        let sync_seconds = t0.elapsed().as_secs_f64();
        let api_rx_mb = rx_bytes(lab, "node-1")?.saturating_sub(rx0) as f64 / 1e6;
        let count = |args: &[&str]| count_json(lab, "node-1", args);
        let routes = count(&["ip", "-j", "route", "show", "dev", "flannel.1"])?;
        let neighs = count(&["ip", "-j", "neigh", "show", "dev", "flannel.1"])?;
        let fdb = count(&["bridge", "-j", "fdb", "show", "dev", "flannel.1"])?;
        let kernel_entries = routes + neighs + fdb;
        say(&format!(
            "  synced after {sync_seconds:.3} s: {routes} routes, {neighs} neighbours, {fdb} fdb entries"
        ));
        let (rss_mb_after_sync, _) = rss_mb(pid);
        let (rss_anon_mb, rss_file_mb) = rss_split_mb(pid);
        let metrics = if weftd {
            lab.weftd_metrics("node-1").ok()
        } else {
            None
        };
        let netlink_writes_per_peer = metrics
            .as_deref()
            .and_then(|m| sample_sum(m, "weft_netlink_operations_total"))
            .map(|w| w / peers.max(1) as f64);
        let reconcile_seconds = metrics
            .as_deref()
            .and_then(|m| sample_sum(m, "weft_reconcile_duration_seconds_sum"));

        let c0 = cpu_seconds(pid);
        std::thread::sleep(self.idle);
        let idle_cpu_seconds = cpu_seconds(pid) - c0;

        say(&format!(
            "  adding {} Nodes one at a time, timing each until its route is in the kernel",
            self.adds
        ));
        let c0 = cpu_seconds(pid);
        let times = self.adds_timed(lab, peers)?;
        let cpu_ms_per_add = (cpu_seconds(pid) - c0) * 1e3 / self.adds.max(1) as f64;
        let AddTimes {
            from_call: mut lat,
            mut from_event,
            before_event: add_to_route_before_event,
        } = times;
        lat.sort_by(f64::total_cmp);
        from_event.sort_by(f64::total_cmp);
        let (_, rss_mb_peak) = rss_mb(pid);
        let apiserver_rss_mb = rss_mb(lab.state.apiserver_pid).0;
        let etcd_rss_mb = rss_mb(lab.state.etcd_pid).0;

        let log = lab.node("node-1")?.dir.join("logs/weftd.log");
        std::fs::copy(&log, keep_log).map_err(|source| LabError::State {
            path: keep_log.to_path_buf(),
            source,
        })?;
        lab.stop_weftd("node-1", nix::sys::signal::Signal::SIGTERM)?;
        // The next size starts from nothing, as a new node would.
        let _ = lab.exec("node-1", &["ip", "link", "del", "flannel.1"]);
        let _ = lab.exec("node-1", &["nft", "delete", "table", "inet", "weft"]);

        say("  same-run yardstick: the same entries through ip -batch / bridge -batch on node-2");
        let yardstick = ip_batch_yardstick(lab, "node-2", peers)?;
        Ok(ControlPlaneReport {
            nodes: peers + 1,
            kernel_entries,
            api_fill_seconds,
            node_object_bytes,
            sync_seconds,
            add_to_route_ms_p50: percentile(&from_event, 0.50),
            add_to_route_ms_p99: percentile(&from_event, 0.99),
            add_to_route_ms_max: from_event.last().copied().unwrap_or(f64::NAN),
            add_to_route_before_event,
            create_to_route_ms_p50: percentile(&lat, 0.50),
            create_to_route_ms_p99: percentile(&lat, 0.99),
            adds: lat.len(),
            rss_mb_after_sync,
            rss_mb_peak,
            rss_anon_mb,
            rss_file_mb,
            idle_cpu_seconds,
            idle_seconds: self.idle.as_secs_f64(),
            cpu_ms_per_add,
            api_rx_mb,
            netlink_writes_per_peer,
            reconcile_seconds,
            phases,
            apiserver_rss_mb,
            etcd_rss_mb,
            ip_batch_seconds: yardstick.all,
            kernel_gw_routes_seconds: yardstick.gw_routes,
            kernel_dev_routes_seconds: yardstick.dev_routes,
        })
    }

    /// Adds `self.adds` Nodes after the first `peers`, one at a time; each
    /// timed from its create call and from the bench's own watch event to
    /// its route in node-1's kernel.
    fn adds_timed(&self, lab: &Lab, peers: usize) -> Result<AddTimes, LabError> {
        let (mut child, rx) = route_monitor(lab, "node-1")?;
        // The bench watches Nodes too: the moment the API server announces a
        // Node (its ADDED event) is when it is "added in the API".
        let (etx, erx) = mpsc::channel::<(String, Instant)>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let hub = lab.state.hub_netns.clone();
            let admin = lab.admin_kubeconfig();
            let stop = stop.clone();
            std::thread::spawn(move || {
                crate::netns::block_on_in(&hub, || async move {
                    use kube::api::{ListParams, WatchEvent, WatchParams};
                    let Ok(client) = cluster::client(&admin).await else {
                        return;
                    };
                    let api: Api<Node> = Api::all(client);
                    let Ok(list) = api.list(&ListParams::default().limit(1)).await else {
                        return;
                    };
                    let rv = list.metadata.resource_version.unwrap_or_default();
                    let Ok(stream) = api.watch(&WatchParams::default().timeout(290), &rv).await
                    else {
                        return;
                    };
                    let mut stream = stream.boxed();
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await
                        {
                            Ok(Some(Ok(WatchEvent::Added(n)))) => {
                                let _ =
                                    etx.send((n.metadata.name.unwrap_or_default(), Instant::now()));
                            }
                            Ok(None) => return,
                            _ => {}
                        }
                    }
                })
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        // One client and connection for all adds: the clock starts right
        // before each create request is sent and stops when the kernel
        // announces the route.
        let admin = lab.admin_kubeconfig();
        let adds = self.adds;
        let times = lab.block_on(|| async move {
            let client = cluster::client(&admin).await?;
            let api: Api<Node> = Api::all(client);
            let mut times = AddTimes::default();
            for k in 0..adds {
                let i = peers + k;
                let (name, cidr, _, _) = synthetic(i);
                let node: Node = serde_json::from_value(realistic_node(i))
                    .map_err(|e| bench_err(&e.to_string()))?;
                let t = Instant::now();
                api.create(&PostParams::default(), &node)
                    .await
                    .map_err(|e| bench_err(&format!("creating {name}: {e}")))?;
                times.wait(&rx, &erx, t, &cidr, &name, "ADDED event")?;
            }
            Ok::<_, LabError>(times)
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = watcher.join();
        let _ = child.kill();
        let _ = child.wait();
        times?
    }
}
