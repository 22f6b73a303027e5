//! Running the `weft` binary as a runtime would: only the given environment,
//! the network config on stdin.

#![allow(clippy::unwrap_used, dead_code)] // test code; not every test file uses every helper

use std::io::Write;
use std::process::{Child, Command, Stdio};

/// Starts the plugin with exactly `env` and `stdin`.
pub fn spawn(env: &[(&str, &str)], stdin: &[u8]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // A plugin that refuses early may not read it all.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child
}

/// (success, stdout, stderr) of a finished run.
pub fn finish(child: Child) -> (bool, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the plugin to completion.
pub fn run(env: &[(&str, &str)], stdin: &[u8]) -> (bool, String, String) {
    finish(spawn(env, stdin))
}
