//! The control-plane series as tables, fitted growth, and a picture.

use std::io::Write;
use std::path::Path;

use super::{ControlPlaneReport, ControlPlaneSeries};
use crate::plot::{self, Panel, PlotError, Series};

/// The targets: (nodes, start → all entries s, RSS MB).
pub const TARGETS: [(usize, f64, f64); 2] = [(5000, 0.5, 16.0), (10000, 1.2, 30.0)];
/// add → route p99 at every size, ms.
pub const P99_TARGET_MS: f64 = 2.0;

/// Least squares of `y = a + b·x`: (a, b).
pub fn linear_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.len() < 2 {
        return (points.first().map(|p| p.1).unwrap_or(f64::NAN), f64::NAN);
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = sxy / sxx;
    (my - b * mx, b)
}

/// The exponent k of `y ∝ x^k` (a straight line on log axes): 1 is linear
/// growth, 0 none.
pub fn growth_exponent(points: &[(f64, f64)]) -> f64 {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    linear_fit(&logs).1
}

fn target_of(nodes: usize) -> Option<(f64, f64)> {
    TARGETS
        .iter()
        .find(|(n, _, _)| *n == nodes)
        .map(|(_, s, r)| (*s, *r))
}

fn mark(value: f64, target: Option<f64>) -> String {
    match target {
        Some(t) if value <= t => format!("{value:.3} (<= {t})"),
        Some(t) => format!("{value:.3} (> {t}!)"),
        None => format!("{value:.3}"),
    }
}

