//! weftd's metrics, rendered in Prometheus' text format on `/metrics`, and
//! the readiness `/readyz` reports.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::udp::forward::{Counters, Reason};

/// One metric family: name, help, type, and its samples (suffix or labels, value).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(String, String)>,
);

#[derive(Debug, Default)]
struct Values {
    peers: BTreeMap<&'static str, u64>,
    skipped: BTreeMap<&'static str, u64>,
    netlink_ops: BTreeMap<&'static str, u64>,
    netlink_errors: BTreeMap<&'static str, u64>,
    reconciles: u64,
    reconcile_errors: u64,
    reconcile_seconds_sum: f64,
    reconcile_seconds_last: f64,
    device_creations: u64,
    node_events: u64,
    nft_syncs: BTreeMap<&'static str, u64>,
    nft_restorations: u64,
    nft_errors: u64,
    file_restorations: BTreeMap<&'static str, u64>,
    allowlist_drops: u64,
    udp: Option<Arc<Counters>>,
}

/// What an nftables sync can do (`weft_nft_syncs_total`'s results).
pub const NFT_RESULTS: [&str; 4] = ["unchanged", "created", "rewritten", "elements"];

/// The files weftd keeps (`weft_file_restorations_total`'s files): subnet.env,
/// the conflist, the plugin.
pub const KEPT_FILES: [&str; 3] = ["subnet.env", "10-weft.conflist", "weft"];

/// Shared by the reconcile loop (writer) and the HTTP server (reader).
#[derive(Debug)]
pub struct Metrics {
    v: Mutex<Values>,
    ready: AtomicBool,
}

