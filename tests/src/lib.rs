//! weft-lab: a Kubernetes cluster's network on one machine.
//!
//! Each node is a network namespace (plus a mount namespace of its own) on a
//! shared underlay bridge; the control plane is a real etcd and a real
//! kube-apiserver in a hub namespace; the lab plays kubelet and the
//! controller-manager's node IPAM. Nothing is added to the host's own network
//! namespace. See `Lab` for the API tests build on, and the `weft-lab` binary
//! for the CLI.

pub mod bench;
pub mod bench_cni;
pub mod bench_dataplane;
pub mod bench_real;
pub mod check;
pub mod cluster;
pub mod cmd;
pub mod cni_faults;
pub mod container;
pub mod control_plane;
pub mod faults;
pub mod http;
pub mod judge;
pub mod lab;
pub mod matrix;
pub mod netns;
pub mod node;
pub mod packets;
pub mod pki;
pub mod plot;
pub mod pods;
pub mod probe;
pub mod procs;
pub mod real;
pub mod runtime;
pub mod weftd;

pub use lab::{Backend, Lab, LabConfig, LabError, LabState, SubnetManager};

/// A lab name unique to this process and `tag`, for tests running in parallel.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(8)
        .collect();
    format!("t{}-{tag}{n}", std::process::id() % 100_000)
}
