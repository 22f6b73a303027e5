//! `weft-lab check`: every pod to every other pod, ICMP and TCP (over IPv6
//! too in a dual-stack lab).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::lab::{Lab, LabError};
use crate::runtime::PodRecord;

/// One ordered pair of pods and what got through.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PairResult {
    pub from: String,
    pub to: String,
    pub to_ip: String,
    pub icmp: bool,
    pub tcp: bool,
    /// What iperf3 said when TCP failed (its last lines), for the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_error: Option<String>,
}

impl PairResult {
    pub fn ok(&self) -> bool {
        self.icmp && self.tcp
    }
}

const PORT: &str = "5201";
/// The IPv6 servers' port (each server binds one address).
const PORT6: &str = "5202";

impl Lab {
    /// Runs `args` inside `pod` (its network namespace, on its node); its output.
    pub fn pod_cmd(
        &self,
        pod: &PodRecord,
        args: &[&str],
    ) -> Result<std::process::Output, LabError> {
        let mut full = vec!["ip", "netns", "exec", pod.name.as_str()];
        full.extend_from_slice(args);
        self.exec(&pod.node, &full)
    }

    /// A pod's global IPv6 address, if it has one.
    pub fn pod_ipv6(&self, pod: &PodRecord) -> Result<Option<String>, LabError> {
        let out = self.pod_cmd(
            pod,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .map(str::to_string))
    }

    /// Makes sure a TCP server (iperf3) listens on `ip`:`port` in `pod`.
    fn tcp_server(&self, p: &PodRecord, ip: &str, port: &str) -> Result<(), LabError> {
        let listening = |lab: &Lab| {
            lab.pod_cmd(p, &["ss", "-Hltn"])
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{port}")))
                .unwrap_or(false)
        };
        if listening(self) {
            return Ok(());
        }
        self.pod_cmd(p, &["iperf3", "-s", "-D", "-B", ip, "-p", port])?;
        let t0 = Instant::now();
        while !listening(self) {
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(LabError::State {
                    path: format!("pod {}", p.name).into(),
                    source: std::io::Error::other("iperf3 server did not start"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The connectivity matrix over every pod the lab created: IPv4, and
    /// IPv6 as well in a dual-stack lab.
    pub fn connectivity(&self) -> Result<Vec<PairResult>, LabError> {
        let mut targets: Vec<(&PodRecord, String, &str)> = Vec::new();
        for p in &self.state.pods {
            let ip = p.ip.to_string();
            self.tcp_server(p, &ip, PORT)?;
            targets.push((p, ip, PORT));
        }
        if self.state.dual_stack {
            for p in &self.state.pods {
                if let Some(ip) = self.pod_ipv6(p)? {
                    self.tcp_server(p, &ip, PORT6)?;
                    targets.push((p, ip, PORT6));
                }
            }
        }
        let mut out = Vec::new();
        for a in &self.state.pods {
            for (b, ip, port) in &targets {
                if a == *b {
                    continue;
                }
                // -w: a fresh IPv6 gateway may still be in duplicate address
                // detection for its first second.
                let icmp = self
                    .pod_cmd(a, &["ping", "-q", "-c", "1", "-w", "5", ip])?
                    .status
                    .success();
                let tcp_error = self.tcp_transfer(a, ip, port)?;
                out.push(PairResult {
                    from: a.name.clone(),
                    to: b.name.clone(),
                    to_ip: ip.clone(),
                    icmp,
                    tcp: tcp_error.is_none(),
                    tcp_error,
                });
            }
        }
        Ok(out)
    }

    /// 64 KiB over TCP from `pod` to `ip`:`port` with iperf3; what iperf3
    /// said if it failed. An iperf3 server runs one test at a time and stays
    /// busy until the previous client's last segments reach it (they may
    /// have been in flight through a fault the test just made): "busy" is
    /// asked again for up to 5 s; any other failure is the answer.
    fn tcp_transfer(
        &self,
        pod: &PodRecord,
        ip: &str,
        port: &str,
    ) -> Result<Option<String>, LabError> {
        let t0 = Instant::now();
        loop {
            let out = self.pod_cmd(
                pod,
                &[
                    "iperf3",
                    "-c",
                    ip,
                    "-p",
                    port,
                    "-n",
                    "64K",
                    "--connect-timeout",
                    "2000",
                ],
            )?;
            if out.status.success() {
                return Ok(None);
            }
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if said.contains("server is busy") && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let tail: Vec<&str> = said.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Ok(Some(format!(
                "after {:?}: {}",
                t0.elapsed(),
                tail.join(" | ")
            )));
        }
    }
}
