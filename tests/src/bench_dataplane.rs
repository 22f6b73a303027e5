//! `weft-lab bench dataplane`: pod-to-pod TCP throughput across two lab
//! nodes, per backend, against the underlay alone (node to node, no
//! overlay), from one run: iperf3 for a fixed time with 1 and N streams,
//! repeated, the backends interleaved (vxlan, udp, underlay, vxlan, ...) so
//! the machine's noise hits each alike. CPU: the whole machine's busy share
//! during the transfer, and the weftd processes' own CPU time (the udp
//! backend's data path runs in weftd; VXLAN's runs in the kernel).

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::lab::{Backend, Lab, LabConfig, LabError};

/// One measured transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub path: String,
    pub streams: u32,
    pub rep: u32,
    pub gbit_s: f64,
    /// Busy share of all CPUs during the transfer, percent of one core.
    pub machine_cpu_pct: f64,
    /// CPU seconds the two weftd processes used, per second of transfer.
    pub weftd_cpu_s_per_s: f64,
    pub retransmits: u64,
}

/// Medians per (path, streams), and the ratios.
#[derive(Debug, Clone, Serialize)]
pub struct DataplaneReport {
    pub seconds: u64,
    pub reps: u32,
    pub samples: Vec<Sample>,
    pub medians: Vec<(String, u32, f64, f64, f64)>,
    pub udp_over_vxlan: Vec<(u32, f64)>,
    /// host-gw's throughput over the underlay's (same kernel routing path).
    pub host_gw_over_underlay: Vec<(u32, f64)>,
}

fn err(msg: String) -> LabError {
    LabError::State {
        path: "bench dataplane".into(),
        source: std::io::Error::other(msg),
    }
}

/// (busy, total) jiffies of all CPUs.
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of /proc/pid/stat, counted after the command name.
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Path<'a> {
    name: &'static str,
    lab: &'a Lab,
    /// (node, netns to run in (None: the node itself), target address).
    client: (&'a str, Option<String>),
    server: (&'a str, Option<String>),
    target: String,
}

/// `args`, run inside `ns` when given (on the node the caller picks).
fn in_place(ns: &Option<String>, args: &[&str]) -> Vec<String> {
    let mut full: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        full.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
    }
    full.extend(args.iter().map(|s| s.to_string()));
    full
}

