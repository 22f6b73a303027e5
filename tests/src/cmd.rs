//! Running host tools (`ip`, `nsenter`, `etcdctl`, ...) with errors that say
//! which command failed and what it printed.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// A host command that could not be started or exited non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("could not start `{cmd}` (is it installed? run scripts/setup-host.sh)")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Renders a command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; stdout on success, an error with stderr otherwise.
pub fn run(cmd: &mut Command) -> Result<String, CmdError> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd: describe(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with `stdin` fed to it; stdout on success, an error with
/// stderr otherwise.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Result<String, CmdError> {
    use std::io::Write;
    use std::process::Stdio;
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            cmd: line.clone(),
            source,
        })?;
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|source| CmdError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and returns its output whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output, CmdError> {
    cmd.stdin(std::process::Stdio::null());
    cmd.output().map_err(|source| CmdError::Spawn {
        cmd: describe(cmd),
        source,
    })
}

/// `ip ARGS...`
pub fn ip<I, S>(args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").args(args))
}

/// A veth pair: `name` in namespace `ns`, its peer `eth0` in `peer_ns`.
pub fn veth_to_eth0(ns: &str, name: &str, peer_ns: &str) -> Result<String, CmdError> {
    ip([
        "-n", ns, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", peer_ns,
    ])
}

/// Whether `prog` is found on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}
