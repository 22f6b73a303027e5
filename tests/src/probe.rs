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

/// A ping from one pod to another every 10 ms (100 packets/s), running
/// until [`Pinger::stop`]; counts the packets lost on the way.
pub struct Pinger {
    pub from: String,
    pub to: String,
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<(u64, Instant)>>,
}

/// What a [`Pinger`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Loss {
    /// Echo requests up to the last one answered.
    pub sent: u64,
    /// Requests among those without an answer.
    pub lost: u64,
    /// The longest time without an answer, beyond the 10 ms interval, in
    /// milliseconds (ping sends less often while the route is gone, so
    /// this is wall-clock time, not lost requests × 10 ms).
    pub longest_gap_ms: u64,
}

impl Loss {
    /// Loss over several pingers: sums, and the longest gap of any.
    pub fn total(all: &[Loss]) -> Loss {
        Loss {
            sent: all.iter().map(|l| l.sent).sum(),
            lost: all.iter().map(|l| l.lost).sum(),
            longest_gap_ms: all.iter().map(|l| l.longest_gap_ms).max().unwrap_or(0),
        }
    }

    /// From the answers (sequence number, unwrapped, and arrival time, in
    /// arrival order): every request up to the last answered one counts,
    /// so the request in flight when the pinger stops is neither sent nor
    /// lost.
    pub fn from_answers(answers: &[(u64, Instant)]) -> Loss {
        let mut s: Vec<u64> = answers.iter().map(|a| a.0).collect();
        s.sort_unstable();
        s.dedup();
        let Some(&last) = s.last() else {
            return Loss::default();
        };
        let longest = answers
            .windows(2)
            .map(|w| w[1].1.saturating_duration_since(w[0].1))
            .max()
            .unwrap_or_default()
            .saturating_sub(Duration::from_millis(10));
        Loss {
            sent: last,
            lost: last - s.len() as u64,
            longest_gap_ms: longest.as_millis() as u64,
        }
    }
}

impl Pinger {
    /// Starts `ping -i 0.01` in `from`'s namespace toward `to`.
    pub fn start(lab: &Lab, from: &Pod, to: &Pod) -> Result<Pinger, LabError> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut cmd = lab.node_command(&from.node, "ip")?;
        cmd.args(["netns", "exec", &from.name, "ping", "-n", "-i", "0.01"])
            .arg(to.ip.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| LabError::State {
            path: "ping".into(),
            source,
        })?;
        let out = child.stdout.take().ok_or_else(|| LabError::State {
            path: "ping".into(),
            source: std::io::Error::other("no stdout"),
        })?;
        let reader = std::thread::spawn(move || {
            // icmp_seq wraps at 65536 (11 minutes at 100/s): unwrap it.
            let (mut base, mut last, mut seqs) = (0u64, 0u64, Vec::new());
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if !line.contains("bytes from") {
                    continue;
                }
                let Some(q) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))
                    .and_then(|q| q.parse::<u64>().ok())
                else {
                    continue;
                };
                if q + 30_000 < last {
                    base += 65_536;
                }
                last = q;
                seqs.push((base + q, Instant::now()));
            }
            seqs
        });
        Ok(Pinger {
            from: from.name.clone(),
            to: to.name.clone(),
            child,
            reader,
        })
    }

    /// Stops the ping (SIGINT) and counts.
    pub fn stop(mut self) -> Loss {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
        Loss::from_answers(&self.reader.join().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Loss;

    #[test]
    fn loss_counts_gaps_up_to_the_last_answer() {
        let t0 = Instant::now();
        let at = |q: u64, ms: u64| (q, t0 + Duration::from_millis(ms));
        assert_eq!(Loss::from_answers(&[]), Loss::default());
        let l = Loss::from_answers(&[
            at(1, 10),
            at(2, 20),
            at(3, 30),
            at(7, 500),
            at(8, 510),
            at(10, 530),
        ]);
        assert_eq!((l.sent, l.lost, l.longest_gap_ms), (10, 4, 460));
        // A first answer after some requests: those were lost.
        let l = Loss::from_answers(&[at(4, 40), at(5, 50)]);
        assert_eq!((l.sent, l.lost, l.longest_gap_ms), (5, 3, 0));
        let t = Loss::total(&[l, Loss::from_answers(&[at(1, 0), at(2, 100)])]);
        assert_eq!((t.sent, t.lost, t.longest_gap_ms), (7, 3, 90));
    }
}
