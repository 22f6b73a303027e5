//! `weft-lab bench control-plane`: how fast weftd converges with thousands
//! of nodes, measured on a real API server holding realistic Node objects.
//!
//! One lab node runs weftd; the API server holds N−1 other Nodes of ~10 KB
//! each (addresses, conditions, capacity, 40 images), all carrying valid
//! flannel annotations (public IPs from 198.18.0.0/15, the benchmarking
//! range: FDB destinations only, no traffic is ever sent to them). Figures:
//! start → every kernel entry programmed; Node added in the API → its route
//! in the kernel (p50/p99); peak RSS; CPU while idle. In the same run, the
//! same entries written by `ip -batch` on a scratch device, as a yardstick.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;

use crate::lab::{Lab, LabConfig, LabError};
use crate::{cluster, procs};

mod etcd;
pub mod fill;

pub use etcd::{EtcdPlaneBench, EtcdPlaneReport, print_comparison};

use fill::{count_json, fill_api, ip_batch_yardstick, realistic_node, synthetic};

/// The bench's pod network: room for 32768 /24s.
pub const NETWORK: &str = "10.128.0.0/9";

/// Options of the control-plane benchmark.
#[derive(Debug, Clone)]
pub struct ControlPlaneBench {
    pub nodes: usize,
    pub adds: usize,
    pub idle: Duration,
}

/// Its results.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneReport {
    pub nodes: usize,
    pub kernel_entries: usize,
    pub api_fill_seconds: f64,
    pub node_object_bytes: usize,
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
    pub idle_cpu_seconds: f64,
    pub idle_seconds: f64,
    pub ip_batch_seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// VmRSS and VmHWM of `pid`, in MB.
pub(crate) fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(k)?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
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

