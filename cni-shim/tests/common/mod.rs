//! Running the `weft` binary as a runtime would: only the given environment,
//! the network config on stdin.

#![allow(clippy::unwrap_used, dead_code)] // test code; not every test file uses every helper

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The plugin binary, built fresh (once per test binary) by
/// scripts/build-plugin into this build's target directory: it is a
/// workspace of its own, so cargo does not build it for these tests.
pub fn plugin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // <target>/<profile>/deps/<this test>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        // Read when the test runs, not when it was compiled: a cached test
        // binary built from another checkout must not run that checkout's
        // script.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap();
        let root = Path::new(&manifest_dir).parent().unwrap();
        let status = Command::new("bash")
            .arg(root.join("scripts/build-plugin"))
            .arg("--out")
            .arg(profile_dir)
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/build-plugin failed");
        profile_dir.join("weft")
    })
}

/// Starts the plugin with exactly `env` and `stdin`.
pub fn spawn(env: &[(&str, &str)], stdin: &[u8]) -> Child {
    let mut cmd = Command::new(plugin());
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
