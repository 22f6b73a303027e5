//! `weft-lab bench etcd`: the control-plane figures with flannel's etcd
//! subnet manager, on the lab hub's real etcd: N−1 leases as flanneld writes
//! them (public IPs from 198.18.0.0/15, the benchmarking range: FDB
//! destinations only, never sent to), written in transactions of 100; then
//! weftd started → every kernel entry programmed; leases put one at a time
//! → route in the kernel (p50/p99, from the put call and from the bench's
//! own etcd watch event); RSS. The CLI runs the Kubernetes source's
//! benchmark at the same size in the same run, for the comparison.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use serde::Serialize;

use super::fill::{count_json, synthetic};
use super::{AddTimes, NETWORK, bench_err, percentile, route_monitor, rss_mb, say};
use crate::lab::{Lab, LabConfig, LabError, SubnetManager};

const SUBNETS: &str = "/coreos.com/network/subnets/";

/// Options of the etcd benchmark.
#[derive(Debug, Clone)]
pub struct EtcdPlaneBench {
    pub nodes: usize,
    pub adds: usize,
}

/// Its results.
#[derive(Debug, Clone, Serialize)]
pub struct EtcdPlaneReport {
    pub nodes: usize,
    pub kernel_entries: usize,
    pub fill_seconds: f64,
    pub sync_seconds: f64,
    /// From the bench's own watch event of the put to the route.
    pub add_to_route_ms_p50: f64,
    pub add_to_route_ms_p99: f64,
    pub add_to_route_ms_max: f64,
    /// Puts whose route was in the kernel before the bench's own watch saw
    /// the event (counted as 0 ms above).
    pub add_to_route_before_event: usize,
    /// From the put call (etcd's commit and fsync included).
    pub put_to_route_ms_p50: f64,
    pub put_to_route_ms_p99: f64,
    pub adds: usize,
    pub rss_mb_after_sync: f64,
    pub rss_mb_peak: f64,
}

/// The i-th synthetic peer's lease: (key, value, its route's destination).
fn lease(i: usize) -> (String, String, String) {
    let (_, cidr, mac, ip) = synthetic(i);
    let key = format!("{SUBNETS}{}", cidr.replace('/', "-"));
    let value = format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    (key, value, cidr)
}

fn etcd_err(what: &str) -> impl FnOnce(etcd_client::Error) -> LabError + '_ {
    move |e| bench_err(&format!("{what}: {e}"))
}