impl ControlPlaneBench {
    /// Runs the benchmark in a lab of its own named `name`.
    pub fn run(
        &self,
        name: &str,
        keep_log: &std::path::Path,
    ) -> Result<ControlPlaneReport, LabError> {
        let peers = self.nodes.saturating_sub(1);
        say(&format!(
            "bringing up lab {name} (2 nodes: node-1 runs weftd, node-2 the ip -batch yardstick)"
        ));
        let mut lab = Lab::up(&LabConfig {
            verbose: false,
            ..LabConfig::new(name, 2)
        })?;
        say(&format!(
            "creating {peers} realistic Nodes in the API server"
        ));
        let t0 = Instant::now();
        fill_api(&lab, 0..peers)?;
        let api_fill_seconds = t0.elapsed().as_secs_f64();
        let node_object_bytes = serde_json::to_vec(&realistic_node(0))
            .map(|v| v.len())
            .unwrap_or(0);
        say(&format!(
            "  {peers} Nodes of ~{} KB in {api_fill_seconds:.1} s",
            node_object_bytes / 1024
        ));

        // node-2 must not be a peer (no annotations: it runs no weftd), and
        // node-1's podCIDR 10.244.0.0/24 lies inside the bench's Network.
        lab.set_node("node-1", |s| {
            s.net_conf = Some(format!(
                r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#
            ))
        })?;
        say("starting weftd on node-1");
        let t0 = Instant::now();
        let pid = lab.start_weftd("node-1")?;
        lab.wait_weftd_ready(&["node-1"], Duration::from_secs(120))?;
        let sync_seconds = t0.elapsed().as_secs_f64();
        let routes = count_json(
            &lab,
            "node-1",
            &["ip", "-j", "route", "show", "dev", "flannel.1"],
        )?;
        let neighs = count_json(
            &lab,
            "node-1",
            &["ip", "-j", "neigh", "show", "dev", "flannel.1"],
        )?;
        let fdb = count_json(
            &lab,
            "node-1",
            &["bridge", "-j", "fdb", "show", "dev", "flannel.1"],
        )?;
        let kernel_entries = routes + neighs + fdb;
        say(&format!(
            "  ready after {sync_seconds:.3} s: {routes} routes, {neighs} neighbours, {fdb} fdb entries"
        ));
        let (rss_mb_after_sync, _) = rss_mb(pid);

        say(&format!("measuring idle CPU for {} s", self.idle.as_secs()));
        let c0 = cpu_seconds(pid);
        std::thread::sleep(self.idle);
        let idle_cpu_seconds = cpu_seconds(pid) - c0;

        say(&format!(
            "adding {} Nodes one at a time, timing each until its route is in the kernel",
            self.adds
        ));
        let (mut child, rx) = route_monitor(&lab, "node-1")?;
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
        let lat = lab.block_on(|| async move {
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
        let AddTimes {
            from_call: mut lat,
            mut from_event,
            before_event: add_to_route_before_event,
        } = lat??;
        lat.sort_by(f64::total_cmp);
        from_event.sort_by(f64::total_cmp);
        let (_, rss_mb_peak) = rss_mb(pid);

        say("same-run yardstick: the same entries through ip -batch / bridge -batch on node-2");
        let ip_batch_seconds = ip_batch_yardstick(&lab, "node-2", peers)?;
        let log = lab.node("node-1")?.dir.join("logs/weftd.log");
        std::fs::copy(&log, keep_log).map_err(|source| LabError::State {
            path: keep_log.to_path_buf(),
            source,
        })?;
        let _ = procs::alive(pid as i32);
        Ok(ControlPlaneReport {
            nodes: self.nodes,
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
            idle_cpu_seconds,
            idle_seconds: self.idle.as_secs_f64(),
            ip_batch_seconds,
        })
    }
}

impl ControlPlaneReport {
    /// The table: each figure, its target, and flanneld v0.20.2's figure from
    /// an earlier run on this kind of machine (not measured in this run; the
    /// table says so).
    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let rows: [(&str, String, &str, &str); 9] = [
            (
                "start -> all kernel entries (s)",
                format!("{:.3}", self.sync_seconds),
                "<= 2",
                "3.8",
            ),
            (
                "add -> route p50 (ms)",
                format!("{:.2}", self.add_to_route_ms_p50),
                "<= 2",
                "2.5",
            ),
            (
                "add -> route p99 (ms)",
                format!("{:.2}", self.add_to_route_ms_p99),
                "<= 10",
                "12",
            ),
            (
                "create call -> route p50 (ms)",
                format!("{:.2}", self.create_to_route_ms_p50),
                "-",
                "-",
            ),
            (
                "create call -> route p99 (ms)",
                format!("{:.2}", self.create_to_route_ms_p99),
                "-",
                "-",
            ),
            (
                "RSS after sync (MB)",
                format!("{:.1}", self.rss_mb_after_sync),
                "<= 30",
                "229",
            ),
            (
                "peak RSS (MB)",
                format!("{:.1}", self.rss_mb_peak),
                "<= 30",
                "281",
            ),
            (
                "CPU while idle (s)",
                format!("{:.3} in {:.0} s", self.idle_cpu_seconds, self.idle_seconds),
                "~ 0",
                "-",
            ),
            (
                "ip -batch, same entries (s)",
                format!("{:.3}", self.ip_batch_seconds),
                "yardstick",
                "-",
            ),
        ];
        writeln!(
            out,
            "control plane, {} nodes ({} kernel entries; {} Nodes of ~{} KB filled in {:.1} s; {} adds)",
            self.nodes,
            self.kernel_entries,
            self.nodes.saturating_sub(1),
            self.node_object_bytes / 1024,
            self.api_fill_seconds,
            self.adds
        )?;
        writeln!(
            out,
            "{:<34} {:>18} {:>10} {:>16}",
            "figure", "weftd", "target", "flanneld v0.20.2*"
        )?;
        for (k, v, t, f) in rows {
            writeln!(out, "{k:<34} {v:>18} {t:>10} {f:>16}")?;
        }
        writeln!(
            out,
            "* flanneld's figures are from an earlier run on this kind of machine, not measured in this run"
        )?;
        writeln!(
            out,
            "add -> route: in {} of {} adds the route was in the kernel before the bench's own watch saw the ADDED event (counted as 0 ms: those figures are biased low; create call -> route is not)",
            self.add_to_route_before_event, self.adds
        )?;
        Ok(())
    }
}
