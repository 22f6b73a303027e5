//! Helpers shared by the kernel tests.

#![allow(clippy::unwrap_used, dead_code)] // test code; not every test file uses every helper

use std::process::Command;

/// Runs `f` on a thread in a fresh network namespace (everything in it
/// vanishes with the thread). Needs root.
pub fn in_private_netns(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare a network namespace (root needed)");
            f();
        })
        .join()
        .unwrap();
    });
}

/// The same, with a tokio runtime for `f`'s future.
pub fn in_private_netns_async<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F + Send) {
    in_private_netns(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    });
}

/// Runs a bash script in the caller's network namespace; its stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euc", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
