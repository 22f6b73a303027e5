//! What the end-to-end tests look at, in one place: waiting for a
//! condition, a weftd metric, a ping loop between pods, a node's routes.

use std::time::{Duration, Instant};

use crate::pods::Pod;
use crate::runtime::PodRecord;
use crate::{Lab, LabError};

/// Polls `f` every 10 ms up to `limit`; how long it took, or panics with
/// `what`. A slow `f` that turns true only after `limit` fails too.
pub fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            let took = t0.elapsed();
            assert!(took <= limit, "{what}: took {took:?}, more than {limit:?}");
            return took;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of the first line of `node`'s weftd metrics that starts with
/// `line_prefix` (a metric name with its labels), if there is one.
pub fn metric(lab: &Lab, node: &str, line_prefix: &str) -> Option<f64> {
    lab.weftd_metrics(node)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

/// `ping -i 0.01` from one pod to another in the background for `secs`;
/// (transmitted, received). Panics (in the join) with `log` when ping
/// printed no summary.
pub fn ping_run(
    lab: &Lab,
    from: &Pod,
    to: &Pod,
    secs: u32,
    log: &str,
) -> std::thread::JoinHandle<(u64, u64)> {
    let cmd = lab.node_command(&from.node, "ip").map(|mut cmd| {
        cmd.args([
            "netns",
            "exec",
            &from.name,
            "ping",
            "-q",
            "-i",
            "0.01",
            "-w",
            &secs.to_string(),
            &to.ip.to_string(),
        ]);
        cmd
    });
    let log = log.to_string();
    std::thread::spawn(move || {
        let out = cmd
            .and_then(|mut c| {
                c.output().map_err(|e| crate::LabError::State {
                    path: "ping".into(),
                    source: e,
                })
            })
            .unwrap_or_else(|e| panic!("{log}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("{log}: {text}"));
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        (nums[0], nums[1])
    })
}

/// `ip -<family> route show dev <dev> root <prefix>` on `node`, one route a
/// line, sorted; panics when `ip` fails (an empty list must mean "none").
pub fn routes(lab: &Lab, node: &str, family: u8, dev: &str, root: &str) -> Vec<String> {
    let fam = format!("-{family}");
    let out = lab
        .run(
            node,
            &["ip", &fam, "route", "show", "dev", dev, "root", root],
        )
        .unwrap_or_else(|e| panic!("ip route on {node}: {e}"));
    let mut r: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    r.sort();
    r
}

impl Lab {
    /// A pod the lab created through the CNI runtime, by name.
    pub fn pod(&self, name: &str) -> Result<&PodRecord, LabError> {
        let pods = &self.state.pods;
        pods.iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchPod {
                lab: self.state.name.clone(),
                pod: name.to_string(),
                known: pods
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
