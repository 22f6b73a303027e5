//! Long-lived lab processes (etcd, kube-apiserver, node holders, daemons).
//!
//! Every process a lab starts carries `WEFT_LAB=<lab>` in its environment,
//! inherited by whatever it execs or forks. Stopping a lab, or cleaning up
//! after a killed one, finds its processes by that mark (and by the lab's
//! network namespaces), so nothing depends on a PID file surviving.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The environment variable that marks a process as a lab's.
pub const MARK: &str = "WEFT_LAB";

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("opening log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// Starts `cmd` in the background, detached from our process group, with
/// stdin closed and stdout+stderr appended to `log`. Returns its PID.
pub fn spawn(lab: &str, cmd: &mut Command, log: &Path) -> Result<u32, ProcError> {
    use std::os::unix::process::CommandExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| ProcError::Log {
            path: log.to_path_buf(),
            source,
        })?;
    let err_file = file.try_clone().map_err(|source| ProcError::Log {
        path: log.to_path_buf(),
        source,
    })?;
    cmd.env(MARK, lab)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .process_group(0);
    let child = cmd.spawn().map_err(|source| ProcError::Spawn {
        cmd: crate::cmd::describe(cmd),
        source,
    })?;
    Ok(child.id())
}

/// Whether process `pid` exists (and is not a zombie we can reap).
pub fn alive(pid: i32) -> bool {
    reap(pid);
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn reap(pid: i32) {
    // Only succeeds for our own children; harmless otherwise.
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// PIDs of all processes marked with `WEFT_LAB=<lab>`, or with any lab's mark
/// when `lab` is `None`.
pub fn marked(lab: Option<&str>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            env.split(|&b| b == 0).any(|kv| {
                let Some(value) = kv.strip_prefix(format!("{MARK}=").as_bytes()) else {
                    return false;
                };
                lab.is_none_or(|l| value == l.as_bytes())
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The command line of `pid`, for messages.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Sends SIGTERM to `pids`, waits up to `grace`, then SIGKILLs survivors and
/// waits for them to go. Returns the PIDs that were signalled.
pub fn terminate(pids: &[i32], grace: Duration) -> Vec<i32> {
    let live: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &pid in &live {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &live {
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && live.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    live
}