fn transfer(p: &Path<'_>, streams: u32, secs: u64, rep: u32) -> Result<Sample, LabError> {
    let lab = p.lab;
    let server = in_place(&p.server.1, &["iperf3", "-s", "-1", "-p", "5301"]);
    let sargs: Vec<&str> = server.iter().map(String::as_str).collect();
    let mut srv = lab.node_command(p.server.0, sargs[0])?;
    srv.args(&sargs[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut srv = srv
        .spawn()
        .map_err(|e| err(format!("iperf3 server: {e}")))?;
    std::thread::sleep(Duration::from_millis(300));
    let weftds: Vec<u32> = lab.state.nodes.iter().filter_map(|n| n.weftd_pid).collect();
    let t0: u64 = weftds.iter().map(|p| proc_ticks(*p)).sum();
    let c0 = cpu_jiffies();
    let (s, t) = (streams.to_string(), secs.to_string());
    let client = in_place(
        &p.client.1,
        &[
            "iperf3", "-c", &p.target, "-p", "5301", "-t", &t, "-P", &s, "-J",
        ],
    );
    let cargs: Vec<&str> = client.iter().map(String::as_str).collect();
    let out = lab.exec(p.client.0, &cargs)?;
    let c1 = cpu_jiffies();
    let t1: u64 = weftds.iter().map(|p| proc_ticks(*p)).sum();
    let _ = srv.kill();
    let _ = srv.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| err(format!("iperf3 {} output: {e}", p.name)))?;
    if let Some(e) = json["error"].as_str() {
        return Err(err(format!("iperf3 over {}: {e}", p.name)));
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let busy = (c1.0 - c0.0) as f64;
    let total = (c1.1 - c0.1).max(1) as f64;
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let hz = 100.0;
    Ok(Sample {
        path: p.name.to_string(),
        streams,
        rep,
        gbit_s: bps / 1e9,
        machine_cpu_pct: busy / total * ncpu * 100.0,
        weftd_cpu_s_per_s: (t1 - t0) as f64 / hz / secs as f64,
        retransmits: json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

fn two_node_lab(name: &str, backend: Backend) -> Result<Lab, LabError> {
    let cfg = LabConfig {
        backend,
        ..LabConfig::with_weftd(name, 2)
    };
    let mut lab = Lab::up(&cfg)?;
    lab.add_pod("node-1", "bench-a")?;
    lab.add_pod("node-2", "bench-b")?;
    Ok(lab)
}

/// Runs the benchmark over `backends` (plus the underlay).
pub fn run(
    name: &str,
    backends: &[Backend],
    secs: u64,
    reps: u32,
    streams: &[u32],
) -> Result<DataplaneReport, LabError> {
    let mut labs = Vec::new();
    for b in backends {
        let lab_name = format!("{name}-{}", b.short());
        eprintln!(
            "==> bringing up lab {lab_name} (2 nodes, {}, one pod each)",
            b.type_name()
        );
        labs.push((*b, two_node_lab(&lab_name, *b)?));
    }
    let mut paths = Vec::new();
    for (b, lab) in &labs {
        let ip = |pod: &str| lab.pod(pod).map(|p| p.ip.to_string()).unwrap_or_default();
        paths.push(Path {
            name: b.type_name(),
            lab,
            client: ("node-1", Some("bench-a".into())),
            server: ("node-2", Some("bench-b".into())),
            target: ip("bench-b"),
        });
    }
    if let Some((_, lab)) = labs.first() {
        let target = lab.node("node-2")?.underlay_ip.to_string();
        paths.push(Path {
            name: "underlay",
            lab,
            client: ("node-1", None),
            server: ("node-2", None),
            target,
        });
    }
    let mut samples = Vec::new();
    for rep in 1..=reps {
        for s in streams {
            for p in &paths {
                eprintln!("==> rep {rep}: {} with {s} stream(s), {secs} s", p.name);
                samples.push(transfer(p, *s, secs, rep)?);
            }
        }
    }
    let mut medians = Vec::new();
    for p in &paths {
        for s in streams {
            let of = |f: fn(&Sample) -> f64| {
                median(
                    samples
                        .iter()
                        .filter(|x| x.path == p.name && x.streams == *s)
                        .map(f)
                        .collect(),
                )
            };
            medians.push((
                p.name.to_string(),
                *s,
                of(|x| x.gbit_s),
                of(|x| x.machine_cpu_pct),
                of(|x| x.weftd_cpu_s_per_s),
            ));
        }
    }
    let get = |path: &str, s: u32| {
        medians
            .iter()
            .find(|m| m.0 == path && m.1 == s)
            .map(|m| m.2)
    };
    let udp_over_vxlan = streams
        .iter()
        .filter_map(|s| Some((*s, get("udp", *s)? / get("vxlan", *s)?)))
        .collect();
    let host_gw_over_underlay = streams
        .iter()
        .filter_map(|s| Some((*s, get("host-gw", *s)? / get("underlay", *s)?)))
        .collect();
    Ok(DataplaneReport {
        seconds: secs,
        reps,
        samples,
        medians,
        udp_over_vxlan,
        host_gw_over_underlay,
    })
}

impl DataplaneReport {
    /// Bars per path (backend, or the underlay alone) and stream count:
    /// median Gbit/s and the machine's busy CPU.
    pub fn plot(&self, path: &std::path::Path) -> Result<(), crate::plot::PlotError> {
        let mut paths: Vec<String> = Vec::new();
        let mut streams: Vec<u32> = Vec::new();
        for (p, s, ..) in &self.medians {
            if !paths.contains(p) {
                paths.push(p.clone());
            }
            if !streams.contains(s) {
                streams.push(*s);
            }
        }
        let chart = |title: &str, y: &str, pick: fn(&(String, u32, f64, f64, f64)) -> f64| {
            crate::plot::Bars {
                title: title.into(),
                y_label: y.into(),
                groups: paths
                    .iter()
                    .map(|p| {
                        let members = streams
                            .iter()
                            .map(|s| {
                                let v = self
                                    .medians
                                    .iter()
                                    .find(|m| &m.0 == p && m.1 == *s)
                                    .map(pick)
                                    .unwrap_or(f64::NAN);
                                (format!("{s} stream{}", if *s == 1 { "" } else { "s" }), v)
                            })
                            .collect();
                        (p.clone(), members)
                    })
                    .collect(),
            }
        };
        crate::plot::bars(
            path,
            &format!(
                "pod-to-pod TCP across 2 lab nodes, iperf3 {} s, median of {} reps",
                self.seconds, self.reps
            ),
            &[
                chart("throughput", "Gbit/s", |m| m.2),
                chart("machine CPU busy", "% (200 = both cores)", |m| m.3),
            ],
        )
    }

    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "pod-to-pod TCP across 2 lab nodes, iperf3 {} s, median of {} interleaved reps",
            self.seconds, self.reps
        )?;
        writeln!(
            out,
            "{:<10} {:>8} {:>10} {:>16} {:>16}",
            "path", "streams", "Gbit/s", "machine CPU %", "weftd CPU s/s"
        )?;
        for (p, s, g, c, w) in &self.medians {
            writeln!(out, "{p:<10} {s:>8} {g:>10.2} {c:>16.0} {w:>16.2}")?;
        }
        for (s, r) in &self.udp_over_vxlan {
            writeln!(out, "udp / vxlan, {s} stream(s): {r:.2} (target >= 0.8)")?;
        }
        for (s, r) in &self.host_gw_over_underlay {
            writeln!(
                out,
                "host-gw / underlay, {s} stream(s): {r:.2} (target >= 0.97)"
            )?;
        }
        Ok(())
    }
}