impl EtcdPlaneBench {
    /// Runs the benchmark in a lab of its own named `name`.
    pub fn run(&self, name: &str) -> Result<EtcdPlaneReport, LabError> {
        let peers = self.nodes.saturating_sub(1);
        say(&format!(
            "bringing up lab {name} (etcd subnet manager; node-1 runs weftd)"
        ));
        let lab = Lab::up(&LabConfig {
            verbose: false,
            subnet_manager: SubnetManager::Etcd,
            ..LabConfig::new(name, 2)
        })?;
        let mut lab = lab;
        lab.etcdctl(&[
            "put",
            "/coreos.com/network/config",
            &format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#),
        ])?;
        say(&format!("writing {peers} leases to etcd"));
        let url = lab.state.etcd_url.clone();
        let t0 = Instant::now();
        let u = url.clone();
        lab.block_on(|| async move {
            let client = Client::connect([u.as_str()], None)
                .await
                .map_err(etcd_err("connecting to etcd"))?;
            for chunk in (0..peers).collect::<Vec<_>>().chunks(100) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|i| {
                        let (k, v, _) = lease(*i);
                        TxnOp::put(k, v, None::<PutOptions>)
                    })
                    .collect();
                client
                    .kv_client()
                    .txn(Txn::new().and_then(ops))
                    .await
                    .map_err(etcd_err("writing leases"))?;
            }
            Ok::<_, LabError>(())
        })??;
        let fill_seconds = t0.elapsed().as_secs_f64();
        say(&format!("  {peers} leases in {fill_seconds:.1} s"));

        say("starting weftd on node-1");
        let t0 = Instant::now();
        let pid = lab.start_weftd("node-1")?;
        lab.wait_weftd_ready(&["node-1"], Duration::from_secs(120))?;
        let sync_seconds = t0.elapsed().as_secs_f64();
        let mut kernel_entries = 0;
        for args in [
            &["ip", "-j", "route", "show", "dev", "flannel.1"][..],
            &["ip", "-j", "neigh", "show", "dev", "flannel.1"],
            &["bridge", "-j", "fdb", "show", "dev", "flannel.1"],
        ] {
            kernel_entries += count_json(&lab, "node-1", args)?;
        }
        say(&format!(
            "  ready after {sync_seconds:.3} s: {kernel_entries} kernel entries"
        ));
        let (rss_mb_after_sync, _) = rss_mb(pid);
        // weftd took a free subnet of its own: the adds go around it.
        let env = lab.run("node-1", &["cat", "/run/flannel/subnet.env"])?;
        let own = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .and_then(|s| s.parse::<ipnetwork::Ipv4Network>().ok())
            .map(|n| format!("{}/{}", n.network(), n.prefix()))
            .unwrap_or_default();
        let to_add: Vec<usize> = (peers..)
            .filter(|i| lease(*i).2 != own)
            .take(self.adds)
            .collect();

        say(&format!(
            "putting {} leases one at a time, timing each until its route is in the kernel",
            self.adds
        ));
        let (mut child, rx) = route_monitor(&lab, "node-1")?;
        // The bench's own watch: when etcd announces each put.
        let (etx, erx) = mpsc::channel::<(String, Instant)>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let hub = lab.state.hub_netns.clone();
            let stop = stop.clone();
            let u = url.clone();
            std::thread::spawn(move || {
                crate::netns::block_on_in(&hub, || async move {
                    let Ok(client) = Client::connect([u.as_str()], None).await else {
                        return;
                    };
                    let opts = WatchOptions::new().with_prefix();
                    let Ok(mut stream) = client.watch_client().watch(SUBNETS, Some(opts)).await
                    else {
                        return;
                    };
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let next =
                            tokio::time::timeout(Duration::from_millis(200), stream.message());
                        if let Ok(Ok(Some(resp))) = next.await {
                            let at = Instant::now();
                            for ev in resp.events() {
                                if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                                    let _ = etx.send((key, at));
                                }
                            }
                        }
                    }
                })
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let u = url.clone();
        let measured = lab.block_on(|| async move {
            let client = Client::connect([u.as_str()], None)
                .await
                .map_err(etcd_err("connecting to etcd"))?;
            let mut times = AddTimes::default();
            for i in to_add {
                let (key, value, cidr) = lease(i);
                let t = Instant::now();
                client
                    .kv_client()
                    .put(key.as_str(), value, None)
                    .await
                    .map_err(etcd_err("putting a lease"))?;
                times.wait(&rx, &erx, t, &cidr, &key, "watch event")?;
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
        } = measured??;
        lat.sort_by(f64::total_cmp);
        from_event.sort_by(f64::total_cmp);
        let (_, rss_mb_peak) = rss_mb(pid);
        Ok(EtcdPlaneReport {
            nodes: self.nodes,
            kernel_entries,
            fill_seconds,
            sync_seconds,
            add_to_route_ms_p50: percentile(&from_event, 0.50),
            add_to_route_ms_p99: percentile(&from_event, 0.99),
            add_to_route_ms_max: from_event.last().copied().unwrap_or(f64::NAN),
            add_to_route_before_event,
            put_to_route_ms_p50: percentile(&lat, 0.50),
            put_to_route_ms_p99: percentile(&lat, 0.99),
            adds: lat.len(),
            rss_mb_after_sync,
            rss_mb_peak,
        })
    }
}