impl ControlPlaneSeries {
    fn xy(&self, f: impl Fn(&ControlPlaneReport) -> f64) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .map(|p| (p.nodes as f64, f(p)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    }

    /// The tables: time, memory and cost, the sync's phases, the growth.
    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let first = self.points.first();
        writeln!(
            out,
            "control plane, agent {} (Nodes of ~{} KB; {} adds per size, one at a time)",
            self.agent,
            first.map(|p| p.node_object_bytes / 1024).unwrap_or(0),
            first.map(|p| p.adds).unwrap_or(0),
        )?;
        writeln!(
            out,
            "{:>6} {:>7} {:>17} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}",
            "nodes",
            "entries",
            "start->entries s",
            "ip-batch",
            "p50 ms",
            "p99 ms",
            "max ms",
            "call p50",
            "call p99",
            "beat"
        )?;
        for p in &self.points {
            let t = target_of(p.nodes).map(|t| t.0);
            writeln!(
                out,
                "{:>6} {:>7} {:>17} {:>9.3} {:>8.2} {:>8} {:>8.2} {:>9.2} {:>9.2} {:>7}",
                p.nodes,
                p.kernel_entries,
                mark(p.sync_seconds, t),
                p.ip_batch_seconds,
                p.add_to_route_ms_p50,
                if p.add_to_route_ms_p99 <= P99_TARGET_MS {
                    format!("{:.2}", p.add_to_route_ms_p99)
                } else {
                    format!("{:.2}!", p.add_to_route_ms_p99)
                },
                p.add_to_route_ms_max,
                p.create_to_route_ms_p50,
                p.create_to_route_ms_p99,
                format!("{}/{}", p.add_to_route_before_event, p.adds),
            )?;
        }
        writeln!(
            out,
            "  start->entries: weftd until ready (its first full reconcile), another agent until the kernel holds every entry (polled every 20 ms); targets {}",
            TARGETS
                .iter()
                .map(|(n, s, _)| format!("<= {s} s at {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            out,
            "  p50/p99/max: from the API server's ADDED event (as the bench's own watch sees it) to the route; target p99 <= {P99_TARGET_MS} ms. 'beat': adds whose route came before the bench saw the event, counted as 0 ms (those figures are biased low); call p50/p99: from the create call, no such bias"
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:>6} {:>13} {:>8} {:>7} {:>7} {:>10} {:>10} {:>9} {:>11} {:>10} {:>8}",
            "nodes",
            "RSS MB",
            "peak MB",
            "anon",
            "file",
            "CPU ms/add",
            "idle CPU s",
            "API MB",
            "writes/peer",
            "apiserver",
            "etcd"
        )?;
        for p in &self.points {
            let t = target_of(p.nodes).map(|t| t.1);
            writeln!(
                out,
                "{:>6} {:>13} {:>8.1} {:>7.1} {:>7.1} {:>10.3} {:>10.3} {:>9.1} {:>11} {:>10.0} {:>8.0}",
                p.nodes,
                mark(p.rss_mb_after_sync, t).replace(".000", ".0"),
                p.rss_mb_peak,
                p.rss_anon_mb,
                p.rss_file_mb,
                p.cpu_ms_per_add,
                p.idle_cpu_seconds,
                p.api_rx_mb,
                p.netlink_writes_per_peer
                    .map(|w| format!("{w:.2}"))
                    .unwrap_or_else(|| "-".into()),
                p.apiserver_rss_mb,
                p.etcd_rss_mb,
            )?;
        }
        writeln!(
            out,
            "  RSS after sync (anon: heap and stacks; file: the binary's pages), peak over the run; idle CPU over {} s; API MB: bytes the node received on its underlay from start to sync (TLS, with headers); apiserver, etcd: their RSS in MB after the adds",
            first.map(|p| p.idle_seconds).unwrap_or(0.0)
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>9} {:>9} {:>7}",
            "nodes",
            "list s",
            "list MB",
            "proto s",
            "proto MB",
            "cache s",
            "json s",
            "decode s",
            "judge s",
            "reconcile",
            "gw-routes",
            "dev-rts",
            "sync s"
        )?;
        for p in &self.points {
            writeln!(
                out,
                "{:>6} {:>8.3} {:>8.1} {:>8.3} {:>8.1} {:>8.3} {:>8.3} {:>9.4} {:>8.4} {:>10} {:>9.3} {:>9.3} {:>7.3}",
                p.nodes,
                p.phases.list_seconds,
                p.phases.list_mb,
                p.phases.list_protobuf_seconds,
                p.phases.list_protobuf_mb,
                p.phases.cache_protobuf_seconds,
                p.phases.decode_json_seconds,
                p.phases.decode_seconds,
                p.phases.judge_seconds,
                p.reconcile_seconds
                    .map(|r| format!("{r:.3}"))
                    .unwrap_or_else(|| "-".into()),
                p.kernel_gw_routes_seconds,
                p.kernel_dev_routes_seconds,
                p.sync_seconds,
            )?;
        }
        writeln!(
            out,
            "  each phase timed alone by the bench with weftd's code (list: every page of 100 as JSON; proto: the same pages as protobuf, as client-go asks; cache: the whole list as protobuf from the watch cache, resourceVersion=0, as weftd asks; json: the JSON pages into weftd's slim Node; decode: the cache's protobuf into it with weftd's streaming decoder; judge: the peer set), reconcile: weftd's own time in reconcile passes up to readiness (weft_reconcile_duration_seconds_sum); weftd overlaps them. gw-routes: flannel's routes alone (via GW dev D onlink) through ip -batch on an empty device, the kernel's share (it compares each new route's next hop with every other route's on the device: quadratic); dev-rts: the same destinations without a gateway"
        )?;
        writeln!(out)?;
        let (base, per) = linear_fit(&self.xy(|p| p.rss_mb_after_sync));
        writeln!(
            out,
            "growth over {} sizes: start->entries ~ n^{:.2}, ip -batch ~ n^{:.2}, list ~ n^{:.2}, RSS = {:.1} MB + {:.2} KB per node, API MB ~ n^{:.2}",
            self.points.len(),
            growth_exponent(&self.xy(|p| p.sync_seconds)),
            growth_exponent(&self.xy(|p| p.ip_batch_seconds)),
            growth_exponent(&self.xy(|p| p.phases.list_seconds)),
            base,
            per * 1024.0,
            growth_exponent(&self.xy(|p| p.api_rx_mb)),
        )?;
        Ok(())
    }