impl Default for Metrics {
    /// Every label value weftd can count is there from the start, at 0: a
    /// counter that appears only with its first increment hides that
    /// increment from increase() and rate(), and leaves alerts and
    /// dashboards with no series to show.
    fn default() -> Self {
        let mut v = Values::default();
        for k in crate::netlink::Op::KINDS {
            v.netlink_ops.insert(k, 0);
            v.netlink_errors.insert(k, 0);
        }
        for r in NFT_RESULTS {
            v.nft_syncs.insert(r, 0);
        }
        for f in KEPT_FILES {
            v.file_restorations.insert(f, 0);
        }
        Metrics {
            v: Mutex::new(v),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Values) -> R) -> R {
        match self.v.lock() {
            Ok(mut v) => f(&mut v),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Current peers of a family ("ipv4"/"ipv6").
    pub fn set_peers(&self, family: &'static str, n: usize) {
        self.with(|v| v.peers.insert(family, n as u64));
    }

    /// Current skipped nodes by reason (the caller gives every reason, zero
    /// or not, so that a cleared problem reads 0).
    pub fn set_skipped(&self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        self.with(|v| {
            for (reason, n) in counts {
                v.skipped.insert(reason, n);
            }
        });
    }

    /// A backend device was created outside a reconcile (at start-up).
    pub fn device_created(&self) {
        self.with(|v| v.device_creations += 1);
    }

    pub fn node_event(&self) {
        self.with(|v| v.node_events += 1);
    }

    /// Records one reconcile: its duration, netlink writes by kind, failed
    /// writes by kind, whether it failed as a whole, whether a device was
    /// created.
    pub fn reconciled(
        &self,
        seconds: f64,
        done: &BTreeMap<&'static str, u64>,
        failed: &[&'static str],
        error: bool,
        created: bool,
    ) {
        self.with(|v| {
            v.reconciles += 1;
            v.reconcile_seconds_sum += seconds;
            v.reconcile_seconds_last = seconds;
            for (k, n) in done {
                *v.netlink_ops.entry(k).or_default() += n;
            }
            for k in failed {
                *v.netlink_errors.entry(k).or_default() += 1;
            }
            if error || !failed.is_empty() {
                v.reconcile_errors += 1;
            }
            if created {
                v.device_creations += 1;
            }
        });
    }

    /// One nftables sync, by what it did; whether it restored the table
    /// after someone else changed it.
    pub fn nft_synced(&self, result: &'static str, restored: bool) {
        self.with(|v| {
            *v.nft_syncs.entry(result).or_default() += 1;
            v.nft_restorations += u64::from(restored);
        });
    }

    /// A file weftd keeps (subnet.env) was found missing or altered and
    /// written again.
    pub fn file_restored(&self, file: &'static str) {
        self.with(|v| *v.file_restorations.entry(file).or_default() += 1);
    }

    /// The udp backend's data-path counters, read at each scrape.
    pub fn set_udp(&self, counters: Arc<Counters>) {
        self.with(|v| v.udp = Some(counters));
    }

    pub fn nft_error(&self) {
        self.with(|v| v.nft_errors += 1);
    }

    /// Packets the allow-list dropped since the last reading.
    pub fn allowlist_dropped(&self, packets: u64) {
        self.with(|v| v.allowlist_drops += packets);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let ready = u64::from(self.ready());
        self.with(|v| {
            let mut s = String::new();
            let labelled =
                |label: &str, m: &BTreeMap<&'static str, u64>| -> Vec<(String, String)> {
                    m.iter()
                        .map(|(k, n)| (format!("{{{label}=\"{k}\"}}"), n.to_string()))
                        .collect()
                };
            let plain = |x: String| vec![(String::new(), x)];
            let families: [Family; 16] = [
                (
                    "weft_ready",
                    "1 once the first full reconcile is done and subnet.env is written.",
                    "gauge",
                    plain(ready.to_string()),
                ),
                (
                    "weft_peers",
                    "Nodes this node currently routes to, by address family.",
                    "gauge",
                    labelled("family", &v.peers),
                ),
                (
                    "weft_skipped_peers",
                    "Nodes skipped as peers, by reason.",
                    "gauge",
                    labelled("reason", &v.skipped),
                ),
                (
                    "weft_node_events_total",
                    "Node watch events received.",
                    "counter",
                    plain(v.node_events.to_string()),
                ),
                (
                    "weft_reconciles_total",
                    "Reconcile passes.",
                    "counter",
                    plain(v.reconciles.to_string()),
                ),
                (
                    "weft_reconcile_errors_total",
                    "Reconcile passes that did not fully succeed.",
                    "counter",
                    plain(v.reconcile_errors.to_string()),
                ),
                (
                    "weft_reconcile_duration_seconds",
                    "Time spent reconciling.",
                    "summary",
                    vec![
                        ("_sum".to_string(), v.reconcile_seconds_sum.to_string()),
                        ("_count".to_string(), v.reconciles.to_string()),
                    ],
                ),
                (
                    "weft_reconcile_last_duration_seconds",
                    "Duration of the last reconcile.",
                    "gauge",
                    plain(v.reconcile_seconds_last.to_string()),
                ),
                (
                    "weft_netlink_operations_total",
                    "Kernel table writes, by kind.",
                    "counter",
                    labelled("kind", &v.netlink_ops),
                ),
                (
                    "weft_netlink_errors_total",
                    "Kernel table writes refused, by kind.",
                    "counter",
                    labelled("kind", &v.netlink_errors),
                ),
                (
                    "weft_nft_syncs_total",
                    "Syncs of weft's nftables table, by result (unchanged, created, rewritten, elements).",
                    "counter",
                    labelled("result", &v.nft_syncs),
                ),
                (
                    "weft_nft_restorations_total",
                    "Times weft's nftables table was found missing or altered and restored.",
                    "counter",
                    plain(v.nft_restorations.to_string()),
                ),
                (
                    "weft_file_restorations_total",
                    "Times a file weftd keeps (subnet.env) was found missing or altered and written again.",
                    "counter",
                    labelled("file", &v.file_restorations),
                ),
                (
                    "weft_nft_errors_total",
                    "nftables reads or transactions that failed.",
                    "counter",
                    plain(v.nft_errors.to_string()),
                ),
                (
                    "weft_allowlist_dropped_packets_total",
                    "Packets to the backend's UDP port from non-peers, dropped (as counted by the table's rule).",
                    "counter",
                    plain(v.allowlist_drops.to_string()),
                ),
                (
                    "weft_device_creations_total",
                    "Backend devices created (first start, or after deletion).",
                    "counter",
                    plain(v.device_creations.to_string()),
                ),
            ];
            let mut families = families.to_vec();
            if let Some(c) = &v.udp {
                let t = c.totals();
                let dir = |i: u64, o: u64| {
                    vec![
                        ("{direction=\"in\"}".to_string(), i.to_string()),
                        ("{direction=\"out\"}".to_string(), o.to_string()),
                    ]
                };
                families.extend([
                    (
                        "weft_udp_packets_total",
                        "Packets the udp backend carried, by direction (a GSO super-packet counts once).",
                        "counter",
                        dir(t.packets_in, t.packets_out),
                    ),
                    (
                        "weft_udp_bytes_total",
                        "Bytes the udp backend carried, by direction.",
                        "counter",
                        dir(t.bytes_in, t.bytes_out),
                    ),
                    (
                        "weft_udp_dropped_packets_total",
                        "Packets the udp backend dropped, by reason.",
                        "counter",
                        Reason::ALL
                            .iter()
                            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), t.drops(*r).to_string()))
                            .collect(),
                    ),
                ]);
            }
            for (name, help, kind, samples) in families {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (suffix, value) in samples {
                    let _ = writeln!(s, "{name}{suffix} {value}");
                }
            }
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_labels() {
        let m = Metrics::default();
        m.set_peers("ipv4", 4);
        m.set_skipped([("bad_backend_data", 2), ("bad_public_ip", 0)]);
        let mut done = BTreeMap::new();
        done.insert("replace_route", 4);
        m.reconciled(0.25, &done, &["replace_fdb"], false, true);
        m.set_ready();
        m.nft_synced("rewritten", true);
        m.allowlist_dropped(3);
        let text = m.render();
        for line in [
            "weft_ready 1",
            "weft_peers{family=\"ipv4\"} 4",
            "weft_skipped_peers{reason=\"bad_backend_data\"} 2",
            "weft_skipped_peers{reason=\"bad_public_ip\"} 0",
            "weft_netlink_operations_total{kind=\"replace_route\"} 4",
            "weft_netlink_errors_total{kind=\"replace_fdb\"} 1",
            "weft_reconcile_errors_total 1",
            "weft_device_creations_total 1",
            "weft_nft_syncs_total{result=\"rewritten\"} 1",
            "weft_nft_restorations_total 1",
            "weft_allowlist_dropped_packets_total 3",
            "# TYPE weft_reconciles_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
