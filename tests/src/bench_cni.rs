//! `weft-lab bench cni`: what weft adds to a pod's ADD and DEL, measured
//! against the bridge plugin called directly with the same delegate config,
//! on a lab node, interleaved (weft, bridge, weft, bridge, ...) so that the
//! machine's noise hits both alike. Wall time and CPU (user + system of the
//! plugin processes and their children) per call; medians.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use serde::Serialize;

use crate::lab::{Lab, LabConfig, LabError};
use crate::runtime::CNI_PATH;

/// Its results (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct CniReport {
    pub runs: usize,
    pub add_wall_ms_weft: f64,
    pub add_wall_ms_bridge: f64,
    pub add_cpu_ms_weft: f64,
    pub add_cpu_ms_bridge: f64,
    pub del_wall_ms_weft: f64,
    pub del_wall_ms_bridge: f64,
    pub del_cpu_ms_weft: f64,
    pub del_cpu_ms_bridge: f64,
    /// Median of the per-pair differences (weft − bridge of the same
    /// round), the steadier estimate of what weft adds.
    pub add_cpu_ms_extra_paired: f64,
    pub del_cpu_ms_extra_paired: f64,
    /// Every run, in order: ADD wall weft, bridge; ADD CPU weft, bridge;
    /// DEL wall weft, bridge; DEL CPU weft, bridge.
    pub samples_ms: [Vec<f64>; 8],
}

fn children_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or_default()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn bench_err(msg: String) -> LabError {
    LabError::State {
        path: "bench cni".into(),
        source: std::io::Error::other(msg),
    }
}

/// Runs `exe` on `node` as a CNI plugin; (wall, cpu).
fn timed(
    lab: &Lab,
    node: &str,
    exe: &str,
    cmd: &str,
    id: &str,
    conf: &str,
) -> Result<(f64, f64), LabError> {
    let mut c = lab.node_command(node, exe)?;
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{id}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let mut child = c
        .spawn()
        .map_err(|e| bench_err(format!("starting {exe}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| bench_err(format!("running {exe}: {e}")))?;
    let wall = t0.elapsed().as_secs_f64() * 1e3;
    let cpu = (children_cpu() - cpu0).as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(bench_err(format!(
            "{exe} {cmd} {id}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((wall, cpu))
}

/// Runs `runs` interleaved ADD/DEL pairs through weft and through bridge.
pub fn run(name: &str, runs: usize) -> Result<CniReport, LabError> {
    eprintln!("==> bringing up lab {name} (1 node with weftd)");
    let lab = Lab::up(&LabConfig::with_weftd(name, 1))?;
    let node = "node-1";
    let weft_conf = r#"{"cniVersion":"1.0.0","name":"cbr0","type":"weft","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
    let bridge_conf = r#"{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#;
    let mut m: [Vec<f64>; 8] = Default::default();
    eprintln!("==> {runs} interleaved ADD/DEL pairs through weft and straight to bridge");
    for i in 0..runs {
        let (w, b) = (format!("w{i}"), format!("b{i}"));
        lab.run(node, &["ip", "netns", "add", &w])?;
        lab.run(node, &["ip", "netns", "add", &b])?;
        // Alternate who goes first, so that order effects cancel.
        let weft = ("/opt/cni/bin/weft", w.as_str(), weft_conf, 0);
        let bridge = ("/usr/lib/cni/bridge", b.as_str(), bridge_conf, 1);
        let order = if i % 2 == 0 {
            [weft, bridge]
        } else {
            [bridge, weft]
        };
        for (cmd, base) in [("ADD", 0), ("DEL", 4)] {
            for (exe, id, conf, k) in order {
                let (wall, cpu) = timed(&lab, node, exe, cmd, id, conf)?;
                m[base + k].push(wall);
                m[base + 2 + k].push(cpu);
            }
        }
        lab.run(node, &["ip", "netns", "del", &w])?;
        lab.run(node, &["ip", "netns", "del", &b])?;
    }
    let paired = |w: &[f64], b: &[f64]| {
        let mut d: Vec<f64> = w.iter().zip(b).map(|(w, b)| w - b).collect();
        median(&mut d)
    };
    let add_paired = paired(&m[2], &m[3]);
    let del_paired = paired(&m[6], &m[7]);
    let samples_ms = m.clone();
    let [a, b, c, d, e, f, g, h] = &mut m;
    Ok(CniReport {
        runs,
        add_wall_ms_weft: median(a),
        add_wall_ms_bridge: median(b),
        add_cpu_ms_weft: median(c),
        add_cpu_ms_bridge: median(d),
        del_wall_ms_weft: median(e),
        del_wall_ms_bridge: median(f),
        del_cpu_ms_weft: median(g),
        del_cpu_ms_bridge: median(h),
        add_cpu_ms_extra_paired: add_paired,
        del_cpu_ms_extra_paired: del_paired,
        samples_ms,
    })
}

impl CniReport {
    /// Box plots of every run: ADD and DEL, wall and CPU, weft → bridge
    /// against bridge alone.
    pub fn plot(&self, path: &std::path::Path) -> Result<(), crate::plot::PlotError> {
        let m = &self.samples_ms;
        let chart = |title: &str, y: &str, w: &Vec<f64>, b: &Vec<f64>| crate::plot::Distributions {
            title: title.into(),
            y_label: y.into(),
            samples: vec![
                ("weft -> bridge".into(), w.clone()),
                ("bridge alone".into(), b.clone()),
            ],
        };
        crate::plot::distributions(
            path,
            &format!("CNI ADD and DEL, {} interleaved runs", self.runs),
            &[
                chart("ADD, CPU", "ms (user + system)", &m[2], &m[3]),
                chart("ADD, wall", "ms", &m[0], &m[1]),
                chart("DEL, CPU", "ms (user + system)", &m[6], &m[7]),
                chart("DEL, wall", "ms", &m[4], &m[5]),
            ],
        )
    }

    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "CNI ADD/DEL, median of {} interleaved runs (ms; CPU = user+system of the plugin processes)",
            self.runs
        )?;
        writeln!(
            out,
            "{:<10} {:>12} {:>12} {:>10} {:>8}",
            "", "weft->bridge", "bridge", "extra", "target"
        )?;
        let rows = [
            (
                "ADD wall",
                self.add_wall_ms_weft,
                self.add_wall_ms_bridge,
                "-",
            ),
            (
                "ADD CPU",
                self.add_cpu_ms_weft,
                self.add_cpu_ms_bridge,
                "<= 1",
            ),
            (
                "DEL wall",
                self.del_wall_ms_weft,
                self.del_wall_ms_bridge,
                "-",
            ),
            ("DEL CPU", self.del_cpu_ms_weft, self.del_cpu_ms_bridge, "-"),
        ];
        for (k, w, b, t) in rows {
            writeln!(out, "{k:<10} {w:>12.2} {b:>12.2} {:>10.2} {t:>8}", w - b)?;
        }
        writeln!(
            out,
            "extra CPU, median of per-round differences: ADD {:.2}, DEL {:.2}",
            self.add_cpu_ms_extra_paired, self.del_cpu_ms_extra_paired
        )?;
        Ok(())
    }
}
