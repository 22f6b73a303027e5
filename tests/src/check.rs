//! `weft-lab check`: every pod to every other pod, ICMP and TCP.

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
}

impl PairResult {
    pub fn ok(&self) -> bool {
        self.icmp && self.tcp
    }
}

const PORT: &str = "5201";

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

    /// Makes sure a TCP server (iperf3) listens in every pod.
    fn tcp_servers(&self) -> Result<(), LabError> {
        for p in &self.state.pods {
            let listening = |lab: &Lab| {
                lab.pod_cmd(p, &["ss", "-Hltn"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{PORT}")))
                    .unwrap_or(false)
            };
            if listening(self) {
                continue;
            }
            let ip = p.ip.to_string();
            self.pod_cmd(p, &["iperf3", "-s", "-D", "-B", &ip, "-p", PORT])?;
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
        }
        Ok(())
    }

    /// The connectivity matrix over every pod the lab created.
    pub fn connectivity(&self) -> Result<Vec<PairResult>, LabError> {
        self.tcp_servers()?;
        let mut out = Vec::new();
        for a in &self.state.pods {
            for b in &self.state.pods {
                if a == b {
                    continue;
                }
                let ip = b.ip.to_string();
                let icmp = self
                    .pod_cmd(a, &["ping", "-q", "-c", "1", "-W", "2", &ip])?
                    .status
                    .success();
                let tcp = self
                    .pod_cmd(
                        a,
                        &[
                            "iperf3",
                            "-c",
                            &ip,
                            "-p",
                            PORT,
                            "-n",
                            "64K",
                            "--connect-timeout",
                            "2000",
                        ],
                    )?
                    .status
                    .success();
                out.push(PairResult {
                    from: a.name.clone(),
                    to: b.name.clone(),
                    to_ip: ip,
                    icmp,
                    tcp,
                });
            }
        }
        Ok(out)
    }
}