/// The two sources side by side at each size.
pub fn print_comparison(
    out: &mut impl std::io::Write,
    runs: &[(EtcdPlaneReport, super::ControlPlaneReport)],
) -> std::io::Result<()> {
    for (e, k) in runs {
        writeln!(
            out,
            "\n{} nodes ({} kernel entries with etcd, {} with Kubernetes)",
            e.nodes, e.kernel_entries, k.kernel_entries
        )?;
        writeln!(out, "{:<36} {:>12} {:>12}", "figure", "etcd", "kubernetes")?;
        let rows = [
            (
                "start -> all kernel entries (s)",
                e.sync_seconds,
                k.sync_seconds,
                3,
            ),
            (
                "add -> route p50 (ms)",
                e.add_to_route_ms_p50,
                k.add_to_route_ms_p50,
                2,
            ),
            (
                "add -> route p99 (ms)",
                e.add_to_route_ms_p99,
                k.add_to_route_ms_p99,
                2,
            ),
            (
                "put / create call -> route p50 (ms)",
                e.put_to_route_ms_p50,
                k.create_to_route_ms_p50,
                2,
            ),
            (
                "put / create call -> route p99 (ms)",
                e.put_to_route_ms_p99,
                k.create_to_route_ms_p99,
                2,
            ),
            (
                "RSS after sync (MB)",
                e.rss_mb_after_sync,
                k.rss_mb_after_sync,
                1,
            ),
            ("peak RSS (MB)", e.rss_mb_peak, k.rss_mb_peak, 1),
        ];
        for (name, a, b, prec) in rows {
            writeln!(out, "{name:<36} {a:>12.prec$} {b:>12.prec$}")?;
        }
        writeln!(
            out,
            "{:<36} {:>12} {:>12}",
            "adds that beat the bench's watch",
            format!("{}/{}", e.add_to_route_before_event, e.adds),
            format!("{}/{}", k.add_to_route_before_event, k.adds)
        )?;
    }
    Ok(())
}

/// The two sources' curves over the sizes run: start → entries, add →
/// route p99, RSS.
pub fn plot_comparison(
    path: &std::path::Path,
    runs: &[(EtcdPlaneReport, super::ControlPlaneReport)],
) -> Result<(), crate::plot::PlotError> {
    use crate::plot::{Panel, Series};
    let xy = |f: &dyn Fn(&(EtcdPlaneReport, super::ControlPlaneReport)) -> f64| {
        runs.iter()
            .map(|r| (r.0.nodes as f64, f(r)))
            .collect::<Vec<_>>()
    };
    let pair = |e: Vec<(f64, f64)>, k: Vec<(f64, f64)>| {
        vec![
            Series {
                name: "etcd".into(),
                points: e,
                reference: false,
            },
            Series {
                name: "kubernetes".into(),
                points: k,
                reference: false,
            },
        ]
    };
    let panel = |title: &str, y: &str, log_y: bool, series| Panel {
        title: title.into(),
        x_label: "Nodes".into(),
        y_label: y.into(),
        log_x: true,
        log_y,
        series,
    };
    crate::plot::curves(
        path,
        "weftd's subnet managers: etcd leases against Kubernetes Nodes",
        &[
            panel(
                "start -> every kernel entry",
                "seconds",
                true,
                pair(xy(&|r| r.0.sync_seconds), xy(&|r| r.1.sync_seconds)),
            ),
            panel(
                "put / create call -> route, p99",
                "ms",
                false,
                pair(
                    xy(&|r| r.0.put_to_route_ms_p99),
                    xy(&|r| r.1.create_to_route_ms_p99),
                ),
            ),
            panel(
                "RSS after sync",
                "MB",
                false,
                pair(
                    xy(&|r| r.0.rss_mb_after_sync),
                    xy(&|r| r.1.rss_mb_after_sync),
                ),
            ),
        ],
        3,
    )
}