    /// The curves: start → entries against the yardstick, add → route,
    /// memory, the sync's phases, per-change cost and API bytes.
    pub fn plot(&self, path: &Path) -> Result<(), PlotError> {
        let s = |name: &str, points: Vec<(f64, f64)>, reference: bool| Series {
            name: name.into(),
            points,
            reference,
        };
        let agent = if self.agent == "weftd" {
            "weftd".to_string()
        } else {
            Path::new(&self.agent)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.agent.clone())
        };
        let targets = |f: fn(&(usize, f64, f64)) -> f64| -> Vec<(f64, f64)> {
            TARGETS.iter().map(|t| (t.0 as f64, f(t))).collect()
        };
        let panel = |title: &str, y: &str, log_y: bool, series: Vec<Series>| Panel {
            title: title.into(),
            x_label: "Nodes".into(),
            y_label: y.into(),
            log_x: true,
            log_y,
            series,
        };
        let panels = [
            panel(
                "start -> every kernel entry",
                "seconds",
                true,
                vec![
                    s(&agent, self.xy(|p| p.sync_seconds), false),
                    s(
                        "ip -batch, same entries",
                        self.xy(|p| p.ip_batch_seconds),
                        true,
                    ),
                    s("target", targets(|t| t.1), true),
                ],
            ),
            panel(
                "Node added -> its route",
                "ms",
                false,
                vec![
                    s("event p50", self.xy(|p| p.add_to_route_ms_p50), false),
                    s("event p99", self.xy(|p| p.add_to_route_ms_p99), false),
                    s(
                        "create call p50",
                        self.xy(|p| p.create_to_route_ms_p50),
                        true,
                    ),
                    s(
                        "create call p99",
                        self.xy(|p| p.create_to_route_ms_p99),
                        true,
                    ),
                ],
            ),
            panel(
                "memory",
                "MB",
                false,
                vec![
                    s("RSS after sync", self.xy(|p| p.rss_mb_after_sync), false),
                    s("peak RSS", self.xy(|p| p.rss_mb_peak), false),
                    s("of which anonymous", self.xy(|p| p.rss_anon_mb), true),
                    s("target", targets(|t| t.2), true),
                ],
            ),
            panel(
                "where the sync goes (each phase alone)",
                "seconds",
                true,
                vec![
                    s("API list", self.xy(|p| p.phases.list_seconds), false),
                    s(
                        "API list, protobuf from the cache",
                        self.xy(|p| p.phases.cache_protobuf_seconds),
                        true,
                    ),
                    s("decode", self.xy(|p| p.phases.decode_seconds), false),
                    s("judge", self.xy(|p| p.phases.judge_seconds), false),
                    s(
                        "weftd reconcile",
                        self.xy(|p| p.reconcile_seconds.unwrap_or(f64::NAN)),
                        false,
                    ),
                    s("start -> entries", self.xy(|p| p.sync_seconds), true),
                ],
            ),
            panel(
                "bytes from the API server until synced",
                "MB",
                true,
                vec![s("received", self.xy(|p| p.api_rx_mb), false)],
            ),
            panel(
                "CPU per Node added",
                "ms",
                false,
                vec![s(&agent, self.xy(|p| p.cpu_ms_per_add), false)],
            ),
        ];
        plot::curves(
            path,
            &format!("weft control plane: {agent}, cost against cluster size"),
            &panels,
            2,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_find_the_line_and_the_exponent() {
        let (a, b) = linear_fit(&[(1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]);
        assert!((a - 1.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9);
        let k = growth_exponent(&[(100.0, 1.0), (1000.0, 10.0), (10000.0, 100.0)]);
        assert!((k - 1.0).abs() < 1e-9);
        let k = growth_exponent(&[(100.0, 1.0), (1000.0, 100.0)]);
        assert!((k - 2.0).abs() < 1e-9);
    }
}
