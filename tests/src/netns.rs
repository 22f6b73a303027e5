//! Network namespaces: the lab's hub, its nodes and their pods.
//!
//! Namespaces are named `weftlab-<lab>-<role>` so that `weft-lab clean` can
//! find every one a lab left behind. Code that must open sockets inside a
//! namespace (the kube-rs client talking to the lab's API server) runs on a
//! dedicated thread moved into that namespace with setns(2): the network
//! namespace is a per-thread attribute, so the rest of the process stays in
//! the host's namespace.

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

use crate::cmd::{self, CmdError};

/// Prefix of every namespace any lab creates.
pub const PREFIX: &str = "weftlab-";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("creating network namespace {name}")]
    Create {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("starting an async runtime inside network namespace {name}")]
    Runtime {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread working inside network namespace {name} panicked")]
    Panicked { name: String },
}

/// Path of a named namespace's handle, as `ip netns` keeps it.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Creates a named namespace with its loopback up (`ip netns add NAME`).
pub fn create(name: &str) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Create {
        name: name.to_string(),
        source,
    };
    cmd::ip(["netns", "add", name]).map_err(err)?;
    cmd::ip(["-n", name, "link", "set", "lo", "up"]).map_err(err)?;
    Ok(())
}

/// Deletes a named namespace; a missing one is not an error.
pub fn delete(name: &str) -> Result<(), CmdError> {
    if !path(name).exists() {
        return Ok(());
    }
    cmd::ip(["netns", "del", name]).map(drop)
}

/// Names of existing namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// PIDs of processes whose network namespace is `name` (`ip netns pids`).
pub fn pids(name: &str) -> Vec<i32> {
    cmd::ip(["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a thread inside namespace `name` and returns its result.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let p = path(name);
    let file = File::open(&p).map_err(|source| NetnsError::Open { path: p, source })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                name: name.to_string(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Panicked {
                name: name.to_string(),
            })
        })
    })
}

/// Runs the future made by `f` to completion on a single-threaded tokio
/// runtime whose thread lives inside namespace `name`.
pub fn block_on_in<T, F, Fut>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    run_in(name, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetnsError::Runtime {
                name: name.to_string(),
                source,
            })?;
        Ok(rt.block_on(f()))
    })?
}
